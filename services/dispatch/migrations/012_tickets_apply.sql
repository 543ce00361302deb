-- dispatch 012: the consumer applies a batch of intake's ticket events in one statement
-- (issue 4, assignment latency at 500 tickets/s).
--
-- dispatch.ticket_apply() (002) runs once per event: with its hooks about 12 statements for
-- a new ticket (the ticket, its history, the SLA policy, three clocks, the assignment
-- queue, the notifications), 4 for a status change, each with its own executor start-up.
-- At 500 tickets/s every ticket brings two events (ticket.created, then the status change
-- its diagnosis assignment causes), and ticket_apply was the largest user of dispatch's
-- database time. dispatch.tickets_apply() takes the consumer's whole batch (parameter n is
-- the array of ticket_apply's parameter n over the batch's events, in stream order) and
-- applies the two common kinds set-based:
--   new       the ticket is new to dispatch, appears once in the batch, and opens in a
--             status whose clocks run (new): the ticket, its history row, a clock per
--             target of its policy (dispatch.sla_policy_for), a diagnosis request in the
--             assignment queue — exactly what ticket_apply and the hooks of 003 and 009 do
--             for it;
--   plain     a known ticket, once in the batch, at a newer version, whose priority, tier,
--             category and clock phase stay, that neither closes nor reopens: the row and
--             (when the status moved) a history row — the hooks do nothing for it;
-- and hands every other event (a ticket seen twice in the batch, an old version, a move
-- that closes, reopens, pauses or changes the priority) to dispatch.ticket_apply(), in
-- stream order. A migration that changes what the hooks do for one of the two kinds must
-- change this function too.
-- What differs from one ticket_apply() per event: within one batch, the new tickets'
-- queue entries (and clock ids) come before those of tickets handled one by one, so of
-- two equal-priority tickets queued in the same transaction the one created first may be
-- served second; notifications are the same set (PostgreSQL sends each once per
-- transaction) in another order. Two instances of the consumer applying overlapping
-- batches can deadlock on new tickets (set-based and one-by-one inserts in different
-- orders); the consumer retries a deadlock, and one of them then finds the checkpoint
-- moved.
CREATE FUNCTION dispatch.tickets_apply(
    p_id uuid[], p_number text[], p_version bigint[], p_priority text[], p_category text[],
    p_customer_id uuid[], p_tier text[], p_model text[], p_region text[], p_status text[],
    p_in_warranty boolean[], p_opened_at timestamptz[], p_updated_at timestamptz[])
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_kind text[];
    n_new int;
    v_unmatched text[];
    i int;
