-- dispatch 013: who may answer an offer. An engineer's token names its engineer
-- (auth.tokens.engineer_id, `aftercarectl token create --role engineer --engineer ID`);
-- it may accept or decline only the offers made to that engineer. Supervisors and admins
-- may answer any offer (recorded as decided_by). Until now any engineer token could
-- answer any offer.
--
-- p_as: NULL when the caller may answer any offer (supervisor, admin); otherwise the
-- engineer id its token names, '' when it names none. Returns the error, or NULL when the
-- caller may go on (also when there is no such assignment: the operation answers 404).
-- An assignment never changes engineer (a reassignment is a new assignment), so the check
-- needs no lock.
CREATE FUNCTION dispatch.assignment_answer_refusal(p_id uuid, p_as text) RETURNS json
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_engineer uuid;
BEGIN
    IF p_as IS NULL THEN
        RETURN NULL;
    END IF;
    IF p_as = '' THEN
        RETURN dispatch.err(403, 'forbidden',
                            'this engineer token names no engineer, so it cannot answer offers: '
                            'create one with aftercarectl token create --role engineer '
                            '--engineer ID, or ask a supervisor');
    END IF;
    SELECT engineer_id INTO v_engineer FROM dispatch.assignments WHERE id = p_id;
    IF FOUND AND v_engineer::text <> p_as THEN
        RETURN dispatch.err(403, 'not_your_assignment',
                            format('assignment %s is offered to another engineer', p_id));
    END IF;
    RETURN NULL;
END
$$;
