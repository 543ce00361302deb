-- dispatch 021: an automatic offer that nobody answers expires (AC_DISPATCH_OFFER_TIMEOUT).
--
-- Until now an offer stayed open until the engineer accepted or declined it, and a ticket
-- whose engineer never answered waited for its SLA clock's breach and grace to be
-- re-dispatched. Now an automatic offer ('auto') still 'offered' after the timeout is
-- declined on the engineer's behalf, exactly as POST /v1/assignments/{id}/decline would:
-- the engineer's capacity is freed, the request is queued again without that engineer
-- (the worker offers it to the next best, or the queue alerts), and assignment.declined
-- is published with the reason. A supervisor's assignment never expires: the supervisor
-- chose that engineer.

-- the open automatic offers, oldest first (small: offers are answered within minutes)
CREATE INDEX assignments_offered ON dispatch.assignments (created_at)
    WHERE state = 'offered' AND method = 'auto';

-- Declines up to p_limit automatic offers made p_timeout_s or more seconds ago (locked
-- with SKIP LOCKED: an engineer answering at this moment wins). Returns ops.h's shape:
-- body {"expired": n, "next_in_s": seconds until the next open offer expires, or null
-- when there is none}; one assignment.declined event per offer.
CREATE FUNCTION dispatch.assign_expire(p_timeout_s int, p_limit int) RETURNS json
    LANGUAGE plpgsql
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
    AS $$
DECLARE
    a dispatch.assignments;
    t dispatch.tickets;
    v_name text;
    v_reason text;
    v_events jsonb := '[]';
    n int := 0;
    v_next double precision;
BEGIN
    FOR a IN SELECT * FROM dispatch.assignments x
              WHERE x.state = 'offered' AND x.method = 'auto'
                AND x.created_at <= now() - make_interval(secs => p_timeout_s)
              ORDER BY x.created_at
              LIMIT p_limit FOR UPDATE SKIP LOCKED LOOP
        SELECT name INTO v_name FROM dispatch.engineers WHERE id = a.engineer_id;
        v_reason := format('offer expired: no answer from %s within %s s', v_name, p_timeout_s);
        a := dispatch.assign_end(a, 'declined', v_reason, 'dispatch', true);
        SELECT * INTO t FROM dispatch.tickets WHERE id = a.ticket_id;
        PERFORM dispatch.assign_enqueue(t, a.kind, a.mode, v_reason, a.engineer_id, '');
        v_events := v_events || dispatch.assignment_changed_event('assignment.declined', t, a,
                                                                  v_reason);
        n := n + 1;
    END LOOP;
    SELECT extract(epoch FROM min(x.created_at) + make_interval(secs => p_timeout_s) - now())
      INTO v_next
      FROM dispatch.assignments x
     WHERE x.state = 'offered' AND x.method = 'auto';
    RETURN dispatch.ok(200, jsonb_build_object('expired', n,
                                               'next_in_s', greatest(v_next, 0)),
                       v_events);
END
$$;
