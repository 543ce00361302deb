/* replay.c — the replay endpoint (see replay.h and proto/aftercare/v1/bus.proto).
 *
 * Notes:
 * - A stream is STARTING until its first query answers: that query (store.c) returns the
 *   outbox's last_seq and oldest sequence from the same snapshot as the rows, so the
 *   range checks (beyond latest + 1 -> BAD_REQUEST, pruned -> PRUNED) and the snapshot of
 *   "latest" for to_sequence 0 come with the first rows at no extra round trip. Every
 *   later batch checks again that nothing between the cursor and its rows was pruned
 *   meanwhile (the relay's prune job may run at any time).
 * - Coverage: each query reads a window of AC_BUS_REPLAY_BATCH sequences (sequences are
 *   contiguous, so that bounds its rows whatever the topic filter); a batch covers its
 *   window, cut at the stream's end. ReplayEnd.last_sequence is what the sent batches
 *   covered, i.e. the stream's end.
 * - ROUTER_MANDATORY: a send to a full queue returns AC_ERR_AGAIN and the stream pauses;
 *   a send to a peer that has gone returns AC_ERR_UNAVAILABLE and the stream is dropped.
 *   libzmq reports a ROUTER writable when ANY peer's queue has room, so a paused stream
 *   is resumed on writable, and when a resume makes no progress (another peer's room
 *   woke us) the next try waits for the RETRY_S timer instead of spinning.
 * - Answers that cannot be queued at once (the client's queue is full) are kept in a
 *   FINISHING stream and sent when there is room, so every request gets its answer.
 */
#include "replay.h"

#include <ev.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ac_bus.h"
#include "ac_event.h"
#include "ac_log.h"
#include "aftercare/v1/bus.pb-c.h"
#include "bus.h"
#include "keys.h"
#include "sources.h"
#include "store.h"

#define KIND_REQUEST      "replay.request"
#define KIND_EVENT        "replay.event"
#define KIND_END          "replay.end"
#define KIND_ERROR        "replay.error"
#define REQUEST_ID_MAX    64
#define REQUEST_MAX_BYTES 4096 /* a ReplayRequest is < 400 bytes */
#define PEER_ID_MAX       255
#define READ_BURST        256 /* requests read per wake-up */
#define RETRY_S           0.002
#define WATCH_S           1.0  /* paused streams are checked this often */
#define STREAMS_MAX_EXTRA 1024 /* answers waiting for room, beyond the running streams */
#define SNDHWM            5000 /* per client: ~3 MB of envelopes queued in libzmq */
#define LOG_BURST         10   /* garbage log lines per LOG_WINDOW_S */
#define LOG_WINDOW_S      10.0

typedef enum {
    STREAM_STARTING,  /* the first query is in flight */
    STREAM_RUNNING,   /* sending batches */
    STREAM_FINISHING, /* only the final message (ReplayEnd / ReplayError) is left */
} stream_state_t;

typedef struct stream {
    struct stream *prev, *next; /* in bus_replay_t.streams */
    bus_replay_t *owner;
    stream_state_t state;
    uint8_t peer[PEER_ID_MAX]; /* the ROUTER routing id of the client */
    size_t peer_len;
    char key[AC_KEY_Z85_LEN + 1]; /* the client's public key (ZAP User-Id) */
    char request_id[REQUEST_ID_MAX + 1];
    size_t source; /* index in the sources */
    char prefix[AC_TOPIC_MAX];
    uint64_t from_seq, to_seq; /* as requested; to_seq 0: the latest at the start */
    uint64_t end_seq;          /* the last sequence covered (known once RUNNING) */
    uint64_t query_from;       /* where the next query starts */
    uint64_t call_from;        /* the window of the query in flight: from */
    uint64_t call_to;          /* ... to (inclusive) */
    uint64_t covered;          /* every sequence up to here was sent or filtered out */
    uint64_t events;           /* replay.event messages sent */
    char **topics;             /* the key's topic prefixes at the last query (owned) */
    size_t ntopics;
    bus_store_call_t call; /* the query in flight */
    bus_batch_t *cur;      /* rows being sent (owned) */
    size_t cur_i;
    uint64_t cur_covers;
    bus_batch_t *ahead; /* rows read ahead (owned) */
    uint64_t ahead_covers;
    int is_paused;           /* the client's queue was full */
    ev_tstamp stalled_since; /* paused without a send since then; 0: not stalled */
    const char *final_kind;  /* FINISHING: KIND_END or KIND_ERROR */
    uint8_t *final_body;     /* owned */
    size_t final_len;
} stream_t;

