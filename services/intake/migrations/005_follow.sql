-- intake 005: following dispatch (follow.c). The consumer of AC_INTAKE_FOLLOW turns each
-- dispatch event that moves a ticket (ticket.assigned, plan.accepted, visit.*, repair.*)
-- into a row here, in the transaction that also moves its checkpoint — so each event is
-- queued exactly once. follow.c's applier then makes each row a normal status change
-- (the transition table of validate.c, version + 1, a history row by "dispatch", the
-- ticket.* event through intake.outbox) and deletes the row, in one transaction; a row
-- whose move the transition table refuses is deleted with a log line and nothing else.

CREATE TABLE intake.follow_inbox (
    id              bigserial PRIMARY KEY,            -- the order events are applied in
    event_id        uuid NOT NULL UNIQUE,             -- the followed event's id
    source          text NOT NULL,                    -- "aftercare/dispatch"
    topic           text NOT NULL,                    -- "visit.paused"
    ticket_id       uuid NOT NULL,
    ticket_number   text NOT NULL,
    to_status       text NOT NULL,
    only_from       text[],                           -- NULL: any status the table allows
    reason          text NOT NULL,                    -- for the status history
    correlation_id  text NOT NULL DEFAULT '',
    received_at     timestamptz NOT NULL DEFAULT now(),
    attempts        int NOT NULL DEFAULT 0,           -- failed tries to apply it
    last_error      text,
    failed_at       timestamptz                       -- given up: an operator looks at it
);
CREATE INDEX follow_inbox_pending ON intake.follow_inbox (id) WHERE failed_at IS NULL;

-- The consumer's statement: queue one change (an event seen twice is queued once) and
-- wake the applier when the transaction commits.
CREATE FUNCTION intake.follow_enqueue(p_event_id uuid, p_source text, p_topic text,
                                      p_ticket_id uuid, p_number text, p_to text,
                                      p_only_from text[], p_reason text,
                                      p_correlation_id text)
    RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO intake.follow_inbox (event_id, source, topic, ticket_id, ticket_number,
                                     to_status, only_from, reason, correlation_id)
    VALUES (p_event_id, p_source, p_topic, p_ticket_id, p_number, p_to, p_only_from,
            p_reason, coalesce(p_correlation_id, ''))
    ON CONFLICT (event_id) DO NOTHING;
    PERFORM pg_notify('intake_follow', '');
END
$$;

-- The applier's first statement: the oldest pending row and its ticket (the ticket's
-- document, row locked), with the transaction's now(); NULL when there is nothing to do,
-- or when another intake instance is applying (one applier at a time keeps each
-- ticket's changes in the order dispatch made them; the other one comes back later).
-- {"item": {row}, "ticket": {doc} | null, "now": "..."}
CREATE FUNCTION intake.follow_take() RETURNS json
    LANGUAGE plpgsql AS $$
DECLARE
    r intake.follow_inbox;
    v_doc json;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('intake.follow_inbox')) THEN
        RETURN NULL;
    END IF;
    SELECT * INTO r FROM intake.follow_inbox WHERE failed_at IS NULL ORDER BY id LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT intake.ticket_doc(t, c, p) INTO v_doc
      FROM intake.tickets t
      JOIN intake.customers c ON c.id = t.customer_id
      LEFT JOIN intake.products p ON p.id = t.product_id
     WHERE t.id = r.ticket_id
       FOR UPDATE OF t;
    RETURN json_build_object('item', row_to_json(r), 'ticket', v_doc, 'now', intake.ts(now()));
END
$$;

-- A row failed to apply (p_error: why). After p_max_attempts it is set aside (failed_at)
-- so that the rows behind it go on; clear failed_at to try it again.
CREATE FUNCTION intake.follow_failed(p_id bigint, p_error text, p_max_attempts int)
    RETURNS json LANGUAGE sql AS $$
    UPDATE intake.follow_inbox
       SET attempts = attempts + 1, last_error = left(p_error, 1000),
           failed_at = CASE WHEN attempts + 1 >= p_max_attempts THEN now() END
     WHERE id = p_id
    RETURNING json_build_object('attempts', attempts, 'is_given_up', failed_at IS NOT NULL)
$$;
