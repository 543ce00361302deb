-- intake 006: the follow applier takes up to p_limit queued changes per transaction.
--
-- One change per transaction (005) applied about 280 changes a second here; at 500 new
-- tickets a second (tests/bench/assignment.sh) each ticket.assigned queues one, and the
-- inbox grew by a third of the load: tickets stayed "new" in intake for minutes after
-- dispatch had assigned them. Now the changes are taken in id order, in batches; follow.c
-- applies them one after the other in memory (a ticket that appears twice sees its first
-- change) and writes them, the events and the deletion of the rows in one transaction.

DROP FUNCTION intake.follow_take();

-- The oldest pending rows (at most p_limit) and their tickets' documents, the tickets
-- locked; NULL when there is nothing to do, or when another intake instance is applying
-- (one applier at a time keeps each ticket's changes in the order dispatch made them).
-- {"items": [{row}, ...], "tickets": {"<ticket id>": {doc}, ...}, "now": "..."}; an item
-- whose ticket intake does not have has no entry in "tickets".
CREATE FUNCTION intake.follow_take(p_limit int) RETURNS json
    LANGUAGE plpgsql AS $$
DECLARE
    v_items json;
    v_ids uuid[];
    v_tickets json;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('intake.follow_inbox')) THEN
        RETURN NULL;
    END IF;
    SELECT json_agg(row_to_json(r) ORDER BY r.id), array_agg(DISTINCT r.ticket_id)
      INTO v_items, v_ids
      FROM (SELECT * FROM intake.follow_inbox WHERE failed_at IS NULL
             ORDER BY id LIMIT p_limit) r;
    IF v_items IS NULL THEN
        RETURN NULL;
    END IF;
    -- (in id order: two writers locking several tickets never wait for each other in a
    -- circle)
    PERFORM 1 FROM intake.tickets t WHERE t.id = ANY (v_ids) ORDER BY t.id FOR UPDATE;
    SELECT json_object_agg(t.id, intake.ticket_doc(t, c, p))
      INTO v_tickets
      FROM intake.tickets t
      JOIN intake.customers c ON c.id = t.customer_id
      LEFT JOIN intake.products p ON p.id = t.product_id
     WHERE t.id = ANY (v_ids);
    RETURN json_build_object('items', v_items, 'tickets', coalesce(v_tickets, '{}'::json),
                             'now', intake.ts(now()));
END
$$;
