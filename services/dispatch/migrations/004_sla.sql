-- dispatch 004: the SLA engine (sla.c; docs/dispatch-api.md, "The SLA engine").
--
-- Calendars and policies are edited over HTTP (validated in C first: a calendar by
-- calendar.c, so what is stored here always parses). A ticket gets one clock per target
-- of its policy (first_response, arrival, resolution), started at the ticket's opened_at.
-- Each clock has deadline rows, one per escalation level (warnings, breach, escalation);
-- an external repair's vendor due date is a deadline row of its own (target vendor_due).
--
-- Who writes what:
--   - the hooks (sla_on_ticket, in the consumer's transaction; sla_on_step) decide the
--     clocks' states — running, paused, met, cancelled — cancel the deadlines of stopped
--     clocks, take the due time off those of paused ones, and mark the clocks dirty
--     (gen > computed_gen);
--   - the engine (C) computes due times with calendar.c for dirty clocks from the status
--     history (sla_dirty -> slaclock.c -> sla_save); business time has one implementation;
--   - the engine fires due deadlines with sla_fire: one transaction per batch, a
--     conditional update (still pending, same version) plus the events, so each deadline
--     fires exactly once whatever crashes in between.
-- Every change of a deadline's state or due time bumps its version and queues its id in
-- sla_changes (trigger), and NOTIFY dispatch_deadlines wakes the engine, which takes the
-- queue and re-arms its in-memory set (deadlines.c). At start-up it loads every armed row.

-- --- helpers ------------------------------------------------------------------------------

CREATE FUNCTION dispatch.epoch_us(t timestamptz) RETURNS bigint
    LANGUAGE sql STABLE AS $$ SELECT (extract(epoch FROM t) * 1000000)::bigint $$;

CREATE FUNCTION dispatch.from_epoch_us(us bigint) RETURNS timestamptz
    LANGUAGE sql STABLE AS $$
    SELECT 'epoch'::timestamptz + us * interval '1 microsecond'
$$;

-- --- calendars and policies ----------------------------------------------------------------

CREATE TABLE dispatch.sla_calendars (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    calendar    jsonb NOT NULL,                 -- calendar.h's JSON form, validated by C
    is_builtin  boolean NOT NULL DEFAULT false, -- "24x7": not editable
    version     bigint NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO dispatch.sla_calendars (name, calendar, is_builtin)
VALUES ('24x7', '{"around_the_clock": true}', true);

CREATE TABLE dispatch.sla_policies (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name               text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
    -- the selector: NULL = any
    priority           text CHECK (priority IN ('P1', 'P2', 'P3', 'P4')),
    customer_tier      text CHECK (customer_tier IN ('standard', 'vip')),
    category           text CHECK (category IN ('fault_repair', 'consultation', 'maintenance',
                                                'training', 'complaint')),
    -- targets in seconds (business or wall time); NULL = no such clock
    first_response_s   int CHECK (first_response_s BETWEEN 1 AND 31622400),
    arrival_s          int CHECK (arrival_s BETWEEN 1 AND 31622400),
    resolution_s       int CHECK (resolution_s BETWEEN 1 AND 31622400),
    business_time      boolean NOT NULL DEFAULT false,
    -- business hours when business_time; the working window for warnings either way
    calendar_id        uuid NOT NULL REFERENCES dispatch.sla_calendars (id),
    warning_fractions  float8[] NOT NULL DEFAULT '{0.5,0.75}'
        CHECK (cardinality(warning_fractions) <= 8 AND 0 < ALL (warning_fractions)
               AND 1 > ALL (warning_fractions)),
    grace_s            int NOT NULL DEFAULT 3600 CHECK (grace_s BETWEEN 0 AND 31622400),
    active             boolean NOT NULL DEFAULT true,
    version            bigint NOT NULL DEFAULT 1,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (coalesce(first_response_s, arrival_s, resolution_s) IS NOT NULL)
);
-- Two active policies never have the same selector (the precedence rule orders all others).
CREATE UNIQUE INDEX sla_policies_selector ON dispatch.sla_policies
    (coalesce(priority, '*'), coalesce(customer_tier, '*'), coalesce(category, '*'))
    WHERE active;

-- Every ticket gets clocks: an active catch-all policy always exists (sla_policy_patch).
INSERT INTO dispatch.sla_policies (name, first_response_s, arrival_s, resolution_s, grace_s,
                                   calendar_id)
SELECT 'default', 8 * 3600, 48 * 3600, 120 * 3600, 4 * 3600, id
  FROM dispatch.sla_calendars WHERE name = '24x7';
INSERT INTO dispatch.sla_policies (name, priority, first_response_s, arrival_s, resolution_s,
                                   grace_s, calendar_id)
SELECT v.name, v.priority, v.fr, v.ar, v.re, v.grace, c.id
  FROM (VALUES ('P1', 'P1', 3600, 4 * 3600, 8 * 3600, 1800),
               ('P2', 'P2', 2 * 3600, 8 * 3600, 24 * 3600, 3600))
       AS v(name, priority, fr, ar, re, grace),
       dispatch.sla_calendars c
 WHERE c.name = '24x7';

CREATE FUNCTION dispatch.sla_calendar_doc(k dispatch.sla_calendars) RETURNS jsonb
    LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('name', k.name, 'calendar', k.calendar, 'builtin', k.is_builtin,
                              'version', k.version, 'created_at', dispatch.ts(k.created_at),
                              'updated_at', dispatch.ts(k.updated_at))
$$;

CREATE FUNCTION dispatch.sla_policy_doc(p dispatch.sla_policies) RETURNS jsonb
    LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', p.id, 'name', p.name,
        'selector', jsonb_build_object('priority', p.priority,
                                       'customer_tier', p.customer_tier,
                                       'category', p.category),
        'targets', jsonb_build_object('first_response', p.first_response_s,
                                      'arrival', p.arrival_s, 'resolution', p.resolution_s),
        'business_time', p.business_time,
        'calendar', (SELECT k.name FROM dispatch.sla_calendars k WHERE k.id = p.calendar_id),
        'warning_fractions', to_jsonb(p.warning_fractions), 'grace_seconds', p.grace_s,
        'active', p.active, 'version', p.version,
        'created_at', dispatch.ts(p.created_at), 'updated_at', dispatch.ts(p.updated_at))
$$;

CREATE FUNCTION dispatch.sla_target_s(p dispatch.sla_policies, p_target text) RETURNS int
    LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p_target WHEN 'first_response' THEN p.first_response_s
                         WHEN 'arrival' THEN p.arrival_s
                         WHEN 'resolution' THEN p.resolution_s END
$$;

-- The policy of ticket t: among the active policies whose selector matches it, the most
-- specific — the one that fixes more of priority, tier and category; at equal count, the
-- one that fixes the priority, then the tier, then the category. Two active policies never
-- share a selector, so the choice is always unique.
CREATE FUNCTION dispatch.sla_policy_for(t dispatch.tickets) RETURNS dispatch.sla_policies
    LANGUAGE sql STABLE AS $$
    SELECT p.* FROM dispatch.sla_policies p
     WHERE p.active
       AND (p.priority IS NULL OR p.priority = t.priority)
       AND (p.customer_tier IS NULL OR p.customer_tier = t.customer_tier)
       AND (p.category IS NULL OR p.category = t.category)
     ORDER BY (p.priority IS NOT NULL)::int + (p.customer_tier IS NOT NULL)::int
              + (p.category IS NOT NULL)::int DESC,
              p.priority IS NULL, p.customer_tier IS NULL, p.category IS NULL
     LIMIT 1
$$;

-- --- clocks and deadlines ------------------------------------------------------------------

CREATE TABLE dispatch.sla_clocks (
    ticket_id     uuid NOT NULL REFERENCES dispatch.tickets (id) ON DELETE CASCADE,
    target        text NOT NULL CHECK (target IN ('first_response', 'arrival', 'resolution')),
    policy_id     uuid NOT NULL REFERENCES dispatch.sla_policies (id),
    started_at    timestamptz NOT NULL,           -- the ticket's opened_at
    state         text NOT NULL DEFAULT 'running'
        CHECK (state IN ('running', 'paused', 'met', 'cancelled')),
    met_at        timestamptz,                    -- the target was reached
    stopped_at    timestamptz,                    -- met or cancelled: counting ended here
    breached_at   timestamptz,                    -- the breach fired (stays when met later)
    due_at        timestamptz,                    -- 100 % (engine); NULL while paused
    gen           bigint NOT NULL DEFAULT 1,      -- +1 on every change the engine must see
    computed_gen  bigint NOT NULL DEFAULT 0,      -- the gen the deadlines were computed for
    PRIMARY KEY (ticket_id, target)
);
CREATE INDEX sla_clocks_dirty ON dispatch.sla_clocks (ticket_id) WHERE gen <> computed_gen;
CREATE INDEX sla_clocks_policy ON dispatch.sla_clocks (policy_id)
    WHERE state IN ('running', 'paused');

CREATE TABLE dispatch.sla_deadlines (
    id            bigserial PRIMARY KEY,
    -- (no foreign key: tickets are never deleted, and its per-row check on the thousand
    -- rows of a batch cost more than the insert; the clock above has one)
    ticket_id     uuid NOT NULL,
    target        text NOT NULL
        CHECK (target IN ('first_response', 'arrival', 'resolution', 'vendor_due')),
    level         text NOT NULL CHECK (level IN ('warning', 'breach', 'escalation')),
    fraction      float8 NOT NULL CHECK (fraction > 0),
    due_at        timestamptz,                    -- NULL: the clock is paused before it
    state         text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'fired', 'cancelled')),
    version       int NOT NULL DEFAULT 1,         -- +1 when state or due_at change (trigger)
    elapsed_s     bigint NOT NULL DEFAULT 0,      -- counted time at due_at
    paused_s      bigint NOT NULL DEFAULT 0,      -- wall time paused before due_at
    reference_id  uuid,                           -- vendor_due: the send-out
    fired_at      timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK ((target = 'vendor_due') = (reference_id IS NOT NULL))
);
-- One row per level of a clock, for ever: a fired level never fires again, whatever the
-- re-computations (warnings are told apart by their fraction).
CREATE UNIQUE INDEX sla_deadlines_level ON dispatch.sla_deadlines
    (ticket_id, target, level, (CASE WHEN level = 'warning' THEN fraction ELSE 0 END))
    WHERE reference_id IS NULL;
