-- dispatch 007: external repair (issue 4, item 5). Vendors (outside repair stations) and
-- send-outs: a unit of a ticket sent to a vendor under the vendor's RMA number, shipped
-- with a carrier and tracking number, chased with follow-ups until it comes back, then
-- inspected; a failed one can be re-routed to another vendor, which starts a new send-out
-- linked to the failed one. The vendor due date of a shipped unit is an SLA deadline
-- (dispatch.sla_arm_reference, owner 004).
--
-- Every operation is one function answering ops.c (services/dispatch/ops.h): it checks the
-- state, writes, and returns dispatch.ok(...) with its events or dispatch.err(...) (which
-- rolls back). repairs.c has checked shapes, lengths and formats before.
--
-- Send-out states (the order is enforced here):
--   prepared --ship--> shipped --return--> returned --inspect--> passed
--                                                           \--> failed --reroute--> rerouted
-- A re-route marks the failed send-out "rerouted" and prepares a new one with
-- previous_sendout_id = the failed one.

CREATE TABLE dispatch.vendors (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq              bigserial NOT NULL UNIQUE,          -- keyset pagination, newest first
    name             text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    contact_name     text CHECK (length(contact_name) BETWEEN 1 AND 200),
    phone            text,
    email            text,
    address          text NOT NULL DEFAULT '' CHECK (length(address) <= 500),
    turnaround_days  int NOT NULL CHECK (turnaround_days BETWEEN 1 AND 365),
    active           boolean NOT NULL DEFAULT true,
    version          bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (phone IS NOT NULL OR email IS NOT NULL)
);
CREATE UNIQUE INDEX vendors_name ON dispatch.vendors (lower(name));

CREATE TABLE dispatch.repair_sendouts (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq                  bigserial NOT NULL UNIQUE,
    ticket_id            uuid NOT NULL REFERENCES dispatch.tickets (id),
    vendor_id            uuid NOT NULL REFERENCES dispatch.vendors (id),
    rma_number           text NOT NULL,
    state                text NOT NULL DEFAULT 'prepared'
        CHECK (state IN ('prepared', 'shipped', 'returned', 'passed', 'failed', 'rerouted')),
    carrier              text,
    tracking             text,
    shipped_at           timestamptz,
    vendor_due_at        timestamptz,   -- given when prepared, or set when shipped
    returned_at          timestamptz,
    inspection           text CHECK (inspection IN ('pass', 'fail')),
    inspection_note      text,
    inspected_at         timestamptz,
    followups            int NOT NULL DEFAULT 0,
    previous_sendout_id  uuid UNIQUE REFERENCES dispatch.repair_sendouts (id),
    reroute_reason       text,
    version              bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_by           text NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CHECK (state = 'prepared' OR (carrier IS NOT NULL AND tracking IS NOT NULL AND
                                  shipped_at IS NOT NULL AND vendor_due_at IS NOT NULL)),
    CHECK (shipped_at IS NULL OR vendor_due_at > shipped_at),
    CHECK ((state IN ('returned', 'passed', 'failed', 'rerouted')) = (returned_at IS NOT NULL)),
    CHECK (returned_at IS NULL OR returned_at >= shipped_at),
    CHECK ((state IN ('passed', 'failed', 'rerouted')) = (inspection IS NOT NULL)),
    CHECK ((state = 'rerouted') = (reroute_reason IS NOT NULL))
);
-- An RMA number is the vendor's: unique per vendor.
CREATE UNIQUE INDEX repair_sendouts_rma ON dispatch.repair_sendouts (vendor_id, rma_number);
-- One unit on its way per ticket: a send-out not yet inspected.
CREATE UNIQUE INDEX repair_sendouts_open ON dispatch.repair_sendouts (ticket_id)
    WHERE state IN ('prepared', 'shipped', 'returned');
CREATE INDEX repair_sendouts_ticket ON dispatch.repair_sendouts (ticket_id, seq);

