-- dispatch 008: difficult cases (issue 4, item 6). A ticket is flagged as difficult: the
-- case gets an owner and a tracking file (notes), and escalates up the chain engineer ->
-- supervisor -> manager, with a reason, when it is beyond the owner's authority; it is
-- closed with a resolution. Every step is an entry in dispatch.case_entries and an event
-- (CaseStep, topics case.*).
--
-- The owner always fits the case's level: at level 'engineer' a technical_support,
-- field_engineer or depot_technician; at 'supervisor' a supervisor; at 'manager' a
-- manager. One open case per ticket; a closed case is read-only (a new one may be
-- flagged). Operations answer ops.c (services/dispatch/ops.h); cases.c has checked shapes.

CREATE TABLE dispatch.difficult_cases (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq                bigserial NOT NULL UNIQUE,       -- keyset pagination, newest first
    ticket_id          uuid NOT NULL REFERENCES dispatch.tickets (id),
    state              text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'closed')),
    level              text NOT NULL DEFAULT 'engineer'
        CHECK (level IN ('engineer', 'supervisor', 'manager')),
    owner_engineer_id  uuid NOT NULL REFERENCES dispatch.engineers (id),
    reason             text NOT NULL CHECK (length(reason) BETWEEN 1 AND 4000),
    resolution         text,
    notes              int NOT NULL DEFAULT 0,           -- tracking notes so far
    version            bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_by         text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    closed_at          timestamptz,
    CHECK ((state = 'closed') = (closed_at IS NOT NULL)),
    CHECK ((state = 'closed') = (resolution IS NOT NULL))
);
CREATE UNIQUE INDEX difficult_cases_open ON dispatch.difficult_cases (ticket_id)
    WHERE state = 'open';
CREATE INDEX difficult_cases_ticket ON dispatch.difficult_cases (ticket_id, seq);
CREATE INDEX difficult_cases_list ON dispatch.difficult_cases (state, level, seq);
CREATE INDEX difficult_cases_owner ON dispatch.difficult_cases (owner_engineer_id)
    WHERE state = 'open';

-- The tracking file: every step of the case, in order.
CREATE TABLE dispatch.case_entries (
    seq                bigserial PRIMARY KEY,
    case_id            uuid NOT NULL REFERENCES dispatch.difficult_cases (id),
    kind               text NOT NULL
        CHECK (kind IN ('flagged', 'noted', 'escalated', 'owner_changed', 'closed')),
    text               text NOT NULL,    -- the reason, note or resolution
    from_level         text,
    to_level           text,
    owner_engineer_id  uuid,             -- the owner after the step
    actor              text NOT NULL,    -- the token's name
    at                 timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX case_entries_case ON dispatch.case_entries (case_id, seq);

-- --- levels ------------------------------------------------------------------------------

-- The case level an engineer of this role can own.
CREATE FUNCTION dispatch.case_level_of_role(p_role text) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_role IN ('supervisor', 'manager') THEN p_role ELSE 'engineer' END
$$;

-- The level above p_level (NULL above manager).
CREATE FUNCTION dispatch.case_next_level(p_level text) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p_level WHEN 'engineer' THEN 'supervisor' WHEN 'supervisor' THEN 'manager' END
$$;

-- Why engineer p_engineer_id cannot own a case at p_level (an error naming p_field), or
-- NULL. Locks the engineer row (FOR SHARE): the role holds until the caller commits.
CREATE FUNCTION dispatch.case_refuse_owner(p_engineer_id uuid, p_level text, p_field text)
    RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    e dispatch.engineers;
BEGIN
    SELECT * INTO e FROM dispatch.engineers WHERE id = p_engineer_id FOR SHARE;
    IF NOT FOUND THEN
        RETURN dispatch.err(422, 'unknown_reference', format('no engineer %s', p_engineer_id),
                            p_field);
    END IF;
    IF dispatch.case_level_of_role(e.role) <> p_level THEN
        RETURN dispatch.err(422, 'invalid_field', format(
            '%s is a %s: a case at the %s level is owned by %s', e.name, e.role, p_level,
            CASE p_level WHEN 'engineer'
                         THEN 'a technical_support, field_engineer or depot_technician'
                         ELSE 'a ' || p_level END), p_field);
    END IF;
    RETURN NULL;
END
$$;

-- An owner for a case of ticket t at p_level: an engineer of that level who is not on
-- leave, preferring the available ones, then those serving the ticket's region, then
-- those owning the fewest open cases. NULL when there is none.
CREATE FUNCTION dispatch.case_pick_owner(p_level text, t dispatch.tickets) RETURNS uuid
    LANGUAGE sql STABLE AS $$
    SELECT e.id FROM dispatch.engineers e
     WHERE dispatch.case_level_of_role(e.role) = p_level AND e.availability <> 'on_leave'
     ORDER BY (e.availability = 'available') DESC, (t.region = ANY (e.regions)) DESC,
              (SELECT count(*) FROM dispatch.difficult_cases c
                WHERE c.owner_engineer_id = e.id AND c.state = 'open'),
              e.seq
     LIMIT 1
$$;

-- --- rendering ---------------------------------------------------------------------------

-- DifficultCase of dispatch.proto.
CREATE FUNCTION dispatch.case_msg(c dispatch.difficult_cases) RETURNS jsonb
    LANGUAGE sql STABLE AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object(
        'id', c.id, 'ticket_id', c.ticket_id, 'owner_engineer_id', c.owner_engineer_id,
        'owner_name', (SELECT e.name FROM dispatch.engineers e WHERE e.id = c.owner_engineer_id),
        'level', c.level, 'state', c.state, 'reason', c.reason, 'notes', c.notes,
        'version', c.version, 'created_at', dispatch.ts(c.created_at),
        'updated_at', dispatch.ts(c.updated_at)))
