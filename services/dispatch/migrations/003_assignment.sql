-- dispatch 003: assignment (issue 4, item 2) — who holds a ticket: a technical-support
-- owner for diagnosis from ticket.created on, and once a service plan is accepted the
-- engineer who does the work. docs/dispatch-api.md "## Assignment" is the user's view;
-- services/dispatch/assignment.c the worker's; score.h the filters and the score.
--
-- How a ticket gets an engineer:
--   1. A request waits in dispatch.assign_queue (one per ticket and kind): put there by
--      dispatch.assign_on_ticket() (a new ticket, a reopened one), dispatch.assign_request()
--      (a plan was accepted), a decline, or dispatch.redispatch() (SLA escalation), each
--      with pg_notify('dispatch_assign', '').
--   2. The worker takes due requests in batches (dispatch.assign_take: FOR UPDATE SKIP
--      LOCKED), picks engineers from its in-memory roster (filters and score in C), and
--      hands its picks to dispatch.assign_apply() in the same transaction, which re-checks
--      each pick under the engineer's load row lock (engineer version unchanged, available,
--      open jobs < capacity), stores the assignment with its score breakdown and returns
--      the ticket.assigned event — or keeps the request queued and returns ONE
--      assignment.unfilled alert per queue entry (unfilled_at), retrying every 30 s and
--      whenever capacity, an engineer or a shift changes.
--   3. The engineer accepts or declines (a decline queues the request again without that
--      engineer); a supervisor can assign or reassign with a reason; resolving, closing or
--      cancelling the ticket releases its assignments.
-- Capacity: dispatch.engineer_load.open_jobs counts each engineer's offered + accepted
-- assignments; every change goes through a guarded UPDATE of that row (open_jobs <
-- capacity), so concurrent transactions cannot overfill an engineer (a supervisor's
-- override may). Its trigger tells the worker each new value (NOTIFY 'load <id> <n>'),
-- and a trigger on dispatch.engineers tells it which engineer changed ('engineer <id>').

-- --- tables -----------------------------------------------------------------------------

CREATE TABLE dispatch.engineer_load (
    engineer_id  uuid PRIMARY KEY REFERENCES dispatch.engineers (id) ON DELETE CASCADE,
    open_jobs    int NOT NULL DEFAULT 0 CHECK (open_jobs >= 0), -- offered + accepted
    version      bigint NOT NULL DEFAULT 0  -- +1 on every change of open_jobs (the worker
                                            -- keeps the newest value it has seen)
);
INSERT INTO dispatch.engineer_load (engineer_id) SELECT id FROM dispatch.engineers;

CREATE TABLE dispatch.assignments (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq           bigserial NOT NULL UNIQUE,
    ticket_id     uuid NOT NULL REFERENCES dispatch.tickets (id),
    kind          text NOT NULL CHECK (kind IN ('diagnosis', 'work')),
    mode          text CHECK (mode IN ('remote', 'on_site', 'depot_repair', 'external_repair')),
    role          text,                  -- the role the kind (and mode) asks for; NULL: any
    engineer_id   uuid NOT NULL REFERENCES dispatch.engineers (id),
    state         text NOT NULL DEFAULT 'offered'
        CHECK (state IN ('offered', 'accepted', 'declined', 'replaced', 'released')),
    method        text NOT NULL CHECK (method IN ('auto', 'supervisor')),
    score         double precision,      -- auto: the total of the breakdown
    breakdown     jsonb NOT NULL DEFAULT '[]',  -- [ScoreTerm JSON]: name, value, weight, detail
    candidates    int NOT NULL DEFAULT 0,       -- engineers that passed every filter
    funnel        jsonb,                 -- engineers left after each filter (score.h)
    alternatives  jsonb NOT NULL DEFAULT '[]',  -- the next best: [{engineer_id, score}]
    why           text NOT NULL DEFAULT '',     -- "why this engineer", one sentence
    reason        text NOT NULL DEFAULT '',     -- why it was made (supervisor's reason, ...)
    is_override   boolean NOT NULL DEFAULT false, -- a supervisor overrode leave/capacity/role
    actor         text NOT NULL,         -- who decided: 'dispatch' or the token's name
    previous_engineer_id uuid,           -- who held it before (reassignment, decline)
    decided_by    text,                  -- who accepted or declined
    end_reason    text,                  -- decline reason, replacement or release reason
    ended_by      text,
    is_excluded   boolean NOT NULL DEFAULT false, -- never offer this ticket (kind) again
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    accepted_at   timestamptz,
    ended_at      timestamptz
);
-- at most one open (offered or accepted) assignment per ticket and kind
CREATE UNIQUE INDEX assignments_open ON dispatch.assignments (ticket_id, kind)
    WHERE state IN ('offered', 'accepted');
CREATE INDEX assignments_ticket ON dispatch.assignments (ticket_id, seq);
CREATE INDEX assignments_engineer ON dispatch.assignments (engineer_id, seq);

-- Requests waiting for an engineer: the visible queue (GET /v1/assignments/queue).
CREATE TABLE dispatch.assign_queue (
    id                   bigserial PRIMARY KEY,
    ticket_id            uuid NOT NULL REFERENCES dispatch.tickets (id),
    kind                 text NOT NULL CHECK (kind IN ('diagnosis', 'work')),
    mode                 text,
    role                 text,           -- NULL: any working role
    priority             text NOT NULL,  -- the ticket's, kept current (the queue's order)
    reason               text NOT NULL,  -- why it is queued
    previous_engineer_id uuid,
    correlation_id       text NOT NULL DEFAULT '',
    queued_at            timestamptz NOT NULL DEFAULT now(),
    next_try_at          timestamptz NOT NULL DEFAULT now(),
    tried_at             timestamptz,
    tries                int NOT NULL DEFAULT 0, -- tries that found nobody
    unfilled_at          timestamptz,    -- when assignment.unfilled was published (once)
    unfilled_reason      text,
    considered           int,            -- engineers with the role, at the last try
    UNIQUE (ticket_id, kind)
);
CREATE INDEX assign_queue_due ON dispatch.assign_queue (next_try_at);
-- a queue: every row is inserted, locked and deleted within moments
ALTER TABLE dispatch.assign_queue SET (autovacuum_vacuum_scale_factor = 0,
                                       autovacuum_vacuum_threshold = 2000,
                                       autovacuum_vacuum_cost_delay = 0);

