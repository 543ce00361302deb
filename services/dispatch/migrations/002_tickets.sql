-- dispatch 002: dispatch's view of tickets (from intake's ticket.* events, tickets.c),
-- their status history (the SLA engine computes paused time from it), the hooks through
-- which the other modules react to a ticket change in the consumer's transaction, and the
-- helpers every operation function uses to answer ops.c (services/dispatch/ops.h).

CREATE TABLE dispatch.tickets (
    id             uuid PRIMARY KEY,
    number         text NOT NULL UNIQUE,
    version        bigint NOT NULL CHECK (version >= 1),   -- intake's ticket version
    priority       text NOT NULL CHECK (priority IN ('P1', 'P2', 'P3', 'P4')),
    category       text NOT NULL,
    customer_id    uuid,
    customer_tier  text NOT NULL CHECK (customer_tier IN ('standard', 'vip')),
    product_model  text NOT NULL DEFAULT '',
    region         text NOT NULL DEFAULT '',
    status         text NOT NULL,
    in_warranty    boolean NOT NULL,
    opened_at      timestamptz NOT NULL,                   -- the ticket's created_at
    updated_at     timestamptz NOT NULL,                   -- intake's time of the change
    seen_at        timestamptz NOT NULL DEFAULT now()      -- when dispatch applied it
);

-- One row per status the ticket entered, at intake's time of the change.
CREATE TABLE dispatch.ticket_status_history (
    ticket_id  uuid NOT NULL REFERENCES dispatch.tickets (id) ON DELETE CASCADE,
    version    bigint NOT NULL,
    status     text NOT NULL,
    at         timestamptz NOT NULL,
    PRIMARY KEY (ticket_id, version)
);

-- Statuses during which the SLA clocks stand still (waiting on the customer or an
-- outside party).
CREATE FUNCTION dispatch.is_paused_status(s text) RETURNS boolean
    LANGUAGE sql IMMUTABLE AS $$
    SELECT s IN ('needs_info', 'waiting_customer', 'waiting_external')
$$;

-- The ticket as events show it (DispatchTicket in dispatch.proto, JSON as ac_pbjson).
CREATE FUNCTION dispatch.ticket_ref(t dispatch.tickets) RETURNS jsonb
    LANGUAGE sql STABLE AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object(
        'id', t.id, 'number', t.number, 'priority', 'PRIORITY_' || t.priority,
        'category', 'CATEGORY_' || upper(t.category), 'customer_id', t.customer_id,
        'customer_tier', 'CUSTOMER_TIER_' || upper(t.customer_tier),
        'product_model', t.product_model, 'region', t.region,
        'status', 'TICKET_STATUS_' || upper(t.status), 'in_warranty', t.in_warranty,
        'version', t.version))
$$;

-- The ticket as the HTTP API shows it inside other documents.
CREATE FUNCTION dispatch.ticket_doc(t dispatch.tickets) RETURNS jsonb
    LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', t.id, 'number', t.number, 'version', t.version, 'priority', t.priority,
        'category', t.category, 'customer_id', t.customer_id,
        'customer_tier', t.customer_tier, 'product_model', t.product_model,
        'region', t.region, 'status', t.status, 'in_warranty', t.in_warranty,
        'opened_at', dispatch.ts(t.opened_at), 'updated_at', dispatch.ts(t.updated_at))
$$;

-- --- answers for ops.c ------------------------------------------------------------------

-- {"status": .., "body": .., "events": [..]}
CREATE FUNCTION dispatch.ok(p_status int, p_body jsonb, p_events jsonb DEFAULT '[]')
    RETURNS json LANGUAGE sql IMMUTABLE AS $$
    SELECT json_build_object('status', p_status, 'body', p_body,
                             'events', coalesce(p_events, '[]'::jsonb))
$$;

-- {"error": {"status": .., "code": .., "message": .., "field": ..}}
CREATE FUNCTION dispatch.err(p_status int, p_code text, p_message text,
                             p_field text DEFAULT NULL)
    RETURNS json LANGUAGE sql IMMUTABLE AS $$
    SELECT json_build_object('error', json_strip_nulls(json_build_object(
        'status', p_status, 'code', p_code, 'message', p_message, 'field', p_field)))
$$;

-- An event about ticket t: subject = number, partition_key = id, ticket_version =
-- version; "ticket" (DispatchTicket) is added to the payload message.
CREATE FUNCTION dispatch.ticket_event(p_topic text, t dispatch.tickets, p_member text,
                                      p_payload jsonb)
    RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'topic', p_topic, 'subject', t.number, 'partition_key', t.id,
        'ticket_version', t.version,
        'payload', jsonb_build_object(p_member,
                                      p_payload || jsonb_build_object('ticket',
                                                                      dispatch.ticket_ref(t))))
$$;

-- --- hooks: replaced by later migrations (CREATE OR REPLACE, same signature) -------------

-- A ticket was created (old IS NULL) or changed (old: the row before). Runs in the
-- consumer's transaction, after dispatch.tickets and the history were written.
CREATE FUNCTION dispatch.assign_on_ticket(t dispatch.tickets, old dispatch.tickets)
    RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;
CREATE FUNCTION dispatch.sla_on_ticket(t dispatch.tickets, old dispatch.tickets)
    RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;

-- The modules' functions for each other (stubs here, so that every migration can refer to
-- them whatever order they were written in; the owner replaces them):
-- assignment (003): queue the ticket for a WORK (or a new DIAGNOSIS) assignment; p_mode is
-- the accepted plan's mode ('remote', 'on_site', 'depot_repair', 'external_repair').
CREATE FUNCTION dispatch.assign_request(p_ticket_id uuid, p_kind text, p_mode text,
                                        p_reason text)
    RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;
