-- dispatch 005: service plans (plans.c, docs/dispatch-api.md "Service plans").
--
-- A plan belongs to a ticket and has a revision (1, 2, ... per ticket). Its life:
--   proposed --accept--> accepted      (assignment: dispatch.assign_request(.., 'work', mode))
--   proposed --dispute-> disputed --a revised proposal--> superseded (the revision is
--                                                          proposed, supersedes_plan_id)
--   proposed | disputed | accepted --cancel--> cancelled
-- At most one plan of a ticket is open (proposed or disputed). A new plan may be proposed
-- when the ticket has none, or its latest was cancelled; a disputed plan is revised.
-- Input shapes were checked by plans.c (plan_validate.c); the rules that need the ticket,
-- the clock or the plan's state are here. Every operation returns dispatch.ok() /
-- dispatch.err() (ops.h); an error is rolled back, so a refused request changes nothing.
-- Locks: a decision locks its plan row; proposals of a ticket are serialised by an
-- advisory lock on the ticket. The ticket row is read, never locked (the consumer owns it):
-- a decision and intake's cancellation arriving together are ordered by their commits.

CREATE TABLE dispatch.plans (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    ticket_id           uuid NOT NULL REFERENCES dispatch.tickets (id),
    revision            int NOT NULL CHECK (revision >= 1),
    mode                text NOT NULL
        CHECK (mode IN ('remote', 'on_site', 'depot_repair', 'external_repair')),
    work                text NOT NULL CHECK (length(work) BETWEEN 1 AND 4000),
    -- [{"part_number", "description", "quantity", "unit_price_cents"}] as PlanPart
    parts               jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(parts) = 'array'),
    free_of_charge      boolean NOT NULL,
    fee_cents           bigint NOT NULL CHECK (fee_cents >= 0),
    currency            text CHECK (currency ~ '^[A-Z]{3}$'),
    eta                 timestamptz NOT NULL,
    warranty_exclusion  text,                  -- why a warranty ticket's plan is charged
    state               text NOT NULL DEFAULT 'proposed'
        CHECK (state IN ('proposed', 'accepted', 'disputed', 'superseded', 'cancelled')),
    proposed_by         text NOT NULL,         -- token name
    -- the customer's decision (accept or dispute)
    decided_by          text,                  -- agent's token name, or "customer (signed link)"
    customer_name       text,                  -- who the customer was
    decision_note       text,                  -- acceptance note / dispute reason
    decided_via         text CHECK (decided_via IN ('agent', 'link')),
    decided_at          timestamptz,
    cancelled_by        text,
    cancel_reason       text,
    cancelled_at        timestamptz,
    supersedes_plan_id  uuid REFERENCES dispatch.plans (id),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (ticket_id, revision),
    CHECK (NOT free_of_charge OR fee_cents = 0),
    CHECK (free_of_charge OR currency IS NOT NULL),
    CHECK ((decided_at IS NULL) = (decided_via IS NULL))
);
-- One open plan per ticket: the last line of defence behind the advisory lock below.
CREATE UNIQUE INDEX plans_one_open ON dispatch.plans (ticket_id)
    WHERE state IN ('proposed', 'disputed');
CREATE INDEX plans_supersedes ON dispatch.plans (supersedes_plan_id)
    WHERE supersedes_plan_id IS NOT NULL;

-- Every customer link handed out (the signature itself is not kept: it is a function of
-- the plan, the expiry and the secret).
CREATE TABLE dispatch.plan_links (
    id          bigserial PRIMARY KEY,
    plan_id     uuid NOT NULL REFERENCES dispatch.plans (id),
    issued_by   text NOT NULL,
    expires_at  timestamptz NOT NULL,
    issued_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX plan_links_plan ON dispatch.plan_links (plan_id);

-- --- rendering ----------------------------------------------------------------------------

-- The plan as events show it (ServicePlan in dispatch.proto, JSON as ac_pbjson).
CREATE FUNCTION dispatch.plan_pb(p dispatch.plans) RETURNS jsonb
    LANGUAGE sql STABLE AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object(
        'id', p.id, 'ticket_id', p.ticket_id, 'revision', p.revision,
        'mode', 'PLAN_MODE_' || upper(p.mode), 'work', p.work, 'parts', p.parts,
        'free_of_charge', p.free_of_charge, 'fee_cents', p.fee_cents,
        'currency', p.currency, 'eta', dispatch.ts(p.eta),
        'state', 'PLAN_STATE_' || upper(p.state), 'proposed_by', p.proposed_by,
        'decided_by', p.decided_by, 'decision_note', p.decision_note,
        'created_at', dispatch.ts(p.created_at), 'decided_at', dispatch.ts(p.decided_at),
        'supersedes_plan_id', p.supersedes_plan_id,
        'warranty_exclusion', p.warranty_exclusion, 'customer_name', p.customer_name,
        'cancelled_by', p.cancelled_by, 'cancel_reason', p.cancel_reason,
        'cancelled_at', dispatch.ts(p.cancelled_at)))
