-- intake.create_tickets(), corrected: within a batch an Idempotency-Key is bound by the
-- first request that actually creates a ticket, as when the requests run one by one
-- (002 also counted requests that were rejected, and refused a later valid request with
-- idempotency_key_reused although the key had never been bound).
CREATE OR REPLACE FUNCTION intake.create_tickets(
    p_idem_key text[], p_request_hash text[], p_customer_id text[], p_product_id text[],
    p_channel text[], p_category text[], p_description text[], p_occurred_at text[],
    p_urgency text[], p_expedite text[], p_priority_standard text[], p_priority_vip text[],
    p_contact text[], p_attachments text[], p_actor text[])
RETURNS TABLE (idx int, r_status text, r_field text, r_message text, r_doc json)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
-- PL/pgSQL caches this statement's plan per session; a LANGUAGE sql function would plan
-- it again on every call (a third of the cost).
RETURN QUERY
WITH req AS (
    SELECT u.ord::int AS idx, u.k, u.h, u.c::uuid AS c, u.p::uuid AS p, u.ch, u.cat, u.d,
           coalesce(u.o::timestamptz, now()) AS occ, u.u, u.x::boolean AS x, u.ps, u.pv,
           u.ct::json AS ct, u.a::json AS a, u.ac
      FROM unnest(p_idem_key, p_request_hash, p_customer_id, p_product_id, p_channel,
                  p_category, p_description, p_occurred_at, p_urgency, p_expedite,
                  p_priority_standard, p_priority_vip, p_contact, p_attachments, p_actor)
           WITH ORDINALITY AS u(k, h, c, p, ch, cat, d, o, u, x, ps, pv, ct, a, ac, ord)
),
chk AS MATERIALIZED (
    SELECT r.*, cu.id IS NOT NULL AS has_customer, cu.tier, cu.name AS cu_name,
           cu.phone AS cu_phone, cu.email AS cu_email,
           pr.id IS NOT NULL AS has_product, pr.customer_id AS pr_customer, pr.model,
           pr.purchase_date, w.months,
           ik.request_hash AS old_hash, ik.ticket_id AS old_id
      FROM req r
      LEFT JOIN intake.customers cu ON cu.id = r.c
      LEFT JOIN intake.products pr ON pr.id = r.p
      LEFT JOIN intake.warranty_policies w ON w.model = pr.model
      LEFT JOIN intake.idempotency_keys ik ON ik.key = r.k
),
-- Each request's outcome on its own, as if it ran alone after what committed before.
own AS MATERIALIZED (
    SELECT c.*,
           CASE WHEN c.old_hash IS NOT NULL AND c.old_hash <> c.h THEN 'idempotency_key_reused'
                WHEN c.old_hash IS NOT NULL THEN 'replayed'
                WHEN NOT c.has_customer THEN 'unknown_customer'
                WHEN c.p IS NOT NULL AND NOT c.has_product THEN 'unknown_product'
                WHEN c.p IS NOT NULL AND c.pr_customer <> c.c THEN 'foreign_product'
                WHEN c.p IS NOT NULL AND (c.occ AT TIME ZONE 'UTC')::date < c.purchase_date
                    THEN 'before_purchase'
                ELSE 'ok' END AS st0,
           CASE WHEN c.months IS NOT NULL
                THEN (c.purchase_date + make_interval(months => c.months))::date END AS w_expires
      FROM chk c
),
-- The first request of the batch that would create a ticket with a given key binds it.
first_use AS (
    SELECT DISTINCT ON (o.k) o.k, o.idx, o.h
      FROM own o
     WHERE o.k IS NOT NULL AND o.st0 = 'ok'
     ORDER BY o.k, o.idx
),
-- Later requests with that key see it bound, exactly as if the batch ran one by one:
-- same body -> replay of the new ticket, other body -> idempotency_key_reused. Requests
-- before the first use, and rejected ones that came first, keep their own outcome.
cls AS MATERIALIZED (
    SELECT o.*,
           CASE WHEN f.k IS NULL OR o.st0 IN ('replayed', 'idempotency_key_reused') THEN o.st0
                WHEN f.idx = o.idx THEN 'ok'
                WHEN f.idx < o.idx AND f.h <> o.h THEN 'idempotency_key_reused'
                WHEN f.idx < o.idx THEN 'replayed_batch'
                ELSE o.st0 END AS st
      FROM own o
      LEFT JOIN first_use f ON f.k = o.k
),
ok AS MATERIALIZED (
    SELECT c.*, gen_random_uuid() AS tid, row_number() OVER (ORDER BY c.idx) AS n,
           count(*) OVER () AS cnt,
           coalesce((c.occ AT TIME ZONE 'UTC')::date <= c.w_expires, false) AS w_in
      FROM cls c
     WHERE c.st = 'ok'
),
ctr AS (
    INSERT INTO intake.daily_counters AS d (day, last)
    SELECT (now() AT TIME ZONE 'UTC')::date, count(*) FROM ok HAVING count(*) > 0
    ON CONFLICT (day) DO UPDATE SET last = d.last + excluded.last
    RETURNING d.day, d.last
),
keys AS (
    INSERT INTO intake.idempotency_keys (key, request_hash, ticket_id)
    SELECT o.k, o.h, o.tid FROM ok o WHERE o.k IS NOT NULL
),
ins AS (
    INSERT INTO intake.tickets AS t (
        id, number, customer_id, product_id, channel, category, description, occurred_at,
        urgency, expedite, priority, status, warranty_in, warranty_reason, warranty_expires,
        contact, attachments, version, created_at, updated_at)
    SELECT o.tid,
           'SV-' || to_char(x.day, 'YYYYMMDD') || '-'
               || CASE WHEN x.last - o.cnt + o.n < 1000000
                       THEN lpad((x.last - o.cnt + o.n)::text, 6, '0')
                       ELSE (x.last - o.cnt + o.n)::text END,
           o.c, o.p, o.ch, o.cat, o.d, o.occ, o.u, o.x,
           CASE WHEN o.tier = 'vip' THEN o.pv ELSE o.ps END, 'new', o.w_in,
           CASE WHEN o.p IS NULL THEN 'no product on the ticket'
                WHEN o.months IS NULL THEN 'no warranty policy for model ' || o.model
                WHEN o.w_in THEN 'covered until ' || to_char(o.w_expires, 'YYYY-MM-DD')
                ELSE 'expired on ' || to_char(o.w_expires, 'YYYY-MM-DD') END,
           o.w_expires,
           json_build_object('name', coalesce(o.ct ->> 'name', o.cu_name),
                             'phone', coalesce(o.ct ->> 'phone', o.cu_phone),
                             'email', coalesce(o.ct ->> 'email', o.cu_email)),
           coalesce(o.a, '[]'), 1, now(), now()
      FROM ok o CROSS JOIN ctr x
    RETURNING t.*
),
hist AS (
    INSERT INTO intake.ticket_status_history (ticket_id, seq, from_status, to_status, at, actor)
    SELECT o.tid, 1, NULL, 'new', now(), o.ac FROM ok o
)
SELECT c.idx,
       CASE c.st WHEN 'ok' THEN 'created'
                 WHEN 'replayed' THEN 'replayed'
                 WHEN 'replayed_batch' THEN 'replayed'
                 WHEN 'idempotency_key_reused' THEN 'idempotency_key_reused'
                 WHEN 'before_purchase' THEN 'invalid_field'
                 ELSE 'unknown_reference' END,
       CASE c.st WHEN 'idempotency_key_reused' THEN 'Idempotency-Key'
                 WHEN 'unknown_customer' THEN 'customer_id'
                 WHEN 'unknown_product' THEN 'product_id'
                 WHEN 'foreign_product' THEN 'product_id'
                 WHEN 'before_purchase' THEN 'occurred_at' END,
       CASE c.st WHEN 'idempotency_key_reused'
                     THEN 'this Idempotency-Key was used with a different request body'
                 WHEN 'unknown_customer' THEN 'no customer ' || c.c
                 WHEN 'unknown_product' THEN 'no product ' || c.p
                 WHEN 'foreign_product'
                     THEN 'product ' || c.p || ' does not belong to customer ' || c.c
                 WHEN 'before_purchase'
                     THEN 'occurred_at is before the product''s purchase date '
                          || to_char(c.purchase_date, 'YYYY-MM-DD') END,
       CASE c.st WHEN 'ok' THEN intake.ticket_doc(ROW(i.*)::intake.tickets, cu, pr)
                 WHEN 'replayed' THEN intake.ticket_doc_by_id(c.old_id)
                 WHEN 'replayed_batch' THEN intake.ticket_doc(ROW(fi.*)::intake.tickets, cu, pr)
       END
  FROM cls c
  LEFT JOIN ok o ON o.idx = c.idx
  LEFT JOIN ins i ON i.id = o.tid
  LEFT JOIN ok o1 ON c.st = 'replayed_batch' AND o1.k = c.k
  LEFT JOIN ins fi ON fi.id = o1.tid
  LEFT JOIN intake.customers cu ON cu.id = c.c
  LEFT JOIN intake.products pr ON pr.id = c.p
 ORDER BY c.idx;
END
$$;