CREATE UNIQUE INDEX sla_deadlines_reference ON dispatch.sla_deadlines (reference_id, level)
    WHERE reference_id IS NOT NULL;
-- The lookups by clock. Not partial on purpose: without column statistics (a young table)
-- the planner takes "reference_id IS NULL" to match 0.5 % of the rows and would scan the
-- whole partial index above inside a join; this one it uses per clock.
CREATE INDEX sla_deadlines_clock ON dispatch.sla_deadlines (ticket_id, target);
-- The armed deadlines in due order: the engine's start-up load (keyset on (due_at, id)) and
-- any "what is overdue" query.
CREATE INDEX sla_deadlines_armed ON dispatch.sla_deadlines (due_at, id)
    WHERE state = 'pending' AND due_at IS NOT NULL;

-- Deadline ids whose state or due time changed since the engine last looked.
CREATE TABLE dispatch.sla_changes (
    seq          bigserial PRIMARY KEY,
    deadline_id  bigint NOT NULL
);

-- A change of state or due time bumps the row's version (per row, before the update) and
-- is queued for the engine (per statement, after it, from the transition tables: one
-- INSERT and one NOTIFY however many rows — sla_save() writes a thousand at a time). The
-- engine's own firing sets dispatch.sla_quiet (it already knows), and so may a bulk load.
CREATE FUNCTION dispatch.sla_deadline_touch() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.state, NEW.due_at) IS DISTINCT FROM (OLD.state, OLD.due_at) THEN
        NEW.version := OLD.version + 1;
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER sla_deadline_touch BEFORE UPDATE ON dispatch.sla_deadlines
    FOR EACH ROW EXECUTE FUNCTION dispatch.sla_deadline_touch();

CREATE FUNCTION dispatch.sla_deadlines_queue() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    IF current_setting('dispatch.sla_quiet', true) IS NOT DISTINCT FROM 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO dispatch.sla_changes (deadline_id) SELECT id FROM new_rows;
    ELSE
        INSERT INTO dispatch.sla_changes (deadline_id)
        SELECT n.id FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.version <> o.version;
    END IF;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM pg_notify('dispatch_deadlines', '');
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER sla_deadlines_queue_insert AFTER INSERT ON dispatch.sla_deadlines
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION dispatch.sla_deadlines_queue();
CREATE TRIGGER sla_deadlines_queue_update AFTER UPDATE ON dispatch.sla_deadlines
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION dispatch.sla_deadlines_queue();

-- --- the hooks ----------------------------------------------------------------------------

-- What a status means for the clocks: they run, pause, or stop (the ticket is done).
CREATE FUNCTION dispatch.sla_phase(s text) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN dispatch.is_paused_status(s) THEN 'paused'
                WHEN s IN ('resolved', 'closed', 'cancelled') THEN 'stopped'
                ELSE 'running' END
$$;