-- The send-out's history: one row per step, with who did it and a note.
CREATE TABLE dispatch.repair_steps (
    seq         bigserial PRIMARY KEY,
    sendout_id  uuid NOT NULL REFERENCES dispatch.repair_sendouts (id),
    step        text NOT NULL CHECK (step IN ('created', 'shipped', 'followed_up', 'returned',
                                              'inspected', 'rerouted')),
    note        text,
    actor       text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX repair_steps_sendout ON dispatch.repair_steps (sendout_id, seq);

-- --- rendering ---------------------------------------------------------------------------

-- The vendor as the API shows it; the same JSON is the Vendor message of dispatch.proto.
CREATE FUNCTION dispatch.vendor_doc(v dispatch.vendors) RETURNS jsonb
    LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', v.id, 'name', v.name,
        'contact', jsonb_strip_nulls(jsonb_build_object('name', v.contact_name,
                                                        'phone', v.phone, 'email', v.email)),
        'address', v.address, 'turnaround_days', v.turnaround_days, 'active', v.active,
        'version', v.version, 'created_at', dispatch.ts(v.created_at),
        'updated_at', dispatch.ts(v.updated_at))
$$;

-- vendor.created / vendor.updated: not about a ticket, so subject and partition_key are the
-- vendor id and ticket_version is the vendor's version.
CREATE FUNCTION dispatch.vendor_event(p_topic text, v dispatch.vendors, p_changed text[])
    RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'topic', p_topic, 'subject', v.id, 'partition_key', v.id, 'ticket_version', v.version,
        'payload', jsonb_build_object('vendor_changed', jsonb_build_object(
            'vendor', dispatch.vendor_doc(v), 'changed_fields', to_jsonb(p_changed))))
$$;

-- RepairSendout of dispatch.proto.
CREATE FUNCTION dispatch.repair_msg(s dispatch.repair_sendouts) RETURNS jsonb
    LANGUAGE sql STABLE AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object(
        'id', s.id, 'ticket_id', s.ticket_id, 'vendor_id', s.vendor_id,
        'vendor_name', (SELECT v.name FROM dispatch.vendors v WHERE v.id = s.vendor_id),
        'rma_number', s.rma_number, 'state', s.state, 'carrier', s.carrier,
        'tracking', s.tracking, 'shipped_at', dispatch.ts(s.shipped_at),
        'vendor_due_at', dispatch.ts(s.vendor_due_at), 'returned_at', dispatch.ts(s.returned_at),
        'inspection', s.inspection, 'inspection_note', s.inspection_note,
        'followups', s.followups, 'previous_sendout_id', s.previous_sendout_id,
        'version', s.version, 'created_at', dispatch.ts(s.created_at)))
$$;

-- The send-out as the API shows it, with its history.
CREATE FUNCTION dispatch.repair_doc(s dispatch.repair_sendouts) RETURNS jsonb
    LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', s.id, 'ticket_id', s.ticket_id,
        'ticket_number', (SELECT t.number FROM dispatch.tickets t WHERE t.id = s.ticket_id),
        'vendor_id', s.vendor_id,
        'vendor_name', (SELECT v.name FROM dispatch.vendors v WHERE v.id = s.vendor_id),
        'rma_number', s.rma_number, 'state', s.state, 'carrier', s.carrier,
        'tracking', s.tracking, 'shipped_at', dispatch.ts(s.shipped_at),
        'vendor_due_at', dispatch.ts(s.vendor_due_at),
        'is_overdue', s.state = 'shipped' AND s.vendor_due_at < now(),
        'returned_at', dispatch.ts(s.returned_at), 'inspection', s.inspection,
        'inspection_note', s.inspection_note, 'inspected_at', dispatch.ts(s.inspected_at),
        'followups', s.followups, 'previous_sendout_id', s.previous_sendout_id,
        'next_sendout_id', (SELECT n.id FROM dispatch.repair_sendouts n
                             WHERE n.previous_sendout_id = s.id),
        'reroute_reason', s.reroute_reason, 'version', s.version,
        'created_by', s.created_by, 'created_at', dispatch.ts(s.created_at),
        'updated_at', dispatch.ts(s.updated_at),
        'history', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                        'step', r.step, 'at', dispatch.ts(r.at),
                                        'actor', r.actor, 'note', r.note) ORDER BY r.seq),
                                    '[]')
                      FROM dispatch.repair_steps r WHERE r.sendout_id = s.id))
