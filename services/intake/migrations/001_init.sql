-- intake 001: customers, products, warranty policies, tickets, status history, daily
-- number counters, idempotency keys, and the functions that render them as API JSON and
-- create a ticket in one call (used by the group commit in batch.c).
-- The schema "intake" exists already (deployment bootstrap); everything is qualified.

CREATE TABLE intake.customers (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq         bigserial NOT NULL UNIQUE,          -- keyset pagination
    kind        text NOT NULL CHECK (kind IN ('person', 'company')),
    name        text NOT NULL,
    tier        text NOT NULL DEFAULT 'standard' CHECK (tier IN ('standard', 'vip')),
    phone       text,
    email       text,
    contacts    json NOT NULL DEFAULT '[]',
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (phone IS NOT NULL OR email IS NOT NULL)
);
CREATE INDEX customers_tier_seq ON intake.customers (tier, seq);

CREATE TABLE intake.products (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq            bigserial NOT NULL UNIQUE,
    customer_id    uuid NOT NULL REFERENCES intake.customers (id),
    model          text NOT NULL,
    serial_number  text NOT NULL,
    purchase_date  date NOT NULL,
    install_site   text,
    region         text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (model, serial_number)
);
CREATE INDEX products_customer_seq ON intake.products (customer_id, seq);

