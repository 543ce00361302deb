-- dispatch 017: the assignment worker's batches send no NOTIFY. A batch counts its
-- engineers' open jobs up (engineer_load) and inserts its events into the outbox; both
-- notified — a 'load <id> <n> <version>' per engineer and the outbox relay's wake-up — and
-- so took PostgreSQL's database-wide NOTIFY lock at every batch's commit, queueing behind
-- any other notifying commit. The worker already takes the counts from assign_apply's
-- answer (body.loads) and wakes the relay itself after the commit (assignment.c), and one
-- dispatch runs per database, so a transaction that sets dispatch.assign_quiet = on
-- bumps the load row's version without the notice. Every other change of open jobs
-- (accept, decline, release, a supervisor's assignment) still notifies.
CREATE OR REPLACE FUNCTION dispatch.assign_load_changed() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    IF current_setting('dispatch.assign_quiet', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_notify('dispatch_assign', 'load ' || NEW.engineer_id || ' ' || NEW.open_jobs
                                             || ' ' || NEW.version);
    END IF;
    RETURN NEW;
END
$$;
