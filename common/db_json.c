/* db_json.c — reading a transaction's results as JSON (contract in ac_db.h): the readers
 * every service's store.c shares. */
#include <jansson.h>
#include <libpq-fe.h>

#include "ac_db.h"
#include "ac_log.h"

const PGresult *ac_db_txn_rows(const ac_db_txn_t *t, int i)
{
    const PGresult *res = ac_db_txn_result(t, i);
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK)
        return NULL;
    return res;
}

json_t *ac_db_json_cell(const PGresult *res, int row, int col)
{
    json_error_t jerr;
    json_t *v;
    if (PQgetisnull(res, row, col))
        return NULL;
    v = json_loadb(PQgetvalue(res, row, col), (size_t)PQgetlength(res, row, col), JSON_DECODE_ANY,
                   &jerr);
    if (!v)
        ac_error("store: unparsable JSON from the database: %s", jerr.text);
    return v;
}

int ac_db_doc_result(const ac_db_txn_t *t, int i, json_t **doc_out)
{
    const PGresult *res = ac_db_txn_rows(t, i);
    *doc_out = NULL;
    if (!res)
        return AC_ERR_PROTO;
    if (PQntuples(res) == 0 || PQgetisnull(res, 0, 0))
        return AC_ERR_NOTFOUND;
    *doc_out = ac_db_json_cell(res, 0, 0);
    return *doc_out ? 0 : AC_ERR_PROTO;
}

int ac_db_page_result(const ac_db_txn_t *t, int i, long limit, json_t **body_out)
{
    const PGresult *res = ac_db_txn_rows(t, i);
    json_t *items, *body;
    int n;

    *body_out = NULL;
    if (!res || PQnfields(res) != 2)
        return AC_ERR_PROTO;
    n = PQntuples(res);
    items = json_array();
    body = json_object();
    if (!items || !body)
        goto nomem;
    for (int row = 0; row < n && row < limit; row++) {
        json_t *doc = ac_db_json_cell(res, row, 1);
        if (!doc || json_array_append_new(items, doc) < 0)
            goto nomem;
    }
    if (json_object_set_new(body, "items", items) < 0) {
        items = NULL;
        goto nomem;
    }
    items = NULL;
    /* A further row exists: the next page starts after the last item shown. */
    if (json_object_set_new(body, "next_cursor",
                            n > limit ? json_string(PQgetvalue(res, (int)limit - 1, 0))
                                      : json_null()) < 0)
        goto nomem;
    *body_out = body;
    return 0;
nomem:
    json_decref(items);
    json_decref(body);
    return AC_ERR_NOMEM;
}
