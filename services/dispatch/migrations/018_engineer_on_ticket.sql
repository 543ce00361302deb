-- dispatch 018: an engineer acts on a ticket's plans, external repairs and difficult case
-- only while working on the ticket. An engineer's token names its engineer (013); with
-- it, proposing or cancelling a plan, every step of a send-out and every step of a case
-- need that engineer to hold an open (offered or accepted) assignment on the ticket; a
-- case's owner may also act on the case. Supervisors and admins act on any ticket. Until
-- now any engineer token could propose a plan or flag a case on any ticket.
--
-- p_on says what p_key is: 'ticket' (a number), 'plan', 'repair' (a send-out) or 'case'
-- (an id). p_as as in dispatch.assignment_answer_refusal(): NULL when the caller may act
-- on any ticket; otherwise the engineer id its token names, '' when it names none.
-- Returns the error, or NULL when the caller may go on — also when p_key names nothing
-- (the operation answers 404 or 422). The check reads without locks: an assignment
-- ending at the same moment lets the step through, as if it had come a moment earlier.
CREATE FUNCTION dispatch.engineer_refusal(p_on text, p_key text, p_as text) RETURNS json
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_ticket uuid;
    v_number text;
    v_owner uuid;
    v_id uuid;
BEGIN
    IF p_as IS NULL THEN
        RETURN NULL;
    END IF;
    IF p_as = '' THEN
        RETURN dispatch.err(403, 'forbidden',
                            'this engineer token names no engineer, so it cannot act on '
                            'tickets: create one with aftercarectl token create --role '
                            'engineer --engineer ID, or ask a supervisor');
    END IF;
    IF p_on <> 'ticket' THEN
        IF p_key !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
            RETURN NULL;
        END IF;
        v_id := p_key::uuid;
    END IF;
    CASE p_on
        WHEN 'ticket' THEN
            SELECT id INTO v_ticket FROM dispatch.tickets WHERE number = p_key;
        WHEN 'plan' THEN
            SELECT ticket_id INTO v_ticket FROM dispatch.plans WHERE id = v_id;
        WHEN 'repair' THEN
            SELECT ticket_id INTO v_ticket FROM dispatch.repair_sendouts WHERE id = v_id;
        WHEN 'case' THEN
            SELECT ticket_id, owner_engineer_id INTO v_ticket, v_owner
              FROM dispatch.difficult_cases WHERE id = v_id;
        ELSE
            RAISE EXCEPTION 'dispatch.engineer_refusal: unknown object %', p_on;
    END CASE;
    IF v_ticket IS NULL OR v_owner::text = p_as THEN
        RETURN NULL;
    END IF;
    IF EXISTS (SELECT 1 FROM dispatch.assignments
                WHERE ticket_id = v_ticket AND engineer_id::text = p_as
                  AND state IN ('offered', 'accepted')) THEN
        RETURN NULL;
    END IF;
    SELECT number INTO v_number FROM dispatch.tickets WHERE id = v_ticket;
    RETURN dispatch.err(403, 'not_your_ticket',
                        format('engineer %s holds no open assignment on ticket %s%s: ask a '
                               'supervisor', p_as, v_number,
                               CASE WHEN p_on = 'case' THEN ' and does not own its case'
                                    ELSE '' END));
END
$$;
