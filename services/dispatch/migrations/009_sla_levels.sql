-- dispatch 009: a clock's escalation levels live in the clock's row (issue 4, assignment
-- latency at 500 tickets/s).
--
-- Until now each level of each clock was a row of sla_deadlines: about ten rows a new
-- ticket, each with four index entries and a change-queue entry, written by the engine and
-- then read back by its sync step. At 500 tickets/s those writes took about as much of the
-- database as everything else dispatch does for a ticket. Now:
--   - sla_clocks.levels holds the clock's levels as the engine computed them, one JSON
--     object each: {"id", "level", "fraction", "due_us" (epoch µs; null while paused
--     before it), "elapsed_s", "paused_s", "state" (pending, fired, cancelled),
--     "fired_us"}; next_due_at is the earliest due time of its pending levels (null: none
--     armed); version is bumped whenever levels or next_due_at change;
--   - the in-memory set (deadlines.c) holds one entry per armed clock, keyed by the
--     clock's id, due at next_due_at, at its version; sla_fire fires every pending level
--     of the clock that is due, in the same kind of conditional transaction as before;
--   - sla_save writes a clock's levels in one row update and answers with what to arm, so
--     the engine's own writes no longer go through the change queue;
--   - ids: clocks draw theirs from sla_deadlines' sequence, now in steps of 16; a clock's
--     level k has id clock id + k (k = 1..15), so a level keeps one id for ever (events
--     carry it as deadline_id) and never meets a vendor deadline's id;
--   - a vendor due date stays a row: the table is now sla_vendor_deadlines, with its
--     change queue as before; the view dispatch.sla_deadlines shows both kinds, with the
--     columns the table had.
-- The foreign keys of sla_clocks go: every new ticket's clocks took a KEY SHARE lock on the
-- same policy row (a multixact per concurrent transaction) and checked the ticket row the
-- same transaction had just written; policies and tickets are never deleted (policies are
-- deactivated), and the clocks are written only by sla_adopt, for the ticket at hand.

-- --- schema ---------------------------------------------------------------------------------

ALTER TABLE dispatch.sla_clocks DROP CONSTRAINT sla_clocks_policy_id_fkey;
ALTER TABLE dispatch.sla_clocks DROP CONSTRAINT sla_clocks_ticket_id_fkey;

ALTER SEQUENCE dispatch.sla_deadlines_id_seq INCREMENT BY 16;
SELECT setval('dispatch.sla_deadlines_id_seq',
              (coalesce((SELECT max(id) FROM dispatch.sla_deadlines), 0) / 16 + 1) * 16, false);

ALTER TABLE dispatch.sla_clocks
    ADD COLUMN id bigint,
    ADD COLUMN version int NOT NULL DEFAULT 1,
    ADD COLUMN levels jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN next_due_at timestamptz;
UPDATE dispatch.sla_clocks SET id = nextval('dispatch.sla_deadlines_id_seq');
ALTER TABLE dispatch.sla_clocks
    ALTER COLUMN id SET DEFAULT nextval('dispatch.sla_deadlines_id_seq'),
    ALTER COLUMN id SET NOT NULL,
    ADD CONSTRAINT sla_clocks_id UNIQUE (id);
-- the engine's start-up load (keyset on (next_due_at, id), with the vendor rows)
CREATE INDEX sla_clocks_armed ON dispatch.sla_clocks (next_due_at, id)
    WHERE next_due_at IS NOT NULL;