-- assignment (003): take the ticket from its engineer and assign it again (SLA escalation).
CREATE FUNCTION dispatch.redispatch(p_ticket_id uuid, p_reason text)
    RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;
-- assignment (003): the engineer holding the ticket now (NULL: nobody).
CREATE FUNCTION dispatch.current_engineer(p_ticket_id uuid)
    RETURNS uuid LANGUAGE sql STABLE AS $$ SELECT NULL::uuid $$;
-- SLA (004): a target was met: p_what 'first_response' (the diagnosis assignment was
-- accepted) or 'arrival' (a visit arrived / a remote session started) at p_at.
CREATE FUNCTION dispatch.sla_on_step(p_ticket_id uuid, p_what text, p_at timestamptz)
    RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;
-- SLA (004): a deadline that is not a policy target (p_target 'vendor_due': an external
-- repair's vendor due date), keyed by p_reference_id (the send-out); re-arming the same
-- reference moves it; disarm when it is no longer due (returned, re-routed).
CREATE FUNCTION dispatch.sla_arm_reference(p_ticket_id uuid, p_target text,
                                           p_reference_id uuid, p_due_at timestamptz)
    RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;
CREATE FUNCTION dispatch.sla_disarm_reference(p_reference_id uuid)
    RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;

-- --- the consumer's statement -------------------------------------------------------------

CREATE FUNCTION dispatch.ticket_apply(
    p_id uuid, p_number text, p_version bigint, p_priority text, p_category text,
    p_customer_id uuid, p_tier text, p_model text, p_region text, p_status text,
    p_in_warranty boolean, p_opened_at timestamptz, p_updated_at timestamptz)
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    old dispatch.tickets;
    t dispatch.tickets;
BEGIN
    -- (NO KEY: the foreign keys of other modules' rows take KEY SHARE on the ticket, and
    -- must not hold up the consumer, nor it them)
    SELECT * INTO old FROM dispatch.tickets WHERE id = p_id FOR NO KEY UPDATE;
    IF FOUND AND old.version >= p_version THEN
        RETURN; -- already seen (a re-delivered or out-of-date event)
    END IF;
    INSERT INTO dispatch.tickets AS x
        (id, number, version, priority, category, customer_id, customer_tier,
         product_model, region, status, in_warranty, opened_at, updated_at)
    VALUES (p_id, p_number, p_version, p_priority, p_category, p_customer_id, p_tier,
            p_model, p_region, p_status, p_in_warranty, p_opened_at, p_updated_at)
    ON CONFLICT (id) DO UPDATE SET
        version = EXCLUDED.version, priority = EXCLUDED.priority,
        category = EXCLUDED.category, customer_id = EXCLUDED.customer_id,
        customer_tier = EXCLUDED.customer_tier, product_model = EXCLUDED.product_model,
        region = EXCLUDED.region, status = EXCLUDED.status,
        in_warranty = EXCLUDED.in_warranty, updated_at = EXCLUDED.updated_at,
        seen_at = now()
    RETURNING * INTO t;
    IF old.id IS NULL OR old.status IS DISTINCT FROM t.status THEN
        INSERT INTO dispatch.ticket_status_history (ticket_id, version, status, at)
        VALUES (t.id, t.version, t.status, p_updated_at)
        ON CONFLICT DO NOTHING;
    END IF;
    IF old.id IS NULL THEN
        old := NULL;
    END IF;
    PERFORM dispatch.sla_on_ticket(t, old);
    PERFORM dispatch.assign_on_ticket(t, old);
END
$$;

-- GET /v1/tickets/{number}: dispatch's view of the ticket.
CREATE FUNCTION dispatch.ticket_get(p_number text) RETURNS json
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    t dispatch.tickets;
BEGIN
    SELECT * INTO t FROM dispatch.tickets WHERE number = p_number;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('dispatch knows no ticket %s', p_number));
    END IF;
    RETURN dispatch.ok(200, dispatch.ticket_doc(t));
END
$$;

-- --- events from SQL that no request is waiting for ------------------------------------
-- A hook running in the consumer's transaction (or any function) cannot pack protobuf;
-- it calls dispatch.emit(events) with EVENTs as ops.h describes. They wait here, in the
-- same transaction as the change that caused them; ops.c's emitter (woken by NOTIFY
-- dispatch_emit) packs them into dispatch.outbox and deletes them in one transaction, so
-- each is published exactly once.
CREATE TABLE dispatch.pending_events (
    id              bigserial PRIMARY KEY,
    event           jsonb NOT NULL,
    correlation_id  text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION dispatch.emit(p_events jsonb, p_correlation_id text DEFAULT '')
    RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_events IS NULL OR jsonb_array_length(p_events) = 0 THEN
        RETURN;
    END IF;
    INSERT INTO dispatch.pending_events (event, correlation_id)
    SELECT e, coalesce(p_correlation_id, '') FROM jsonb_array_elements(p_events) AS e;
    PERFORM pg_notify('dispatch_emit', '');
END
$$;

-- The emitter's batch: the oldest pending events, locked, deleted when its transaction
-- commits (with their outbox rows).
CREATE FUNCTION dispatch.emit_take(p_limit int) RETURNS json
    LANGUAGE sql AS $$
    WITH taken AS (
        DELETE FROM dispatch.pending_events p
         WHERE p.id IN (SELECT id FROM dispatch.pending_events ORDER BY id
                         LIMIT p_limit FOR UPDATE SKIP LOCKED)
        RETURNING p.id, p.event, p.correlation_id)
    SELECT json_build_object(
               'status', 200, 'body', json_build_object('taken', count(*)),
               'events', coalesce(json_agg(event || jsonb_build_object('correlation_id',
                                                                      correlation_id)
                                           ORDER BY id), '[]'))
      FROM taken
$$;