struct bus_replay {
    bus_t *bus;             /* borrowed */
    bus_store_t *store;     /* borrowed */
    bus_sources_t *sources; /* borrowed */
    ac_zsock_t *sock;       /* owned ROUTER */
    stream_t streams;       /* sentinel of the list */
    size_t nstreams;        /* every stream, finishing ones too */
    unsigned nrunning;      /* STARTING + RUNNING */
    unsigned npaused;
    ev_timer retry; /* resumes paused streams when writable gave no progress */
    ev_timer watch; /* while any stream is paused: drops stalled ones, notices gone peers */
    bus_replay_stats_t stats;
    ev_tstamp log_window_at; /* garbage logging: start of the window */
    unsigned log_in_window;
    uint64_t log_suppressed;
};

static void stream_pump(stream_t *st);

const char *bus_replay_code_name(int code)
{
    static const char *const names[BUS_REPLAY_CODES] = {
        "?", "BAD_REQUEST", "UNKNOWN_SOURCE", "PRUNED", "FORBIDDEN", "BUSY", "UNAVAILABLE",
    };
    return code > 0 && code < BUS_REPLAY_CODES ? names[code] : "?";
}

/* --- small helpers ------------------------------------------------------------------------ */

/* Copies s for a log line or message: at most outlen - 1 bytes, non-printables as '?'. */
static const char *printable(const char *s, char *out, size_t outlen)
{
    size_t i = 0;
    for (; s && s[i] && i + 1 < outlen; i++)
        out[i] = s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?';
    out[i] = '\0';
    return out;
}

static int is_printable_text(const char *s, size_t min, size_t max)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (n >= max || s[n] < 0x20 || s[n] >= 0x7f)
            return 0;
    return n >= min;
}

/* Logs a garbage message at warn, at most LOG_BURST lines per LOG_WINDOW_S. */
static void garbage_log(bus_replay_t *self, const char *fmt, ...) AC_PRINTF(2, 3);
static void garbage_log(bus_replay_t *self, const char *fmt, ...)
{
    ev_tstamp now = ev_now(self->bus->loop);
    char line[512];
    va_list ap;
    if (now - self->log_window_at >= LOG_WINDOW_S) {
        if (self->log_suppressed)
            ac_warn("replay: %llu more bad requests were not logged",
                    (unsigned long long)self->log_suppressed);
        self->log_window_at = now;
        self->log_in_window = 0;
        self->log_suppressed = 0;
    }
    if (self->log_in_window >= LOG_BURST) {
        self->log_suppressed++;
        return;
    }
    self->log_in_window++;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    ac_warn("replay: %s", line);
}

static int send_to(bus_replay_t *self, const uint8_t *peer, size_t peer_len, const char *kind,
                   const void *body, size_t len)
{
    const void *data[3] = {peer, kind, body};
    size_t lens[3] = {peer_len, strlen(kind), len};
    return ac_zsock_send(self->sock, data, lens, 3);
}

/* --- streams ------------------------------------------------------------------------------ */

static void topics_clear(stream_t *st)
{
    for (size_t i = 0; i < st->ntopics; i++)
        free(st->topics[i]);
    free(st->topics);
    st->topics = NULL;
    st->ntopics = 0;
}

static stream_t *stream_new(bus_replay_t *self, const uint8_t *peer, size_t peer_len)
{
    stream_t *st = calloc(1, sizeof(*st));
    if (!st)
        return NULL;
    st->owner = self;
    memcpy(st->peer, peer, peer_len);
    st->peer_len = peer_len;
    st->prev = self->streams.prev;
    st->next = &self->streams;
    st->prev->next = st;
    self->streams.prev = st;
    self->nstreams++;
    return st;
}

static void stream_release_work(stream_t *st)
{
    bus_store_cancel(&st->call);
    bus_batch_free(&st->cur);
    bus_batch_free(&st->ahead);
    topics_clear(st);
    if (st->state != STREAM_FINISHING)
        st->owner->nrunning--;
}

static void stream_free(stream_t *st)
{
    bus_replay_t *self = st->owner;
    if (st->state != STREAM_FINISHING)
        stream_release_work(st);
    if (st->is_paused)
        self->npaused--;
    st->prev->next = st->next;
    st->next->prev = st->prev;
    self->nstreams--;
    free(st->final_body);
    free(st);
}

/* Ends the stream's work; only `body` (taken) is left to send. kind NULL: nothing is left
 * (out of memory), the next stream_pump() frees the stream. Never frees st itself, so
 * that its callers (stream_fail(), stream_end()) leave st valid for theirs. */