-- --- the worker's wake-ups ----------------------------------------------------------------

CREATE FUNCTION dispatch.assign_engineer_changed() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO dispatch.engineer_load (engineer_id) VALUES (NEW.id) ON CONFLICT DO NOTHING;
    PERFORM pg_notify('dispatch_assign', 'engineer ' || NEW.id);
    RETURN NULL;
END
$$;
CREATE TRIGGER engineers_assign AFTER INSERT OR UPDATE ON dispatch.engineers
    FOR EACH ROW EXECUTE FUNCTION dispatch.assign_engineer_changed();

CREATE FUNCTION dispatch.assign_load_changed() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    PERFORM pg_notify('dispatch_assign', 'load ' || NEW.engineer_id || ' ' || NEW.open_jobs
                                         || ' ' || NEW.version);
    RETURN NEW;
END
$$;
CREATE TRIGGER engineer_load_notify BEFORE UPDATE ON dispatch.engineer_load
    FOR EACH ROW WHEN (OLD.open_jobs IS DISTINCT FROM NEW.open_jobs)
    EXECUTE FUNCTION dispatch.assign_load_changed();

-- --- small helpers ------------------------------------------------------------------------

CREATE FUNCTION dispatch.is_closed_status(s text) RETURNS boolean
    LANGUAGE sql IMMUTABLE AS $$
    SELECT s IN ('resolved', 'closed', 'cancelled')
$$;

-- The role a kind (and a plan's mode) asks for; NULL for work without a mode (any of the
-- three working roles).
CREATE FUNCTION dispatch.assign_role(p_kind text, p_mode text) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_kind = 'diagnosis' THEN 'technical_support'
                WHEN p_mode = 'remote' THEN 'technical_support'
                WHEN p_mode = 'on_site' THEN 'field_engineer'
                WHEN p_mode IN ('depot_repair', 'external_repair') THEN 'depot_technician'
           END
$$;

-- SLA slack of the ticket in seconds (the time to its next SLA deadline; <= 0: due or
-- breached), or NULL when unknown. A stub: the SLA engine (004) replaces it; until then
-- the score takes the ticket's priority as its urgency.
CREATE FUNCTION dispatch.sla_slack_seconds(p_ticket_id uuid) RETURNS bigint
    LANGUAGE sql STABLE AS $$ SELECT NULL::bigint $$;

-- Assignment (dispatch.proto) as ac_pbjson JSON.
CREATE FUNCTION dispatch.assignment_msg(a dispatch.assignments) RETURNS jsonb
    LANGUAGE sql STABLE AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object(
        'id', a.id, 'ticket_id', a.ticket_id, 'kind', 'ASSIGNMENT_KIND_' || upper(a.kind),
        'engineer_id', a.engineer_id, 'engineer_name', e.name,
        'engineer_role', 'ENGINEER_ROLE_' || upper(e.role),
        'state', 'ASSIGNMENT_STATE_' || upper(a.state), 'method', a.method,
        'score', a.score, 'breakdown', a.breakdown, 'candidates', a.candidates,
        'reason', coalesce(a.end_reason, a.reason), 'actor', a.actor,
        'created_at', dispatch.ts(a.created_at), 'updated_at', dispatch.ts(a.updated_at)))
      FROM dispatch.engineers e WHERE e.id = a.engineer_id
$$;

-- The assignment as the HTTP API shows it.
CREATE FUNCTION dispatch.assignment_doc(a dispatch.assignments) RETURNS jsonb
    LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', a.id, 'ticket_id', a.ticket_id,
        'ticket', (SELECT t.number FROM dispatch.tickets t WHERE t.id = a.ticket_id),
        'kind', a.kind, 'mode', a.mode, 'role', a.role,
        'engineer', jsonb_build_object('id', e.id, 'name', e.name, 'role', e.role),
        'state', a.state, 'method', a.method, 'score', a.score, 'breakdown', a.breakdown,
        'candidates', a.candidates, 'funnel', a.funnel, 'alternatives', a.alternatives,
        'why', a.why, 'reason', a.reason, 'override', a.is_override, 'actor', a.actor,
        'previous_engineer_id', a.previous_engineer_id, 'decided_by', a.decided_by,
        'end_reason', a.end_reason, 'ended_by', a.ended_by,
        'created_at', dispatch.ts(a.created_at), 'updated_at', dispatch.ts(a.updated_at),
        'accepted_at', dispatch.ts(a.accepted_at), 'ended_at', dispatch.ts(a.ended_at))
      FROM dispatch.engineers e WHERE e.id = a.engineer_id
$$;

CREATE FUNCTION dispatch.assign_queue_doc(q dispatch.assign_queue, t dispatch.tickets)
    RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'ticket', t.number, 'ticket_id', t.id, 'priority', t.priority,
        'customer_tier', t.customer_tier, 'product_model', t.product_model,
        'region', t.region, 'kind', q.kind, 'mode', q.mode, 'role', q.role,
        'reason', q.reason, 'previous_engineer_id', q.previous_engineer_id,
        'queued_at', dispatch.ts(q.queued_at),
        'waiting_s', floor(extract(epoch FROM now() - q.queued_at))::bigint,
        'tries', q.tries, 'next_try_at', dispatch.ts(q.next_try_at),
        'unfilled', q.unfilled_at IS NOT NULL, 'unfilled_since', dispatch.ts(q.unfilled_at),
        'unfilled_reason', q.unfilled_reason, 'considered', q.considered)