$$;

-- repair.* (RepairStep) about send-out s of ticket t.
CREATE FUNCTION dispatch.repair_event(p_topic text, t dispatch.tickets,
                                      s dispatch.repair_sendouts, p_note text)
    RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT dispatch.ticket_event(p_topic, t, 'repair_step',
                                 jsonb_strip_nulls(jsonb_build_object(
                                     'sendout', dispatch.repair_msg(s), 'note', p_note)))
$$;

-- --- vendors -----------------------------------------------------------------------------

-- Vendor names are unique, ignoring case.
CREATE FUNCTION dispatch.vendor_name_taken(p_name text, p_except uuid) RETURNS boolean
    LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM dispatch.vendors
                    WHERE lower(name) = lower(p_name) AND id IS DISTINCT FROM p_except)
$$;

-- POST /v1/vendors. d: the checked body (name, contact, address?, turnaround_days,
-- active?).
CREATE FUNCTION dispatch.vendor_create(d jsonb) RETURNS json
    LANGUAGE plpgsql AS $$
DECLARE
    v dispatch.vendors;
BEGIN
    IF d->'contact'->>'phone' IS NULL AND d->'contact'->>'email' IS NULL THEN
        RETURN dispatch.err(422, 'missing_field', 'a vendor needs a phone or an email',
                            'contact');
    END IF;
    IF dispatch.vendor_name_taken(d->>'name', NULL) THEN
        RETURN dispatch.err(409, 'conflict',
                            format('a vendor named %s exists already', d->>'name'), 'name');
    END IF;
    BEGIN
        INSERT INTO dispatch.vendors (name, contact_name, phone, email, address,
                                      turnaround_days, active)
        VALUES (d->>'name', d->'contact'->>'name', d->'contact'->>'phone',
                d->'contact'->>'email', coalesce(d->>'address', ''),
                (d->>'turnaround_days')::int, coalesce((d->>'active')::boolean, true))
        RETURNING * INTO v;
    EXCEPTION WHEN unique_violation THEN
        RETURN dispatch.err(409, 'conflict',
                            format('a vendor named %s exists already', d->>'name'), 'name');
    END;
    RETURN dispatch.ok(201, dispatch.vendor_doc(v),
                       jsonb_build_array(dispatch.vendor_event('vendor.created', v, '{}')));
END
$$;

-- PATCH /v1/vendors/{id}. d: the checked body: expected_version? plus any of name,
-- contact (merged part by part; a null part removes it), address, turnaround_days,
-- active. A PATCH that changes nothing keeps the version and publishes nothing.
CREATE FUNCTION dispatch.vendor_patch(p_id uuid, d jsonb) RETURNS json
    LANGUAGE plpgsql AS $$
DECLARE
    v dispatch.vendors;
    n dispatch.vendors;
    c jsonb := CASE WHEN jsonb_typeof(d->'contact') = 'object' THEN d->'contact'
                    ELSE '{}' END;
    changed text[] := '{}';
