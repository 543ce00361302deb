-- dispatch 020: the functions on every new ticket's path look rows up by index, whatever
-- the statistics say (issue 4, assignment latency at 500 tickets/s).
--
-- PL/pgSQL keeps a generic plan per statement and session. A generic plan knows nothing of
-- the batch: it counts 100 rows for unnest() of an array parameter and 33 for the
-- decisions' JSON array, where a batch holds 1 to 10. Against tables of a few thousand rows
-- that makes a full scan into a hash join look cheaper than 100 index probes: auto_explain
-- at 500 tickets/s (tests/bench/assignment.sh, BENCH_PG_LOG_MS=1, 20 s) caught
--   - tickets_apply's first statement scanning all of dispatch.tickets (10,709 rows,
--     2.4 ms) to find the batch's 3 tickets,
--   - assign_take's answer scanning dispatch.tickets (2,461 rows, 1.4 ms),
--   - assign_apply's guarded load update scanning all 1,000 engineers (0.2-1.9 ms) for 6,
-- in a third of the logged calls, and not in the others: the plan changes whenever
-- autovacuum analyzes a table, so the same build's latency changed from run to run.
-- The batches' statements join batch-sized sets to tables keyed by what the batch holds:
-- nested loops over index probes are right at every size, so the three functions plan
-- without sequential scans, hash joins or merge joins (the SLA engine's batches have done
-- the same since 004).

ALTER FUNCTION dispatch.tickets_apply(uuid[], text[], bigint[], text[], text[], uuid[], text[],
                                      text[], text[], text[], boolean[], timestamptz[],
                                      timestamptz[], jsonb[])
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off;

ALTER FUNCTION dispatch.assign_apply(jsonb)
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off;

ALTER FUNCTION dispatch.assign_take(int, text[], timestamptz)
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off;