CREATE TABLE intake.warranty_policies (
    model        text PRIMARY KEY,
    months       int NOT NULL CHECK (months BETWEEN 1 AND 240),
    description  text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE intake.tickets (
    id                uuid PRIMARY KEY,
    seq               bigserial NOT NULL UNIQUE,    -- keyset pagination, newest first
    number            text NOT NULL UNIQUE,         -- SV-YYYYMMDD-NNNNNN
    customer_id       uuid NOT NULL REFERENCES intake.customers (id),
    product_id        uuid REFERENCES intake.products (id),
    channel           text NOT NULL
        CHECK (channel IN ('phone', 'web', 'email', 'partner', 'monitoring', 'api')),
    category          text NOT NULL
        CHECK (category IN ('fault_repair', 'consultation', 'maintenance', 'training',
                            'complaint')),
    description       text NOT NULL,
    occurred_at       timestamptz NOT NULL,
    urgency           text NOT NULL CHECK (urgency IN ('normal', 'urgent', 'critical')),
    expedite          boolean NOT NULL DEFAULT false,
    priority          text NOT NULL CHECK (priority IN ('P1', 'P2', 'P3', 'P4')),
    status            text NOT NULL DEFAULT 'new'
        CHECK (status IN ('new', 'needs_info', 'diagnosing', 'planned', 'in_progress',
                          'waiting_customer', 'waiting_parts', 'waiting_external', 'resolved',
                          'closed', 'reopened', 'cancelled')),
    warranty_in       boolean NOT NULL,
    warranty_reason   text NOT NULL,
    warranty_expires  date,
    contact           json NOT NULL,
    attachments       json NOT NULL DEFAULT '[]',
    version           bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    resolved_at       timestamptz,
    closed_at         timestamptz
);
CREATE INDEX tickets_customer_seq ON intake.tickets (customer_id, seq);
CREATE INDEX tickets_status_seq ON intake.tickets (status, seq);

CREATE TABLE intake.ticket_status_history (
    ticket_id    uuid NOT NULL REFERENCES intake.tickets (id),
    seq          int NOT NULL,                      -- 1, 2, ... per ticket
    from_status  text,                              -- NULL for the creation
    to_status    text NOT NULL,
    at           timestamptz NOT NULL,
    reason       text NOT NULL DEFAULT '',
    actor        text NOT NULL,                     -- role of the caller
    PRIMARY KEY (ticket_id, seq)
);

-- One row per UTC day; "last" is the last ticket number handed out that day. Updated in
-- the creating transaction, so numbers are gap-free (a rollback returns them).
CREATE TABLE intake.daily_counters (
    day   date PRIMARY KEY,
    last  int NOT NULL
);

CREATE TABLE intake.idempotency_keys (
    key           text PRIMARY KEY,
    request_hash  text NOT NULL,                    -- SHA-256 hex of the canonical body
    ticket_id     uuid NOT NULL,                    -- claimed before the ticket row exists
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- RFC 3339 UTC with microseconds, as every API timestamp is rendered.
CREATE FUNCTION intake.ts(t timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

CREATE FUNCTION intake.customer_doc(c intake.customers) RETURNS json
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT json_build_object(
        'id', c.id, 'kind', c.kind, 'name', c.name, 'tier', c.tier, 'phone', c.phone,
        'email', c.email, 'contacts', c.contacts, 'created_at', intake.ts(c.created_at))
$$;

CREATE FUNCTION intake.product_doc(p intake.products) RETURNS json
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT json_build_object(
        'id', p.id, 'customer_id', p.customer_id, 'model', p.model,
        'serial_number', p.serial_number, 'purchase_date', to_char(p.purchase_date, 'YYYY-MM-DD'),
        'install_site', p.install_site, 'region', p.region,
        'created_at', intake.ts(p.created_at))
$$;

CREATE FUNCTION intake.policy_doc(w intake.warranty_policies) RETURNS json
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT json_build_object(
        'model', w.model, 'months', w.months, 'description', w.description,
        'created_at', intake.ts(w.created_at), 'updated_at', intake.ts(w.updated_at))
$$;

-- The ticket as the API shows it (docs/api.md, "A ticket in responses"); p is NULL when
-- the ticket names no product. batch.c/events.c read the same document.
CREATE FUNCTION intake.ticket_doc(t intake.tickets, c intake.customers, p intake.products)
RETURNS json LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT json_build_object(
        'id', t.id, 'number', t.number, 'status', t.status, 'priority', t.priority,
        'channel', t.channel, 'category', t.category, 'urgency', t.urgency,
        'expedite', t.expedite, 'description', t.description,
        'occurred_at', intake.ts(t.occurred_at), 'created_at', intake.ts(t.created_at),
        'updated_at', intake.ts(t.updated_at), 'resolved_at', intake.ts(t.resolved_at),
        'closed_at', intake.ts(t.closed_at), 'version', t.version,
        'customer', json_build_object('id', c.id, 'name', c.name, 'kind', c.kind,
                                      'tier', c.tier),
        'product', CASE WHEN t.product_id IS NULL THEN NULL ELSE json_build_object(
            'id', p.id, 'model', p.model, 'serial_number', p.serial_number,
            'purchase_date', to_char(p.purchase_date, 'YYYY-MM-DD'),
            'install_site', p.install_site, 'region', p.region) END,
        'warranty', json_build_object(
            'in_warranty', t.warranty_in, 'reason', t.warranty_reason,
            'expires_on', to_char(t.warranty_expires, 'YYYY-MM-DD')),
        'contact', t.contact, 'attachments', t.attachments)
$$;

CREATE FUNCTION intake.ticket_doc_by_id(p_id uuid) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT intake.ticket_doc(t, c, p)
      FROM intake.tickets t
      JOIN intake.customers c ON c.id = t.customer_id
      LEFT JOIN intake.products p ON p.id = t.product_id
     WHERE t.id = p_id
$$;

-- Creates one ticket, or says why not. Never raises for expected problems: the caller
-- runs many of these in one transaction (group commit), and one bad request must not
-- abort the others. r_status is one of
--   created                 r_doc: the new ticket
--   replayed                r_doc: the ticket created earlier with this idempotency key
--   unknown_reference       r_field: customer_id | product_id
--   invalid_field           r_field: occurred_at (before the product's purchase date)
--   idempotency_key_reused  r_field: Idempotency-Key
-- The priority rule lives in C (validate.c); the caller passes the priority for a
-- standard and for a VIP customer, and the customer's tier picks one.
CREATE FUNCTION intake.create_ticket(
    p_idem_key text, p_request_hash text, p_customer_id uuid, p_product_id uuid,
    p_channel text, p_category text, p_description text, p_occurred_at timestamptz,
    p_urgency text, p_expedite boolean, p_priority_standard text, p_priority_vip text,
    p_contact json, p_attachments json, p_actor text,
    OUT r_status text, OUT r_field text, OUT r_message text, OUT r_doc json)
LANGUAGE plpgsql AS $$
DECLARE
    v_now      timestamptz := now();
    v_day      date := (now() AT TIME ZONE 'UTC')::date;
    v_occurred timestamptz := coalesce(p_occurred_at, now());
    v_id       uuid;
    v_hash     text;
    v_months   int;
    v_expires  date;
    v_in       boolean := false;
    v_reason   text;
    v_n        int;
    v_number   text;
    c          intake.customers;
    p          intake.products;
    t          intake.tickets;
BEGIN
    IF p_idem_key IS NOT NULL THEN
        SELECT k.request_hash, k.ticket_id INTO v_hash, v_id
          FROM intake.idempotency_keys k WHERE k.key = p_idem_key;
        IF FOUND THEN
            IF v_hash <> p_request_hash THEN
                r_status := 'idempotency_key_reused'; r_field := 'Idempotency-Key';
                r_message := 'this Idempotency-Key was used with a different request body';
                RETURN;
            END IF;
            r_status := 'replayed'; r_doc := intake.ticket_doc_by_id(v_id);
            RETURN;
        END IF;
    END IF;

    SELECT * INTO c FROM intake.customers WHERE id = p_customer_id;
    IF NOT FOUND THEN
        r_status := 'unknown_reference'; r_field := 'customer_id';
        r_message := 'no customer ' || p_customer_id;
        RETURN;
    END IF;

    IF p_product_id IS NULL THEN
        v_reason := 'no product on the ticket';
    ELSE
        SELECT * INTO p FROM intake.products WHERE id = p_product_id;
        IF NOT FOUND OR p.customer_id <> p_customer_id THEN
            r_status := 'unknown_reference'; r_field := 'product_id';
            r_message := CASE WHEN p.id IS NULL THEN 'no product ' || p_product_id
                              ELSE 'product ' || p_product_id || ' does not belong to customer '
                                   || p_customer_id END;
            RETURN;
        END IF;
        IF (v_occurred AT TIME ZONE 'UTC')::date < p.purchase_date THEN
            r_status := 'invalid_field'; r_field := 'occurred_at';
            r_message := 'occurred_at is before the product''s purchase date '
                         || to_char(p.purchase_date, 'YYYY-MM-DD');
            RETURN;
        END IF;
        SELECT w.months INTO v_months FROM intake.warranty_policies w WHERE w.model = p.model;
        IF NOT FOUND THEN
            v_reason := 'no warranty policy for model ' || p.model;
        ELSE
            v_expires := (p.purchase_date + make_interval(months => v_months))::date;
            v_in := (v_occurred AT TIME ZONE 'UTC')::date <= v_expires;
            v_reason := CASE WHEN v_in THEN 'covered until ' ELSE 'expired on ' END
                        || to_char(v_expires, 'YYYY-MM-DD');
        END IF;
    END IF;

    v_id := gen_random_uuid();
    IF p_idem_key IS NOT NULL THEN
        INSERT INTO intake.idempotency_keys (key, request_hash, ticket_id)
        VALUES (p_idem_key, p_request_hash, v_id)
        ON CONFLICT (key) DO NOTHING;
        IF NOT FOUND THEN
            -- a concurrent transaction claimed the key first and has committed
            SELECT k.request_hash, k.ticket_id INTO v_hash, v_id
              FROM intake.idempotency_keys k WHERE k.key = p_idem_key;
            IF v_hash <> p_request_hash THEN
                r_status := 'idempotency_key_reused'; r_field := 'Idempotency-Key';
                r_message := 'this Idempotency-Key was used with a different request body';
                RETURN;
            END IF;
            r_status := 'replayed'; r_doc := intake.ticket_doc_by_id(v_id);
            RETURN;
        END IF;
    END IF;

    INSERT INTO intake.daily_counters AS d (day, last) VALUES (v_day, 1)
    ON CONFLICT (day) DO UPDATE SET last = d.last + 1
    RETURNING d.last INTO v_n;
    v_number := 'SV-' || to_char(v_day, 'YYYYMMDD') || '-'
                || CASE WHEN v_n < 1000000 THEN lpad(v_n::text, 6, '0') ELSE v_n::text END;

    INSERT INTO intake.tickets AS x (
        id, number, customer_id, product_id, channel, category, description, occurred_at,
        urgency, expedite, priority, status, warranty_in, warranty_reason, warranty_expires,
        contact, attachments, version, created_at, updated_at)
    VALUES (
        v_id, v_number, p_customer_id, p_product_id, p_channel, p_category, p_description,
        v_occurred, p_urgency, p_expedite,
        CASE WHEN c.tier = 'vip' THEN p_priority_vip ELSE p_priority_standard END,
        'new', v_in, v_reason, v_expires,
        json_build_object('name', coalesce(p_contact ->> 'name', c.name),
                          'phone', coalesce(p_contact ->> 'phone', c.phone),
                          'email', coalesce(p_contact ->> 'email', c.email)),
        coalesce(p_attachments, '[]'), 1, v_now, v_now)
    RETURNING x.* INTO t;

    INSERT INTO intake.ticket_status_history (ticket_id, seq, from_status, to_status, at, actor)
    VALUES (v_id, 1, NULL, 'new', v_now, p_actor);

    r_status := 'created';
    r_doc := intake.ticket_doc(t, c, p);
END
$$;