BEGIN
    SELECT * INTO v FROM dispatch.vendors WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('no vendor %s', p_id));
    END IF;
    IF d->>'expected_version' IS NOT NULL AND (d->>'expected_version')::bigint <> v.version THEN
        RETURN dispatch.err(409, 'version_conflict',
                            format('vendor %s is at version %s, not %s', p_id, v.version,
                                   d->>'expected_version'), 'expected_version');
    END IF;
    n := v;
    n.name := coalesce(d->>'name', v.name);
    n.contact_name := CASE WHEN c ? 'name' THEN c->>'name' ELSE v.contact_name END;
    n.phone := CASE WHEN c ? 'phone' THEN c->>'phone' ELSE v.phone END;
    n.email := CASE WHEN c ? 'email' THEN c->>'email' ELSE v.email END;
    n.address := coalesce(d->>'address', v.address);
    n.turnaround_days := coalesce((d->>'turnaround_days')::int, v.turnaround_days);
    n.active := coalesce((d->>'active')::boolean, v.active);
    IF n.phone IS NULL AND n.email IS NULL THEN
        RETURN dispatch.err(422, 'missing_field', 'a vendor needs a phone or an email',
                            'contact');
    END IF;
    IF n.name IS DISTINCT FROM v.name THEN
        changed := changed || 'name'::text;
        IF dispatch.vendor_name_taken(n.name, v.id) THEN
            RETURN dispatch.err(409, 'conflict',
                                format('a vendor named %s exists already', n.name), 'name');
        END IF;
    END IF;
    IF (n.contact_name, n.phone, n.email) IS DISTINCT FROM (v.contact_name, v.phone, v.email)
    THEN
        changed := changed || 'contact'::text;
    END IF;
    IF n.address IS DISTINCT FROM v.address THEN
        changed := changed || 'address'::text;
    END IF;
    IF n.turnaround_days IS DISTINCT FROM v.turnaround_days THEN
        changed := changed || 'turnaround_days'::text;
    END IF;
    IF n.active IS DISTINCT FROM v.active THEN
        changed := changed || 'active'::text;
    END IF;
    IF cardinality(changed) = 0 THEN
        RETURN dispatch.ok(200, dispatch.vendor_doc(v));
    END IF;
    BEGIN
        UPDATE dispatch.vendors SET
            name = n.name, contact_name = n.contact_name, phone = n.phone, email = n.email,
            address = n.address, turnaround_days = n.turnaround_days, active = n.active,
            version = v.version + 1, updated_at = now()
        WHERE id = p_id
        RETURNING * INTO n;
    EXCEPTION WHEN unique_violation THEN
        RETURN dispatch.err(409, 'conflict',
                            format('a vendor named %s exists already', n.name), 'name');
    END;
    RETURN dispatch.ok(200, dispatch.vendor_doc(n),
                       jsonb_build_array(dispatch.vendor_event('vendor.updated', n, changed)));
END
$$;

CREATE FUNCTION dispatch.vendor_get(p_id uuid) RETURNS json
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    v dispatch.vendors;
BEGIN
    SELECT * INTO v FROM dispatch.vendors WHERE id = p_id;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('no vendor %s', p_id));
    END IF;
    RETURN dispatch.ok(200, dispatch.vendor_doc(v));
END
$$;

-- GET /v1/vendors: newest first; p_cursor: seq of the last vendor shown (NULL: first page).
CREATE FUNCTION dispatch.vendor_list(p_active boolean, p_cursor bigint, p_limit int)
    RETURNS json LANGUAGE sql STABLE AS $$
    WITH page AS (
        SELECT v.seq, dispatch.vendor_doc(v) AS doc, row_number() OVER (ORDER BY v.seq DESC) AS n
          FROM dispatch.vendors v
         WHERE (p_active IS NULL OR v.active = p_active)
           AND (p_cursor IS NULL OR v.seq < p_cursor)
         ORDER BY v.seq DESC LIMIT p_limit + 1)
    SELECT dispatch.ok(200, jsonb_build_object(
        'items', coalesce((SELECT jsonb_agg(doc ORDER BY seq DESC) FROM page
                            WHERE n <= p_limit), '[]'),
        'next_cursor', CASE WHEN (SELECT count(*) FROM page) > p_limit
                            THEN (SELECT seq::text FROM page WHERE n = p_limit) END))
$$;

-- --- send-outs ---------------------------------------------------------------------------

-- Why a new send-out of ticket t to vendor p_vendor_id under p_rma cannot be made (an
-- error answer), or NULL. Locks the vendor row (FOR SHARE) so that it stays active until
-- the caller commits.
CREATE FUNCTION dispatch.repair_refuse_new(t dispatch.tickets, p_vendor_id uuid, p_rma text)
    RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    v dispatch.vendors;
    open_id uuid;