-- The clocks of ticket t follow its status and policy: state, stopped_at; the deadlines
-- of stopped clocks are cancelled, those of paused clocks lose their due time; every clock
-- whose state changed is marked for the engine, which is woken.
CREATE FUNCTION dispatch.sla_settle(t dispatch.tickets) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    WITH s AS (
        SELECT c.ticket_id, c.target,
               CASE WHEN c.met_at IS NOT NULL THEN 'met'
                    WHEN t.status = 'cancelled' THEN 'cancelled'
                    WHEN dispatch.sla_target_s(p, c.target) IS NULL THEN 'cancelled'
                    WHEN t.status IN ('resolved', 'closed') THEN 'cancelled'
                    WHEN dispatch.is_paused_status(t.status) THEN 'paused'
                    ELSE 'running' END AS state
          FROM dispatch.sla_clocks c JOIN dispatch.sla_policies p ON p.id = c.policy_id
         WHERE c.ticket_id = t.id)
    , n AS (
        SELECT s.ticket_id, s.target, s.state,
               CASE WHEN s.state = 'met' THEN c.met_at
                    WHEN s.state = 'cancelled' AND c.state = 'cancelled' THEN c.stopped_at
                    WHEN s.state = 'cancelled' THEN t.updated_at END AS stopped_at
          FROM s JOIN dispatch.sla_clocks c ON c.ticket_id = s.ticket_id AND c.target = s.target)
    UPDATE dispatch.sla_clocks c SET state = n.state, stopped_at = n.stopped_at, gen = c.gen + 1
      FROM n
     WHERE c.ticket_id = n.ticket_id AND c.target = n.target
       -- (only what changed is computed again: sla_adopt marks a new policy itself)
       AND (c.state, c.stopped_at) IS DISTINCT FROM (n.state, n.stopped_at);

    UPDATE dispatch.sla_deadlines d SET state = 'cancelled'
      FROM dispatch.sla_clocks c
     WHERE d.ticket_id = t.id AND d.reference_id IS NULL AND d.state = 'pending'
       AND c.ticket_id = d.ticket_id AND c.target = d.target AND c.state IN ('met', 'cancelled');
    UPDATE dispatch.sla_deadlines d SET due_at = NULL
      FROM dispatch.sla_clocks c
     WHERE d.ticket_id = t.id AND d.reference_id IS NULL AND d.state = 'pending'
       AND d.due_at IS NOT NULL
       AND c.ticket_id = d.ticket_id AND c.target = d.target AND c.state = 'paused';
    IF t.status = 'cancelled' THEN
        UPDATE dispatch.sla_deadlines SET state = 'cancelled'
         WHERE ticket_id = t.id AND reference_id IS NOT NULL AND state = 'pending';
    END IF;
    PERFORM pg_notify('dispatch_deadlines', '');
END
$$;

-- Policy p (NULL: keep the current one) governs ticket t's clocks from now on: a clock for
-- each of its targets (started when the ticket was opened: the engine re-computes every
-- clock over the whole status history, which is what re-bases it), then settle.
CREATE FUNCTION dispatch.sla_adopt(t dispatch.tickets, p dispatch.sla_policies) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    IF p.id IS NOT NULL THEN
        INSERT INTO dispatch.sla_clocks (ticket_id, target, policy_id, started_at)
        SELECT t.id, x.target, p.id, t.opened_at
          FROM (VALUES ('first_response', p.first_response_s), ('arrival', p.arrival_s),
                       ('resolution', p.resolution_s)) AS x(target, s)
         WHERE x.s IS NOT NULL
        ON CONFLICT (ticket_id, target) DO NOTHING;
        UPDATE dispatch.sla_clocks SET policy_id = p.id, gen = gen + 1
         WHERE ticket_id = t.id AND policy_id <> p.id;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION dispatch.sla_on_ticket(t dispatch.tickets, old dispatch.tickets)
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    is_new boolean := old.id IS NULL;
    p dispatch.sla_policies;
BEGIN
    IF NOT is_new
       AND (t.priority, t.customer_tier, t.category, dispatch.sla_phase(t.status))
           IS NOT DISTINCT FROM (old.priority, old.customer_tier, old.category,
                                 dispatch.sla_phase(old.status)) THEN
        RETURN; -- nothing the clocks depend on (new -> diagnosing: both run)
    END IF;
    IF is_new OR (t.priority, t.customer_tier, t.category)
                 IS DISTINCT FROM (old.priority, old.customer_tier, old.category) THEN
        p := dispatch.sla_policy_for(t);
        IF p.id IS NULL THEN
            RAISE WARNING 'sla: no active policy matches ticket % (%, %, %)', t.number,
                t.priority, t.customer_tier, t.category;
        END IF;
        PERFORM dispatch.sla_adopt(t, p);
    END IF;
    IF t.status IN ('resolved', 'closed')
       AND (is_new OR old.status NOT IN ('resolved', 'closed')) THEN
        -- resolving answers the customer too
        UPDATE dispatch.sla_clocks SET met_at = t.updated_at
         WHERE ticket_id = t.id AND target IN ('first_response', 'resolution')
           AND met_at IS NULL AND state <> 'cancelled';
    ELSIF NOT is_new AND old.status IN ('resolved', 'closed')
          AND t.status NOT IN ('resolved', 'closed', 'cancelled') THEN
        -- reopened: the resolution clock runs on; the resolved time counts as paused
        UPDATE dispatch.sla_clocks SET met_at = NULL
         WHERE ticket_id = t.id AND target = 'resolution';
    END IF;
    PERFORM dispatch.sla_settle(t);
END
$$;

CREATE OR REPLACE FUNCTION dispatch.sla_on_step(p_ticket_id uuid, p_what text, p_at timestamptz)
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    t dispatch.tickets;
BEGIN
    IF p_what IS NULL OR p_what NOT IN ('first_response', 'arrival') THEN
        RAISE EXCEPTION 'dispatch.sla_on_step: unknown step %', p_what;
    END IF;
    SELECT * INTO t FROM dispatch.tickets WHERE id = p_ticket_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE dispatch.sla_clocks SET met_at = coalesce(p_at, now())
     WHERE ticket_id = p_ticket_id AND target = p_what AND met_at IS NULL
       AND state IN ('running', 'paused');
    IF FOUND THEN
        PERFORM dispatch.sla_settle(t);
    END IF;
END
$$;