-- The levels the rows held, with their states (fired ones stay fired); every open clock is
-- marked for computation, which arms it again.
UPDATE dispatch.sla_clocks c
   SET levels = l.levels, gen = c.gen + CASE WHEN c.state IN ('running', 'paused') THEN 1 ELSE 0 END
  FROM (SELECT d.ticket_id, d.target,
               jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                   'id', x.id + d.k, 'level', d.level, 'fraction', d.fraction,
                   'due_us', dispatch.epoch_us(d.due_at), 'elapsed_s', d.elapsed_s,
                   'paused_s', d.paused_s, 'state', d.state,
                   'fired_us', dispatch.epoch_us(d.fired_at))) ORDER BY d.k) AS levels
          FROM (SELECT y.*, row_number() OVER (PARTITION BY y.ticket_id, y.target
                                                ORDER BY y.due_at NULLS LAST, y.id) AS k
                  FROM dispatch.sla_deadlines y WHERE y.reference_id IS NULL) d
          JOIN dispatch.sla_clocks x ON x.ticket_id = d.ticket_id AND x.target = d.target
         WHERE d.k <= 15
         GROUP BY d.ticket_id, d.target) l
 WHERE c.ticket_id = l.ticket_id AND c.target = l.target;
DELETE FROM dispatch.sla_changes c USING dispatch.sla_deadlines d
 WHERE d.id = c.deadline_id AND d.reference_id IS NULL;
DELETE FROM dispatch.sla_deadlines WHERE reference_id IS NULL;

ALTER TABLE dispatch.sla_deadlines RENAME TO sla_vendor_deadlines;
ALTER TABLE dispatch.sla_vendor_deadlines ADD CONSTRAINT sla_vendor_deadlines_reference
    CHECK (reference_id IS NOT NULL);
DROP INDEX dispatch.sla_deadlines_level;
DROP INDEX dispatch.sla_deadlines_clock;

-- Every deadline, of clocks and vendors, with the columns sla_deadlines had (diagnosis,
-- tests, reports). version is the clock's for a clock's level.
CREATE VIEW dispatch.sla_deadlines AS
SELECT (l.e->>'id')::bigint AS id, c.ticket_id, c.target, l.e->>'level' AS level,
       (l.e->>'fraction')::float8 AS fraction,
       dispatch.from_epoch_us((l.e->>'due_us')::bigint) AS due_at, l.e->>'state' AS state,
       c.version, coalesce((l.e->>'elapsed_s')::bigint, 0) AS elapsed_s,
       coalesce((l.e->>'paused_s')::bigint, 0) AS paused_s, NULL::uuid AS reference_id,
       dispatch.from_epoch_us((l.e->>'fired_us')::bigint) AS fired_at
  FROM dispatch.sla_clocks c CROSS JOIN LATERAL jsonb_array_elements(c.levels) AS l(e)
UNION ALL
SELECT v.id, v.ticket_id, v.target, v.level, v.fraction, v.due_at, v.state, v.version,
       v.elapsed_s, v.paused_s, v.reference_id, v.fired_at
  FROM dispatch.sla_vendor_deadlines v;

-- What the engine arms: each armed clock at its next due time, each pending vendor
-- deadline (the start-up load reads it in (due_at, id) order).
CREATE VIEW dispatch.sla_armed AS
SELECT c.id, c.next_due_at AS due_at, c.version
  FROM dispatch.sla_clocks c WHERE c.next_due_at IS NOT NULL
UNION ALL
SELECT v.id, v.due_at, v.version
  FROM dispatch.sla_vendor_deadlines v WHERE v.state = 'pending' AND v.due_at IS NOT NULL;

-- --- the hooks ----------------------------------------------------------------------------

-- As in 004, except that a new ticket whose clocks start running has nothing to settle.
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
    IF is_new AND dispatch.sla_phase(t.status) = 'running' THEN
        PERFORM pg_notify('dispatch_deadlines', ''); -- the engine computes the new clocks
        RETURN;
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

-- Levels with every pending one cancelled.
CREATE FUNCTION dispatch.sla_levels_cancel(levels jsonb) RETURNS jsonb
    LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(jsonb_agg(CASE WHEN l.e->>'state' = 'pending'
                                   THEN l.e || '{"state": "cancelled"}' ELSE l.e END
                              ORDER BY l.n), '[]')
      FROM jsonb_array_elements(levels) WITH ORDINALITY AS l(e, n)