BEGIN
    IF t.status IN ('closed', 'cancelled') THEN
        RETURN dispatch.err(409, 'conflict',
                            format('ticket %s is %s: nothing can be sent out for it', t.number,
                                   t.status));
    END IF;
    SELECT * INTO v FROM dispatch.vendors WHERE id = p_vendor_id FOR SHARE;
    IF NOT FOUND THEN
        RETURN dispatch.err(422, 'unknown_reference', format('no vendor %s', p_vendor_id),
                            'vendor_id');
    END IF;
    IF NOT v.active THEN
        RETURN dispatch.err(409, 'conflict',
                            format('vendor %s (%s) is inactive', v.name, v.id), 'vendor_id');
    END IF;
    IF EXISTS (SELECT 1 FROM dispatch.repair_sendouts
                WHERE vendor_id = v.id AND rma_number = p_rma) THEN
        RETURN dispatch.err(409, 'conflict',
                            format('vendor %s already has a send-out with RMA number %s',
                                   v.name, p_rma), 'rma_number');
    END IF;
    SELECT id INTO open_id FROM dispatch.repair_sendouts
     WHERE ticket_id = t.id AND state IN ('prepared', 'shipped', 'returned');
    IF FOUND THEN
        RETURN dispatch.err(409, 'conflict',
                            format('ticket %s already has send-out %s in progress', t.number,
                                   open_id));
    END IF;
    RETURN NULL;
END
$$;

-- Inserts a prepared send-out and its 'created' step.
CREATE FUNCTION dispatch.repair_insert(t dispatch.tickets, p_actor text, p_vendor_id uuid,
                                       p_rma text, p_due timestamptz, p_previous uuid,
                                       p_note text)
    RETURNS dispatch.repair_sendouts LANGUAGE plpgsql AS $$
DECLARE
    s dispatch.repair_sendouts;
BEGIN
    INSERT INTO dispatch.repair_sendouts (ticket_id, vendor_id, rma_number, vendor_due_at,
                                          previous_sendout_id, created_by)
    VALUES (t.id, p_vendor_id, p_rma, p_due, p_previous, p_actor)
    RETURNING * INTO s;
    INSERT INTO dispatch.repair_steps (sendout_id, step, note, actor)
    VALUES (s.id, 'created', p_note, p_actor);
    RETURN s;
END
$$;

-- The send-out p_id locked, and its ticket; s.id IS NULL when there is none.
CREATE FUNCTION dispatch.repair_lock(p_id uuid, OUT s dispatch.repair_sendouts,
                                     OUT t dispatch.tickets)
    LANGUAGE plpgsql AS $$
BEGIN
    SELECT * INTO s FROM dispatch.repair_sendouts WHERE id = p_id FOR UPDATE;
    IF FOUND THEN
        SELECT * INTO t FROM dispatch.tickets WHERE id = s.ticket_id;
    END IF;
END
$$;

CREATE FUNCTION dispatch.repair_not_found(p_id uuid) RETURNS json
    LANGUAGE sql IMMUTABLE AS $$
    SELECT dispatch.err(404, 'not_found', format('no send-out %s', p_id))
$$;

-- 409 illegal_transition: step p_step is not possible in the send-out's state.
CREATE FUNCTION dispatch.repair_illegal(s dispatch.repair_sendouts, p_step text) RETURNS json
    LANGUAGE sql IMMUTABLE AS $$
    SELECT dispatch.err(409, 'illegal_transition', format(
        'send-out %s is %s: %s', s.id, s.state,
        CASE
          WHEN p_step IN ('ship') THEN 'only a prepared send-out can be shipped'
          WHEN p_step IN ('return', 'followup') AND s.state = 'prepared'
            THEN 'it has not been shipped yet'
          WHEN p_step = 'followup' THEN 'follow-ups are for a unit at the vendor'
          WHEN p_step = 'return' THEN 'it has been returned already'
          WHEN p_step = 'inspect' AND s.state IN ('prepared', 'shipped')
            THEN 'it has not been returned yet'
          WHEN p_step = 'inspect' THEN 'it has been inspected already'
          WHEN p_step = 'reroute' AND s.state = 'passed'
            THEN 'a repair that passed inspection is not re-routed'
          WHEN p_step = 'reroute' AND s.state = 'rerouted' THEN 'it has been re-routed already'
          WHEN p_step = 'reroute' THEN 'only a send-out that failed inspection can be re-routed'
          ELSE 'not allowed now'
        END))
$$;

