-- dispatch 016: the assignment score's SLA slack also for a ticket whose clocks the engine
-- has not computed yet. A new ticket's clocks are computed in batches (sla.c,
-- COMPUTE_GAP_S) and its diagnosis request is usually taken before that: its running
-- clocks had no due time, so the slack was unknown and the score fell back to the
-- priority ("P2, no SLA clock") for nearly every new ticket. A running clock without a due
-- time now counts its policy's target less the wall time since it started: exact for a
-- ticket that has just opened (nothing has elapsed in any calendar), and an upper bound of
-- the elapsed business time otherwise, until the engine's due time takes over.
CREATE OR REPLACE FUNCTION dispatch.sla_slack_seconds(p_ticket_id uuid) RETURNS bigint
    LANGUAGE plpgsql STABLE AS $$
BEGIN
    -- (the state test inside the aggregate keeps the plan on the primary key, see 011)
    RETURN (SELECT floor(min(CASE WHEN c.state <> 'running' THEN NULL
                                  WHEN c.due_at IS NOT NULL
                                  THEN extract(epoch FROM c.due_at - now())
                                  ELSE (SELECT CASE c.target
                                                   WHEN 'first_response' THEN p.first_response_s
                                                   WHEN 'arrival' THEN p.arrival_s
                                                   ELSE p.resolution_s END
                                          FROM dispatch.sla_policies p
                                         WHERE p.id = c.policy_id)
                                       - extract(epoch FROM now() - c.started_at) END))::bigint
              FROM dispatch.sla_clocks c
             WHERE c.ticket_id = p_ticket_id);
END
$$;