$$;

-- An event about assignment a of ticket t (AssignmentChanged).
CREATE FUNCTION dispatch.assignment_changed_event(p_topic text, t dispatch.tickets,
                                                  a dispatch.assignments, p_reason text)
    RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT dispatch.ticket_event(p_topic, t, 'assignment_changed',
                                 jsonb_strip_nulls(jsonb_build_object(
                                     'assignment', dispatch.assignment_msg(a),
                                     'reason', p_reason)))
$$;

-- Ends open assignment a: state p_state (declined, replaced, released), frees the
-- engineer's capacity. p_exclude: never offer this ticket (kind) to that engineer again.
CREATE FUNCTION dispatch.assign_end(a dispatch.assignments, p_state text, p_reason text,
                                    p_actor text, p_exclude boolean)
    RETURNS dispatch.assignments LANGUAGE plpgsql AS $$
DECLARE
    r dispatch.assignments;
BEGIN
    UPDATE dispatch.assignments x SET
        state = p_state, end_reason = p_reason, ended_by = p_actor, ended_at = now(),
        updated_at = now(), is_excluded = p_exclude,
        decided_by = CASE WHEN p_state = 'declined' THEN p_actor ELSE x.decided_by END
     WHERE x.id = a.id
    RETURNING * INTO r;
    UPDATE dispatch.engineer_load l SET open_jobs = greatest(l.open_jobs - 1, 0)
     WHERE l.engineer_id = a.engineer_id;
    RETURN r;
END
$$;

-- Queues a request for ticket t (one per ticket and kind: a second one updates the first)
-- and wakes the worker.
CREATE FUNCTION dispatch.assign_enqueue(t dispatch.tickets, p_kind text, p_mode text,
                                        p_reason text, p_previous uuid, p_correlation text)
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_role text := dispatch.assign_role(p_kind, p_mode);
BEGIN
    INSERT INTO dispatch.assign_queue AS q
        (ticket_id, kind, mode, role, priority, reason, previous_engineer_id, correlation_id)
    VALUES (t.id, p_kind, p_mode, v_role, t.priority, p_reason, p_previous,
            coalesce(p_correlation, ''))
    ON CONFLICT (ticket_id, kind) DO UPDATE SET
        mode = EXCLUDED.mode, role = EXCLUDED.role, priority = EXCLUDED.priority,
        reason = EXCLUDED.reason,
        previous_engineer_id = coalesce(EXCLUDED.previous_engineer_id, q.previous_engineer_id),
        correlation_id = EXCLUDED.correlation_id, next_try_at = now(),
        -- a different need is a new request: it may alert again
        unfilled_at = CASE WHEN q.role IS NOT DISTINCT FROM EXCLUDED.role
                           THEN q.unfilled_at END;
    PERFORM pg_notify('dispatch_assign', '');
END
$$;

-- Releases the open diagnosis assignment of ticket t (the work is requested or assigned);
-- returns its event, or NULL.
CREATE FUNCTION dispatch.assign_release_diagnosis(t dispatch.tickets, p_reason text,
                                                  p_actor text)
    RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    a dispatch.assignments;
BEGIN
    DELETE FROM dispatch.assign_queue WHERE ticket_id = t.id AND kind = 'diagnosis';
    SELECT * INTO a FROM dispatch.assignments
     WHERE ticket_id = t.id AND kind = 'diagnosis' AND state IN ('offered', 'accepted')
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    a := dispatch.assign_end(a, 'released', p_reason, p_actor, false);
    RETURN dispatch.assignment_changed_event('assignment.released', t, a, p_reason);
END
$$;

-- --- the hooks and functions other modules call (stubs in 002) ------------------------------

-- In the consumer's transaction, for every ticket change: a new ticket is queued for
-- diagnosis; a resolved, closed or cancelled one gives up its queue entries and open
-- assignments (assignment.released); a reopened one without an engineer is queued again,
-- with every engineer eligible again; a new priority reorders its queue entries.
CREATE OR REPLACE FUNCTION dispatch.assign_on_ticket(t dispatch.tickets, old dispatch.tickets)
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    a dispatch.assignments;
    v_events jsonb := '[]';
    v_reason text;
BEGIN
    IF dispatch.is_closed_status(t.status) THEN
        IF old.id IS NOT NULL AND dispatch.is_closed_status(old.status) THEN
            RETURN;
        END IF;
        v_reason := format('ticket %s', t.status);
        -- first the queue: it waits for a worker holding the entry, whose assignment
        -- the next statement then sees and releases
        DELETE FROM dispatch.assign_queue WHERE ticket_id = t.id;
        FOR a IN SELECT * FROM dispatch.assignments
                  WHERE ticket_id = t.id AND state IN ('offered', 'accepted')
                  ORDER BY engineer_id FOR UPDATE
        LOOP
            a := dispatch.assign_end(a, 'released', v_reason, 'dispatch', false);
            v_events := v_events || dispatch.assignment_changed_event('assignment.released', t,
                                                                      a, v_reason);
        END LOOP;
        PERFORM dispatch.emit(v_events);
        IF jsonb_array_length(v_events) > 0 THEN
            PERFORM pg_notify('dispatch_assign', '');
        END IF;
    ELSIF old.id IS NULL THEN
        PERFORM dispatch.assign_enqueue(t, 'diagnosis', NULL, 'ticket created', NULL, '');
    ELSIF old.priority IS DISTINCT FROM t.priority THEN
        UPDATE dispatch.assign_queue SET priority = t.priority WHERE ticket_id = t.id;
    ELSIF t.status = 'reopened' AND old.status IS DISTINCT FROM 'reopened'
          AND NOT EXISTS (SELECT 1 FROM dispatch.assignments x
                           WHERE x.ticket_id = t.id AND x.state IN ('offered', 'accepted'))
          AND NOT EXISTS (SELECT 1 FROM dispatch.assign_queue x WHERE x.ticket_id = t.id) THEN
        -- a new start: who declined it or was taken off it before may take it now
        UPDATE dispatch.assignments SET is_excluded = false
         WHERE ticket_id = t.id AND is_excluded;
        PERFORM dispatch.assign_enqueue(t, 'diagnosis', NULL, 'ticket reopened', NULL, '');
    END IF;