-- POST /v1/tickets/{number}/repairs
CREATE FUNCTION dispatch.repair_create(p_number text, p_actor text, p_vendor_id uuid,
                                       p_rma text, p_due timestamptz)
    RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    t dispatch.tickets;
    s dispatch.repair_sendouts;
    refusal json;
BEGIN
    SELECT * INTO t FROM dispatch.tickets WHERE number = p_number;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('dispatch knows no ticket %s', p_number));
    END IF;
    refusal := dispatch.repair_refuse_new(t, p_vendor_id, p_rma);
    IF refusal IS NOT NULL THEN
        RETURN refusal;
    END IF;
    BEGIN
        s := dispatch.repair_insert(t, p_actor, p_vendor_id, p_rma, p_due, NULL, NULL);
    EXCEPTION WHEN unique_violation THEN -- a concurrent send-out won the race
        RETURN dispatch.err(409, 'conflict', format(
            'ticket %s got another send-out (or vendor RMA %s was used) meanwhile; read again',
            t.number, p_rma));
    END;
    RETURN dispatch.ok(201, dispatch.repair_doc(s),
                       jsonb_build_array(dispatch.repair_event('repair.created', t, s, NULL)));
END
$$;

-- POST /v1/repairs/{id}/ship. The due date: p_due, else the one given when prepared, else
-- shipped + the vendor's turnaround; it becomes the 'vendor_due' SLA deadline.
CREATE FUNCTION dispatch.repair_ship(p_id uuid, p_actor text, p_carrier text, p_tracking text,
                                     p_shipped_at timestamptz, p_due timestamptz)
    RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    l record;
    s dispatch.repair_sendouts;
    v dispatch.vendors;
    shipped timestamptz := coalesce(p_shipped_at, now());
    due timestamptz;
BEGIN
    l := dispatch.repair_lock(p_id);
    s := l.s;
    IF s.id IS NULL THEN
        RETURN dispatch.repair_not_found(p_id);
    END IF;
    IF s.state <> 'prepared' THEN
        RETURN dispatch.repair_illegal(s, 'ship');
    END IF;
    SELECT * INTO v FROM dispatch.vendors WHERE id = s.vendor_id FOR SHARE;
    IF NOT v.active THEN
        RETURN dispatch.err(409, 'conflict', format(
            'vendor %s (%s) became inactive: re-create the send-out for another vendor',
            v.name, v.id), 'vendor_id');
    END IF;
    IF shipped > now() + interval '5 minutes' THEN
        RETURN dispatch.err(422, 'invalid_field', 'shipped_at is in the future', 'shipped_at');
    END IF;
    IF shipped < (l.t).opened_at THEN
        RETURN dispatch.err(422, 'invalid_field', format(
            'shipped_at %s is before ticket %s was opened (%s)', dispatch.ts(shipped),
            (l.t).number, dispatch.ts((l.t).opened_at)), 'shipped_at');
    END IF;
    due := coalesce(p_due, s.vendor_due_at, shipped + make_interval(days => v.turnaround_days));
    IF due <= shipped THEN
        RETURN dispatch.err(422, 'invalid_field', format(
            'the vendor due date %s is not after the ship date %s', dispatch.ts(due),
            dispatch.ts(shipped)), 'vendor_due_at');
    END IF;
    UPDATE dispatch.repair_sendouts SET
        state = 'shipped', carrier = p_carrier, tracking = p_tracking, shipped_at = shipped,
        vendor_due_at = due, version = version + 1, updated_at = now()
    WHERE id = s.id RETURNING * INTO s;
    INSERT INTO dispatch.repair_steps (sendout_id, step, note, actor)
    VALUES (s.id, 'shipped', format('%s %s', p_carrier, p_tracking), p_actor);
    PERFORM dispatch.sla_arm_reference(s.ticket_id, 'vendor_due', s.id, due);
    RETURN dispatch.ok(200, dispatch.repair_doc(s),
                       jsonb_build_array(dispatch.repair_event('repair.shipped', l.t, s, NULL)));
END
$$;