static void stream_finish(stream_t *st, const char *kind, uint8_t *body, size_t len)
{
    if (st->state != STREAM_FINISHING)
        stream_release_work(st);
    st->state = STREAM_FINISHING;
    st->final_kind = kind;
    st->final_body = body;
    st->final_len = len;
}

static int pack_error(const char *request_id, int code, uint64_t oldest, uint64_t latest,
                      const char *message, uint8_t **body, size_t *len)
{
    Aftercare__V1__ReplayError e = AFTERCARE__V1__REPLAY_ERROR__INIT;
    e.request_id = (char *)(uintptr_t)request_id;
    e.code = (Aftercare__V1__ReplayError__Code)code;
    e.message = (char *)(uintptr_t)message;
    e.oldest_sequence = oldest;
    e.latest_sequence = latest;
    *len = aftercare__v1__replay_error__get_packed_size(&e);
    if (!(*body = malloc(*len ? *len : 1)))
        return AC_ERR_NOMEM;
    aftercare__v1__replay_error__pack(&e, *body);
    return 0;
}

/* The stream ends with ReplayError (logged at info: errors are answers, not faults). */
static void stream_fail(stream_t *st, int code, uint64_t oldest, uint64_t latest, const char *fmt,
                        ...) AC_PRINTF(5, 6);
static void stream_fail(stream_t *st, int code, uint64_t oldest, uint64_t latest, const char *fmt,
                        ...)
{
    bus_replay_t *self = st->owner;
    char msg[256];
    uint8_t *body = NULL;
    size_t len = 0;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    self->stats.errors[code]++;
    ac_info("replay %s: %s: %s", st->request_id, bus_replay_code_name(code), msg);
    if (pack_error(st->request_id, code, oldest, latest, msg, &body, &len) != 0) {
        ac_error("replay %s: out of memory answering", st->request_id);
        stream_finish(st, NULL, NULL, 0); /* stream_pump() drops it: st stays valid here */
        return;
    }
    stream_finish(st, KIND_ERROR, body, len);
}

static void stream_end(stream_t *st)
{
    bus_replay_t *self = st->owner;
    Aftercare__V1__ReplayEnd e = AFTERCARE__V1__REPLAY_END__INIT;
    uint8_t *body;
    size_t len;

    e.request_id = st->request_id;
    e.source = bus_sources_at(self->sources, st->source)->name;
    e.from_sequence = st->from_seq;
    e.last_sequence = st->covered;
    e.events = st->events;
    len = aftercare__v1__replay_end__get_packed_size(&e);
    if (!(body = malloc(len ? len : 1))) {
        ac_error("replay %s: out of memory ending", st->request_id);
        stream_finish(st, NULL, NULL, 0); /* stream_pump() drops it: st stays valid here */
        return;
    }
    aftercare__v1__replay_end__pack(&e, body);
    self->stats.completed++;
    ac_debug("replay %s: %llu events, %llu..%llu", st->request_id, (unsigned long long)st->events,
             (unsigned long long)st->from_seq, (unsigned long long)st->covered);
    stream_finish(st, KIND_END, body, len);
}

static void stream_pause(stream_t *st);

/* A ReplayError for a request that has no stream: sent at once, or kept in a finishing
 * stream while the client's queue is full. */
static void reply_error(bus_replay_t *self, const uint8_t *peer, size_t peer_len,
                        const char *request_id, int code, uint64_t oldest, uint64_t latest,
                        const char *fmt, ...) AC_PRINTF(8, 9);
static void reply_error(bus_replay_t *self, const uint8_t *peer, size_t peer_len,
                        const char *request_id, int code, uint64_t oldest, uint64_t latest,
                        const char *fmt, ...)
{
    char msg[256];
    uint8_t *body = NULL;
    size_t len = 0;
    stream_t *st;
    va_list ap;
    int rc;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    self->stats.errors[code]++;
    if (pack_error(request_id, code, oldest, latest, msg, &body, &len) != 0) {
        self->stats.replies_dropped++;
        return;
    }
    rc = send_to(self, peer, peer_len, KIND_ERROR, body, len);
    if (rc != AC_ERR_AGAIN) {
        if (rc != 0)
            self->stats.peers_gone++;
        free(body);
        return;
    }
    if (self->nstreams >= self->nrunning + STREAMS_MAX_EXTRA ||
        !(st = stream_new(self, peer, peer_len))) {
        self->stats.replies_dropped++;
        ac_warn("replay: dropped an answer (%s) to a client whose queue is full",
                bus_replay_code_name(code));
        free(body);
        return;
    }
    snprintf(st->request_id, sizeof(st->request_id), "%s", request_id);
    st->state = STREAM_FINISHING;
    st->final_kind = KIND_ERROR;
    st->final_body = body;
    st->final_len = len;
    stream_pause(st);
}

