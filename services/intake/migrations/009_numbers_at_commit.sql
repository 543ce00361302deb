-- intake 009: a create batch can take its ticket numbers without holding the day's counter
-- row from its first round trip to its commit.
--
-- Until now intake.create_tickets() added the batch's count to intake.daily_counters at
-- once, and the row stayed locked until the batch committed: its second round trip (the
-- events, COMMIT), intake's work between the two and the disk flush. A second batch could
-- only wait, so creates ran one batch at a time. On the database alone (pgbench, batches of
-- 8, BEGIN / create_tickets / outbox INSERT / COMMIT), two clients made 6,308 tickets/s
-- with the counter row and 10,484/s without it.
--
-- Now the caller may name the batch's first number (settings intake.number_next and
-- intake.number_day, local to the transaction; 'read' = the counter's value + 1): the
-- function then numbers from there without touching the counter, and the caller claims the
-- numbers with intake.numbers_claim() in the same transaction just before COMMIT. The claim
-- moves the counter only from exactly the number before the batch's first, so numbers
-- stay gap-free per day: a batch whose numbers were not next (one before it failed, or
-- another writer took them) fails with SQLSTATE 40001 and changes nothing. The counter
-- row is then locked only from the claim to the commit. Without the settings the function
-- behaves as before (intake's single-request path and any other caller).

CREATE OR REPLACE FUNCTION intake.create_tickets(
    p_idem_key text[], p_request_hash text[], p_customer_id text[], p_product_id text[],
    p_channel text[], p_category text[], p_description text[], p_occurred_at text[],
    p_urgency text[], p_expedite text[], p_priority_standard text[], p_priority_vip text[],
    p_contact text[], p_attachments text[], p_actor text[])
RETURNS TABLE (idx int, r_status text, r_field text, r_message text, r_doc json)
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    v_next text := current_setting('intake.number_next', true);
    v_day date := (now() AT TIME ZONE 'UTC')::date;
    v_first bigint; -- NULL: number under the counter row's lock, as before
BEGIN
IF coalesce(v_next, '') <> '' THEN
    IF v_next <> 'read' AND current_setting('intake.number_day', true) = v_day::text THEN
        v_first := v_next::bigint;
    ELSE
        v_first := coalesce((SELECT d.last FROM intake.daily_counters d WHERE d.day = v_day), 0)
                   + 1;
    END IF;
END IF;
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
locked AS (
    INSERT INTO intake.daily_counters AS d (day, last)
    SELECT v_day, count(*) FROM ok HAVING count(*) > 0 AND v_first IS NULL
    ON CONFLICT (day) DO UPDATE SET last = d.last + excluded.last
    RETURNING d.day, d.last
),
-- x.last: the number of the batch's last new ticket
ctr AS (
    SELECT l.day, l.last FROM locked l
    UNION ALL
    SELECT v_day, v_first - 1 + count(*) FROM ok HAVING count(*) > 0 AND v_first IS NOT NULL
),
-- in key order: two batches in flight claiming the same keys wait for each other in the
-- same order, never in a deadlock
keys AS (
    INSERT INTO intake.idempotency_keys (key, request_hash, ticket_id)
    SELECT o.k, o.h, o.tid FROM ok o WHERE o.k IS NOT NULL ORDER BY o.k
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


-- Claims numbers p_first..p_last of day p_day for the calling transaction: they must be the
-- next ones. Waits for a transaction that claimed the numbers before them (or created the
-- day's row); 40001 when they are not next (nothing is changed then).
CREATE FUNCTION intake.numbers_claim(p_day date, p_first bigint, p_last bigint)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_first < 1 OR p_last < p_first THEN
        RAISE EXCEPTION 'ticket numbers % to %: not a range', p_first, p_last
            USING ERRCODE = '22023';
    END IF;
    UPDATE intake.daily_counters SET last = p_last WHERE day = p_day AND last = p_first - 1;
    IF FOUND THEN
        RETURN;
    END IF;
    -- No such row in sight: the day's first batch may still be committing it. This insert
    -- waits for that batch, then conflicts; or it makes the row (at 0) for the first batch.
    INSERT INTO intake.daily_counters (day, last) VALUES (p_day, 0) ON CONFLICT (day) DO NOTHING;
    UPDATE intake.daily_counters SET last = p_last WHERE day = p_day AND last = p_first - 1;
    IF FOUND THEN
        RETURN;
    END IF;
    RAISE EXCEPTION 'ticket numbers % to % of % are no longer the next ones', p_first, p_last,
        p_day USING ERRCODE = '40001';
END
$$;
