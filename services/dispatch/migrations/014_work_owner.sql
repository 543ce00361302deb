-- dispatch 014: an engineer records only their own work. An engineer's token names its
-- engineer (013); with it, POST /v1/tickets/{number}/work opens a record for that
-- engineer only (without engineer_id: for that engineer, not for whoever holds the
-- ticket), and POST /v1/work/{id}/steps steps only that engineer's records. Supervisors
-- and admins record work for anyone; agents record the customer's confirmation (work.c).
-- Until now any engineer token could open or step anyone's work record.
--
-- p_as as in dispatch.assignment_answer_refusal(): NULL when the caller may act for
-- anyone; otherwise the engineer id its token names, '' when it names none. p_record: the
-- work record stepped (NULL: a new record, for p_engineer — NULL: not given). Returns the
-- error, or NULL when the caller may go on (also when there is no such record: the
-- operation answers 404). A record never changes engineer, so the check needs no lock.
CREATE FUNCTION dispatch.work_refusal(p_record uuid, p_engineer uuid, p_as text) RETURNS json
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_engineer uuid := p_engineer;
BEGIN
    IF p_as IS NULL THEN
        RETURN NULL;
    END IF;
    IF p_as = '' THEN
        RETURN dispatch.err(403, 'forbidden',
                            'this engineer token names no engineer, so it cannot record work: '
                            'create one with aftercarectl token create --role engineer '
                            '--engineer ID, or ask a supervisor');
    END IF;
    IF p_record IS NOT NULL THEN
        SELECT engineer_id INTO v_engineer FROM dispatch.work_records WHERE id = p_record;
        IF FOUND AND v_engineer::text <> p_as THEN
            RETURN dispatch.err(403, 'not_your_work',
                                format('work record %s is another engineer''s', p_record));
        END IF;
    ELSIF v_engineer IS NOT NULL AND v_engineer::text <> p_as THEN
        RETURN dispatch.err(403, 'not_your_work',
                            'an engineer opens work records for themselves: leave out '
                            'engineer_id, or ask a supervisor', 'engineer_id');
    END IF;
    RETURN NULL;
END
$$;