/* --- pausing ------------------------------------------------------------------------------ */

static void on_writable(ac_zsock_t *s, void *arg);

static void stream_pause(stream_t *st)
{
    bus_replay_t *self = st->owner;
    if (st->is_paused)
        return;
    st->is_paused = 1;
    self->npaused++;
    if (st->stalled_since == 0)
        st->stalled_since = ev_now(self->bus->loop);
    if (!ev_is_active(&self->watch))
        ev_timer_again(self->bus->loop, &self->watch);
    if (!ev_is_active(&self->retry))
        ac_zsock_on_writable(self->sock, on_writable, self);
}

static void resume_paused(bus_replay_t *self)
{
    uint64_t before = self->stats.events;
    size_t paused_before = self->npaused;
    stream_t *st, *next;

    for (st = self->streams.next; st != &self->streams; st = next) {
        next = st->next;
        if (!st->is_paused)
            continue;
        st->is_paused = 0;
        self->npaused--;
        stream_pump(st);
    }
    if (self->npaused == 0)
        return;
    if (self->stats.events != before || self->npaused < paused_before) {
        ac_zsock_on_writable(self->sock, on_writable, self);
    } else {
        /* writable because of another peer's room: wait a little instead of spinning */
        ev_timer_set(&self->retry, RETRY_S, 0.);
        ev_timer_start(self->bus->loop, &self->retry);
    }
}

static void on_writable(ac_zsock_t *s, void *arg)
{
    resume_paused(arg);
}

static void on_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    resume_paused(ac_container_of(w, bus_replay_t, retry));
}

/* Every WATCH_S while a stream is paused: drops the streams whose client has not read for
 * AC_BUS_REPLAY_STALL_S (each holds a replay slot), and tries the others, so that a client
 * that went away is noticed even when no other client makes the socket writable. */
static void on_watch(struct ev_loop *loop, ev_timer *w, int revents)
{
    bus_replay_t *self = ac_container_of(w, bus_replay_t, watch);
    ev_tstamp now = ev_now(loop);
    stream_t *st, *next;

    for (st = self->streams.next; st != &self->streams; st = next) {
        next = st->next;
        if (!st->is_paused || now - st->stalled_since < (ev_tstamp)self->bus->cfg->replay_stall_s)
            continue;
        ac_warn("replay %s: the client has not read for %lds; stream dropped after %llu events",
                st->request_id, self->bus->cfg->replay_stall_s, (unsigned long long)st->events);
        self->stats.stalled++;
        stream_free(st);
    }
    if (self->npaused == 0) {
        ev_timer_stop(loop, w);
        return;
    }
    if (!ev_is_active(&self->retry)) { /* try the others now (via on_retry) */
        ev_timer_set(&self->retry, 0., 0.);
        ev_timer_start(loop, &self->retry);
    }
}

/* --- queries ------------------------------------------------------------------------------ */

static int starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* 1 when some topic can start with both prefix and one of the key's prefixes. */
static int key_can_see_prefix(const bus_key_t *key, const char *prefix)
{
    if (key->ntopics == 0)
        return 1;
    for (size_t i = 0; i < key->ntopics; i++)
        if (starts_with(key->topics[i], prefix) || starts_with(prefix, key->topics[i]))
            return 1;
    return 0;
}

static int topic_is_allowed(const stream_t *st, const char *topic)
{
    if (!starts_with(topic, st->prefix))
        return 0;
    if (st->ntopics == 0)
        return 1;
    for (size_t i = 0; i < st->ntopics; i++)
        if (starts_with(topic, st->topics[i]))
            return 1;
    return 0;
}

/* Copies the key's topics into the stream (they filter this batch's rows too). */
static int stream_take_topics(stream_t *st, const bus_key_t *key)
{
    topics_clear(st);
    if (key->ntopics == 0)
        return 0;
    if (!(st->topics = calloc(key->ntopics, sizeof(char *))))
        return AC_ERR_NOMEM;
    for (size_t i = 0; i < key->ntopics; i++) {
        if (!(st->topics[i] = strdup(key->topics[i])))
            return AC_ERR_NOMEM;
        st->ntopics++;
    }
    return 0;
}

static void on_batch(bus_store_call_t *call, int err);