BEGIN
    -- (in id order: another instance of the consumer locks the same tickets the same way;
    -- nothing else locks dispatch.tickets in a conflicting mode)
    PERFORM 1 FROM dispatch.tickets t WHERE t.id = ANY (p_id) ORDER BY t.id FOR NO KEY UPDATE;

    SELECT array_agg(k.kind ORDER BY k.ord) INTO v_kind
      FROM (SELECT e.ord,
                   CASE WHEN count(*) OVER (PARTITION BY e.id) > 1 THEN 'other'
                        WHEN o.id IS NULL AND dispatch.sla_phase(e.status) = 'running'
                             AND NOT dispatch.is_closed_status(e.status) THEN 'new'
                        WHEN o.id IS NOT NULL AND o.version < e.version
                             AND (o.priority, o.customer_tier, o.category,
                                  dispatch.sla_phase(o.status))
                                 IS NOT DISTINCT FROM
                                 (e.priority, e.tier, e.category, dispatch.sla_phase(e.status))
                             AND NOT dispatch.is_closed_status(e.status)
                             AND NOT dispatch.is_closed_status(o.status)
                             AND NOT (e.status = 'reopened'
                                      AND o.status IS DISTINCT FROM 'reopened')
                             THEN 'plain'
                        ELSE 'other' END AS kind
              FROM unnest(p_id, p_version, p_priority, p_category, p_tier, p_status)
                   WITH ORDINALITY AS e(id, version, priority, category, tier, status, ord)
              LEFT JOIN dispatch.tickets o ON o.id = e.id) k;

    WITH b AS MATERIALIZED (
        SELECT e.*
          FROM unnest(p_id, p_number, p_version, p_priority, p_category, p_customer_id, p_tier,
                      p_model, p_region, p_status, p_in_warranty, p_opened_at, p_updated_at,
                      v_kind)
               WITH ORDINALITY AS e(id, number, version, priority, category, customer_id, tier,
                                    model, region, status, in_warranty, opened_at, updated_at,
                                    kind, ord)
         WHERE e.kind IN ('new', 'plain')),
    -- new tickets: the row and its history
    new_rows AS (
        INSERT INTO dispatch.tickets
            (id, number, version, priority, category, customer_id, customer_tier,
             product_model, region, status, in_warranty, opened_at, updated_at)
        SELECT b.id, b.number, b.version, b.priority, b.category, b.customer_id, b.tier,
               b.model, b.region, b.status, b.in_warranty, b.opened_at, b.updated_at
          FROM b WHERE b.kind = 'new' ORDER BY b.ord
        -- (another instance inserted it meanwhile: its commit moved the checkpoint, so
        -- this transaction rolls back at consumer_advance() — not at a key violation,
        -- which the consumer would count against the event)
        ON CONFLICT (id) DO NOTHING
        RETURNING *),
    -- plain changes: the history (against the old status), then the row
    hist AS (
        INSERT INTO dispatch.ticket_status_history (ticket_id, version, status, at)
        SELECT b.id, b.version, b.status, b.updated_at
          FROM b LEFT JOIN dispatch.tickets o ON o.id = b.id
         WHERE b.kind = 'new' OR (b.kind = 'plain' AND o.status IS DISTINCT FROM b.status)
        ON CONFLICT DO NOTHING),
    plain AS (
        UPDATE dispatch.tickets x SET
            version = b.version, priority = b.priority, category = b.category,
            customer_id = b.customer_id, customer_tier = b.tier, product_model = b.model,
            region = b.region, status = b.status, in_warranty = b.in_warranty,
            updated_at = b.updated_at, seen_at = now()
          FROM b
         WHERE b.kind = 'plain' AND x.id = b.id),
    -- the SLA hook (009): the clocks of the ticket's policy, computed by the engine
    pol AS MATERIALIZED (
        SELECT t.id, t.opened_at, dispatch.sla_policy_for(ROW(t.*)::dispatch.tickets) AS p
          FROM new_rows t),
    clocks AS (
        INSERT INTO dispatch.sla_clocks (ticket_id, target, policy_id, started_at)
        SELECT pol.id, x.target, (pol.p).id, pol.opened_at
          FROM pol
         CROSS JOIN LATERAL (VALUES ('first_response', (pol.p).first_response_s),
                                    ('arrival', (pol.p).arrival_s),
                                    ('resolution', (pol.p).resolution_s)) AS x(target, s)
         WHERE (pol.p).id IS NOT NULL AND x.s IS NOT NULL
        ON CONFLICT (ticket_id, target) DO NOTHING
        RETURNING ticket_id),
    -- the assignment hook (003): a diagnosis request
    queued AS (
        INSERT INTO dispatch.assign_queue AS q
            (ticket_id, kind, mode, role, priority, reason, previous_engineer_id,
             correlation_id)
        SELECT b.id, 'diagnosis', NULL, dispatch.assign_role('diagnosis', NULL), b.priority,
               'ticket created', NULL, ''
          FROM b WHERE b.kind = 'new' ORDER BY b.ord
        ON CONFLICT (ticket_id, kind) DO UPDATE SET
            mode = EXCLUDED.mode, role = EXCLUDED.role, priority = EXCLUDED.priority,
            reason = EXCLUDED.reason,
            previous_engineer_id = coalesce(EXCLUDED.previous_engineer_id,
                                            q.previous_engineer_id),
            correlation_id = EXCLUDED.correlation_id, next_try_at = now(),
            unfilled_at = CASE WHEN q.role IS NOT DISTINCT FROM EXCLUDED.role
                               THEN q.unfilled_at END)
    SELECT (SELECT count(*) FROM new_rows),
           (SELECT array_agg(format('%s (%s, %s, %s)', b.number, b.priority, b.tier,
                                    b.category) ORDER BY b.ord)
              FROM b WHERE b.kind = 'new'
               AND NOT EXISTS (SELECT 1 FROM clocks c WHERE c.ticket_id = b.id))
      INTO n_new, v_unmatched;

    IF n_new > 0 THEN
        FOR i IN 1 .. coalesce(array_length(v_unmatched, 1), 0) LOOP
            RAISE WARNING 'sla: no active policy matches ticket %', v_unmatched[i];
        END LOOP;
        PERFORM pg_notify('dispatch_deadlines', ''); -- the engine computes the new clocks
        PERFORM pg_notify('dispatch_assign', '');
    END IF;

    -- the rest, one by one in stream order
    FOR i IN 1 .. coalesce(array_length(v_kind, 1), 0) LOOP
        IF v_kind[i] = 'other' THEN
            PERFORM dispatch.ticket_apply(p_id[i], p_number[i], p_version[i], p_priority[i],
                                          p_category[i], p_customer_id[i], p_tier[i],
                                          p_model[i], p_region[i], p_status[i],
                                          p_in_warranty[i], p_opened_at[i], p_updated_at[i]);
        END IF;
    END LOOP;
END
$$;