END
$$;

-- A plan was accepted (plans, 005): the ticket needs its work engineer (role by p_mode).
-- The diagnosis is done: its open assignment is released. An open work assignment of the
-- right role stays; one of another role is replaced.
CREATE OR REPLACE FUNCTION dispatch.assign_request(p_ticket_id uuid, p_kind text, p_mode text,
                                                   p_reason text)
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    t dispatch.tickets;
    a dispatch.assignments;
    v_role text := dispatch.assign_role(p_kind, p_mode);
    v_events jsonb := '[]';
    v_event jsonb;
BEGIN
    IF p_kind NOT IN ('diagnosis', 'work') OR (p_kind = 'work' AND v_role IS NULL) THEN
        RAISE EXCEPTION 'dispatch.assign_request: kind % with mode % asks for no role',
            p_kind, p_mode;
    END IF;
    SELECT * INTO t FROM dispatch.tickets WHERE id = p_ticket_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'dispatch.assign_request: no ticket %', p_ticket_id;
    END IF;
    IF dispatch.is_closed_status(t.status) THEN
        RETURN;
    END IF;
    IF p_kind = 'work' THEN
        v_event := dispatch.assign_release_diagnosis(t, 'diagnosis done: ' || p_reason,
                                                     'dispatch');
        IF v_event IS NOT NULL THEN
            v_events := v_events || v_event;
        END IF;
    END IF;
    SELECT * INTO a FROM dispatch.assignments
     WHERE ticket_id = t.id AND kind = p_kind AND state IN ('offered', 'accepted') FOR UPDATE;
    IF FOUND THEN
        IF a.role IS NOT DISTINCT FROM v_role AND a.mode IS NOT DISTINCT FROM p_mode THEN
            PERFORM dispatch.emit(v_events);
            RETURN; -- the engineer holding it fits the request
        END IF;
        a := dispatch.assign_end(a, 'replaced', p_reason, 'dispatch', false);
        v_events := v_events || dispatch.assignment_changed_event('assignment.released', t, a,
                                                                  p_reason);
    END IF;
    PERFORM dispatch.emit(v_events);
    PERFORM dispatch.assign_enqueue(t, p_kind, p_mode, p_reason, a.engineer_id, '');
END
$$;

-- SLA escalation (004): takes the ticket from the engineer holding it (work before
-- diagnosis) and queues it again without that engineer.
CREATE OR REPLACE FUNCTION dispatch.redispatch(p_ticket_id uuid, p_reason text)
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    t dispatch.tickets;
    a dispatch.assignments;
    v_reason text := 're-dispatch: ' || coalesce(p_reason, '');
BEGIN
    SELECT * INTO t FROM dispatch.tickets WHERE id = p_ticket_id;
    IF NOT FOUND OR dispatch.is_closed_status(t.status) THEN
        RETURN;
    END IF;
    SELECT * INTO a FROM dispatch.assignments
     WHERE ticket_id = t.id AND state IN ('offered', 'accepted')
     ORDER BY kind = 'work' DESC, seq DESC LIMIT 1 FOR UPDATE;
    IF NOT FOUND THEN
        UPDATE dispatch.assign_queue SET next_try_at = now() WHERE ticket_id = t.id;
        PERFORM pg_notify('dispatch_assign', '');
        RETURN;
    END IF;
    a := dispatch.assign_end(a, 'replaced', v_reason, 'dispatch', true);
    PERFORM dispatch.emit(jsonb_build_array(
        dispatch.assignment_changed_event('assignment.released', t, a, v_reason)));
    PERFORM dispatch.assign_enqueue(t, a.kind, a.mode, v_reason, a.engineer_id, '');
END
$$;

-- The engineer holding the ticket now (its work assignment before its diagnosis one).
CREATE OR REPLACE FUNCTION dispatch.current_engineer(p_ticket_id uuid)
    RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT engineer_id FROM dispatch.assignments
     WHERE ticket_id = p_ticket_id AND state IN ('offered', 'accepted')
     ORDER BY kind = 'work' DESC, seq DESC LIMIT 1
$$;

-- --- the worker ---------------------------------------------------------------------------

-- The roster: engineers p_ids (NULL: all) as compact arrays
-- [id, version, role, availability, capacity, open_jobs, regions, [[kind, name, level]],
--  shift, load version].
CREATE FUNCTION dispatch.assign_engineers(p_ids uuid[]) RETURNS json
    LANGUAGE sql STABLE SET jit = off AS $$
    SELECT coalesce(json_agg(json_build_array(
               e.id, e.version, e.role, e.availability, e.capacity,
               coalesce(l.open_jobs, 0), e.regions,
               (SELECT coalesce(json_agg(json_build_array(s.kind, s.name, s.level)), '[]')
                  FROM dispatch.engineer_skills s WHERE s.engineer_id = e.id),
               e.shift, coalesce(l.version, 0))), '[]')
      FROM dispatch.engineers e LEFT JOIN dispatch.engineer_load l ON l.engineer_id = e.id
     WHERE p_ids IS NULL OR e.id = ANY (p_ids)
$$;

-- The worker's batch: up to p_limit due requests, locked (SKIP LOCKED: several workers
-- share the queue), most urgent first; plus, when p_retry_roles is given, the unfilled
-- requests for those roles not yet tried since p_pass_start (capacity was freed, an
-- engineer changed or came on shift). Each with what the worker needs to choose.
CREATE FUNCTION dispatch.assign_take(p_limit int, p_retry_roles text[],
                                     p_pass_start timestamptz)
    RETURNS json LANGUAGE plpgsql
    SET jit = off -- a batch is a few milliseconds of work; compiling it would cost 30+
    AS $$