-- A vendor due date (p_target 'vendor_due', the send-out p_reference_id): a breach at the
-- due time (supervisor) and an escalation one grace period later (manager; the ticket's
-- policy's grace, 1 h without one). Both have fraction 1 (there is no target to divide
-- by). A new due date arms them again, even after they fired (the vendor promised a new
-- date); the same date changes nothing.
CREATE OR REPLACE FUNCTION dispatch.sla_arm_reference(p_ticket_id uuid, p_target text,
                                                      p_reference_id uuid,
                                                      p_due_at timestamptz)
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    grace int;
BEGIN
    IF p_target IS DISTINCT FROM 'vendor_due' THEN
        RAISE EXCEPTION 'dispatch.sla_arm_reference: unknown target %', p_target;
    END IF;
    IF p_reference_id IS NULL OR p_due_at IS NULL THEN
        RAISE EXCEPTION 'dispatch.sla_arm_reference: reference and due time are required';
    END IF;
    SELECT p.grace_s INTO grace
      FROM dispatch.sla_clocks c JOIN dispatch.sla_policies p ON p.id = c.policy_id
     WHERE c.ticket_id = p_ticket_id
     ORDER BY c.target = 'resolution' DESC LIMIT 1;
    INSERT INTO dispatch.sla_deadlines AS d
        (ticket_id, target, level, fraction, due_at, reference_id)
    VALUES (p_ticket_id, 'vendor_due', 'breach', 1, p_due_at, p_reference_id),
           (p_ticket_id, 'vendor_due', 'escalation', 1,
            p_due_at + coalesce(grace, 3600) * interval '1 second', p_reference_id)
    ON CONFLICT (reference_id, level) WHERE reference_id IS NOT NULL DO UPDATE
        SET due_at = EXCLUDED.due_at, state = 'pending'
      WHERE d.due_at IS DISTINCT FROM EXCLUDED.due_at OR d.state = 'cancelled';
END
$$;

CREATE OR REPLACE FUNCTION dispatch.sla_disarm_reference(p_reference_id uuid)
    RETURNS void LANGUAGE sql AS $$
    UPDATE dispatch.sla_deadlines SET state = 'cancelled'
     WHERE reference_id = p_reference_id AND state = 'pending'
$$;

-- For assignment's score (003): seconds until the ticket's earliest running clock reaches
-- 100 % (<= 0: due or breached), NULL when no clock is running or none is computed yet.
CREATE OR REPLACE FUNCTION dispatch.sla_slack_seconds(p_ticket_id uuid) RETURNS bigint
    LANGUAGE sql STABLE AS $$
    -- (the state test inside the aggregate keeps the plan on the primary key; as a WHERE
    -- condition the planner AND-ed in the partial policy index, ~1.6 ms a call)
    SELECT floor(extract(epoch FROM min(CASE WHEN c.state = 'running' THEN c.due_at END)
                                    - now()))::bigint
      FROM dispatch.sla_clocks c
     WHERE c.ticket_id = p_ticket_id
$$;

-- --- the engine's statements --------------------------------------------------------------

-- Start-up: the engine is about to load every armed row, so the queued changes are known.
CREATE FUNCTION dispatch.sla_start() RETURNS json
    LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    DELETE FROM dispatch.sla_changes;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN dispatch.ok(200, jsonb_build_object('cleared', n));
END
$$;

-- The queued changes (oldest first, at most p_limit), deleted when the engine's
-- transaction commits: each id with its due time in epoch microseconds (NULL: not armed —
-- fired, cancelled or paused) and version.
CREATE FUNCTION dispatch.sla_changes_take(p_limit int) RETURNS json
    LANGUAGE sql AS $$
    WITH taken AS (
        DELETE FROM dispatch.sla_changes c
         WHERE c.seq IN (SELECT seq FROM dispatch.sla_changes ORDER BY seq
                          LIMIT p_limit FOR UPDATE SKIP LOCKED)
        RETURNING c.deadline_id),
    ids AS (SELECT DISTINCT deadline_id FROM taken)
    SELECT json_build_object(
        'status', 200, 'events', '[]'::json,
        'body', json_build_object(
            'taken', (SELECT count(*) FROM taken),
            'items', coalesce((
                SELECT json_agg(json_build_array(
                    d.id,
                    CASE WHEN d.state = 'pending' THEN dispatch.epoch_us(d.due_at) END,
                    d.version))
                  FROM ids JOIN dispatch.sla_deadlines d ON d.id = ids.deadline_id), '[]')))
$$;

-- What the engine (or the API) needs to compute ticket t's clocks: the status history as
-- [epoch µs, phase] (0 run, 1 pause, 2 stop) and each clock with its policy.
CREATE FUNCTION dispatch.sla_ticket_state(t dispatch.tickets) RETURNS jsonb
    LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'ticket_id', t.id, 'number', t.number, 'priority', t.priority, 'status', t.status,
        'history', coalesce((
            SELECT jsonb_agg(jsonb_build_array(
                       dispatch.epoch_us(h.at),
                       CASE WHEN dispatch.is_paused_status(h.status) THEN 1
                            WHEN h.status IN ('resolved', 'closed', 'cancelled') THEN 2
                            ELSE 0 END) ORDER BY h.at, h.version)
              FROM dispatch.ticket_status_history h WHERE h.ticket_id = t.id), '[]'),
        'clocks', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                       'target', c.target, 'gen', c.gen, 'state', c.state,
                       'started_at_us', dispatch.epoch_us(c.started_at),
                       'stopped_at_us', dispatch.epoch_us(c.stopped_at),
                       'met_at', dispatch.ts(c.met_at),
                       'breached_at', dispatch.ts(c.breached_at),
                       'policy', jsonb_build_object(
                           'id', p.id, 'name', p.name,
                           'target_s', dispatch.sla_target_s(p, c.target),
                           'grace_s', p.grace_s, 'business_time', p.business_time,
                           'calendar_id', p.calendar_id,
                           'calendar', (SELECT k.name FROM dispatch.sla_calendars k
                                         WHERE k.id = p.calendar_id),
                           'fractions', to_jsonb(p.warning_fractions)),
                       'deadlines', coalesce((
                           SELECT jsonb_agg(jsonb_build_object(
                                      'id', d.id::text, 'level', d.level,
                                      'fraction', d.fraction, 'state', d.state,
                                      'due_at', dispatch.ts(d.due_at),
                                      'fired_at', dispatch.ts(d.fired_at))
                                      ORDER BY d.due_at NULLS LAST, d.id)
                             FROM dispatch.sla_deadlines d
                            WHERE d.ticket_id = t.id AND d.target = c.target
                              AND d.reference_id IS NULL), '[]'))
                   ORDER BY array_position(ARRAY['first_response', 'arrival', 'resolution'],
                                           c.target))
              FROM dispatch.sla_clocks c JOIN dispatch.sla_policies p ON p.id = c.policy_id
             WHERE c.ticket_id = t.id), '[]'))
$$;

-- The calendars the clocks of these tickets use: {"<id>": {"version", "calendar"}}.
CREATE FUNCTION dispatch.sla_calendars_of(p_ticket_ids uuid[]) RETURNS jsonb
    LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_object_agg(k.id, jsonb_build_object('version', k.version,
                                                              'calendar', k.calendar)), '{}')
      FROM dispatch.sla_calendars k
     WHERE k.id IN (SELECT p.calendar_id FROM dispatch.sla_clocks c
                      JOIN dispatch.sla_policies p ON p.id = c.policy_id
                     WHERE c.ticket_id = ANY (p_ticket_ids))
$$;