$$;

-- The case as the API shows it; p_full adds the notes and the whole history.
CREATE FUNCTION dispatch.case_doc(c dispatch.difficult_cases, p_full boolean) RETURNS jsonb
    LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', c.id, 'ticket_id', c.ticket_id,
        'ticket_number', (SELECT t.number FROM dispatch.tickets t WHERE t.id = c.ticket_id),
        'state', c.state, 'level', c.level, 'owner_engineer_id', c.owner_engineer_id,
        'owner_name', e.name, 'owner_role', e.role, 'reason', c.reason,
        'resolution', c.resolution, 'notes_count', c.notes, 'version', c.version,
        'created_by', c.created_by, 'created_at', dispatch.ts(c.created_at),
        'updated_at', dispatch.ts(c.updated_at), 'closed_at', dispatch.ts(c.closed_at))
        || CASE WHEN p_full THEN jsonb_build_object(
            'notes', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                          'at', dispatch.ts(x.at), 'actor', x.actor,
                                          'note', x.text) ORDER BY x.seq), '[]')
                        FROM dispatch.case_entries x
                       WHERE x.case_id = c.id AND x.kind = 'noted'),
            'history', (SELECT coalesce(jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                                            'kind', x.kind, 'at', dispatch.ts(x.at),
                                            'actor', x.actor, 'text', x.text,
                                            'from_level', x.from_level, 'to_level', x.to_level,
                                            'owner_engineer_id', x.owner_engineer_id))
                                        ORDER BY x.seq), '[]')
                          FROM dispatch.case_entries x WHERE x.case_id = c.id))
           ELSE '{}'::jsonb END
      FROM (SELECT NULL) AS one
      LEFT JOIN dispatch.engineers e ON e.id = c.owner_engineer_id
$$;

-- case.* (CaseStep) about case c of ticket t.
CREATE FUNCTION dispatch.case_event(p_topic text, t dispatch.tickets,
                                    c dispatch.difficult_cases, p_note text, p_from text,
                                    p_to text, p_actor text)
    RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT dispatch.ticket_event(p_topic, t, 'case_step', jsonb_strip_nulls(jsonb_build_object(
        'difficult_case', dispatch.case_msg(c), 'note', p_note, 'from_level', p_from,
        'to_level', p_to, 'actor', p_actor)))
$$;