$$;

-- As in 004, but a stopped clock's pending levels are cancelled in its row and nothing is
-- armed for a clock that stopped or paused (the engine's computation arms it again).
CREATE OR REPLACE FUNCTION dispatch.sla_settle(t dispatch.tickets) RETURNS void
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
    UPDATE dispatch.sla_clocks c
       SET state = n.state, stopped_at = n.stopped_at, gen = c.gen + 1,
           next_due_at = CASE WHEN n.state = 'running' THEN c.next_due_at END,
           version = c.version + CASE WHEN n.state = 'running' OR c.next_due_at IS NULL
                                      THEN 0 ELSE 1 END,
           levels = CASE WHEN n.state IN ('met', 'cancelled') THEN dispatch.sla_levels_cancel(c.levels)
                         ELSE c.levels END
      FROM n
     WHERE c.ticket_id = n.ticket_id AND c.target = n.target
       -- (only what changed is computed again: sla_adopt marks a new policy itself)
       AND (c.state, c.stopped_at) IS DISTINCT FROM (n.state, n.stopped_at);
    IF t.status = 'cancelled' THEN
        UPDATE dispatch.sla_vendor_deadlines SET state = 'cancelled'
         WHERE ticket_id = t.id AND state = 'pending';
    END IF;
    PERFORM pg_notify('dispatch_deadlines', '');
END
$$;

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
    INSERT INTO dispatch.sla_vendor_deadlines AS d
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
    UPDATE dispatch.sla_vendor_deadlines SET state = 'cancelled'
     WHERE reference_id = p_reference_id AND state = 'pending'
$$;

-- --- the engine's statements --------------------------------------------------------------

-- The queued changes of vendor deadlines (clocks are armed from sla_save's answer).
CREATE OR REPLACE FUNCTION dispatch.sla_changes_take(p_limit int) RETURNS json
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
                  FROM ids JOIN dispatch.sla_vendor_deadlines d ON d.id = ids.deadline_id),
                '[]')))
$$;

-- What the engine needs to compute the clocks of tickets p_ids — {"tickets": [...],
-- "policies": {...}, "calendars": {...}}: each ticket with its status history as
-- [epoch µs, phase] (0 run, 1 pause, 2 stop) and its clocks, each with its policy's id and
-- its levels; the policies once (each: "id", "name", "targets" {"first_response",
-- "arrival", "resolution"} in seconds or null, "grace_s", "business_time", "calendar_id",
-- "calendar" (its name), "fractions"); the calendars once ({"<id>": {"version",
-- "calendar"}}). p_view: each clock's levels also as GET .../sla shows them ("deadlines").
-- PL/pgSQL and set-based on purpose: its plans are prepared once per session, where a
-- per-ticket SQL function was planned again on every call (~2 ms a batch); json, not jsonb:
-- the engine only reads it, and building json is several times cheaper.
CREATE FUNCTION dispatch.sla_state(p_ids uuid[], p_view boolean) RETURNS json
    LANGUAGE plpgsql STABLE
    -- (index lookups always: see 004)
    SET enable_seqscan = off
    SET enable_bitmapscan = off
    AS $$
DECLARE
    v_tickets json;
    v_policies json;
    v_calendars json;