-- Up to p_limit tickets with clocks to compute (gen <> computed_gen).
CREATE FUNCTION dispatch.sla_dirty(p_limit int) RETURNS json
    LANGUAGE plpgsql STABLE
    -- A batch touches a few rows per clock of tables that grow to millions: look them up
    -- by index, always. (Left to itself the planner scans the whole table into a hash join
    -- once a batch is a thousand rows, or, planning while the table is young and without
    -- statistics, keeps a plan that scans it per row.)
    SET plan_cache_mode = force_custom_plan
    SET enable_seqscan = off
    SET enable_bitmapscan = off
    AS $$
DECLARE
    ids uuid[];
BEGIN
    SELECT array_agg(DISTINCT x.ticket_id) INTO ids
      FROM (SELECT c.ticket_id FROM dispatch.sla_clocks c WHERE c.gen <> c.computed_gen
             ORDER BY c.ticket_id LIMIT p_limit * 3) x;
    RETURN dispatch.ok(200, jsonb_build_object(
        'tickets', coalesce((SELECT jsonb_agg(dispatch.sla_ticket_state(t))
                               FROM dispatch.tickets t WHERE t.id = ANY (ids)), '[]'),
        'calendars', dispatch.sla_calendars_of(ids)));
END
$$;

-- The engine's computation for clocks (sla.c): {"clocks": [{"ticket_id", "target", "gen",
-- "due_at_us" (100 %, null while paused), "keep" (true: computing failed, the deadlines
-- stay as they are), "deadlines": [{"level", "fraction", "due_at_us" (null: paused before
-- it), "elapsed_s", "paused_s"}]}]}. A clock changed since it was read (gen moved on), or
-- locked by a transaction in flight (the consumer's: SKIP LOCKED, so the engine never
-- waits for it nor deadlocks with it), is skipped: it is still dirty and comes back. For
-- the others the deadline rows become the wanted ones: missing ones inserted, pending or
-- cancelled ones set to their new due time, fired ones left alone, and pending ones no
-- longer wanted cancelled. Set-based: a few statements for the whole batch.
CREATE FUNCTION dispatch.sla_save(p jsonb) RETURNS json
    LANGUAGE plpgsql
    -- A batch touches a few rows per clock of tables that grow to millions: look them up
    -- by index, always. (Left to itself the planner scans the whole table into a hash join
    -- once a batch is a thousand rows, or, planning while the table is young and without
    -- statistics, keeps a plan that scans it per row.)
    SET plan_cache_mode = force_custom_plan
    SET enable_seqscan = off
    SET enable_bitmapscan = off
    AS $$
DECLARE
    v_tickets uuid[];
    v_targets text[];
    w_ticket uuid[];
    w_target text[];
    w_level text[];
    w_fraction float8[];
    w_due timestamptz[];
    w_elapsed bigint[];
    w_paused bigint[];
    n_saved int;
    n_all int := jsonb_array_length(coalesce(p->'clocks', '[]'));
BEGIN
    WITH c AS (
        SELECT (e->>'ticket_id')::uuid AS ticket_id, e->>'target' AS target,
               (e->>'gen')::bigint AS gen, coalesce(e->>'keep' = 'true', false) AS keep,
               dispatch.from_epoch_us((e->>'due_at_us')::bigint) AS due_at
          FROM jsonb_array_elements(coalesce(p->'clocks', '[]')) AS e),
    lk AS (
        SELECT x.ticket_id, x.target FROM dispatch.sla_clocks x
          JOIN c ON c.ticket_id = x.ticket_id AND c.target = x.target AND c.gen = x.gen
         ORDER BY x.ticket_id, x.target
           FOR UPDATE OF x SKIP LOCKED),
    upd AS (
        UPDATE dispatch.sla_clocks x
           SET computed_gen = x.gen, due_at = CASE WHEN c.keep THEN x.due_at ELSE c.due_at END
          FROM c JOIN lk ON lk.ticket_id = c.ticket_id AND lk.target = c.target
         WHERE x.ticket_id = c.ticket_id AND x.target = c.target
        RETURNING x.ticket_id, x.target, c.keep)
    SELECT count(*), array_agg(ticket_id) FILTER (WHERE NOT keep),
           array_agg(target) FILTER (WHERE NOT keep)
      INTO n_saved, v_tickets, v_targets
      FROM upd;

    IF v_tickets IS NULL THEN
        RETURN dispatch.ok(200, jsonb_build_object('saved', n_saved, 'stale', n_all - n_saved));
    END IF;
    -- the wanted deadlines of the clocks saved, as arrays: the statements below join them
    -- through unnest(), which the planner sizes small (index lookups, whatever the size
    -- of sla_deadlines)
    SELECT array_agg((c->>'ticket_id')::uuid), array_agg(c->>'target'),
           array_agg(e->>'level'), array_agg((e->>'fraction')::float8),
           array_agg(dispatch.from_epoch_us((e->>'due_at_us')::bigint)),
           array_agg((e->>'elapsed_s')::bigint), array_agg((e->>'paused_s')::bigint)
      INTO w_ticket, w_target, w_level, w_fraction, w_due, w_elapsed, w_paused
      FROM jsonb_array_elements(p->'clocks') AS c,
           jsonb_array_elements(coalesce(c->'deadlines', '[]')) AS e
     WHERE ((c->>'ticket_id')::uuid, c->>'target') IN (SELECT * FROM unnest(v_tickets, v_targets));

    UPDATE dispatch.sla_deadlines d
       SET state = 'pending', due_at = w.due_at, fraction = w.fraction,
           elapsed_s = w.elapsed_s, paused_s = w.paused_s
      FROM unnest(w_ticket, w_target, w_level, w_fraction, w_due, w_elapsed, w_paused)
           AS w(ticket_id, target, level, fraction, due_at, elapsed_s, paused_s)
     WHERE d.ticket_id = w.ticket_id AND d.target = w.target AND d.reference_id IS NULL
       AND d.level = w.level
       AND (d.level <> 'warning' OR d.fraction = w.fraction)
       AND d.state IN ('pending', 'cancelled')
       AND (d.state, d.due_at, d.fraction, d.elapsed_s, d.paused_s)
           IS DISTINCT FROM ('pending', w.due_at, w.fraction, w.elapsed_s, w.paused_s);
    -- (the ones that exist conflict on sla_deadlines_level and are skipped; the queue
    -- trigger sees only the rows inserted)
    INSERT INTO dispatch.sla_deadlines
        (ticket_id, target, level, fraction, due_at, elapsed_s, paused_s)
    SELECT w.ticket_id, w.target, w.level, w.fraction, w.due_at, w.elapsed_s, w.paused_s
      FROM unnest(w_ticket, w_target, w_level, w_fraction, w_due, w_elapsed, w_paused)
           AS w(ticket_id, target, level, fraction, due_at, elapsed_s, paused_s)
    ON CONFLICT DO NOTHING;
    UPDATE dispatch.sla_deadlines d SET state = 'cancelled'
      FROM unnest(v_tickets, v_targets) AS k(ticket_id, target)
     WHERE d.ticket_id = k.ticket_id AND d.target = k.target
       AND d.reference_id IS NULL AND d.state = 'pending'
       AND NOT EXISTS (SELECT 1
                         FROM unnest(w_ticket, w_target, w_level, w_fraction)
                              AS w(ticket_id, target, level, fraction)
                        WHERE w.ticket_id = d.ticket_id AND w.target = d.target
                          AND w.level = d.level
                          AND (d.level <> 'warning' OR d.fraction = w.fraction));
    RETURN dispatch.ok(200, jsonb_build_object('saved', n_saved, 'stale', n_all - n_saved));
