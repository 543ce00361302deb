-- intake 008: the batch functions always run their cached generic plan.
--
-- PL/pgSQL hands each statement to the plan cache, which makes a custom plan (planned
-- again with the parameters' values) for the first five calls of a session and then keeps
-- doing so whenever those custom plans looked cheaper than the generic one. For a batch of
-- one, unnest() of a one-element array makes every custom plan look cheaper, so such a
-- batch was planned afresh on every call: 2.4 ms for intake.create_tickets() of one
-- request against 1.1 ms with the generic plan, more than a batch of eight takes (pgbench
-- on one backend, BEGIN / create_tickets / outbox INSERT / COMMIT). Under a closed loop of
-- 16 clients, intake's batches alternate between 1 and 15 requests, so half of them paid
-- that. Migration 007 already makes the generic plan use the indexes whatever the
-- statistics say, which is what the custom plans were good for.

ALTER FUNCTION intake.create_tickets(text[], text[], text[], text[], text[], text[], text[],
                                     text[], text[], text[], text[], text[], text[], text[],
                                     text[])
    SET plan_cache_mode = force_generic_plan;

ALTER FUNCTION intake.follow_take(int) SET plan_cache_mode = force_generic_plan;