/* Starts the next query when one is due: the stream is running, nothing is in flight or
 * read ahead, and its range is not exhausted. The key is checked again first. */
static void stream_query(stream_t *st)
{
    bus_replay_t *self = st->owner;
    const bus_key_t *key;
    bus_batch_query_t q;
    uint64_t window_end, limit;
    int rc;

    if (st->state == STREAM_FINISHING || st->call.txn || st->ahead)
        return;
    if (st->state == STREAM_RUNNING && st->query_from > st->end_seq)
        return;
    key = self->bus->keys ? bus_keys_find(self->bus->keys, st->key) : NULL;
    if (!key) {
        stream_fail(st, BUS_REPLAY_FORBIDDEN, 0, 0, "the client's key is not allowed (revoked?)");
        return;
    }
    if (!key_can_see_prefix(key, st->prefix)) {
        stream_fail(st, BUS_REPLAY_FORBIDDEN, 0, 0,
                    "the client's key may not see topics with prefix \"%s\"", st->prefix);
        return;
    }
    if (stream_take_topics(st, key) != 0) {
        stream_fail(st, BUS_REPLAY_UNAVAILABLE, 0, 0, "out of memory");
        return;
    }
    /* the window: AC_BUS_REPLAY_BATCH sequences, within the stream's end (or the request's
     * to_sequence before the end is known; the query caps it at the latest) */
    window_end = st->query_from + (uint64_t)self->bus->cfg->replay_batch - 1;
    if (window_end > INT64_MAX) /* sequences are bigint: from near INT64_MAX, to 0 */
        window_end = INT64_MAX;
    limit = st->state == STREAM_STARTING ? st->to_seq : st->end_seq;
    if (limit != 0 && window_end > limit)
        window_end = limit;
    q = (bus_batch_query_t){
        .source = st->source,
        .from_seq = st->query_from,
        .to_seq = window_end,
        .prefix = st->prefix,
        .topics = (const char *const *)st->topics,
        .ntopics = st->ntopics,
    };
    st->call.done = on_batch;
    st->call_from = st->query_from;
    st->call_to = window_end;
    rc = bus_store_read_batch(self->store, &st->call, &q);
    if (rc != 0)
        stream_fail(st, BUS_REPLAY_UNAVAILABLE, 0, 0, "the outbox cannot be read now (%s)",
                    ac_strerror(rc));
}

static void on_batch(bus_store_call_t *call, int err)
{
    stream_t *st = ac_container_of(call, stream_t, call);
    bus_batch_t *b = call->batch;
    uint64_t last, oldest, covers;
    const char *name = bus_sources_at(st->owner->sources, st->source)->name;

    call->batch = NULL;
    if (err != 0) {
        ac_warn("replay %s: reading the outbox of %s failed: %s", st->request_id, name,
                call->error);
        stream_fail(st, BUS_REPLAY_UNAVAILABLE, 0, 0,
                    "the outbox of %s cannot be read now; retry after a moment", name);
        goto out;
    }
    last = b->last_seq;
    oldest = b->oldest_seq;
    if (st->state == STREAM_STARTING) {
        if (st->from_seq > last + 1) {
            stream_fail(st, BUS_REPLAY_BAD_REQUEST, oldest, last,
                        "from_sequence %llu is beyond the latest sequence of %s (%llu) + 1",
                        (unsigned long long)st->from_seq, name, (unsigned long long)last);
            goto out;
        }
        st->end_seq = st->to_seq == 0 || st->to_seq > last ? last : st->to_seq;
        st->covered = st->from_seq - 1;
        st->state = STREAM_RUNNING;
    }
    /* rows between the cursor and the end that are gone were pruned */
    if (st->call_from <= st->end_seq && (oldest == 0 || st->call_from < oldest)) {
        uint64_t avail = oldest ? oldest : last + 1;
        stream_fail(st, BUS_REPLAY_PRUNED, avail, last,
                    "sequence %llu of %s was pruned; the oldest still available is %llu",
                    (unsigned long long)st->call_from, name, (unsigned long long)avail);
        goto out;
    }
    covers = st->call_to < st->end_seq ? st->call_to : st->end_seq;
    st->query_from = covers + 1;
    if (!st->cur) {
        st->cur = b;
        st->cur_i = 0;
        st->cur_covers = covers;
    } else {
        st->ahead = b;
        st->ahead_covers = covers;
    }
    b = NULL;
    stream_query(st); /* read ahead while this batch goes out */
out:
    bus_batch_free(&b);
    if (!st->is_paused)
        stream_pump(st);
}