END
$$;

-- Fires the deadlines (id, version) the engine found due: each one that is still pending
-- at that version, due (a second of clock skew allowed), and whose clock has no
-- re-computation waiting, becomes fired — in this transaction, together with its event
-- (sla.warning, sla.breached or sla.escalated), so it fires exactly once. A breach marks
-- its clock breached; an escalation asks assignment to re-dispatch the ticket. The others
-- come back in "rearm" ([id, due_at_us, version]) when they are still armed.
CREATE FUNCTION dispatch.sla_fire(p_ids bigint[], p_versions int[]) RETURNS json
    LANGUAGE plpgsql
    -- A batch touches a few rows per clock of tables that grow to millions: look them up
    -- by index, always. (Left to itself the planner scans the whole table into a hash join
    -- once a batch is a thousand rows, or, planning while the table is young and without
    -- statistics, keeps a plan that scans it per row.)
    SET plan_cache_mode = force_custom_plan
    SET enable_seqscan = off
    SET enable_bitmapscan = off
    AS $$
DECLARE
    now_ts timestamptz := clock_timestamp();
    events jsonb;
    fired jsonb;
    escalated uuid[];
    rearm jsonb;
BEGIN
    PERFORM set_config('dispatch.sla_quiet', 'on', true); -- the engine knows what it fired
    -- clocks first, then deadlines: the order every hook locks them in
    PERFORM 1 FROM dispatch.sla_clocks x
     WHERE (x.ticket_id, x.target) IN (SELECT y.ticket_id, y.target FROM dispatch.sla_deadlines y
                                        WHERE y.id = ANY (p_ids) AND y.reference_id IS NULL)
     ORDER BY x.ticket_id, x.target FOR UPDATE OF x;
    WITH f AS (
        UPDATE dispatch.sla_deadlines x SET state = 'fired', fired_at = now_ts
          FROM unnest(p_ids, p_versions) AS u(id, version)
         WHERE x.id = u.id AND x.version = u.version AND x.state = 'pending'
           AND x.due_at <= now_ts + interval '1 second'
           AND NOT EXISTS (SELECT 1 FROM dispatch.sla_clocks y
                            WHERE y.ticket_id = x.ticket_id AND y.target = x.target
                              AND y.gen <> y.computed_gen)
        RETURNING x.*),
    breached AS ( -- (runs whether or not it is read)
        UPDATE dispatch.sla_clocks c SET breached_at = coalesce(c.breached_at, now_ts)
          FROM f
         WHERE f.level = 'breach' AND f.reference_id IS NULL
           AND c.ticket_id = f.ticket_id AND c.target = f.target
        RETURNING c.ticket_id),
    e AS (
        SELECT f.id, f.due_at, f.level, f.ticket_id, f.reference_id IS NOT NULL AS is_vendor,
               dispatch.ticket_event(
                   CASE f.level WHEN 'warning' THEN 'sla.warning'
                                WHEN 'breach' THEN 'sla.breached' ELSE 'sla.escalated' END,
                   t, 'sla_escalation', jsonb_strip_nulls(jsonb_build_object(
                       'clock', CASE WHEN f.reference_id IS NULL THEN jsonb_build_object(
                           'target', 'SLA_TARGET_' || upper(f.target), 'policy_id', p.id,
                           'policy_name', p.name,
                           'target_seconds', dispatch.sla_target_s(p, f.target),
                           'business_time', p.business_time,
                           'started_at', dispatch.ts(c.started_at),
                           'elapsed_seconds', f.elapsed_s, 'paused_seconds', f.paused_s,
                           'due_at', dispatch.ts(c.due_at),
                           'state', CASE WHEN c.state IN ('running', 'paused')
                                          AND (c.breached_at IS NOT NULL OR f.level = 'breach')
                                         THEN 'breached' ELSE c.state END)
                       ELSE jsonb_build_object('target', 'SLA_TARGET_VENDOR_DUE',
                                               'due_at', dispatch.ts(f.due_at),
                                               'state', 'breached') END,
                       'level', 'SLA_LEVEL_' || upper(f.level), 'fraction', f.fraction,
                       'deadline_id', f.id::text, 'due_at', dispatch.ts(f.due_at),
                       'fired_at', dispatch.ts(f.fired_at),
                       'notify_role', CASE f.level WHEN 'warning' THEN 'assignee'
                                                   WHEN 'breach' THEN 'supervisor'
                                                   ELSE 'manager' END,
                       'assignee_engineer_id', dispatch.current_engineer(f.ticket_id),
                       'reference_id', f.reference_id))) AS event
          FROM f
          JOIN dispatch.tickets t ON t.id = f.ticket_id
          LEFT JOIN dispatch.sla_clocks c ON c.ticket_id = f.ticket_id AND c.target = f.target
          LEFT JOIN dispatch.sla_policies p ON p.id = c.policy_id)
    SELECT coalesce(jsonb_agg(e.event ORDER BY e.due_at, e.id), '[]'),
           coalesce(jsonb_agg(jsonb_build_array(e.id, dispatch.epoch_us(e.due_at))), '[]'),
           array_agg(e.ticket_id) FILTER (WHERE e.level = 'escalation' AND NOT e.is_vendor)
      INTO events, fired, escalated
      FROM e;
    PERFORM dispatch.redispatch(x.id, 'SLA breached and its grace period passed')
       FROM (SELECT DISTINCT unnest(escalated) AS id) AS x;
    SELECT coalesce(jsonb_agg(jsonb_build_array(x.id, dispatch.epoch_us(x.due_at), x.version)),
                    '[]')
      INTO rearm
      FROM dispatch.sla_deadlines x
     WHERE x.id = ANY (p_ids) AND x.state = 'pending' AND x.due_at IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM dispatch.sla_clocks y
                        WHERE y.ticket_id = x.ticket_id AND y.target = x.target
                          AND y.gen <> y.computed_gen);
    RETURN dispatch.ok(200, jsonb_build_object('fired', fired, 'rearm', rearm), events);
END
$$;