$$;

-- The plan as the HTTP API shows it to staff.
CREATE FUNCTION dispatch.plan_doc(p dispatch.plans, t dispatch.tickets) RETURNS jsonb
    LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', p.id, 'ticket_id', p.ticket_id, 'ticket_number', t.number,
        'ticket_status', t.status, 'revision', p.revision, 'mode', p.mode, 'work', p.work,
        'parts', p.parts,
        'free_of_charge', p.free_of_charge, 'fee_cents', p.fee_cents,
        'currency', p.currency, 'eta', dispatch.ts(p.eta),
        'warranty_exclusion', p.warranty_exclusion, 'state', p.state,
        'proposed_by', p.proposed_by, 'decided_by', p.decided_by,
        'customer_name', p.customer_name, 'decision_note', p.decision_note,
        'via', p.decided_via, 'decided_at', dispatch.ts(p.decided_at),
        'cancelled_by', p.cancelled_by, 'cancel_reason', p.cancel_reason,
        'cancelled_at', dispatch.ts(p.cancelled_at),
        'supersedes_plan_id', p.supersedes_plan_id,
        'superseded_by_plan_id', (SELECT n.id FROM dispatch.plans n
                                   WHERE n.supersedes_plan_id = p.id),
        'created_at', dispatch.ts(p.created_at), 'updated_at', dispatch.ts(p.updated_at))
$$;

-- The plan as the customer sees it through a signed link: no staff names, no internal
-- cancellation reason.
CREATE FUNCTION dispatch.plan_customer_doc(p dispatch.plans, t dispatch.tickets) RETURNS jsonb
    LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', p.id, 'ticket_number', t.number, 'revision', p.revision, 'mode', p.mode,
        'work', p.work, 'parts', p.parts, 'free_of_charge', p.free_of_charge,
        'fee_cents', p.fee_cents, 'currency', p.currency, 'eta', dispatch.ts(p.eta),
        'warranty_exclusion', p.warranty_exclusion, 'state', p.state,
        'can_decide', p.state = 'proposed' AND t.status NOT IN ('resolved', 'closed', 'cancelled'),
        'customer_name', p.customer_name, 'decision_note', p.decision_note,
        'decided_at', dispatch.ts(p.decided_at), 'created_at', dispatch.ts(p.created_at))
$$;

CREATE FUNCTION dispatch.plan_event(p_topic text, p dispatch.plans, t dispatch.tickets,
                                    p_via text DEFAULT NULL)
    RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT dispatch.ticket_event(p_topic, t, 'plan_changed',
                                 jsonb_strip_nulls(jsonb_build_object(
                                     'plan', dispatch.plan_pb(p), 'via', p_via)))
$$;

-- --- refusals -----------------------------------------------------------------------------

-- Why nothing may be decided on ticket t any more (NULL: it is open).
CREATE FUNCTION dispatch.plan_ticket_refusal(t dispatch.tickets, p_what text) RETURNS json
    LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN t.status = 'cancelled' THEN dispatch.err(409, 'ticket_cancelled',
            format('ticket %s was cancelled: cannot %s', t.number, p_what))
        WHEN t.status IN ('resolved', 'closed') THEN dispatch.err(409, 'ticket_closed',
            format('ticket %s is %s: cannot %s', t.number, t.status, p_what))
    END
$$;

-- Why plan p cannot be decided, accepted, disputed, cancelled, ... (p_what) in its state.
CREATE FUNCTION dispatch.plan_state_refusal(p dispatch.plans, p_what text) RETURNS json
    LANGUAGE sql STABLE AS $$
    SELECT CASE p.state
        WHEN 'accepted' THEN dispatch.err(409, 'plan_accepted',
            format('plan %s (revision %s) was accepted at %s: cannot %s', p.id, p.revision,
                   dispatch.ts(p.decided_at), p_what))
        WHEN 'disputed' THEN dispatch.err(409, 'plan_disputed',
            format('plan %s (revision %s) is disputed: cannot %s; an engineer proposes a '
                   'revised plan', p.id, p.revision, p_what))
        WHEN 'superseded' THEN dispatch.err(409, 'plan_superseded',
            format('plan %s (revision %s) was replaced by revision %s (plan %s): cannot %s',
                   p.id, p.revision, n.revision, n.id, p_what))
        WHEN 'cancelled' THEN dispatch.err(409, 'plan_cancelled',
            format('plan %s (revision %s) was cancelled at %s: cannot %s', p.id, p.revision,
                   dispatch.ts(p.cancelled_at), p_what))
        ELSE dispatch.err(409, 'plan_proposed',
            format('plan %s (revision %s) is waiting for the customer''s decision: cannot %s',
                   p.id, p.revision, p_what))
    END
    FROM (SELECT 1) AS one
    LEFT JOIN dispatch.plans n ON n.supersedes_plan_id = p.id
