-- dispatch 006: work records (work.c). A record is one visit or remote session of one
-- engineer on one ticket; its steps follow a state machine:
--
--   (created) --travel--> travel --arrived--> arrived --started--> started   (visit)
--   (created) --arrived--> arrived                                          (visit, no travel)
--   (created) --started--> started                                          (remote)
--   started|resumed --paused--> paused --resumed--> resumed
--   started|resumed --completed--> completed --confirmed--> confirmed (final)
--
-- Every step is a row of dispatch.work_steps and an event visit.<step>
-- (WorkStepRecorded). A visit's arrival, or a remote session's start, meets the SLA's
-- arrival target (dispatch.sla_on_step). work.c validates the shape of each request
-- (types, lengths, enums, the report and the confirmation); these functions check
-- everything that depends on the stored state and answer ops.c (ops.h).

CREATE TABLE dispatch.work_records (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq             bigserial NOT NULL UNIQUE,
    ticket_id       uuid NOT NULL REFERENCES dispatch.tickets (id),
    engineer_id     uuid NOT NULL REFERENCES dispatch.engineers (id),
    kind            text NOT NULL CHECK (kind IN ('visit', 'remote')),
    last_step       text CHECK (last_step IN ('travel', 'arrived', 'started', 'paused',
                                              'resumed', 'completed', 'confirmed')),
    last_step_at    timestamptz,                  -- "at" of the last step
    pause_reason    text CHECK (pause_reason IN ('waiting_parts', 'waiting_customer')),
    travel_at       timestamptz,
    arrived_at      timestamptz,
    started_at      timestamptz,
    paused_at       timestamptz,                  -- the current pause's start
    completed_at    timestamptz,
    confirmed_at    timestamptz,
    paused_seconds  bigint NOT NULL DEFAULT 0 CHECK (paused_seconds >= 0),
    report          jsonb,                        -- the completion report (API shape)
    confirmation    jsonb,                        -- the customer's confirmation (API shape)
    note            text NOT NULL DEFAULT '',
    created_by      text NOT NULL,
    version         bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((coalesce(last_step, '') = 'paused') = (pause_reason IS NOT NULL)),
    CHECK ((report IS NOT NULL) = (completed_at IS NOT NULL)),
    CHECK ((confirmation IS NOT NULL) = (confirmed_at IS NOT NULL))
);
CREATE INDEX work_records_ticket ON dispatch.work_records (ticket_id, seq);
CREATE INDEX work_records_engineer ON dispatch.work_records (engineer_id, seq);

CREATE TABLE dispatch.work_steps (
    record_id     uuid NOT NULL REFERENCES dispatch.work_records (id) ON DELETE CASCADE,
    seq           int NOT NULL,                    -- 1, 2, ... per record
    step          text NOT NULL,
    at            timestamptz NOT NULL,            -- when it happened (the engineer's word)
    note          text NOT NULL DEFAULT '',
    pause_reason  text,
    actor         text NOT NULL,                   -- the token's name
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (record_id, seq)
);

-- The record as events show it (WorkRecord in dispatch.proto, JSON as ac_pbjson).
CREATE FUNCTION dispatch.work_ref(w dispatch.work_records) RETURNS jsonb
    LANGUAGE sql STABLE AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object(
        'id', w.id, 'ticket_id', w.ticket_id, 'engineer_id', w.engineer_id,
        'kind', w.kind,
        'last_step', CASE WHEN w.last_step IS NOT NULL THEN 'WORK_STEP_' || upper(w.last_step) END,
        'pause_reason', w.pause_reason,
        'travel_at', dispatch.ts(w.travel_at), 'arrived_at', dispatch.ts(w.arrived_at),
        'started_at', dispatch.ts(w.started_at), 'completed_at', dispatch.ts(w.completed_at),
        'paused_seconds', w.paused_seconds,
        'report', w.report, 'confirmation', w.confirmation,
        'version', w.version, 'created_at', dispatch.ts(w.created_at)))
$$;

-- The record as the HTTP API shows it: with its ticket's number, its engineer's name and
-- every step, oldest first.
CREATE FUNCTION dispatch.work_doc(w dispatch.work_records) RETURNS jsonb
    LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', w.id, 'ticket_id', w.ticket_id,
        'ticket_number', (SELECT t.number FROM dispatch.tickets t WHERE t.id = w.ticket_id),
        'engineer_id', w.engineer_id,
        'engineer_name', (SELECT e.name FROM dispatch.engineers e WHERE e.id = w.engineer_id),
        'kind', w.kind, 'state', coalesce(w.last_step, 'created'),
        'pause_reason', w.pause_reason,
        'travel_at', dispatch.ts(w.travel_at), 'arrived_at', dispatch.ts(w.arrived_at),
        'started_at', dispatch.ts(w.started_at), 'paused_at', dispatch.ts(w.paused_at),
        'completed_at', dispatch.ts(w.completed_at),
        'confirmed_at', dispatch.ts(w.confirmed_at),
        'paused_seconds', w.paused_seconds, 'report', w.report,
        'confirmation', w.confirmation, 'note', w.note, 'created_by', w.created_by,
        'steps', (SELECT coalesce(jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                         'step', s.step, 'at', dispatch.ts(s.at), 'note', s.note,
                         'pause_reason', s.pause_reason, 'actor', s.actor,
                         'recorded_at', dispatch.ts(s.recorded_at)))
                     ORDER BY s.seq), '[]')
                    FROM dispatch.work_steps s WHERE s.record_id = w.id),
        'version', w.version, 'created_at', dispatch.ts(w.created_at),
        'updated_at', dispatch.ts(w.updated_at))
