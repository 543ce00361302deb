-- dispatch 022: autovacuum's ANALYZE skips the wide JSON columns that no query filters on.
--
-- At 500 tickets/s (tests/bench/assignment.sh, log_autovacuum_min_duration = 0) autovacuum
-- analyzes every busy table of the database in one pass about 12 s into the load; in two
-- runs the slow assignments (over 50 ms) came 2-3 s after that pass, and with autovacuum
-- off a run had 3-9 of them against 0-135. Such a pass costs one core about 1.4 s. Analyzing
-- dispatch.assignments took 318 ms and dispatch.sla_clocks 230-320 ms of one of the two
-- cores (14,000 and 42,000 rows), most of it on the score breakdowns, funnels,
-- alternatives and "why" sentences of the assignments (180-490 bytes each) and on the
-- clocks' escalation levels (about 700 bytes): values that are read and written whole,
-- never searched, so their statistics steer no plan. Without them: 125 ms and 130-160 ms
-- (psql, ANALYZE of the same tables). Alternating runs with and without this, on a quiet
-- machine, showed no difference in the benchmark's p99 (none had a slow assignment).
ALTER TABLE dispatch.assignments
    ALTER COLUMN breakdown SET STATISTICS 0,
    ALTER COLUMN funnel SET STATISTICS 0,
    ALTER COLUMN alternatives SET STATISTICS 0,
    ALTER COLUMN why SET STATISTICS 0;
ALTER TABLE dispatch.sla_clocks ALTER COLUMN levels SET STATISTICS 0;