$$;

-- --- operations ---------------------------------------------------------------------------

-- POST /v1/tickets/{number}/plans. d: the validated proposal (plan_validate.h): mode,
-- work, parts, eta (UTC) always; free_of_charge, fee_cents, currency, warranty_exclusion
-- when given.
CREATE FUNCTION dispatch.plan_propose(p_number text, p_actor text, d jsonb) RETURNS json
    LANGUAGE plpgsql AS $$
DECLARE
    t dispatch.tickets;
    last dispatch.plans;
    p dispatch.plans;
    v_refusal json;
    v_eta timestamptz := (d->>'eta')::timestamptz;
    v_excluded boolean := d ? 'warranty_exclusion';
    v_free boolean;
    v_fee bigint;
    v_topic text := 'plan.proposed';
BEGIN
    SELECT * INTO t FROM dispatch.tickets WHERE number = p_number;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('dispatch knows no ticket %s', p_number));
    END IF;
    v_refusal := dispatch.plan_ticket_refusal(t, 'propose a service plan');
    IF v_refusal IS NOT NULL THEN
        RETURN v_refusal;
    END IF;
    -- one proposal per ticket at a time (two engineers at once: the second sees the first)
    PERFORM pg_advisory_xact_lock(hashtextextended('dispatch.plans:' || t.id::text, 0));
    SELECT * INTO last FROM dispatch.plans WHERE ticket_id = t.id
     ORDER BY revision DESC LIMIT 1 FOR UPDATE;
    IF last.state = 'proposed' THEN
        RETURN dispatch.err(409, 'plan_open',
            format('plan %s (revision %s) of ticket %s is waiting for the customer''s '
                   'decision; cancel it before proposing another', last.id, last.revision,
                   t.number));
    ELSIF last.state = 'accepted' THEN
        RETURN dispatch.err(409, 'plan_accepted',
            format('plan %s (revision %s) of ticket %s was accepted; cancel it before '
                   'proposing another', last.id, last.revision, t.number));
    END IF;

    IF v_eta <= now() THEN
        RETURN dispatch.err(422, 'invalid_field',
            format('eta %s is in the past', dispatch.ts(v_eta)), 'eta');
    ELSIF v_eta > now() + interval '366 days' THEN
        RETURN dispatch.err(422, 'invalid_field',
            format('eta %s is more than a year ahead', dispatch.ts(v_eta)), 'eta');
    END IF;

    -- the fee: free under warranty (unless the work is excluded from it), quoted otherwise
    IF v_excluded AND NOT t.in_warranty THEN
        RETURN dispatch.err(422, 'invalid_field',
            format('ticket %s is not under warranty: warranty_exclusion does not apply',
                   t.number), 'warranty_exclusion');
    END IF;
    IF t.in_warranty AND NOT v_excluded THEN
        IF (d->>'free_of_charge')::boolean IS FALSE THEN
            RETURN dispatch.err(422, 'invalid_field',
                format('ticket %s is under warranty: the plan is free of charge (give '
                       'warranty_exclusion to charge for work the warranty does not cover)',
                       t.number), 'free_of_charge');
        ELSIF coalesce((d->>'fee_cents')::bigint, 0) <> 0 THEN
            RETURN dispatch.err(422, 'invalid_field',
                format('ticket %s is under warranty: no fee may be charged (fee_cents must '
                       'be 0 or left out; give warranty_exclusion to charge for work the '
                       'warranty does not cover)', t.number), 'fee_cents');
        END IF;
        v_free := true;
        v_fee := 0;
    ELSE
        IF (d->>'free_of_charge')::boolean IS TRUE THEN
            RETURN dispatch.err(422, 'invalid_field',
                format(CASE WHEN v_excluded
                            THEN 'the plan for ticket %s names a warranty exclusion: it is '
                                 'charged, so give a quote (fee_cents, currency)'
                            ELSE 'ticket %s is not under warranty: the plan needs a quote '
                                 '(fee_cents, currency), it cannot be free of charge' END,
                       t.number), 'free_of_charge');
        ELSIF NOT d ? 'fee_cents' THEN
            RETURN dispatch.err(422, 'missing_field',
                format('ticket %s is %s: the plan needs a quote; fee_cents is required',
                       t.number, CASE WHEN v_excluded THEN 'charged (warranty exclusion)'
                                      ELSE 'not under warranty' END), 'fee_cents');
        ELSIF NOT d ? 'currency' THEN
            RETURN dispatch.err(422, 'missing_field',
                'a quote needs its currency (ISO 4217, e.g. EUR)', 'currency');
        END IF;
        v_free := false;
        v_fee := (d->>'fee_cents')::bigint;
    END IF;

    IF last.state = 'disputed' THEN
        UPDATE dispatch.plans SET state = 'superseded', updated_at = now() WHERE id = last.id;
        v_topic := 'plan.revised';
    END IF;
    INSERT INTO dispatch.plans
        (ticket_id, revision, mode, work, parts, free_of_charge, fee_cents, currency, eta,
         warranty_exclusion, proposed_by, supersedes_plan_id)
    VALUES (t.id, coalesce(last.revision, 0) + 1, d->>'mode', d->>'work', d->'parts', v_free,
            v_fee, d->>'currency', v_eta, d->>'warranty_exclusion', p_actor,
            CASE WHEN v_topic = 'plan.revised' THEN last.id END)
    RETURNING * INTO p;
    RETURN dispatch.ok(201, dispatch.plan_doc(p, t),
                       jsonb_build_array(dispatch.plan_event(v_topic, p, t)));