BEGIN
    SELECT coalesce(json_agg(json_build_object(
               'ticket_id', t.id, 'number', t.number, 'priority', t.priority,
               'status', t.status, 'history', h.history, 'clocks', c.clocks)), '[]')
      INTO v_tickets
      FROM dispatch.tickets t
     CROSS JOIN LATERAL (
           SELECT coalesce(json_agg(json_build_array(
                      dispatch.epoch_us(x.at),
                      CASE WHEN dispatch.is_paused_status(x.status) THEN 1
                           WHEN x.status IN ('resolved', 'closed', 'cancelled') THEN 2
                           ELSE 0 END) ORDER BY x.at, x.version), '[]') AS history
             FROM dispatch.ticket_status_history x WHERE x.ticket_id = t.id) h
     CROSS JOIN LATERAL (
           SELECT coalesce(json_agg(json_build_object(
                      'id', k.id, 'target', k.target, 'gen', k.gen, 'state', k.state,
                      'started_at_us', dispatch.epoch_us(k.started_at),
                      'stopped_at_us', dispatch.epoch_us(k.stopped_at),
                      'met_at', dispatch.ts(k.met_at),
                      'breached_at', dispatch.ts(k.breached_at),
                      'policy_id', k.policy_id, 'levels', k.levels,
                      'deadlines', CASE WHEN p_view THEN coalesce((
                          SELECT json_agg(json_build_object(
                                     'id', l.e->>'id', 'level', l.e->'level',
                                     'fraction', l.e->'fraction', 'state', l.e->'state',
                                     'due_at', dispatch.ts(dispatch.from_epoch_us(
                                                   (l.e->>'due_us')::bigint)),
                                     'fired_at', dispatch.ts(dispatch.from_epoch_us(
                                                   (l.e->>'fired_us')::bigint)))
                                     ORDER BY (l.e->>'due_us')::bigint NULLS LAST,
                                              (l.e->>'id')::bigint)
                            FROM jsonb_array_elements(k.levels) AS l(e)), '[]') END)
                      ORDER BY array_position(ARRAY['first_response', 'arrival', 'resolution'],
                                              k.target)), '[]') AS clocks
             FROM dispatch.sla_clocks k WHERE k.ticket_id = t.id) c
     WHERE t.id = ANY (p_ids);

    SELECT coalesce(json_object_agg(p.id, json_build_object(
               'id', p.id, 'name', p.name,
               'targets', json_build_object('first_response', p.first_response_s,
                                             'arrival', p.arrival_s,
                                             'resolution', p.resolution_s),
               'grace_s', p.grace_s, 'business_time', p.business_time,
               'calendar_id', p.calendar_id, 'calendar', k.name,
               'fractions', to_json(p.warning_fractions))), '{}')
      INTO v_policies
      FROM dispatch.sla_policies p JOIN dispatch.sla_calendars k ON k.id = p.calendar_id
     WHERE p.id IN (SELECT DISTINCT x.policy_id FROM dispatch.sla_clocks x
                     WHERE x.ticket_id = ANY (p_ids));
    SELECT coalesce(json_object_agg(k.id, json_build_object('version', k.version,
                                                            'calendar', k.calendar)), '{}')
      INTO v_calendars
      FROM dispatch.sla_calendars k
     WHERE k.id IN (SELECT p.calendar_id FROM dispatch.sla_policies p
                     WHERE p.id IN (SELECT DISTINCT x.policy_id FROM dispatch.sla_clocks x
                                     WHERE x.ticket_id = ANY (p_ids)));
    RETURN json_build_object('tickets', v_tickets, 'policies', v_policies,
                              'calendars', v_calendars);
END
$$;

CREATE OR REPLACE FUNCTION dispatch.sla_dirty(p_limit int) RETURNS json
    LANGUAGE plpgsql STABLE
    SET enable_seqscan = off
    SET enable_bitmapscan = off
    AS $$
DECLARE
    ids uuid[];
BEGIN
    SELECT array_agg(DISTINCT x.ticket_id) INTO ids
      FROM (SELECT c.ticket_id FROM dispatch.sla_clocks c WHERE c.gen <> c.computed_gen
             ORDER BY c.ticket_id LIMIT p_limit * 3) x;
    RETURN json_build_object('status', 200, 'body', dispatch.sla_state(coalesce(ids, '{}'), false),
                             'events', '[]'::json);
END
$$;
DROP FUNCTION dispatch.sla_ticket_state(dispatch.tickets);
DROP FUNCTION dispatch.sla_calendars_of(uuid[]);