DECLARE
    v_ids bigint[];
BEGIN
    IF p_retry_roles IS NULL THEN
        SELECT array_agg(x.id) INTO v_ids FROM (
            SELECT q.id FROM dispatch.assign_queue q
             WHERE q.next_try_at <= now()
             ORDER BY q.priority, q.queued_at, q.id
             LIMIT p_limit FOR UPDATE SKIP LOCKED) x;
    ELSE
        SELECT array_agg(x.id) INTO v_ids FROM (
            SELECT q.id FROM dispatch.assign_queue q
             WHERE q.next_try_at <= now()
                OR (q.unfilled_at IS NOT NULL AND coalesce(q.role, '') = ANY (p_retry_roles)
                    AND (q.tried_at IS NULL OR q.tried_at < p_pass_start))
             ORDER BY q.priority, q.queued_at, q.id
             LIMIT p_limit FOR UPDATE SKIP LOCKED) x;
    END IF;
    IF v_ids IS NULL THEN
        RETURN '[]'::json;
    END IF;
    RETURN (
        SELECT json_agg(json_build_object(
                   'q', k.id, 'number', t.number, 'priority', t.priority,
                   'category', t.category, 'vip', t.customer_tier = 'vip',
                   'model', t.product_model, 'region', t.region, 'kind', k.kind,
                   'role', k.role, 'slack', dispatch.sla_slack_seconds(t.id),
                   'excluded', ARRAY(SELECT x.engineer_id FROM dispatch.assignments x
                                      WHERE x.ticket_id = k.ticket_id AND x.kind = k.kind
                                        AND x.is_excluded))
                   ORDER BY k.priority, k.queued_at, k.id)
          FROM dispatch.assign_queue k
          JOIN LATERAL (SELECT * FROM dispatch.tickets y WHERE y.id = k.ticket_id) t ON true
         WHERE k.id = ANY (v_ids));
END
$$;

