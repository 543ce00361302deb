-- dispatch 010: the SLA engine's NOTIFY says what it is about.
--
-- Since 009 the change queue (sla_changes) holds vendor deadlines only; clocks reach the
-- engine by being marked dirty. The queue's trigger now notifies with the payload
-- 'vendor', and the engine takes the queue only then (and on its periodic sweep), where it
-- used to take the (nearly always empty) queue on every NOTIFY of every new ticket.
CREATE OR REPLACE FUNCTION dispatch.sla_deadlines_queue() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    IF current_setting('dispatch.sla_quiet', true) IS NOT DISTINCT FROM 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO dispatch.sla_changes (deadline_id) SELECT id FROM new_rows;
    ELSE
        INSERT INTO dispatch.sla_changes (deadline_id)
        SELECT n.id FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.version <> o.version;
    END IF;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM pg_notify('dispatch_deadlines', 'vendor');
    END IF;
    RETURN NULL;
END
$$;
