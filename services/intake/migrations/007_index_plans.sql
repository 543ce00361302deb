-- intake 007: the create batch and the follow applier look rows up by index, whatever the
-- statistics say (the same reasoning as dispatch 020).
--
-- PL/pgSQL keeps one generic plan per statement and session, made the first time the
-- statement runs: on a young database, with tables that have never been analyzed. A
-- generic plan counts 10 or 100 rows for unnest() of an array parameter where a batch
-- holds 1 to 16, so a full scan into a hash looks cheaper than the index probes.
-- auto_explain over tests/bench/intake.sh showed every create batch scanning the whole of
-- intake.customers, intake.products and intake.idempotency_keys, and the follow applier
-- (tests/bench/assignment.sh) scanning intake.tickets (2,400 rows) and the inbox; such a
-- plan stays until autovacuum happens to analyze the table, and a table that rarely
-- changes (customers, products) keeps growing under it. Each request touches a few rows
-- keyed by what it names: nested loops over index probes are right at every size.
-- (follow.c sets the same for the rest of the applier's transaction.)

ALTER FUNCTION intake.create_tickets(text[], text[], text[], text[], text[], text[], text[],
                                     text[], text[], text[], text[], text[], text[], text[],
                                     text[])
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off;

ALTER FUNCTION intake.follow_take(int)
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off;