-- POST /v1/repairs/{id}/followup: the vendor was chased; a new due date moves the deadline.
CREATE FUNCTION dispatch.repair_followup(p_id uuid, p_actor text, p_note text,
                                         p_due timestamptz)
    RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    l record;
    s dispatch.repair_sendouts;
BEGIN
    l := dispatch.repair_lock(p_id);
    s := l.s;
    IF s.id IS NULL THEN
        RETURN dispatch.repair_not_found(p_id);
    END IF;
    IF s.state <> 'shipped' THEN
        RETURN dispatch.repair_illegal(s, 'followup');
    END IF;
    IF p_due IS NOT NULL AND p_due <= s.shipped_at THEN
        RETURN dispatch.err(422, 'invalid_field', format(
            'the vendor due date %s is not after the ship date %s', dispatch.ts(p_due),
            dispatch.ts(s.shipped_at)), 'vendor_due_at');
    END IF;
    UPDATE dispatch.repair_sendouts SET
        followups = followups + 1, vendor_due_at = coalesce(p_due, vendor_due_at),
        version = version + 1, updated_at = now()
    WHERE id = s.id RETURNING * INTO s;
    INSERT INTO dispatch.repair_steps (sendout_id, step, note, actor)
    VALUES (s.id, 'followed_up', p_note, p_actor);
    IF p_due IS NOT NULL AND p_due IS DISTINCT FROM (l.s).vendor_due_at THEN
        PERFORM dispatch.sla_arm_reference(s.ticket_id, 'vendor_due', s.id, p_due);
    END IF;
    RETURN dispatch.ok(200, dispatch.repair_doc(s), jsonb_build_array(
        dispatch.repair_event('repair.followed_up', l.t, s, p_note)));
END
$$;

-- POST /v1/repairs/{id}/return: the unit is back; the vendor deadline is no longer due.
CREATE FUNCTION dispatch.repair_return(p_id uuid, p_actor text, p_returned_at timestamptz,
                                       p_note text)
    RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    l record;
    s dispatch.repair_sendouts;
    returned timestamptz := coalesce(p_returned_at, now());
BEGIN
    l := dispatch.repair_lock(p_id);
    s := l.s;
    IF s.id IS NULL THEN
        RETURN dispatch.repair_not_found(p_id);
    END IF;
    IF s.state <> 'shipped' THEN
        RETURN dispatch.repair_illegal(s, 'return');
    END IF;
    IF returned > now() + interval '5 minutes' THEN
        RETURN dispatch.err(422, 'invalid_field', 'returned_at is in the future', 'returned_at');
    END IF;
    IF returned < s.shipped_at THEN
        RETURN dispatch.err(422, 'invalid_field', format(
            'returned_at %s is before the unit was shipped (%s)', dispatch.ts(returned),
            dispatch.ts(s.shipped_at)), 'returned_at');
    END IF;
    UPDATE dispatch.repair_sendouts SET
        state = 'returned', returned_at = returned, version = version + 1, updated_at = now()
    WHERE id = s.id RETURNING * INTO s;
    INSERT INTO dispatch.repair_steps (sendout_id, step, note, actor)
    VALUES (s.id, 'returned', p_note, p_actor);
    PERFORM dispatch.sla_disarm_reference(s.id);
    RETURN dispatch.ok(200, dispatch.repair_doc(s), jsonb_build_array(
        dispatch.repair_event('repair.returned', l.t, s, p_note)));
END
$$;

-- POST /v1/repairs/{id}/inspect: result 'pass' or 'fail' (a failure needs a note).
CREATE FUNCTION dispatch.repair_inspect(p_id uuid, p_actor text, p_result text, p_note text)
    RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    l record;
    s dispatch.repair_sendouts;