-- The engine's computation for clocks (sla.c): {"clocks": [{"ticket_id", "target", "gen",
-- "keep" (true: computing failed, the clock stays as it is), "due_at_us" (100 %, null
-- while paused), "levels" (the clock's new levels: the ones it had, fired ones untouched,
-- merged with the computed ones), "next_due_us" (the earliest pending level's due time,
-- null: nothing to arm)}]}. A clock changed since it was read (gen moved on), or locked by
-- a transaction in flight (the consumer's: SKIP LOCKED, so the engine never waits for it
-- nor deadlocks with it), is skipped: it is still dirty and comes back. A clock read dirty
-- cannot fire before it is saved (sla_fire skips dirty clocks), so the fired levels the
-- engine read are still the fired levels. Answers "armed": [id, due_us or null, version]
-- for each clock saved.
CREATE OR REPLACE FUNCTION dispatch.sla_save(p jsonb) RETURNS json
    LANGUAGE plpgsql
    -- (index lookups always, as in 004; the plan is now kept for the session: with one
    -- row update per clock there is no plan the batch size could make worse)
    SET enable_seqscan = off
    SET enable_bitmapscan = off
    AS $$
DECLARE
    n_all int := jsonb_array_length(coalesce(p->'clocks', '[]'));
    n_saved int;
    v_armed json;
BEGIN
    WITH c AS (
        SELECT (e->>'ticket_id')::uuid AS ticket_id, e->>'target' AS target,
               (e->>'gen')::bigint AS gen, coalesce(e->>'keep' = 'true', false) AS keep,
               dispatch.from_epoch_us((e->>'due_at_us')::bigint) AS due_at,
               coalesce(e->'levels', '[]') AS levels,
               dispatch.from_epoch_us((e->>'next_due_us')::bigint) AS next_due_at
          FROM jsonb_array_elements(coalesce(p->'clocks', '[]')) AS e),
    lk AS (
        SELECT x.ticket_id, x.target FROM dispatch.sla_clocks x
          JOIN c ON c.ticket_id = x.ticket_id AND c.target = x.target AND c.gen = x.gen
         ORDER BY x.ticket_id, x.target
           FOR UPDATE OF x SKIP LOCKED),
    upd AS (
        UPDATE dispatch.sla_clocks x
           SET computed_gen = x.gen,
               due_at = CASE WHEN c.keep THEN x.due_at ELSE c.due_at END,
               levels = CASE WHEN c.keep THEN x.levels ELSE c.levels END,
               next_due_at = CASE WHEN c.keep THEN x.next_due_at ELSE c.next_due_at END,
               version = x.version
                   + CASE WHEN c.keep OR (x.levels, x.next_due_at)
                                         IS NOT DISTINCT FROM (c.levels, c.next_due_at)
                          THEN 0 ELSE 1 END
          FROM c JOIN lk ON lk.ticket_id = c.ticket_id AND lk.target = c.target
         WHERE x.ticket_id = c.ticket_id AND x.target = c.target
        RETURNING x.id, x.next_due_at, x.version)
    SELECT count(*), coalesce(json_agg(json_build_array(
                                  upd.id, dispatch.epoch_us(upd.next_due_at), upd.version)),
                              '[]')
      INTO n_saved, v_armed
      FROM upd;
    RETURN dispatch.ok(200, jsonb_build_object('saved', n_saved, 'stale', n_all - n_saved,
                                               'armed', v_armed));
END
$$;

-- Fires what the engine found due: p_ids are clock ids and vendor deadline ids, each at
-- the version it armed. A clock that is still at that version, computed (no
-- re-computation waiting) and due (a second of clock skew allowed) fires each of its
-- pending levels that is due; a vendor deadline fires when it is still pending at that
-- version and due. Each firing is marked in this transaction together with its event
-- (sla.warning, sla.breached or sla.escalated), so it happens exactly once. A breach marks
-- its clock breached; an escalation asks assignment to re-dispatch the ticket. What is
-- still armed comes back in "rearm" ([id, due_us, version]).
CREATE OR REPLACE FUNCTION dispatch.sla_fire(p_ids bigint[], p_versions int[]) RETURNS json
    LANGUAGE plpgsql
    SET plan_cache_mode = force_custom_plan
    SET enable_seqscan = off
    SET enable_bitmapscan = off
    AS $$