END
$$;

-- POST /v1/plans/{id}/accept | dispute (p_via 'agent': p_actor is the agent's token name)
-- and POST /v1/customer/plans/{id}/accept | dispute (p_via 'link'; p_revision: the
-- revision the signed link is for). p_action 'accept' | 'dispute'.
CREATE FUNCTION dispatch.plan_decide(p_id uuid, p_action text, p_via text, p_actor text,
                                     p_customer_name text, p_note text, p_revision int)
    RETURNS json LANGUAGE plpgsql AS $$
DECLARE
    p dispatch.plans;
    t dispatch.tickets;
    v_refusal json;
    v_what text := CASE p_action WHEN 'accept' THEN 'accept it' ELSE 'dispute it' END;
BEGIN
    IF p_action NOT IN ('accept', 'dispute') OR p_via NOT IN ('agent', 'link') THEN
        RAISE EXCEPTION 'plan_decide: bad action % or via %', p_action, p_via;
    END IF;
    SELECT * INTO p FROM dispatch.plans WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('no plan %s', p_id));
    END IF;
    SELECT * INTO t FROM dispatch.tickets WHERE id = p.ticket_id;
    IF p_via = 'link' AND (p.state = 'superseded' OR p.revision <> p_revision) THEN
        RETURN dispatch.err(409, 'plan_superseded',
            format('this link is for revision %s of the service plan for ticket %s, which '
                   'has been revised; ask for a link to the current plan', p_revision,
                   t.number));
    END IF;
    v_refusal := coalesce(dispatch.plan_ticket_refusal(t, v_what || ' (the plan)'),
                          CASE WHEN p.state <> 'proposed'
                               THEN dispatch.plan_state_refusal(p, v_what) END);
    IF v_refusal IS NOT NULL THEN
        RETURN v_refusal;
    END IF;
    UPDATE dispatch.plans SET
        state = CASE p_action WHEN 'accept' THEN 'accepted' ELSE 'disputed' END,
        decided_by = p_actor, customer_name = p_customer_name, decision_note = p_note,
        decided_via = p_via, decided_at = now(), updated_at = now()
    WHERE id = p.id
    RETURNING * INTO p;
    IF p_action = 'accept' THEN
        -- item 2 of issue 4: the accepted plan gets the engineer who does the work
        PERFORM dispatch.assign_request(t.id, 'work', p.mode,
                                        format('service plan revision %s accepted', p.revision));
    END IF;
    RETURN dispatch.ok(200,
                       CASE p_via WHEN 'link' THEN dispatch.plan_customer_doc(p, t)
                                  ELSE dispatch.plan_doc(p, t) END,
                       jsonb_build_array(dispatch.plan_event(
                           CASE p_action WHEN 'accept' THEN 'plan.accepted'
                                         ELSE 'plan.disputed' END, p, t, p_via)));
END
$$;