BEGIN
    l := dispatch.repair_lock(p_id);
    s := l.s;
    IF s.id IS NULL THEN
        RETURN dispatch.repair_not_found(p_id);
    END IF;
    IF s.state <> 'returned' THEN
        RETURN dispatch.repair_illegal(s, 'inspect');
    END IF;
    IF p_result = 'fail' AND p_note IS NULL THEN
        RETURN dispatch.err(422, 'missing_field', 'a failed inspection needs a note saying why',
                            'note');
    END IF;
    UPDATE dispatch.repair_sendouts SET
        state = CASE p_result WHEN 'pass' THEN 'passed' ELSE 'failed' END,
        inspection = p_result, inspection_note = p_note, inspected_at = now(),
        version = version + 1, updated_at = now()
    WHERE id = s.id RETURNING * INTO s;
    INSERT INTO dispatch.repair_steps (sendout_id, step, note, actor)
    VALUES (s.id, 'inspected', p_result || coalesce(': ' || p_note, ''), p_actor);
    RETURN dispatch.ok(200, dispatch.repair_doc(s), jsonb_build_array(
        dispatch.repair_event('repair.inspected', l.t, s, p_note)));
END
$$;

-- POST /v1/repairs/{id}/reroute: a failed send-out goes to another vendor. The failed one
-- becomes 'rerouted'; a new prepared one links back to it. 201 with the new send-out.
CREATE FUNCTION dispatch.repair_reroute(p_id uuid, p_actor text, p_vendor_id uuid,
                                        p_rma text, p_reason text, p_due timestamptz)
    RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    l record;
    s dispatch.repair_sendouts;
    n dispatch.repair_sendouts;
    refusal json;
BEGIN
    l := dispatch.repair_lock(p_id);
    s := l.s;
    IF s.id IS NULL THEN
        RETURN dispatch.repair_not_found(p_id);
    END IF;
    IF s.state <> 'failed' THEN
        RETURN dispatch.repair_illegal(s, 'reroute');
    END IF;
    IF p_vendor_id = s.vendor_id THEN
        RETURN dispatch.err(409, 'conflict', format(
            'send-out %s failed at this vendor already: re-route it to another one', s.id),
            'vendor_id');
    END IF;
    refusal := dispatch.repair_refuse_new(l.t, p_vendor_id, p_rma);
    IF refusal IS NOT NULL THEN
        RETURN refusal;
    END IF;
    UPDATE dispatch.repair_sendouts SET
        state = 'rerouted', reroute_reason = p_reason, version = version + 1,
        updated_at = now()
    WHERE id = s.id RETURNING * INTO s;
    INSERT INTO dispatch.repair_steps (sendout_id, step, note, actor)
    VALUES (s.id, 'rerouted', p_reason, p_actor);
    PERFORM dispatch.sla_disarm_reference(s.id);
    BEGIN
        n := dispatch.repair_insert(l.t, p_actor, p_vendor_id, p_rma, p_due, s.id,
                                    format('re-routed from send-out %s: %s', s.id, p_reason));
    EXCEPTION WHEN unique_violation THEN
        RETURN dispatch.err(409, 'conflict', format(
            'ticket %s got another send-out (or vendor RMA %s was used) meanwhile; read again',
            (l.t).number, p_rma));
    END;
    RETURN dispatch.ok(201, dispatch.repair_doc(n), jsonb_build_array(
        dispatch.repair_event('repair.rerouted', l.t, s, p_reason),
        dispatch.repair_event('repair.created', l.t, n, p_reason)));
END
$$;

CREATE FUNCTION dispatch.repair_get(p_id uuid) RETURNS json
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    s dispatch.repair_sendouts;
BEGIN
    SELECT * INTO s FROM dispatch.repair_sendouts WHERE id = p_id;
    IF NOT FOUND THEN
        RETURN dispatch.repair_not_found(p_id);
    END IF;
    RETURN dispatch.ok(200, dispatch.repair_doc(s));
END
$$;

-- GET /v1/tickets/{number}/repairs: every send-out of the ticket, oldest first.
CREATE FUNCTION dispatch.repair_list(p_number text) RETURNS json
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    t dispatch.tickets;
BEGIN
    SELECT * INTO t FROM dispatch.tickets WHERE number = p_number;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('dispatch knows no ticket %s', p_number));
    END IF;
    RETURN dispatch.ok(200, jsonb_build_object('items', (
        SELECT coalesce(jsonb_agg(dispatch.repair_doc(s) ORDER BY s.seq), '[]')
          FROM dispatch.repair_sendouts s WHERE s.ticket_id = t.id)));
END
$$;
