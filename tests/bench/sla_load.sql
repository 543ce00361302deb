-- tests/bench/sla_load.sql — the SLA benchmark's loader (tests/bench/sla_load.sh), run by psql as
-- the superuser against a migrated dispatch schema. Two steps, chosen with -v step=...:
--
--   step=armed  -v deadlines=N   N armed deadlines that will not fall due during the run
--               (1 hour .. 30 days ahead): N/8 tickets, each with a first_response and a
--               resolution clock of 4 levels (warnings 0.5 and 0.75, breach, escalation) —
--               the rows a million open clocks leave behind. Bulk, in one transaction,
--               with triggers off (session_replication_role = replica: no change queue, no
--               foreign-key checks on rows that are known to be right), as a restore would;
--               the engine meets them at its start-up load.
--   step=due    -v fire=F -v spread=S -v lead=L   F tickets, each with an arrival clock and
--               one breach deadline, due one after the other from L s to L + S s from now
--               (a compressed schedule). Normal inserts: the trigger queues the changes and
--               NOTIFY wakes the engine, exactly as when the hooks write deadlines. Prints
--               nothing; sla_load.sh reads the results from dispatch.sla_deadlines.
--
-- Every ticket, clock and deadline of the benchmark carries the product model 'BENCH' /
-- 'BENCH-DUE' on its ticket, so the results can be picked out.
\set ON_ERROR_STOP 1
SELECT :'step' = 'armed' AS is_armed \gset

\if :is_armed
BEGIN;
SET LOCAL session_replication_role = replica;
CREATE TEMP TABLE bench_t ON COMMIT DROP AS
SELECT gen_random_uuid() AS id, g AS n,
       now() - interval '1 minute' AS opened
  FROM generate_series(1, (:deadlines + 7) / 8) AS g;
INSERT INTO dispatch.tickets (id, number, version, priority, category, customer_tier,
                              product_model, region, status, in_warranty, opened_at, updated_at)
SELECT id, 'SV-20000101-' || lpad(n::text, 7, '0'), 1, 'P3', 'fault_repair', 'standard',
       'BENCH', 'bench', 'new', true, opened, opened
  FROM bench_t;
INSERT INTO dispatch.sla_clocks (ticket_id, target, policy_id, started_at, state, due_at, gen,
                                 computed_gen)
SELECT t.id, c.target, p.id, t.opened, 'running', t.opened + interval '30 days', 1, 1
  FROM bench_t t
 CROSS JOIN (VALUES ('first_response'), ('resolution')) AS c(target)
 CROSS JOIN (SELECT id FROM dispatch.sla_policies WHERE name = 'default') AS p;
-- 8 deadlines a ticket; row k of the whole set is due 1 h + (k * 7919 mod 30 days) ahead,
-- so due order and id order differ, as they do in life
INSERT INTO dispatch.sla_deadlines (ticket_id, target, level, fraction, due_at)
SELECT t.id, l.target, l.level, l.fraction,
       now() + interval '1 hour'
             + ((((t.n::bigint * 8 + l.k) * 7919) % 2592000) * interval '1 second')
  FROM bench_t t
 CROSS JOIN (VALUES (0, 'first_response', 'warning', 0.5), (1, 'first_response', 'warning', 0.75),
                    (2, 'first_response', 'breach', 1.0), (3, 'first_response', 'escalation', 1.5),
                    (4, 'resolution', 'warning', 0.5), (5, 'resolution', 'warning', 0.75),
                    (6, 'resolution', 'breach', 1.0), (7, 'resolution', 'escalation', 1.5))
       AS l(k, target, level, fraction)
 WHERE (t.n - 1) * 8 + l.k < :deadlines;
COMMIT;
ANALYZE dispatch.tickets;
ANALYZE dispatch.sla_clocks;
ANALYZE dispatch.sla_deadlines;
\else
BEGIN;
CREATE TEMP TABLE bench_d ON COMMIT DROP AS
SELECT gen_random_uuid() AS id, g AS n, now() AS opened,
       now() + (:lead + (g - 1) * :spread::float8 / :fire) * interval '1 second' AS due
  FROM generate_series(1, :fire) AS g;
INSERT INTO dispatch.tickets (id, number, version, priority, category, customer_tier,
                              product_model, region, status, in_warranty, opened_at, updated_at)
SELECT id, 'SV-20000102-' || lpad(n::text, 7, '0'), 1, 'P3', 'fault_repair', 'standard',
       'BENCH-DUE', 'bench', 'new', true, opened, opened
  FROM bench_d;
INSERT INTO dispatch.sla_clocks (ticket_id, target, policy_id, started_at, state, due_at, gen,
                                 computed_gen)
SELECT d.id, 'arrival', p.id, d.opened, 'running', d.due, 1, 1
  FROM bench_d d CROSS JOIN (SELECT id FROM dispatch.sla_policies WHERE name = 'default') AS p;
INSERT INTO dispatch.sla_deadlines (ticket_id, target, level, fraction, due_at, elapsed_s)
SELECT id, 'arrival', 'breach', 1.0, due, extract(epoch FROM due - opened)::bigint
  FROM bench_d;
COMMIT;
\endif