$$;

-- The steps allowed after last_step (NULL: none yet) on a record of kind p_kind.
CREATE FUNCTION dispatch.work_next_steps(p_kind text, p_last text) RETURNS text[]
    LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE coalesce(p_last, '')
        WHEN '' THEN CASE p_kind WHEN 'visit' THEN ARRAY['travel', 'arrived']
                                 ELSE ARRAY['started'] END
        WHEN 'travel' THEN ARRAY['arrived']
        WHEN 'arrived' THEN ARRAY['started']
        WHEN 'started' THEN ARRAY['paused', 'completed']
        WHEN 'resumed' THEN ARRAY['paused', 'completed']
        WHEN 'paused' THEN ARRAY['resumed']
        WHEN 'completed' THEN ARRAY['confirmed']
        ELSE ARRAY[]::text[] END
$$;

-- POST /v1/tickets/{number}/work: a new record (no event: the steps are the events).
-- p_engineer_id NULL: the engineer holding the ticket (dispatch.current_engineer).
CREATE FUNCTION dispatch.work_create(p_number text, p_kind text, p_engineer_id uuid,
                                     p_note text, p_actor text)
    RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    t dispatch.tickets;
    w dispatch.work_records;
    v_engineer uuid := p_engineer_id;
BEGIN
    SELECT * INTO t FROM dispatch.tickets WHERE number = p_number;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('dispatch knows no ticket %s', p_number));
    END IF;
    IF t.status IN ('resolved', 'closed', 'cancelled') THEN
        RETURN dispatch.err(409, 'ticket_closed',
                            format('ticket %s is %s: no new work on it', t.number, t.status));
    END IF;
    IF v_engineer IS NULL THEN
        v_engineer := dispatch.current_engineer(t.id);
        IF v_engineer IS NULL THEN
            RETURN dispatch.err(422, 'missing_field',
                                format('no engineer holds ticket %s: give engineer_id',
                                       t.number), 'engineer_id');
        END IF;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM dispatch.engineers WHERE id = v_engineer) THEN
        RETURN dispatch.err(422, 'unknown_engineer', format('no engineer %s', v_engineer),
                            'engineer_id');
    END IF;
    INSERT INTO dispatch.work_records (ticket_id, engineer_id, kind, note, created_by)
    VALUES (t.id, v_engineer, p_kind, coalesce(p_note, ''), p_actor)
    RETURNING * INTO w;
    RETURN dispatch.ok(201, dispatch.work_doc(w));
END
$$;

-- POST /v1/work/{id}/steps. p_at NULL: now. p_pause_reason only with 'paused', p_report
-- only with 'completed', p_confirmation only with 'confirmed' (work.c checks which is
-- given with which step, and their shapes).
CREATE FUNCTION dispatch.work_step(p_id uuid, p_step text, p_at timestamptz, p_note text,
                                   p_pause_reason text, p_report jsonb,
                                   p_confirmation jsonb, p_expected_version bigint,
                                   p_actor text)
    RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    w dispatch.work_records;
    t dispatch.tickets;
    v_at timestamptz := coalesce(p_at, now());
    v_next text[];
    v_signed timestamptz;
    v_conf jsonb := p_confirmation;