DECLARE
    now_ts timestamptz := clock_timestamp();
    due_us bigint := dispatch.epoch_us(clock_timestamp() + interval '1 second');
    events jsonb;
    fired jsonb;
    escalated uuid[];
    rearm jsonb;
BEGIN
    PERFORM set_config('dispatch.sla_quiet', 'on', true); -- the engine knows what it fired
    -- clocks in the order every hook locks them
    PERFORM 1 FROM dispatch.sla_clocks x WHERE x.id = ANY (p_ids)
     ORDER BY x.ticket_id, x.target FOR UPDATE OF x;
    WITH k AS (
        SELECT x.* FROM dispatch.sla_clocks x
          JOIN unnest(p_ids, p_versions) AS u(id, version)
            ON x.id = u.id AND x.version = u.version
         WHERE x.next_due_at <= now_ts + interval '1 second' AND x.gen = x.computed_gen),
    lv AS (
        SELECT k.id AS clock_id, l.e, l.n,
               (l.e->>'state' = 'pending' AND (l.e->>'due_us')::bigint <= due_us) AS is_due
          FROM k CROSS JOIN LATERAL jsonb_array_elements(k.levels) WITH ORDINALITY AS l(e, n)),
    nl AS (
        SELECT lv.clock_id,
               jsonb_agg(CASE WHEN lv.is_due
                              THEN lv.e || jsonb_build_object('state', 'fired', 'fired_us',
                                                              dispatch.epoch_us(now_ts))
                              ELSE lv.e END ORDER BY lv.n) AS levels,
               min((lv.e->>'due_us')::bigint)
                   FILTER (WHERE NOT lv.is_due AND lv.e->>'state' = 'pending') AS next_us,
               bool_or(lv.is_due AND lv.e->>'level' = 'breach') AS is_breach
          FROM lv GROUP BY lv.clock_id),
    cu AS (
        UPDATE dispatch.sla_clocks x
           SET levels = nl.levels, next_due_at = dispatch.from_epoch_us(nl.next_us),
               version = x.version + 1,
               breached_at = CASE WHEN nl.is_breach THEN coalesce(x.breached_at, now_ts)
                                  ELSE x.breached_at END
          FROM nl WHERE x.id = nl.clock_id
        RETURNING x.*),
    vf AS (
        UPDATE dispatch.sla_vendor_deadlines x SET state = 'fired', fired_at = now_ts
          FROM unnest(p_ids, p_versions) AS u(id, version)
         WHERE x.id = u.id AND x.version = u.version AND x.state = 'pending'
           AND x.due_at <= now_ts + interval '1 second'
        RETURNING x.*),
    f AS ( -- what fired, one row each: the clock's levels, then the vendors'
        SELECT (lv.e->>'id')::bigint AS id, cu.ticket_id, cu.target, lv.e->>'level' AS level,
               (lv.e->>'fraction')::float8 AS fraction,
               dispatch.from_epoch_us((lv.e->>'due_us')::bigint) AS due_at,
               coalesce((lv.e->>'elapsed_s')::bigint, 0) AS elapsed_s,
               coalesce((lv.e->>'paused_s')::bigint, 0) AS paused_s,
               NULL::uuid AS reference_id, cu.policy_id, cu.started_at, cu.due_at AS clock_due_at,
               CASE WHEN cu.state IN ('running', 'paused') AND cu.breached_at IS NOT NULL
                    THEN 'breached' ELSE cu.state END AS clock_state
          FROM lv JOIN cu ON cu.id = lv.clock_id
         WHERE lv.is_due
        UNION ALL
        SELECT vf.id, vf.ticket_id, vf.target, vf.level, vf.fraction, vf.due_at, vf.elapsed_s,
               vf.paused_s, vf.reference_id, NULL, NULL, NULL, NULL
          FROM vf),
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
                           'started_at', dispatch.ts(f.started_at),
                           'elapsed_seconds', f.elapsed_s, 'paused_seconds', f.paused_s,
                           'due_at', dispatch.ts(f.clock_due_at), 'state', f.clock_state)
                       ELSE jsonb_build_object('target', 'SLA_TARGET_VENDOR_DUE',
                                               'due_at', dispatch.ts(f.due_at),
                                               'state', 'breached') END,
                       'level', 'SLA_LEVEL_' || upper(f.level), 'fraction', f.fraction,
                       'deadline_id', f.id::text, 'due_at', dispatch.ts(f.due_at),
                       'fired_at', dispatch.ts(now_ts),
                       'notify_role', CASE f.level WHEN 'warning' THEN 'assignee'
                                                   WHEN 'breach' THEN 'supervisor'
                                                   ELSE 'manager' END,
                       'assignee_engineer_id', dispatch.current_engineer(f.ticket_id),
                       'reference_id', f.reference_id))) AS event
          FROM f
          JOIN dispatch.tickets t ON t.id = f.ticket_id
          LEFT JOIN dispatch.sla_policies p ON p.id = f.policy_id)
    SELECT coalesce(jsonb_agg(e.event ORDER BY e.due_at, e.id), '[]'),
           coalesce(jsonb_agg(jsonb_build_array(e.id, dispatch.epoch_us(e.due_at))), '[]'),
           array_agg(e.ticket_id) FILTER (WHERE e.level = 'escalation' AND NOT e.is_vendor)
      INTO events, fired, escalated
      FROM e;
    PERFORM dispatch.redispatch(x.id, 'SLA breached and its grace period passed')
       FROM (SELECT DISTINCT unnest(escalated) AS id) AS x;
    SELECT coalesce(jsonb_agg(jsonb_build_array(a.id, dispatch.epoch_us(a.due_at), a.version)),
                    '[]')
      INTO rearm
      FROM (SELECT x.id, x.next_due_at AS due_at, x.version FROM dispatch.sla_clocks x
             WHERE x.id = ANY (p_ids) AND x.next_due_at IS NOT NULL AND x.gen = x.computed_gen
            UNION ALL
            SELECT x.id, x.due_at, x.version FROM dispatch.sla_vendor_deadlines x
             WHERE x.id = ANY (p_ids) AND x.state = 'pending' AND x.due_at IS NOT NULL) a;
    RETURN dispatch.ok(200, jsonb_build_object('fired', fired, 'rearm', rearm), events);
END
$$;

CREATE OR REPLACE FUNCTION dispatch.sla_view(p_number text) RETURNS json
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    t dispatch.tickets;
    v json;
BEGIN
    SELECT * INTO t FROM dispatch.tickets WHERE number = p_number;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('dispatch knows no ticket %s', p_number));
    END IF;
    v := dispatch.sla_state(ARRAY[t.id], true);
    RETURN dispatch.ok(200, jsonb_build_object(
        'now_us', dispatch.epoch_us(clock_timestamp()),
        'ticket', (v->'tickets'->0)::jsonb, 'policies', (v->'policies')::jsonb,
        'calendars', (v->'calendars')::jsonb,
        'references', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                       'target', d.target, 'reference_id', d.reference_id, 'level', d.level,
                       'id', d.id::text, 'state', d.state, 'due_at', dispatch.ts(d.due_at),
                       'fired_at', dispatch.ts(d.fired_at)) ORDER BY d.due_at, d.id)
              FROM dispatch.sla_vendor_deadlines d WHERE d.ticket_id = t.id), '[]')));
END
$$;