-- Writes the entry of a step.
CREATE FUNCTION dispatch.case_entry(c dispatch.difficult_cases, p_kind text, p_text text,
                                    p_from text, p_to text, p_actor text)
    RETURNS void LANGUAGE sql AS $$
    INSERT INTO dispatch.case_entries (case_id, kind, text, from_level, to_level,
                                       owner_engineer_id, actor)
    VALUES (c.id, p_kind, p_text, p_from, p_to, c.owner_engineer_id, p_actor)
$$;

-- The case p_id locked, and its ticket; c.id IS NULL when there is none.
CREATE FUNCTION dispatch.case_lock(p_id uuid, OUT c dispatch.difficult_cases,
                                   OUT t dispatch.tickets)
    LANGUAGE plpgsql AS $$
BEGIN
    SELECT * INTO c FROM dispatch.difficult_cases WHERE id = p_id FOR UPDATE;
    IF FOUND THEN
        SELECT * INTO t FROM dispatch.tickets WHERE id = c.ticket_id;
    END IF;
END
$$;

CREATE FUNCTION dispatch.case_not_found(p_id uuid) RETURNS json
    LANGUAGE sql IMMUTABLE AS $$
    SELECT dispatch.err(404, 'not_found', format('no difficult case %s', p_id))
$$;

CREATE FUNCTION dispatch.case_closed_error(c dispatch.difficult_cases, p_what text)
    RETURNS json LANGUAGE sql IMMUTABLE AS $$
    SELECT dispatch.err(409, 'illegal_transition', format(
        'case %s was closed at %s: %s', c.id, dispatch.ts(c.closed_at), p_what))
$$;

-- --- operations --------------------------------------------------------------------------

-- POST /v1/tickets/{number}/case. The owner: p_owner, else the engineer holding the ticket
-- (dispatch.current_engineer) when that one fits the engineer level; else 422.
CREATE FUNCTION dispatch.case_flag(p_number text, p_actor text, p_reason text, p_owner uuid)
    RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    t dispatch.tickets;
    c dispatch.difficult_cases;
    owner uuid := p_owner;
    open_id uuid;
    refusal json;
BEGIN
    SELECT * INTO t FROM dispatch.tickets WHERE number = p_number;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('dispatch knows no ticket %s', p_number));
    END IF;
    IF t.status IN ('closed', 'cancelled') THEN
        RETURN dispatch.err(409, 'conflict',
                            format('ticket %s is %s: it cannot be flagged as difficult',
                                   t.number, t.status));
    END IF;
    SELECT id INTO open_id FROM dispatch.difficult_cases
     WHERE ticket_id = t.id AND state = 'open';
    IF FOUND THEN
        RETURN dispatch.err(409, 'conflict', format(
            'ticket %s is flagged already: difficult case %s is open', t.number, open_id));
    END IF;
    IF owner IS NULL THEN
        owner := dispatch.current_engineer(t.id);
        IF owner IS NOT NULL AND dispatch.case_refuse_owner(owner, 'engineer', '') IS NOT NULL
        THEN
            owner := NULL;
        END IF;
        IF owner IS NULL THEN
            RETURN dispatch.err(422, 'missing_field', format(
                'ticket %s has no engineer who could own the case: name owner_engineer_id',
                t.number), 'owner_engineer_id');
        END IF;
    ELSE
        refusal := dispatch.case_refuse_owner(owner, 'engineer', 'owner_engineer_id');
        IF refusal IS NOT NULL THEN
            RETURN refusal;
        END IF;
    END IF;
    BEGIN
        INSERT INTO dispatch.difficult_cases (ticket_id, owner_engineer_id, reason, created_by)
        VALUES (t.id, owner, p_reason, p_actor)
        RETURNING * INTO c;
    EXCEPTION WHEN unique_violation THEN -- a concurrent flag won the race
        RETURN dispatch.err(409, 'conflict',
                            format('ticket %s was flagged meanwhile; read it again', t.number));
    END;
    PERFORM dispatch.case_entry(c, 'flagged', p_reason, NULL, 'engineer', p_actor);
    RETURN dispatch.ok(201, dispatch.case_doc(c, true), jsonb_build_array(
        dispatch.case_event('case.flagged', t, c, p_reason, NULL, c.level, p_actor)));