-- The worker's decisions for the requests it took in this transaction, in its order:
--   [{"q": <queue id>, "choices": [{"engineer_id", "version", "score", "breakdown",
--     "why"}, ...best first], "candidates": n, "funnel": {...}, "reason": "<why nobody
--     fits>" (no choices), "considered": n}]
-- Each request gets the first choice that still fits (same version, available, open jobs
-- < capacity, checked in the guarded UPDATE of the load row, which locks it); none
-- fitting although there were choices (others were quicker): retried in 100 ms; no
-- choices at all: unfilled, alerted once, retried in 30 s. Returns ops.h's shape;
-- body.assigned = [{q, engineer_id}], body.loads = [[engineer_id, open_jobs, version]] of
-- the engineers it counted up. Set-based for the common case — every first choice
-- whose engineer still takes all the requests of the batch that picked them — and one
-- request at a time for the rest.
CREATE FUNCTION dispatch.assign_apply(p_decisions jsonb) RETURNS json
    LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    d jsonb;
    c jsonb;
    q dispatch.assign_queue;
    t dispatch.tickets;
    a dispatch.assignments;
    v_events jsonb;
    v_assigned jsonb;
    v_unfilled jsonb;
    v_loads jsonb;
    v_event jsonb;
    v_open int;
    v_version bigint;
BEGIN
    -- 1. nothing left to do: the ticket ended, or someone holds it already (a supervisor)
    -- (scalar subqueries: one index probe per request, whatever the tables' sizes)
    DELETE FROM dispatch.assign_queue aq
     USING jsonb_array_elements(p_decisions) AS x
     WHERE aq.id = (x->>'q')::bigint
       AND (dispatch.is_closed_status((SELECT tt.status FROM dispatch.tickets tt
                                        WHERE tt.id = aq.ticket_id))
            OR (SELECT true FROM dispatch.assignments y
                 WHERE y.ticket_id = aq.ticket_id AND y.kind = aq.kind
                   AND y.state IN ('offered', 'accepted') LIMIT 1));

    -- 2. the first choices, all at once, per engineer
    WITH dd AS (
        SELECT aq.*, x AS dec, x->'choices'->0 AS c0
          FROM jsonb_array_elements(p_decisions) AS x
          JOIN dispatch.assign_queue aq ON aq.id = (x->>'q')::bigint
         WHERE jsonb_array_length(coalesce(x->'choices', '[]')) > 0),
    want AS (
        SELECT (c0->>'engineer_id')::uuid AS engineer_id,
               max((c0->>'version')::bigint) AS version, count(*)::int AS n
          FROM dd GROUP BY 1),
    got AS (
        UPDATE dispatch.engineer_load l SET open_jobs = l.open_jobs + w.n
          FROM want w, dispatch.engineers e
         WHERE l.engineer_id = w.engineer_id AND e.id = w.engineer_id
           AND e.version = w.version AND e.availability = 'available'
           AND l.open_jobs + w.n <= e.capacity
        RETURNING l.engineer_id, l.open_jobs, l.version),
    ins AS (
        INSERT INTO dispatch.assignments
            (ticket_id, kind, mode, role, engineer_id, method, score, breakdown, candidates,
             funnel, alternatives, why, reason, actor, previous_engineer_id)
        SELECT dd.ticket_id, dd.kind, dd.mode, dd.role, got.engineer_id, 'auto',
               (dd.c0->>'score')::double precision, dd.c0->'breakdown',
               (dd.dec->>'candidates')::int, dd.dec->'funnel',
               coalesce((SELECT jsonb_agg(jsonb_build_object('engineer_id', o->'engineer_id',
                                                             'score', o->'score') ORDER BY n)
                           FROM jsonb_array_elements(dd.dec->'choices') WITH ORDINALITY AS y(o, n)
                          WHERE n > 1), '[]'),
               dd.c0->>'why', dd.reason, 'dispatch', dd.previous_engineer_id
          FROM dd JOIN got ON got.engineer_id = (dd.c0->>'engineer_id')::uuid
        RETURNING *),
    gone AS (
        DELETE FROM dispatch.assign_queue aq USING ins
         WHERE aq.ticket_id = ins.ticket_id AND aq.kind = ins.kind
        RETURNING aq.id, aq.ticket_id, aq.kind, aq.previous_engineer_id, aq.correlation_id)
    SELECT coalesce(jsonb_agg(
               dispatch.ticket_event('ticket.assigned', tt, 'ticket_assigned',
                   jsonb_strip_nulls(jsonb_build_object(
                       'assignment', dispatch.assignment_msg(ins::dispatch.assignments),
                       'previous_engineer_id', gone.previous_engineer_id)))
               || CASE WHEN gone.correlation_id <> ''
                       THEN jsonb_build_object('correlation_id', gone.correlation_id)
                       ELSE '{}' END
               ORDER BY ins.seq), '[]'),
           coalesce(jsonb_agg(jsonb_build_object('q', gone.id, 'engineer_id', ins.engineer_id)),
                    '[]'),
           (SELECT coalesce(jsonb_agg(jsonb_build_array(g.engineer_id, g.open_jobs, g.version)),
                            '[]') FROM got g)
      INTO v_events, v_assigned, v_loads
      FROM ins JOIN gone ON gone.ticket_id = ins.ticket_id AND gone.kind = ins.kind
      JOIN dispatch.tickets tt ON tt.id = ins.ticket_id;

    -- 3. the others with choices: one at a time, each choice in order
    FOR d IN SELECT x FROM jsonb_array_elements(p_decisions) AS x
              WHERE jsonb_array_length(coalesce(x->'choices', '[]')) > 0
                AND EXISTS (SELECT 1 FROM dispatch.assign_queue y
                             WHERE y.id = (x->>'q')::bigint) LOOP
        SELECT * INTO q FROM dispatch.assign_queue WHERE id = (d->>'q')::bigint;
        SELECT * INTO t FROM dispatch.tickets WHERE id = q.ticket_id;
        a := NULL;
        FOR c IN SELECT x FROM jsonb_array_elements(d->'choices') AS x LOOP
            UPDATE dispatch.engineer_load l SET open_jobs = l.open_jobs + 1
              FROM dispatch.engineers e
             WHERE l.engineer_id = (c->>'engineer_id')::uuid AND e.id = l.engineer_id
               AND e.version = (c->>'version')::bigint AND e.availability = 'available'
               AND l.open_jobs < e.capacity
            RETURNING l.open_jobs, l.version INTO v_open, v_version;
            IF FOUND THEN
                v_loads := v_loads || jsonb_build_array(jsonb_build_array(
                               c->>'engineer_id', v_open, v_version));
                INSERT INTO dispatch.assignments
                    (ticket_id, kind, mode, role, engineer_id, method, score, breakdown,
                     candidates, funnel, alternatives, why, reason, actor,
                     previous_engineer_id)
                VALUES (q.ticket_id, q.kind, q.mode, q.role, (c->>'engineer_id')::uuid, 'auto',
                        (c->>'score')::double precision, c->'breakdown',
                        (d->>'candidates')::int, d->'funnel',
                        coalesce((SELECT jsonb_agg(jsonb_build_object(
                                      'engineer_id', o->'engineer_id', 'score', o->'score')
                                      ORDER BY n)
                                    FROM jsonb_array_elements(d->'choices')
                                         WITH ORDINALITY AS y(o, n)
                                   WHERE o->>'engineer_id' <> c->>'engineer_id'), '[]'),
                        c->>'why', q.reason, 'dispatch', q.previous_engineer_id)
                RETURNING * INTO a;
                EXIT;
            END IF;
        END LOOP;
        IF a.id IS NOT NULL THEN
            DELETE FROM dispatch.assign_queue WHERE id = q.id;
            v_event := dispatch.ticket_event('ticket.assigned', t, 'ticket_assigned',
                           jsonb_strip_nulls(jsonb_build_object(
                               'assignment', dispatch.assignment_msg(a),
                               'previous_engineer_id', q.previous_engineer_id)));
            IF q.correlation_id <> '' THEN
                v_event := v_event || jsonb_build_object('correlation_id', q.correlation_id);
            END IF;
            v_events := v_events || v_event;
            v_assigned := v_assigned || jsonb_build_object('q', q.id,
                                                           'engineer_id', a.engineer_id);
        ELSE -- others were quicker: again soon, with a fresh view of the engineers
            UPDATE dispatch.assign_queue SET next_try_at = now() + interval '100 milliseconds',
                                             tried_at = now()
             WHERE id = q.id;
        END IF;
    END LOOP;

    -- 4. nobody fits: the request waits; its first time, the alert
    WITH u AS (
        UPDATE dispatch.assign_queue aq SET
            next_try_at = now() + interval '30 seconds', tried_at = now(), tries = aq.tries + 1,
            unfilled_at = coalesce(aq.unfilled_at, now()),
            unfilled_reason = x->>'reason', considered = (x->>'considered')::int
          FROM jsonb_array_elements(p_decisions) AS x
         WHERE aq.id = (x->>'q')::bigint
           AND jsonb_array_length(coalesce(x->'choices', '[]')) = 0
        RETURNING aq.*)
    SELECT coalesce(jsonb_agg(
               dispatch.ticket_event('assignment.unfilled', tt, 'assignment_unfilled',
                   jsonb_build_object(
                       'kind', 'ASSIGNMENT_KIND_' || upper(u.kind),
                       'reason', coalesce(u.unfilled_reason, ''),
                       'engineers_considered', coalesce(u.considered, 0),
                       'queued_at', dispatch.ts(u.queued_at)))
               || CASE WHEN u.correlation_id <> ''
                       THEN jsonb_build_object('correlation_id', u.correlation_id)
                       ELSE '{}' END
               ORDER BY u.id), '[]')
      INTO v_unfilled
      FROM u JOIN dispatch.tickets tt ON tt.id = u.ticket_id
     WHERE u.unfilled_at = now(); -- set by this transaction: the first time
    RETURN dispatch.ok(200, jsonb_build_object('assigned', v_assigned, 'loads', v_loads),
                       v_events || v_unfilled);
END
$$;

-- --- HTTP operations (ops.h) ----------------------------------------------------------------

-- POST /v1/assignments/{id}/accept: offered -> accepted; a diagnosis assignment's
-- acceptance is the ticket's first response (SLA).
CREATE FUNCTION dispatch.assignment_accept(p_id uuid, p_actor text) RETURNS json
    LANGUAGE plpgsql AS $$
DECLARE
    a dispatch.assignments;
    t dispatch.tickets;
BEGIN
    SELECT * INTO a FROM dispatch.assignments WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('no assignment %s', p_id));
    END IF;
    IF a.state <> 'offered' THEN
        RETURN dispatch.err(409, 'illegal_transition',
                            format('assignment %s is %s: only an offered assignment can be '
                                   'accepted', a.id, a.state));
    END IF;
    UPDATE dispatch.assignments SET state = 'accepted', accepted_at = now(), updated_at = now(),
                                    decided_by = p_actor
     WHERE id = a.id RETURNING * INTO a;
    SELECT * INTO t FROM dispatch.tickets WHERE id = a.ticket_id;
    IF a.kind = 'diagnosis' THEN
        PERFORM dispatch.sla_on_step(t.id, 'first_response', a.accepted_at);
    END IF;
    RETURN dispatch.ok(200, dispatch.assignment_doc(a), jsonb_build_array(
        dispatch.assignment_changed_event('assignment.accepted', t, a, NULL)));
END
$$;

-- POST /v1/assignments/{id}/decline: offered -> declined; the request is queued again
-- without this engineer (the worker offers it to the next best, or alerts).
CREATE FUNCTION dispatch.assignment_decline(p_id uuid, p_actor text, p_reason text,
                                            p_correlation text)
    RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    a dispatch.assignments;
    t dispatch.tickets;
    v_name text;
BEGIN
    SELECT * INTO a FROM dispatch.assignments WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('no assignment %s', p_id));
    END IF;
    IF a.state <> 'offered' THEN
        RETURN dispatch.err(409, 'illegal_transition',
                            format('assignment %s is %s: only an offered assignment can be '
                                   'declined', a.id, a.state));
    END IF;
    a := dispatch.assign_end(a, 'declined', p_reason, p_actor, true);
    SELECT * INTO t FROM dispatch.tickets WHERE id = a.ticket_id;
    SELECT name INTO v_name FROM dispatch.engineers WHERE id = a.engineer_id;
    PERFORM dispatch.assign_enqueue(t, a.kind, a.mode,
                                    format('declined by %s: %s', v_name, p_reason),
                                    a.engineer_id, p_correlation);
    RETURN dispatch.ok(200, dispatch.assignment_doc(a), jsonb_build_array(
        dispatch.assignment_changed_event('assignment.declined', t, a, p_reason)));
END
$$;

-- POST /v1/tickets/{number}/assign: a supervisor assigns (or reassigns) the ticket's
-- diagnosis or work to an engineer, with a reason. Refused unless p_override: an engineer
-- on leave, at capacity, or of another role than the request asks for.
CREATE FUNCTION dispatch.ticket_assign(p_number text, p_engineer_id uuid, p_kind text,
                                       p_reason text, p_override boolean, p_actor text,
                                       p_correlation text)
    RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    t dispatch.tickets;
    e dispatch.engineers;
    cur dispatch.assignments;
    q dispatch.assign_queue;
    a dispatch.assignments;
    v_kind text := p_kind;
    v_mode text;
    v_role text;
    v_open int;
    v_events jsonb := '[]';
    v_event jsonb;
BEGIN
    SELECT * INTO t FROM dispatch.tickets WHERE number = p_number;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('dispatch knows no ticket %s', p_number));
    END IF;
    IF dispatch.is_closed_status(t.status) THEN
        RETURN dispatch.err(409, 'ticket_closed',
                            format('ticket %s is %s: nothing to assign', t.number, t.status));
    END IF;
    SELECT * INTO e FROM dispatch.engineers WHERE id = p_engineer_id;
    IF NOT FOUND THEN
        RETURN dispatch.err(422, 'unknown_reference', format('no engineer %s', p_engineer_id),
                            'engineer_id');
    END IF;
    IF v_kind IS NULL THEN -- what the ticket is at: work once it was requested
        v_kind := CASE WHEN EXISTS (SELECT 1 FROM dispatch.assignments x
                                     WHERE x.ticket_id = t.id AND x.kind = 'work'
                                       AND x.state IN ('offered', 'accepted'))
                         OR EXISTS (SELECT 1 FROM dispatch.assign_queue x
                                     WHERE x.ticket_id = t.id AND x.kind = 'work')
                       THEN 'work' ELSE 'diagnosis' END;
    END IF;
    -- the queue entry first (it waits for a worker holding it), then the open assignment
    SELECT * INTO q FROM dispatch.assign_queue
     WHERE ticket_id = t.id AND kind = v_kind FOR UPDATE;
    SELECT * INTO cur FROM dispatch.assignments
     WHERE ticket_id = t.id AND kind = v_kind AND state IN ('offered', 'accepted') FOR UPDATE;
    v_mode := coalesce(cur.mode, q.mode);
    v_role := dispatch.assign_role(v_kind, v_mode);
    IF cur.engineer_id = e.id THEN
        RETURN dispatch.err(409, 'already_assigned',
                            format('%s already holds the %s of ticket %s', e.name, v_kind,
                                   t.number), 'engineer_id');
    END IF;
    SELECT open_jobs INTO v_open FROM dispatch.engineer_load WHERE engineer_id = e.id
       FOR UPDATE;
    IF NOT coalesce(p_override, false) THEN
        IF (v_role IS NOT NULL AND e.role <> v_role)
           OR (v_role IS NULL AND e.role NOT IN ('technical_support', 'field_engineer',
                                                 'depot_technician')) THEN
            RETURN dispatch.err(409, 'wrong_role',
                                format('%s is a %s; the %s of ticket %s needs a %s (override '
                                       'to assign anyway)', e.name, e.role, v_kind, t.number,
                                       coalesce(v_role, 'technical_support, field_engineer '
                                                        'or depot_technician')),
                                'engineer_id');
        END IF;
        IF e.availability = 'on_leave' THEN
            RETURN dispatch.err(409, 'engineer_unavailable',
                                format('%s is on leave (override to assign anyway)', e.name),
                                'engineer_id');
        END IF;
        IF coalesce(v_open, 0) >= e.capacity THEN
            RETURN dispatch.err(409, 'engineer_at_capacity',
                                format('%s has %s of %s open jobs (override to assign anyway)',
                                       e.name, coalesce(v_open, 0), e.capacity),
                                'engineer_id');
        END IF;
    END IF;
    IF cur.id IS NOT NULL THEN
        cur := dispatch.assign_end(cur, 'replaced', p_reason, p_actor, false);
        v_events := v_events || dispatch.assignment_changed_event('assignment.released', t,
                                                                  cur, p_reason);
    END IF;
    IF q.id IS NOT NULL THEN
        DELETE FROM dispatch.assign_queue WHERE id = q.id;
    END IF;
    IF v_kind = 'work' THEN
        v_event := dispatch.assign_release_diagnosis(t, 'work assigned: ' || p_reason, p_actor);
        IF v_event IS NOT NULL THEN
            v_events := v_events || v_event;
        END IF;
    END IF;
    INSERT INTO dispatch.engineer_load AS l (engineer_id, open_jobs) VALUES (e.id, 1)
    ON CONFLICT (engineer_id) DO UPDATE SET open_jobs = l.open_jobs + 1;
    INSERT INTO dispatch.assignments
        (ticket_id, kind, mode, role, engineer_id, method, why, reason, is_override, actor,
         previous_engineer_id)
    VALUES (t.id, v_kind, v_mode, v_role, e.id, 'supervisor',
            format('assigned by %s: %s', p_actor, p_reason), p_reason,
            coalesce(p_override, false), p_actor, cur.engineer_id)
    RETURNING * INTO a;
    v_event := dispatch.ticket_event('ticket.assigned', t, 'ticket_assigned',
                   jsonb_strip_nulls(jsonb_build_object(
                       'assignment', dispatch.assignment_msg(a),
                       'previous_engineer_id', cur.engineer_id)));
    v_events := v_events || v_event;
    RETURN dispatch.ok(201, dispatch.assignment_doc(a), v_events);