-- GET /v1/tickets/{number}/sla: the ticket's clocks as sla_ticket_state() shows them, the
-- calendars they use, its vendor deadlines, and the database's now (sla.c computes the
-- elapsed times and renders the answer).
CREATE FUNCTION dispatch.sla_view(p_number text) RETURNS json
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    t dispatch.tickets;
BEGIN
    SELECT * INTO t FROM dispatch.tickets WHERE number = p_number;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('dispatch knows no ticket %s', p_number));
    END IF;
    RETURN dispatch.ok(200, jsonb_build_object(
        'now_us', dispatch.epoch_us(clock_timestamp()),
        'ticket', dispatch.sla_ticket_state(t),
        'calendars', dispatch.sla_calendars_of(ARRAY[t.id]),
        'references', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                       'target', d.target, 'reference_id', d.reference_id, 'level', d.level,
                       'id', d.id::text, 'state', d.state, 'due_at', dispatch.ts(d.due_at),
                       'fired_at', dispatch.ts(d.fired_at)) ORDER BY d.due_at, d.id)
              FROM dispatch.sla_deadlines d
             WHERE d.ticket_id = t.id AND d.reference_id IS NOT NULL), '[]')));
END
$$;

-- --- calendars and policies over HTTP ------------------------------------------------------

CREATE FUNCTION dispatch.sla_calendar_create(p_name text, p_calendar jsonb) RETURNS json
    LANGUAGE plpgsql AS $$
DECLARE
    k dispatch.sla_calendars;
BEGIN
    IF EXISTS (SELECT 1 FROM dispatch.sla_calendars WHERE name = p_name) THEN
        RETURN dispatch.err(409, 'name_taken', format('a calendar named %s exists', p_name),
                            'name');
    END IF;
    INSERT INTO dispatch.sla_calendars (name, calendar) VALUES (p_name, p_calendar)
    RETURNING * INTO k;
    RETURN dispatch.ok(201, dispatch.sla_calendar_doc(k));
END
$$;

-- A changed calendar re-computes every open clock whose policy uses it.
CREATE FUNCTION dispatch.sla_calendar_patch(p_name text, p_calendar jsonb, p_expected bigint)
    RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    k dispatch.sla_calendars;
BEGIN
    SELECT * INTO k FROM dispatch.sla_calendars WHERE name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('no calendar named %s', p_name));
    END IF;
    IF k.is_builtin THEN
        RETURN dispatch.err(409, 'builtin', format('calendar %s is built in', p_name), 'name');
    END IF;
    IF p_expected IS NOT NULL AND p_expected <> k.version THEN
        RETURN dispatch.err(409, 'version_conflict',
                            format('calendar %s is at version %s', p_name, k.version),
                            'expected_version');
    END IF;
    IF k.calendar = p_calendar THEN
        RETURN dispatch.ok(200, dispatch.sla_calendar_doc(k));
    END IF;
    UPDATE dispatch.sla_calendars SET calendar = p_calendar, version = version + 1,
                                      updated_at = now()
     WHERE id = k.id RETURNING * INTO k;
    UPDATE dispatch.sla_clocks c SET gen = c.gen + 1
      FROM dispatch.sla_policies p
     WHERE p.id = c.policy_id AND p.calendar_id = k.id AND c.state IN ('running', 'paused');
    IF FOUND THEN
        PERFORM pg_notify('dispatch_deadlines', '');
    END IF;
    RETURN dispatch.ok(200, dispatch.sla_calendar_doc(k));
END
$$;

CREATE FUNCTION dispatch.sla_calendar_get(p_name text) RETURNS json
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    k dispatch.sla_calendars;
BEGIN
    SELECT * INTO k FROM dispatch.sla_calendars WHERE name = p_name;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('no calendar named %s', p_name));
    END IF;
    RETURN dispatch.ok(200, dispatch.sla_calendar_doc(k));
END
$$;

CREATE FUNCTION dispatch.sla_calendar_list() RETURNS json
    LANGUAGE sql STABLE AS $$
    SELECT dispatch.ok(200, jsonb_build_object('items', coalesce(
        (SELECT jsonb_agg(dispatch.sla_calendar_doc(k) ORDER BY k.name)
           FROM dispatch.sla_calendars k), '[]')))
$$;

-- Why policy p (id p_id, NULL for a new one) cannot be stored, or NULL.
CREATE FUNCTION dispatch.sla_policy_refusal(p_id uuid, p dispatch.sla_policies) RETURNS json
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    other dispatch.sla_policies;
BEGIN
    IF EXISTS (SELECT 1 FROM dispatch.sla_policies x
                WHERE x.name = p.name AND x.id IS DISTINCT FROM p_id) THEN
        RETURN dispatch.err(409, 'name_taken', format('a policy named %s exists', p.name),
                            'name');
    END IF;
    IF p.active THEN
        SELECT * INTO other FROM dispatch.sla_policies x
         WHERE x.active AND x.id IS DISTINCT FROM p_id
           AND x.priority IS NOT DISTINCT FROM p.priority
           AND x.customer_tier IS NOT DISTINCT FROM p.customer_tier
           AND x.category IS NOT DISTINCT FROM p.category;
        IF FOUND THEN
            RETURN dispatch.err(409, 'overlapping_selector', format(
                'active policy %s has the same selector (priority %s, customer_tier %s, '
                'category %s): no rule could choose between them; deactivate one',
                other.name, coalesce(p.priority, 'any'), coalesce(p.customer_tier, 'any'),
                coalesce(p.category, 'any')), 'selector');
        END IF;
    END IF;
    IF coalesce(p.first_response_s, p.arrival_s, p.resolution_s) IS NULL THEN
        RETURN dispatch.err(422, 'invalid_field', 'a policy needs at least one target',
                            'targets');
    END IF;
    RETURN NULL;
END
$$;

-- d: the validated fields (sla.c): name, selector {priority, customer_tier, category},
-- targets {first_response, arrival, resolution}, business_time, calendar,
-- warning_fractions, grace_seconds, active — on a create all of them (defaults filled),
-- on a PATCH those given (a selector or target key given as null means "any" / "none").
CREATE FUNCTION dispatch.sla_policy_merge(p dispatch.sla_policies, d jsonb)
    RETURNS dispatch.sla_policies LANGUAGE plpgsql STABLE AS $$
DECLARE
    s jsonb := coalesce(d->'selector', '{}');
    g jsonb := coalesce(d->'targets', '{}');