-- POST /v1/plans/{id}/cancel: a proposed, disputed or accepted plan.
CREATE FUNCTION dispatch.plan_cancel(p_id uuid, p_actor text, p_reason text) RETURNS json
    LANGUAGE plpgsql AS $$
DECLARE
    p dispatch.plans;
    t dispatch.tickets;
BEGIN
    SELECT * INTO p FROM dispatch.plans WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('no plan %s', p_id));
    END IF;
    IF p.state IN ('superseded', 'cancelled') THEN
        RETURN dispatch.plan_state_refusal(p, 'cancel it');
    END IF;
    SELECT * INTO t FROM dispatch.tickets WHERE id = p.ticket_id;
    UPDATE dispatch.plans SET state = 'cancelled', cancelled_by = p_actor,
        cancel_reason = p_reason, cancelled_at = now(), updated_at = now()
    WHERE id = p.id
    RETURNING * INTO p;
    RETURN dispatch.ok(200, dispatch.plan_doc(p, t),
                       jsonb_build_array(dispatch.plan_event('plan.cancelled', p, t)));
END
$$;

-- GET /v1/plans/{id}
CREATE FUNCTION dispatch.plan_get(p_id uuid) RETURNS json
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    p dispatch.plans;
    t dispatch.tickets;
BEGIN
    SELECT * INTO p FROM dispatch.plans WHERE id = p_id;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('no plan %s', p_id));
    END IF;
    SELECT * INTO t FROM dispatch.tickets WHERE id = p.ticket_id;
    RETURN dispatch.ok(200, dispatch.plan_doc(p, t));
END
$$;

-- GET /v1/tickets/{number}/plans: every revision, oldest first.
CREATE FUNCTION dispatch.plan_list(p_number text) RETURNS json
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    t dispatch.tickets;
BEGIN
    SELECT * INTO t FROM dispatch.tickets WHERE number = p_number;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('dispatch knows no ticket %s', p_number));
    END IF;
    RETURN dispatch.ok(200, jsonb_build_object(
        'ticket_number', t.number,
        'items', (SELECT coalesce(jsonb_agg(dispatch.plan_doc(p, t) ORDER BY p.revision),
                                  '[]')
                    FROM dispatch.plans p WHERE p.ticket_id = t.id)));
END
$$;

-- POST /v1/plans/{id}/link: records a link to the proposed plan, valid until
-- p_expires_s (unix seconds); plans.c signs it.
CREATE FUNCTION dispatch.plan_link(p_id uuid, p_actor text, p_expires_s bigint) RETURNS json
    LANGUAGE plpgsql AS $$
DECLARE
    p dispatch.plans;
    t dispatch.tickets;
    v_refusal json;
BEGIN
    SELECT * INTO p FROM dispatch.plans WHERE id = p_id FOR SHARE;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('no plan %s', p_id));
    END IF;
    SELECT * INTO t FROM dispatch.tickets WHERE id = p.ticket_id;
    v_refusal := coalesce(dispatch.plan_ticket_refusal(t, 'send the customer a link'),
                          CASE WHEN p.state <> 'proposed'
                               THEN dispatch.plan_state_refusal(p, 'send the customer a link')
                          END);
    IF v_refusal IS NOT NULL THEN
        RETURN v_refusal;
    END IF;
    INSERT INTO dispatch.plan_links (plan_id, issued_by, expires_at)
    VALUES (p.id, p_actor, to_timestamp(p_expires_s));
    RETURN dispatch.ok(201, jsonb_build_object(
        'plan_id', p.id, 'ticket_number', t.number, 'revision', p.revision,
        'expires', p_expires_s, 'expires_at', dispatch.ts(to_timestamp(p_expires_s))));
END
$$;

-- GET /v1/customer/plans/{id} (signed link for p_revision, checked by plans.c).
CREATE FUNCTION dispatch.plan_customer_get(p_id uuid, p_revision int) RETURNS json
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    p dispatch.plans;
    t dispatch.tickets;
BEGIN
    SELECT * INTO p FROM dispatch.plans WHERE id = p_id;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', 'no such service plan');
    END IF;
    SELECT * INTO t FROM dispatch.tickets WHERE id = p.ticket_id;
    IF p.state = 'superseded' OR p.revision <> p_revision THEN
        RETURN dispatch.err(409, 'plan_superseded',
            format('this link is for revision %s of the service plan for ticket %s, which '
                   'has been revised; ask for a link to the current plan', p_revision,
                   t.number));
    END IF;
    RETURN dispatch.ok(200, dispatch.plan_customer_doc(p, t));
END
$$;