END
$$;

-- GET /v1/assignments/{id}
CREATE FUNCTION dispatch.assignment_get(p_id uuid) RETURNS json
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    a dispatch.assignments;
BEGIN
    SELECT * INTO a FROM dispatch.assignments WHERE id = p_id;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('no assignment %s', p_id));
    END IF;
    RETURN dispatch.ok(200, dispatch.assignment_doc(a));
END
$$;

-- GET /v1/tickets/{number}/assignments: who holds the ticket, what waits, and the history
-- (newest first) with each automatic choice's breakdown.
CREATE FUNCTION dispatch.ticket_assignments(p_number text) RETURNS json
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    t dispatch.tickets;
BEGIN
    SELECT * INTO t FROM dispatch.tickets WHERE number = p_number;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('dispatch knows no ticket %s', p_number));
    END IF;
    RETURN dispatch.ok(200, jsonb_build_object(
        'ticket', t.number, 'status', t.status,
        'current_engineer_id', dispatch.current_engineer(t.id),
        'open', (SELECT coalesce(jsonb_agg(dispatch.assignment_doc(a) ORDER BY a.seq DESC), '[]')
                   FROM dispatch.assignments a
                  WHERE a.ticket_id = t.id AND a.state IN ('offered', 'accepted')),
        'queued', (SELECT coalesce(jsonb_agg(dispatch.assign_queue_doc(q, t) ORDER BY q.id), '[]')
                     FROM dispatch.assign_queue q WHERE q.ticket_id = t.id),
        'items', (SELECT coalesce(jsonb_agg(dispatch.assignment_doc(a) ORDER BY a.seq DESC), '[]')
                    FROM dispatch.assignments a WHERE a.ticket_id = t.id)));