/* --- sending ------------------------------------------------------------------------------ */

/* Sends what the stream has, until its batches run out, the client's queue is full or it
 * ends. May free st. */
static void stream_pump(stream_t *st)
{
    bus_replay_t *self = st->owner;
    for (;;) {
        int rc;
        if (st->state == STREAM_FINISHING && st->final_kind == NULL) {
            self->stats.replies_dropped++;
            stream_free(st);
            return;
        }
        if (st->state == STREAM_FINISHING) {
            rc = send_to(self, st->peer, st->peer_len, st->final_kind, st->final_body,
                         st->final_len);
            if (rc == AC_ERR_AGAIN) {
                stream_pause(st);
                return;
            }
            if (rc != 0)
                self->stats.peers_gone++;
            stream_free(st);
            return;
        }
        if (st->cur) {
            while (st->cur_i < st->cur->n) {
                const bus_batch_row_t *row = &st->cur->rows[st->cur_i];
                const void *data[5] = {st->peer, KIND_EVENT, st->request_id, row->topic,
                                       row->envelope};
                size_t lens[5] = {st->peer_len, sizeof(KIND_EVENT) - 1, strlen(st->request_id),
                                  strlen(row->topic), row->len};
                if (!topic_is_allowed(st, row->topic)) { /* the SQL filtered it already */
                    st->cur_i++;
                    continue;
                }
                rc = ac_zsock_send(self->sock, data, lens, 5);
                if (rc == AC_ERR_AGAIN) {
                    stream_pause(st);
                    return;
                }
                if (rc != 0) {
                    ac_info("replay %s: the client went away after %llu events", st->request_id,
                            (unsigned long long)st->events);
                    self->stats.peers_gone++;
                    stream_free(st);
                    return;
                }
                st->cur_i++;
                st->events++;
                st->stalled_since = 0;
                self->stats.events++;
            }
            st->covered = st->cur_covers;
            bus_batch_free(&st->cur);
            if (st->ahead) {
                st->cur = st->ahead;
                st->ahead = NULL;
                st->cur_i = 0;
                st->cur_covers = st->ahead_covers;
            }
            stream_query(st);
            continue;
        }
        if (st->state == STREAM_RUNNING && st->covered >= st->end_seq && !st->call.txn) {
            stream_end(st);
            continue;
        }
        st->stalled_since = 0;
        return; /* waiting for a query */
    }
}

/* --- requests ----------------------------------------------------------------------------- */

static stream_t *stream_find(bus_replay_t *self, const uint8_t *peer, size_t peer_len,
                             const char *request_id)
{
    for (stream_t *st = self->streams.next; st != &self->streams; st = st->next)
        if (st->state != STREAM_FINISHING && st->peer_len == peer_len &&
            memcmp(st->peer, peer, peer_len) == 0 && strcmp(st->request_id, request_id) == 0)
            return st;
    return NULL;
}

/* The streams of this key still running (STARTING or RUNNING). */
static unsigned key_streams(const bus_replay_t *self, const char *public_key)
{
    unsigned n = 0;
    for (const stream_t *st = self->streams.next; st != &self->streams; st = st->next)
        n += st->state != STREAM_FINISHING && strcmp(st->key, public_key) == 0;
    return n;
}