END
$$;

-- POST /v1/cases/{id}/notes
CREATE FUNCTION dispatch.case_note(p_id uuid, p_actor text, p_note text)
    RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    l record;
    c dispatch.difficult_cases;
BEGIN
    l := dispatch.case_lock(p_id);
    c := l.c;
    IF c.id IS NULL THEN
        RETURN dispatch.case_not_found(p_id);
    END IF;
    IF c.state = 'closed' THEN
        RETURN dispatch.case_closed_error(c, 'no more notes');
    END IF;
    UPDATE dispatch.difficult_cases SET notes = notes + 1, version = version + 1,
                                        updated_at = now()
     WHERE id = c.id RETURNING * INTO c;
    PERFORM dispatch.case_entry(c, 'noted', p_note, NULL, NULL, p_actor);
    RETURN dispatch.ok(201, dispatch.case_doc(c, true), jsonb_build_array(
        dispatch.case_event('case.noted', l.t, c, p_note, NULL, NULL, p_actor)));
END
$$;

-- POST /v1/cases/{id}/escalate: one level up, to p_owner (who must be of that level) or to
-- one chosen by dispatch.case_pick_owner().
CREATE FUNCTION dispatch.case_escalate(p_id uuid, p_actor text, p_reason text, p_owner uuid)
    RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    l record;
    c dispatch.difficult_cases;
    up text;
    owner uuid := p_owner;
    refusal json;
BEGIN
    l := dispatch.case_lock(p_id);
    c := l.c;
    IF c.id IS NULL THEN
        RETURN dispatch.case_not_found(p_id);
    END IF;
    IF c.state = 'closed' THEN
        RETURN dispatch.case_closed_error(c, 'it cannot be escalated');
    END IF;
    up := dispatch.case_next_level(c.level);
    IF up IS NULL THEN
        RETURN dispatch.err(409, 'illegal_transition', format(
            'case %s is at the manager level already: there is no level above', c.id));
    END IF;
    IF owner IS NULL THEN
        owner := dispatch.case_pick_owner(up, l.t);
        IF owner IS NULL THEN
            RETURN dispatch.err(409, 'conflict', format(
                'there is no %s to escalate to (none exists or all are on leave): name '
                'owner_engineer_id', up), 'owner_engineer_id');
        END IF;
    ELSE
        refusal := dispatch.case_refuse_owner(owner, up, 'owner_engineer_id');
        IF refusal IS NOT NULL THEN
            RETURN refusal;
        END IF;
    END IF;
    UPDATE dispatch.difficult_cases SET level = up, owner_engineer_id = owner,
                                        version = version + 1, updated_at = now()
     WHERE id = c.id RETURNING * INTO c;
    PERFORM dispatch.case_entry(c, 'escalated', p_reason, (l.c).level, up, p_actor);
    RETURN dispatch.ok(200, dispatch.case_doc(c, true), jsonb_build_array(
        dispatch.case_event('case.escalated', l.t, c, p_reason, (l.c).level, up, p_actor)));
END
$$;

-- POST /v1/cases/{id}/owner: another owner at the same level.
CREATE FUNCTION dispatch.case_set_owner(p_id uuid, p_actor text, p_owner uuid, p_reason text)
    RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    l record;
    c dispatch.difficult_cases;
    refusal json;
BEGIN
    l := dispatch.case_lock(p_id);
    c := l.c;
    IF c.id IS NULL THEN
        RETURN dispatch.case_not_found(p_id);
    END IF;
    IF c.state = 'closed' THEN
        RETURN dispatch.case_closed_error(c, 'its owner stays');
    END IF;
    refusal := dispatch.case_refuse_owner(p_owner, c.level, 'engineer_id');
    IF refusal IS NOT NULL THEN
        RETURN refusal;
    END IF;
    IF p_owner = c.owner_engineer_id THEN
        RETURN dispatch.err(409, 'conflict',
                            format('engineer %s owns case %s already', p_owner, c.id),
                            'engineer_id');
    END IF;
    UPDATE dispatch.difficult_cases SET owner_engineer_id = p_owner, version = version + 1,
                                        updated_at = now()
     WHERE id = c.id RETURNING * INTO c;
    PERFORM dispatch.case_entry(c, 'owner_changed', p_reason, NULL, NULL, p_actor);
    RETURN dispatch.ok(200, dispatch.case_doc(c, true), jsonb_build_array(
        dispatch.case_event('case.owner_changed', l.t, c, p_reason, NULL, NULL, p_actor)));