BEGIN
    IF d ? 'name' THEN p.name := d->>'name'; END IF;
    IF s ? 'priority' THEN p.priority := s->>'priority'; END IF;
    IF s ? 'customer_tier' THEN p.customer_tier := s->>'customer_tier'; END IF;
    IF s ? 'category' THEN p.category := s->>'category'; END IF;
    IF g ? 'first_response' THEN p.first_response_s := (g->>'first_response')::int; END IF;
    IF g ? 'arrival' THEN p.arrival_s := (g->>'arrival')::int; END IF;
    IF g ? 'resolution' THEN p.resolution_s := (g->>'resolution')::int; END IF;
    IF d ? 'business_time' THEN p.business_time := (d->>'business_time')::boolean; END IF;
    IF d ? 'warning_fractions' THEN
        p.warning_fractions := ARRAY(SELECT x::float8 FROM jsonb_array_elements_text(
                                         d->'warning_fractions') AS x ORDER BY x::float8);
    END IF;
    IF d ? 'grace_seconds' THEN p.grace_s := (d->>'grace_seconds')::int; END IF;
    IF d ? 'active' THEN p.active := (d->>'active')::boolean; END IF;
    IF d ? 'calendar' THEN
        p.calendar_id := (SELECT k.id FROM dispatch.sla_calendars k WHERE k.name = d->>'calendar');
    END IF;
    RETURN p;
END
$$;

CREATE FUNCTION dispatch.sla_policy_create(d jsonb) RETURNS json
    LANGUAGE plpgsql AS $$
DECLARE
    p dispatch.sla_policies;
    e json;
BEGIN
    p := dispatch.sla_policy_merge(p, d);
    IF p.calendar_id IS NULL THEN
        RETURN dispatch.err(422, 'invalid_field',
                            format('no calendar named %s', d->>'calendar'), 'calendar');
    END IF;
    e := dispatch.sla_policy_refusal(NULL, p);
    IF e IS NOT NULL THEN
        RETURN e;
    END IF;
    INSERT INTO dispatch.sla_policies
        (name, priority, customer_tier, category, first_response_s, arrival_s, resolution_s,
         business_time, calendar_id, warning_fractions, grace_s, active)
    VALUES (p.name, p.priority, p.customer_tier, p.category, p.first_response_s, p.arrival_s,
            p.resolution_s, p.business_time, p.calendar_id, p.warning_fractions, p.grace_s,
            p.active)
    RETURNING * INTO p;
    RETURN dispatch.ok(201, dispatch.sla_policy_doc(p));
END
$$;

-- A change to what a policy measures re-bases every open clock it governs (new targets,
-- calendar, fractions or grace over the same history); a deactivated policy is no longer
-- chosen, and the clocks that have it keep it.
CREATE FUNCTION dispatch.sla_policy_patch(p_id uuid, d jsonb, p_expected bigint) RETURNS json
    LANGUAGE plpgsql AS $$
DECLARE
    old dispatch.sla_policies;
    p dispatch.sla_policies;
    e json;
    t dispatch.tickets;
BEGIN
    SELECT * INTO old FROM dispatch.sla_policies WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('no policy %s', p_id));
    END IF;
    IF p_expected IS NOT NULL AND p_expected <> old.version THEN
        RETURN dispatch.err(409, 'version_conflict',
                            format('policy %s is at version %s', old.name, old.version),
                            'expected_version');
    END IF;
    p := dispatch.sla_policy_merge(old, d);
    IF p.calendar_id IS NULL THEN
        RETURN dispatch.err(422, 'invalid_field',
                            format('no calendar named %s', d->>'calendar'), 'calendar');
    END IF;
    IF p IS NOT DISTINCT FROM old THEN
        RETURN dispatch.ok(200, dispatch.sla_policy_doc(old)); -- nothing changes
    END IF;
    e := dispatch.sla_policy_refusal(p_id, p);
    IF e IS NOT NULL THEN
        RETURN e;
    END IF;
    UPDATE dispatch.sla_policies SET
        name = p.name, priority = p.priority, customer_tier = p.customer_tier,
        category = p.category, first_response_s = p.first_response_s, arrival_s = p.arrival_s,
        resolution_s = p.resolution_s, business_time = p.business_time,
        calendar_id = p.calendar_id, warning_fractions = p.warning_fractions,
        grace_s = p.grace_s, active = p.active, version = version + 1, updated_at = now()
     WHERE id = p_id RETURNING * INTO p;
    IF NOT EXISTS (SELECT 1 FROM dispatch.sla_policies
                    WHERE active AND priority IS NULL AND customer_tier IS NULL
                      AND category IS NULL) THEN
        RETURN dispatch.err(409, 'default_policy_required',
                            'an active policy with an empty selector must remain, so that '
                            'every ticket gets clocks', 'selector');
    END IF;
    IF (p.first_response_s, p.arrival_s, p.resolution_s, p.business_time, p.calendar_id,
        p.warning_fractions, p.grace_s)
       IS DISTINCT FROM (old.first_response_s, old.arrival_s, old.resolution_s,
                         old.business_time, old.calendar_id, old.warning_fractions,
                         old.grace_s) THEN
        IF (p.first_response_s IS NULL, p.arrival_s IS NULL, p.resolution_s IS NULL)
           IS DISTINCT FROM (old.first_response_s IS NULL, old.arrival_s IS NULL,
                             old.resolution_s IS NULL) THEN
            -- a target added or dropped: clocks to start or to cancel, ticket by ticket
            FOR t IN SELECT * FROM dispatch.tickets x
                      WHERE x.id IN (SELECT c.ticket_id FROM dispatch.sla_clocks c
                                      WHERE c.policy_id = p_id
                                        AND c.state IN ('running', 'paused'))
            LOOP
                PERFORM dispatch.sla_adopt(t, p);
                PERFORM dispatch.sla_settle(t);
            END LOOP;
        ELSE
            -- the same clocks, measured anew: the engine re-computes them
            UPDATE dispatch.sla_clocks SET gen = gen + 1
             WHERE policy_id = p_id AND state IN ('running', 'paused');
            PERFORM pg_notify('dispatch_deadlines', '');
        END IF;
    END IF;
    RETURN dispatch.ok(200, dispatch.sla_policy_doc(p));
END
$$;

CREATE FUNCTION dispatch.sla_policy_get(p_id uuid) RETURNS json
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    p dispatch.sla_policies;
BEGIN
    SELECT * INTO p FROM dispatch.sla_policies WHERE id = p_id;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('no policy %s', p_id));
    END IF;
    RETURN dispatch.ok(200, dispatch.sla_policy_doc(p));
END
$$;

-- Active ones first, each group in the order the precedence rule tries them.
CREATE FUNCTION dispatch.sla_policy_list() RETURNS json
    LANGUAGE sql STABLE AS $$
    SELECT dispatch.ok(200, jsonb_build_object('items', coalesce(
        (SELECT jsonb_agg(dispatch.sla_policy_doc(p) ORDER BY
                    NOT p.active,
                    (p.priority IS NOT NULL)::int + (p.customer_tier IS NOT NULL)::int
                    + (p.category IS NOT NULL)::int DESC,
                    p.priority IS NULL, p.customer_tier IS NULL, p.category IS NULL,
                    p.priority, p.customer_tier, p.category, p.name)
           FROM dispatch.sla_policies p), '[]')))
$$;