static void handle_request(bus_replay_t *self, const ac_frames_t *f)
{
    const uint8_t *peer = f->data[0];
    size_t peer_len = f->len[0];
    Aftercare__V1__ReplayRequest *req = NULL;
    char who[16], shown[72];
    const bus_key_t *key;
    const bus_source_t *src;
    stream_t *st;
    int isrc;

    self->stats.requests++;
    snprintf(who, sizeof(who), "%.8s", f->user_id[0] ? f->user_id : "(no key)");
    if (peer_len == 0 || peer_len > PEER_ID_MAX) {
        self->stats.malformed++;
        garbage_log(self, "a message with a routing id of %zu bytes", peer_len);
        return;
    }
    if (f->n != 3) {
        self->stats.malformed++;
        garbage_log(self, "key %s...: %zu frames instead of 2", who, f->n - 1);
        reply_error(self, peer, peer_len, "", BUS_REPLAY_BAD_REQUEST, 0, 0,
                    "expected 2 frames [replay.request][ReplayRequest], got %zu", f->n - 1);
        return;
    }
    if (f->len[1] != sizeof(KIND_REQUEST) - 1 || memcmp(f->data[1], KIND_REQUEST, f->len[1]) != 0) {
        self->stats.malformed++;
        garbage_log(self, "key %s...: unknown message kind \"%s\"", who,
                    printable((const char *)f->data[1], shown, 33));
        reply_error(self, peer, peer_len, "", BUS_REPLAY_BAD_REQUEST, 0, 0,
                    "unknown message kind \"%s\"; expected \"replay.request\"", shown);
        return;
    }
    if (f->len[2] > REQUEST_MAX_BYTES) {
        self->stats.malformed++;
        garbage_log(self, "key %s...: a request of %zu bytes", who, f->len[2]);
        reply_error(self, peer, peer_len, "", BUS_REPLAY_BAD_REQUEST, 0, 0,
                    "a request of %zu bytes is larger than %d", f->len[2], REQUEST_MAX_BYTES);
        return;
    }
    req = aftercare__v1__replay_request__unpack(NULL, f->len[2], f->data[2]);
    if (!req) {
        self->stats.malformed++;
        garbage_log(self, "key %s...: a ReplayRequest of %zu bytes does not decode", who,
                    f->len[2]);
        reply_error(self, peer, peer_len, "", BUS_REPLAY_BAD_REQUEST, 0, 0,
                    "the ReplayRequest does not decode");
        return;
    }
    if (!is_printable_text(req->request_id, 1, REQUEST_ID_MAX)) {
        self->stats.malformed++;
        garbage_log(self, "key %s...: bad request_id \"%s\"", who,
                    printable(req->request_id, shown, sizeof(shown)));
        reply_error(self, peer, peer_len, "", BUS_REPLAY_BAD_REQUEST, 0, 0,
                    "request_id must be 1..%d printable ASCII characters", REQUEST_ID_MAX);
        goto out;
    }
    isrc = bus_sources_find(self->sources, req->source);
    if (isrc < 0) {
        reply_error(self, peer, peer_len, req->request_id, BUS_REPLAY_UNKNOWN_SOURCE, 0, 0,
                    "the bus has no outbox for source \"%s\"",
                    printable(req->source, shown, sizeof(shown)));
        goto out;
    }
    src = bus_sources_at(self->sources, (size_t)isrc);
    if (req->from_sequence == 0 || req->from_sequence > INT64_MAX || req->to_sequence > INT64_MAX ||
        (req->to_sequence != 0 && req->to_sequence < req->from_sequence)) {
        uint64_t latest = bus_source_last_sequence(src);
        reply_error(self, peer, peer_len, req->request_id, BUS_REPLAY_BAD_REQUEST,
                    src->has_position ? src->position.oldest_seq : 0, latest,
                    "bad range: from_sequence %llu, to_sequence %llu (from must be >= 1, "
                    "to 0 or >= from)",
                    (unsigned long long)req->from_sequence, (unsigned long long)req->to_sequence);
        goto out;
    }
    if (strlen(req->topic_prefix) >= AC_TOPIC_MAX ||
        !is_printable_text(req->topic_prefix, 0, AC_TOPIC_MAX - 1)) {
        reply_error(self, peer, peer_len, req->request_id, BUS_REPLAY_BAD_REQUEST, 0, 0,
                    "topic_prefix must be at most %d printable ASCII characters", AC_TOPIC_MAX - 1);
        goto out;
    }
    if (stream_find(self, peer, peer_len, req->request_id)) {
        reply_error(self, peer, peer_len, req->request_id, BUS_REPLAY_BAD_REQUEST, 0, 0,
                    "request_id \"%s\" is already running on this connection", req->request_id);
        goto out;
    }
    key = f->user_id[0] && self->bus->keys ? bus_keys_find(self->bus->keys, f->user_id) : NULL;
    if (!key) {
        ac_warn("replay %s: key %s... refused: unknown or revoked", req->request_id, who);
        reply_error(self, peer, peer_len, req->request_id, BUS_REPLAY_FORBIDDEN, 0, 0,
                    "the client's key is not allowed to replay");
        goto out;
    }
    if (!key_can_see_prefix(key, req->topic_prefix)) {
        ac_warn("replay %s: key %s (%s) refused: may not see prefix \"%s\"", req->request_id, who,
                key->name, req->topic_prefix);
        reply_error(self, peer, peer_len, req->request_id, BUS_REPLAY_FORBIDDEN, 0, 0,
                    "the client's key may not see topics with prefix \"%s\"", req->topic_prefix);
        goto out;
    }
    if (self->nrunning >= (unsigned)self->bus->cfg->replay_max) {
        reply_error(self, peer, peer_len, req->request_id, BUS_REPLAY_BUSY, 0, 0,
                    "%u replays are running (AC_BUS_REPLAY_MAX); retry after a moment",
                    self->nrunning);
        goto out;
    }
    if (key_streams(self, key->public_key) >= (unsigned)self->bus->cfg->replay_per_key) {
        reply_error(self, peer, peer_len, req->request_id, BUS_REPLAY_BUSY, 0, 0,
                    "this key has %ld replays running (AC_BUS_REPLAY_PER_KEY); retry after "
                    "a moment",
                    self->bus->cfg->replay_per_key);
        goto out;
    }
    if (!(st = stream_new(self, peer, peer_len))) {
        reply_error(self, peer, peer_len, req->request_id, BUS_REPLAY_UNAVAILABLE, 0, 0,
                    "out of memory");
        goto out;
    }
    self->nrunning++;
    st->state = STREAM_STARTING;
    memcpy(st->key, key->public_key, sizeof(st->key) - 1); /* found by f->user_id */
    snprintf(st->request_id, sizeof(st->request_id), "%s", req->request_id);
    snprintf(st->prefix, sizeof(st->prefix), "%s", req->topic_prefix);
    st->source = (size_t)isrc;
    st->from_seq = req->from_sequence;
    st->to_seq = req->to_sequence;
    st->query_from = req->from_sequence;
    ac_info("replay %s: key %s (%s) asks %s %llu..%llu prefix \"%s\"", st->request_id, who,
            key->name, src->name, (unsigned long long)st->from_seq, (unsigned long long)st->to_seq,
            st->prefix);
    stream_query(st);
    if (st->state == STREAM_FINISHING)
        stream_pump(st); /* the query could not start: answer now */
out:
    aftercare__v1__replay_request__free_unpacked(req, NULL);
}

