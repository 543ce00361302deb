-- tests/bench/sla_load.sql — the SLA benchmark's loader (tests/bench/sla_load.sh), run by psql as
-- the superuser against a migrated dispatch schema. Two steps, chosen with -v step=...:
--
--   step=armed  -v deadlines=N   N armed clocks that will not fall due during the run (the
--               first of their levels 1 hour .. 30 days ahead): N/2 tickets, each with a
--               first_response and a resolution clock of 4 levels (warnings 0.5 and 0.75,
--               breach, escalation), as the engine leaves them once computed — each clock
--               is one armed deadline of the engine (its next level). Bulk, in one
--               transaction, with triggers off (session_replication_role = replica), as a
--               restore would; the engine meets them at its start-up load.
--   step=due    -v fire=F -v spread=S -v lead=L   F tickets of a benchmark policy (arrival
--               target 1 h, no warnings), each opened so that its breach falls due one after
--               the other from L s to L + S s from now (a compressed schedule). The clocks
--               are inserted to be computed, exactly as the hooks leave a new ticket's:
--               NOTIFY wakes the engine, which computes, saves and arms them. Prints
--               nothing; sla_load.sh reads the results from the view dispatch.sla_deadlines.
--
-- Every ticket and clock of the benchmark carries the product model 'BENCH' / 'BENCH-DUE'
-- on its ticket, so the results can be picked out.
\set ON_ERROR_STOP 1
SELECT :'step' = 'armed' AS is_armed \gset

\if :is_armed
BEGIN;
SET LOCAL session_replication_role = replica;
CREATE TEMP TABLE bench_t ON COMMIT DROP AS
SELECT gen_random_uuid() AS id, g AS n,
       now() - interval '1 minute' AS opened
  FROM generate_series(1, (:deadlines + 1) / 2) AS g;
INSERT INTO dispatch.tickets (id, number, version, priority, category, customer_tier,
                              product_model, region, status, in_warranty, opened_at, updated_at)
SELECT id, 'SV-20000101-' || lpad(n::text, 7, '0'), 1, 'P3', 'fault_repair', 'standard',
       'BENCH', 'bench', 'new', true, opened, opened
  FROM bench_t;
-- clock k of the whole set first falls due 1 h + (k * 7919 mod 30 days) ahead, so due order
-- and id order differ, as they do in life; its levels follow 1000 s apart
INSERT INTO dispatch.sla_clocks (id, ticket_id, target, policy_id, started_at, state, due_at,
                                 gen, computed_gen, levels, next_due_at)
SELECT x.id, x.ticket_id, x.target, x.policy_id, x.opened, 'running',
       x.first_due + interval '1000 seconds', 1, 1,
       (SELECT jsonb_agg(jsonb_build_object(
                   'id', x.id + l.k, 'level', l.level, 'fraction', l.fraction,
                   'due_us', dispatch.epoch_us(x.first_due + (l.k - 1) * interval '1000 seconds'),
                   'elapsed_s', 0, 'paused_s', 0, 'state', 'pending') ORDER BY l.k)
          FROM (VALUES (1, 'warning', 0.5), (2, 'warning', 0.75), (3, 'breach', 1.0),
                       (4, 'escalation', 1.5)) AS l(k, level, fraction)),
       x.first_due
  FROM (SELECT nextval('dispatch.sla_deadlines_id_seq') AS id, t.id AS ticket_id, c.target,
               p.id AS policy_id, t.opened,
               now() + interval '1 hour'
                     + ((((t.n::bigint * 2 + c.k) * 7919) % 2592000) * interval '1 second')
                   AS first_due
          FROM bench_t t
         CROSS JOIN (VALUES (0, 'first_response'), (1, 'resolution')) AS c(k, target)
         CROSS JOIN (SELECT id FROM dispatch.sla_policies WHERE name = 'default') AS p
         WHERE (t.n - 1) * 2 + c.k < :deadlines) x;
COMMIT;
ANALYZE dispatch.tickets;
ANALYZE dispatch.sla_clocks;
\else
BEGIN;
INSERT INTO dispatch.sla_policies (name, priority, customer_tier, category, arrival_s,
                                   warning_fractions, grace_s, business_time, calendar_id)
SELECT 'bench-due', 'P4', 'vip', 'training', 3600, '{}', 3600, false, k.id
  FROM dispatch.sla_calendars k WHERE k.name = '24x7'
ON CONFLICT DO NOTHING;
CREATE TEMP TABLE bench_d ON COMMIT DROP AS
SELECT gen_random_uuid() AS id, g AS n,
       now() + (:lead + (g - 1) * :spread::float8 / :fire) * interval '1 second' AS due
  FROM generate_series(1, :fire) AS g;
INSERT INTO dispatch.tickets (id, number, version, priority, category, customer_tier,
                              product_model, region, status, in_warranty, opened_at, updated_at)
SELECT id, 'SV-20000102-' || lpad(n::text, 7, '0'), 1, 'P4', 'training', 'vip',
       'BENCH-DUE', 'bench', 'new', true, due - interval '1 hour', now()
  FROM bench_d;
INSERT INTO dispatch.ticket_status_history (ticket_id, version, status, at)
SELECT id, 1, 'new', due - interval '1 hour' FROM bench_d;
INSERT INTO dispatch.sla_clocks (ticket_id, target, policy_id, started_at)
SELECT d.id, 'arrival', p.id, d.due - interval '1 hour'
  FROM bench_d d CROSS JOIN (SELECT id FROM dispatch.sla_policies WHERE name = 'bench-due') AS p;
SELECT pg_notify('dispatch_deadlines', '');
COMMIT;
\endif