BEGIN
    SELECT * INTO w FROM dispatch.work_records WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('no work record %s', p_id));
    END IF;
    IF p_expected_version IS NOT NULL AND p_expected_version <> w.version THEN
        RETURN dispatch.err(409, 'version_conflict',
                            format('work record %s is at version %s, not %s', w.id, w.version,
                                   p_expected_version), 'expected_version');
    END IF;
    v_next := dispatch.work_next_steps(w.kind, w.last_step);
    IF NOT p_step = ANY (v_next) THEN
        RETURN dispatch.err(409, 'illegal_step', format(
            'work record %s (%s) is %s: %s is not allowed%s', w.id, w.kind,
            coalesce(w.last_step, 'created'), p_step,
            CASE WHEN cardinality(v_next) = 0 THEN ' (the record is confirmed: it is final)'
                 ELSE ' (next: ' || array_to_string(v_next, ' or ') || ')' END), 'step');
    END IF;
    SELECT * INTO t FROM dispatch.tickets WHERE id = w.ticket_id;
    IF v_at > now() + interval '5 minutes' THEN
        RETURN dispatch.err(422, 'invalid_field',
                            format('at %s is in the future', dispatch.ts(v_at)), 'at');
    END IF;
    IF v_at < t.opened_at THEN
        RETURN dispatch.err(422, 'invalid_field',
                            format('at %s is before ticket %s was opened (%s)',
                                   dispatch.ts(v_at), t.number, dispatch.ts(t.opened_at)),
                            'at');
    END IF;
    IF v_at < w.last_step_at THEN
        RETURN dispatch.err(422, 'invalid_field',
                            format('at %s is before the previous step (%s at %s)',
                                   dispatch.ts(v_at), w.last_step, dispatch.ts(w.last_step_at)),
                            'at');
    END IF;
    IF p_step = 'confirmed' THEN
        v_signed := (v_conf->>'signed_at')::timestamptz;
        -- the sheet's time may come from another device, to the second
        IF v_signed < date_trunc('second', w.started_at) THEN
            RETURN dispatch.err(422, 'invalid_field',
                                format('signed_at %s is before the work started (%s)',
                                       dispatch.ts(v_signed), dispatch.ts(w.started_at)),
                                'confirmation.signed_at');
        END IF;
        IF v_signed > now() + interval '5 minutes' THEN
            RETURN dispatch.err(422, 'invalid_field',
                                format('signed_at %s is in the future', dispatch.ts(v_signed)),
                                'confirmation.signed_at');
        END IF;
        v_conf := v_conf || jsonb_build_object('signed_at', dispatch.ts(v_signed));
    END IF;

    UPDATE dispatch.work_records x SET
        last_step = p_step, last_step_at = v_at,
        pause_reason = CASE WHEN p_step = 'paused' THEN p_pause_reason END,
        travel_at = CASE WHEN p_step = 'travel' THEN v_at ELSE x.travel_at END,
        arrived_at = CASE WHEN p_step = 'arrived' THEN v_at ELSE x.arrived_at END,
        started_at = CASE WHEN p_step = 'started' THEN v_at ELSE x.started_at END,
        paused_at = CASE WHEN p_step = 'paused' THEN v_at END,
        paused_seconds = x.paused_seconds + CASE WHEN p_step = 'resumed'
            THEN floor(extract(epoch FROM v_at - x.paused_at))::bigint ELSE 0 END,
        completed_at = CASE WHEN p_step = 'completed' THEN v_at ELSE x.completed_at END,
        report = CASE WHEN p_step = 'completed' THEN p_report ELSE x.report END,
        confirmed_at = CASE WHEN p_step = 'confirmed' THEN v_at ELSE x.confirmed_at END,
        confirmation = CASE WHEN p_step = 'confirmed' THEN v_conf ELSE x.confirmation END,
        version = x.version + 1, updated_at = now()
    WHERE x.id = w.id
    RETURNING * INTO w;
    INSERT INTO dispatch.work_steps (record_id, seq, step, at, note, pause_reason, actor)
    SELECT w.id, coalesce(max(s.seq), 0) + 1, p_step, v_at, coalesce(p_note, ''),
           p_pause_reason, p_actor
      FROM dispatch.work_steps s WHERE s.record_id = w.id;

    IF (w.kind = 'visit' AND p_step = 'arrived') OR (w.kind = 'remote' AND p_step = 'started')
    THEN
        PERFORM dispatch.sla_on_step(t.id, 'arrival', v_at);
    END IF;

    RETURN dispatch.ok(201, dispatch.work_doc(w), jsonb_build_array(
        dispatch.ticket_event('visit.' || p_step, t, 'work_step_recorded',
                              jsonb_strip_nulls(jsonb_build_object(
                                  'record', dispatch.work_ref(w),
                                  'step', 'WORK_STEP_' || upper(p_step),
                                  'at', dispatch.ts(v_at),
                                  'note', nullif(coalesce(p_note, ''), ''))))));
END
$$;

-- GET /v1/work/{id}
CREATE FUNCTION dispatch.work_get(p_id uuid) RETURNS json
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    w dispatch.work_records;
BEGIN
    SELECT * INTO w FROM dispatch.work_records WHERE id = p_id;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('no work record %s', p_id));
    END IF;
    RETURN dispatch.ok(200, dispatch.work_doc(w));
END
$$;

-- GET /v1/tickets/{number}/work: every record of the ticket, oldest first.
CREATE FUNCTION dispatch.work_list(p_number text) RETURNS json
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    t dispatch.tickets;
BEGIN
    SELECT * INTO t FROM dispatch.tickets WHERE number = p_number;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('dispatch knows no ticket %s', p_number));
    END IF;
    RETURN dispatch.ok(200, jsonb_build_object('items', (
        SELECT coalesce(jsonb_agg(dispatch.work_doc(w) ORDER BY w.seq), '[]')
          FROM dispatch.work_records w WHERE w.ticket_id = t.id)));
END
$$;