END
$$;

-- GET /v1/assignments/queue: the waiting requests, most urgent first.
CREATE FUNCTION dispatch.assign_queue_list(p_kind text, p_unfilled boolean, p_limit int)
    RETURNS json LANGUAGE sql STABLE AS $$
    SELECT dispatch.ok(200, jsonb_build_object(
        'total', (SELECT count(*) FROM dispatch.assign_queue q
                   WHERE (p_kind IS NULL OR q.kind = p_kind)
                     AND (p_unfilled IS NULL OR (q.unfilled_at IS NOT NULL) = p_unfilled)),
        'items', coalesce((SELECT jsonb_agg(x.doc ORDER BY x.priority, x.queued_at, x.id)
                             FROM (SELECT dispatch.assign_queue_doc(q, t) AS doc, q.priority,
                                          q.queued_at, q.id
                                     FROM dispatch.assign_queue q
                                     JOIN dispatch.tickets t ON t.id = q.ticket_id
                                    WHERE (p_kind IS NULL OR q.kind = p_kind)
                                      AND (p_unfilled IS NULL
                                           OR (q.unfilled_at IS NOT NULL) = p_unfilled)
                                    ORDER BY q.priority, q.queued_at, q.id
                                    LIMIT p_limit) x), '[]')))
$$;