static void on_readable(ac_zsock_t *s, void *arg)
{
    bus_replay_t *self = arg;
    for (int i = 0; i < READ_BURST; i++) {
        ac_frames_t f;
        int rc = ac_zsock_recv(s, &f);
        if (rc == AC_ERR_AGAIN)
            break;
        if (rc != 0)
            continue;
        handle_request(self, &f);
        ac_frames_clear(&f);
    }
}

/* --- life cycle --------------------------------------------------------------------------- */

bus_replay_t *bus_replay_new(bus_t *bus, bus_store_t *store, bus_sources_t *sources)
{
    const bus_config_t *cfg = bus->cfg;
    bus_replay_t *self = calloc(1, sizeof(*self));
    if (!self) {
        ac_error("replay: out of memory");
        return NULL;
    }
    self->bus = bus;
    self->store = store;
    self->sources = sources;
    self->streams.next = self->streams.prev = &self->streams;
    ev_timer_init(&self->retry, on_retry, RETRY_S, 0.);
    ev_timer_init(&self->watch, on_watch, 0., WATCH_S);
    self->sock = ac_zsock_new(bus->loop, AC_ZSOCK_ROUTER);
    if (!self->sock || ac_zsock_set_affinity(self->sock, BUS_IO_AFFINITY(cfg, BUS_DOMAIN_REPLAY)) ||
        ac_zsock_set_router_mandatory(self->sock, 1) ||
        ac_zsock_set_hwm(self->sock, SNDHWM, 1000) ||
        ac_zsock_set_maxmsgsize(self->sock, cfg->max_msg) ||
        ac_zsock_set_curve_server(self->sock, &bus->curve, BUS_ZAP_REPLAY) ||
        bus_conns_watch(&bus->conns[BUS_DOMAIN_REPLAY], bus, BUS_ZAP_REPLAY, self->sock) ||
        ac_zsock_bind(self->sock, cfg->replay_bind)) {
        ac_error("replay: cannot serve on %s", cfg->replay_bind);
        bus_replay_destroy(&self);
        return NULL;
    }
    ac_zsock_on_readable(self->sock, on_readable, self);
    ac_info("replay on %s (%ld rows per query, at most %ld at once)", cfg->replay_bind,
            cfg->replay_batch, cfg->replay_max);
    return self;
}

void bus_replay_destroy(bus_replay_t **self_p)
{
    bus_replay_t *self = self_p ? *self_p : NULL;
    if (!self)
        return;
    while (self->streams.next != &self->streams)
        stream_free(self->streams.next);
    ev_timer_stop(self->bus->loop, &self->retry);
    ev_timer_stop(self->bus->loop, &self->watch);
    ac_zsock_destroy(&self->sock);
    free(self);
    *self_p = NULL;
}

void bus_replay_stats(const bus_replay_t *self, bus_replay_stats_t *out)
{
    *out = self->stats;
    out->active = self->nrunning;
}