END
$$;

-- POST /v1/cases/{id}/close
CREATE FUNCTION dispatch.case_close(p_id uuid, p_actor text, p_resolution text)
    RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    l record;
    c dispatch.difficult_cases;
BEGIN
    l := dispatch.case_lock(p_id);
    c := l.c;
    IF c.id IS NULL THEN
        RETURN dispatch.case_not_found(p_id);
    END IF;
    IF c.state = 'closed' THEN
        RETURN dispatch.case_closed_error(c, 'it is closed already');
    END IF;
    UPDATE dispatch.difficult_cases SET state = 'closed', resolution = p_resolution,
                                        closed_at = now(), version = version + 1,
                                        updated_at = now()
     WHERE id = c.id RETURNING * INTO c;
    PERFORM dispatch.case_entry(c, 'closed', p_resolution, NULL, NULL, p_actor);
    RETURN dispatch.ok(200, dispatch.case_doc(c, true), jsonb_build_array(
        dispatch.case_event('case.closed', l.t, c, p_resolution, NULL, NULL, p_actor)));
END
$$;

CREATE FUNCTION dispatch.case_get(p_id uuid) RETURNS json
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    c dispatch.difficult_cases;
BEGIN
    SELECT * INTO c FROM dispatch.difficult_cases WHERE id = p_id;
    IF NOT FOUND THEN
        RETURN dispatch.case_not_found(p_id);
    END IF;
    RETURN dispatch.ok(200, dispatch.case_doc(c, true));
END
$$;

-- GET /v1/tickets/{number}/case: the ticket's open case, else its latest one.
CREATE FUNCTION dispatch.case_of_ticket(p_number text) RETURNS json
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    t dispatch.tickets;
    c dispatch.difficult_cases;
BEGIN
    SELECT * INTO t FROM dispatch.tickets WHERE number = p_number;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('dispatch knows no ticket %s', p_number));
    END IF;
    SELECT * INTO c FROM dispatch.difficult_cases WHERE ticket_id = t.id
     ORDER BY state = 'open' DESC, seq DESC LIMIT 1;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found',
                            format('ticket %s has never been flagged as difficult', p_number));
    END IF;
    RETURN dispatch.ok(200, dispatch.case_doc(c, true));
END
$$;

-- GET /v1/cases: newest first, filtered; p_cursor: seq of the last case shown.
CREATE FUNCTION dispatch.case_list(p_state text, p_level text, p_owner uuid, p_cursor bigint,
                                   p_limit int)
    RETURNS json LANGUAGE sql STABLE AS $$
    WITH page AS (
        SELECT c.seq, dispatch.case_doc(c, false) AS doc,
               row_number() OVER (ORDER BY c.seq DESC) AS n
          FROM dispatch.difficult_cases c
         WHERE (p_state IS NULL OR c.state = p_state)
           AND (p_level IS NULL OR c.level = p_level)
           AND (p_owner IS NULL OR c.owner_engineer_id = p_owner)
           AND (p_cursor IS NULL OR c.seq < p_cursor)
         ORDER BY c.seq DESC LIMIT p_limit + 1)
    SELECT dispatch.ok(200, jsonb_build_object(
        'items', coalesce((SELECT jsonb_agg(doc ORDER BY seq DESC) FROM page
                            WHERE n <= p_limit), '[]'),
        'next_cursor', CASE WHEN (SELECT count(*) FROM page) > p_limit
                            THEN (SELECT seq::text FROM page WHERE n = p_limit) END))
$$;
