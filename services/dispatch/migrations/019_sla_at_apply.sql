-- dispatch 019: a new ticket's SLA clocks are inserted computed (issue 4, assignment
-- latency at 500 tickets/s).
--
-- Until now dispatch.tickets_apply() (012) inserted a new ticket's clocks dirty
-- (computed_gen 0); the engine then read them back (dispatch.sla_dirty), computed their
-- levels in C and updated each row (dispatch.sla_save): two more statements per batch, a
-- second version of every clock row (not a HOT update: five indexes), and about 14 % of
-- PostgreSQL's time at 500 tickets/s. A new ticket's clocks need nothing the consumer
-- does not have: its policy, the policy's calendar, and a history of one status. So the
-- consumer (tickets.c, through sla.c) now proposes, for each ticket.created event, the
-- policy it chose from its cache of the active policies (id and version), the version of
-- that policy's calendar, and each clock computed: {"policy_id", "policy_version",
-- "calendar_version", "clocks": {"<target>": {"id", "due_us", "next_us", "levels"}}}. The
-- clock ids come from the sequence, reserved ahead by the engine
-- (dispatch.sla_reserve_ids()), so that the levels carry their final ids and the engine
-- can arm the clocks after the consumer's commit without asking. The insert takes a
-- proposal only when dispatch.sla_policy_for() picks that same policy at that same
-- version and the calendar is at that version; anything else — no proposal, a stale
-- cache, a target the proposal lacks — is inserted dirty as before (with an id of its
-- own), and the engine computes it. Arming a proposed clock that was not inserted arms
-- nothing: dispatch.sla_fire() finds no such clock at that version.

DROP FUNCTION dispatch.tickets_apply(uuid[], text[], bigint[], text[], text[], uuid[], text[],
                                     text[], text[], text[], boolean[], timestamptz[],
                                     timestamptz[]);

-- The same as 012, with p_sla (one proposal or NULL per event) and the clocks inserted
-- computed when their proposal holds.
CREATE FUNCTION dispatch.tickets_apply(
    p_id uuid[], p_number text[], p_version bigint[], p_priority text[], p_category text[],
    p_customer_id uuid[], p_tier text[], p_model text[], p_region text[], p_status text[],
    p_in_warranty boolean[], p_opened_at timestamptz[], p_updated_at timestamptz[],
    p_sla jsonb[])
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_kind text[];
    n_new int;
    n_dirty int;
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
                      v_kind, p_sla)
               WITH ORDINALITY AS e(id, number, version, priority, category, customer_id, tier,
                                    model, region, status, in_warranty, opened_at, updated_at,
                                    kind, sla, ord)
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
    -- the SLA hook (009): the clocks of the ticket's policy, computed by the consumer when
    -- its proposal holds, else left to the engine
    pol AS MATERIALIZED (
        SELECT t.id, t.opened_at, dispatch.sla_policy_for(ROW(t.*)::dispatch.tickets) AS p,
               nb.sla
          FROM new_rows t JOIN b nb ON nb.id = t.id),
    prop AS MATERIALIZED (
        SELECT pol.id, pol.opened_at, pol.p,
               CASE WHEN pol.sla IS NOT NULL
                         AND (pol.p).id = (pol.sla->>'policy_id')::uuid
                         AND (pol.p).version = (pol.sla->>'policy_version')::bigint
                         AND (SELECT k.version FROM dispatch.sla_calendars k
                               WHERE k.id = (pol.p).calendar_id)
                             = (pol.sla->>'calendar_version')::bigint
                    THEN pol.sla->'clocks' END AS clocks
          FROM pol
         WHERE (pol.p).id IS NOT NULL),
    clocks AS (
        INSERT INTO dispatch.sla_clocks
            (id, ticket_id, target, policy_id, started_at, computed_gen, due_at, levels,
             next_due_at)
        SELECT coalesce((q.c->>'id')::bigint, nextval('dispatch.sla_deadlines_id_seq')),
               q.id, q.target, (q.p).id, q.opened_at,
               CASE WHEN q.c IS NULL THEN 0 ELSE 1 END,
               dispatch.from_epoch_us((q.c->>'due_us')::bigint),
               coalesce(q.c->'levels', '[]'),
               dispatch.from_epoch_us((q.c->>'next_us')::bigint)
          FROM (SELECT prop.id, prop.p, prop.opened_at, x.target, prop.clocks->x.target AS c
                  FROM prop
                 CROSS JOIN LATERAL (VALUES ('first_response', (prop.p).first_response_s),
                                            ('arrival', (prop.p).arrival_s),
                                            ('resolution', (prop.p).resolution_s))
                                    AS x(target, s)
                 WHERE x.s IS NOT NULL) AS q
        ON CONFLICT (ticket_id, target) DO NOTHING
        RETURNING ticket_id, computed_gen),
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
           (SELECT count(*) FROM clocks c WHERE c.computed_gen = 0),
           (SELECT array_agg(format('%s (%s, %s, %s)', b.number, b.priority, b.tier,
                                    b.category) ORDER BY b.ord)
              FROM b WHERE b.kind = 'new'
               AND NOT EXISTS (SELECT 1 FROM clocks c WHERE c.ticket_id = b.id))
      INTO n_new, n_dirty, v_unmatched;

    IF n_new > 0 THEN
        FOR i IN 1 .. coalesce(array_length(v_unmatched, 1), 0) LOOP
            RAISE WARNING 'sla: no active policy matches ticket %', v_unmatched[i];
        END LOOP;
        IF n_dirty > 0 THEN
            PERFORM pg_notify('dispatch_deadlines', ''); -- the engine computes them
        END IF;
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

-- The consumer's cache of policies (sla.c): every active policy with its selectors,
-- targets and version, and the calendars they use ({"<id>": {"version", "calendar"}}, as
-- dispatch.sla_state() gives them).
CREATE FUNCTION dispatch.sla_policy_cache() RETURNS json
    LANGUAGE sql STABLE AS $$
    SELECT dispatch.ok(200, jsonb_build_object(
        'policies', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                       'id', p.id, 'version', p.version, 'priority', p.priority,
                       'customer_tier', p.customer_tier, 'category', p.category,
                       'targets', jsonb_build_object('first_response', p.first_response_s,
                                                     'arrival', p.arrival_s,
                                                     'resolution', p.resolution_s),
                       'grace_s', p.grace_s, 'business_time', p.business_time,
                       'calendar_id', p.calendar_id,
                       'fractions', to_jsonb(p.warning_fractions)) ORDER BY p.id)
              FROM dispatch.sla_policies p WHERE p.active), '[]'),
        'calendars', coalesce((
            SELECT jsonb_object_agg(k.id, jsonb_build_object('version', k.version,
                                                             'calendar', k.calendar))
              FROM dispatch.sla_calendars k
             WHERE k.id IN (SELECT p.calendar_id FROM dispatch.sla_policies p
                             WHERE p.active)), '{}')))
$$;

-- Clock ids for the consumer's proposals (sla.c keeps a pool): {"ids": [...]}.
CREATE FUNCTION dispatch.sla_reserve_ids(p_n int) RETURNS json
    LANGUAGE sql VOLATILE AS $$
    SELECT dispatch.ok(200, jsonb_build_object('ids', coalesce(
        (SELECT jsonb_agg(nextval('dispatch.sla_deadlines_id_seq'))
           FROM generate_series(1, least(greatest(p_n, 0), 10000))), '[]')))
$$;
