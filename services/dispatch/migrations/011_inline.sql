-- dispatch 011: the helper functions on the path of every ticket cost what they compute,
-- not the set-up of a nested query (issue 4, assignment latency at 500 tickets/s).
--
-- A LANGUAGE sql function is inlined into the statement that calls it only when its body
-- is one plain expression (no FROM, no sub-select) no more volatile than the function is
-- declared. Otherwise every call runs the body as a query of its own, with executor
-- start-up, and from PL/pgSQL it is planned again in every transaction. With track_functions
-- on, tests/bench/assignment.sh counted 8 such calls per ticket: dispatch.ts 18 us each
-- (70,000 calls in 15 s: IMMUTABLE, but to_char() is only STABLE, so never inlined),
-- assignment_msg 137 us, sla_policy_for 123 us, sla_slack_seconds 56 us, ok 430 us (its
-- json_build_object() is STABLE too).
--
-- Here: the expressions are declared STABLE (what their bodies are), so they inline; the
-- functions that read a table are PL/pgSQL, whose statement plans stay cached in the session.
-- Same signatures, same results.

CREATE OR REPLACE FUNCTION dispatch.ts(t timestamptz) RETURNS text
    LANGUAGE sql STABLE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

CREATE OR REPLACE FUNCTION dispatch.ok(p_status int, p_body jsonb, p_events jsonb DEFAULT '[]')
    RETURNS json LANGUAGE sql STABLE AS $$
    SELECT json_build_object('status', p_status, 'body', p_body,
                             'events', coalesce(p_events, '[]'::jsonb))
$$;

CREATE OR REPLACE FUNCTION dispatch.err(p_status int, p_code text, p_message text,
                                        p_field text DEFAULT NULL)
    RETURNS json LANGUAGE sql STABLE AS $$
    SELECT json_build_object('error', json_strip_nulls(json_build_object(
        'status', p_status, 'code', p_code, 'message', p_message, 'field', p_field)))
$$;

CREATE OR REPLACE FUNCTION dispatch.assignment_msg(a dispatch.assignments) RETURNS jsonb
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_name text;
    v_role text;
BEGIN
    SELECT e.name, e.role INTO v_name, v_role FROM dispatch.engineers e WHERE e.id = a.engineer_id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'id', a.id, 'ticket_id', a.ticket_id, 'kind', 'ASSIGNMENT_KIND_' || upper(a.kind),
        'engineer_id', a.engineer_id, 'engineer_name', v_name,
        'engineer_role', 'ENGINEER_ROLE_' || upper(v_role),
        'state', 'ASSIGNMENT_STATE_' || upper(a.state), 'method', a.method,
        'score', a.score, 'breakdown', a.breakdown, 'candidates', a.candidates,
        'reason', coalesce(a.end_reason, a.reason), 'actor', a.actor,
        'created_at', dispatch.ts(a.created_at), 'updated_at', dispatch.ts(a.updated_at)));
END
$$;

CREATE OR REPLACE FUNCTION dispatch.sla_policy_for(t dispatch.tickets)
    RETURNS dispatch.sla_policies LANGUAGE plpgsql STABLE AS $$
DECLARE
    p dispatch.sla_policies;
BEGIN
    SELECT x.* INTO p FROM dispatch.sla_policies x
     WHERE x.active
       AND (x.priority IS NULL OR x.priority = t.priority)
       AND (x.customer_tier IS NULL OR x.customer_tier = t.customer_tier)
       AND (x.category IS NULL OR x.category = t.category)
     ORDER BY (x.priority IS NOT NULL)::int + (x.customer_tier IS NOT NULL)::int
              + (x.category IS NOT NULL)::int DESC,
              x.priority IS NULL, x.customer_tier IS NULL, x.category IS NULL
     LIMIT 1;
    RETURN p;
END
$$;

CREATE OR REPLACE FUNCTION dispatch.sla_slack_seconds(p_ticket_id uuid) RETURNS bigint
    LANGUAGE plpgsql STABLE AS $$
BEGIN
    -- (the state test inside the aggregate keeps the plan on the primary key; as a WHERE
    -- condition the planner AND-ed in the partial policy index, ~1.6 ms a call)
    RETURN (SELECT floor(extract(epoch FROM min(CASE WHEN c.state = 'running' THEN c.due_at END)
                                         - now()))::bigint
              FROM dispatch.sla_clocks c
             WHERE c.ticket_id = p_ticket_id);
END
$$;
