"""PostgreSQL crashes (an immediate stop: no shutdown checkpoint, the WAL buffers lost) in
the middle of a load, with dispatch following intake. The services' background
transactions — the consumers', the assignment worker's, intake's follow applier's — commit
without waiting for the disk: what a crash takes of them must be done again, once, and
nothing the API acknowledged may be lost. (The test clusters run with synchronous_commit
off; this one turns it on, as deployed.) Whether a crash catches such a commit still in
PostgreSQL's buffers is luck — any synchronous commit, e.g. a relay's, writes out all WAL
before it — so the test checks the outcome, not that a loss happened."""

import time

from helpers import wait_until
from test_consumer import Load, outbox_truth


def checkpoint(db):
    return db.scalar("SELECT last_sequence FROM dispatch.consumer_checkpoints "
                     "WHERE source = 'aftercare/intake'")


def crash_and_restart(stack):
    stack.pg.crash()
    time.sleep(0.5)
    stack.pg.start()
    stack.db.close()  # its connection died with the server


def test_postgres_crash_mid_load_loses_nothing(make_stack):
    stack = make_stack("pgcrash", dispatch=True)
    db = stack.db
    # synchronous commits, as deployed; the WAL writer slow, so that what committed
    # without waiting stays in PostgreSQL's buffers until a synchronous commit or the crash
    db.rows("ALTER SYSTEM SET synchronous_commit = on")
    db.rows("ALTER SYSTEM SET wal_writer_delay = '10s'")
    db.rows("SELECT pg_reload_conf()")
    # 1. in the middle of the load
    load = Load(stack, 1000, workers=8, deadline_s=150)
    load.wait_for(400)
    crash_and_restart(stack)
    acked = load.join()
    assert len(acked) >= 1000
    assert db.scalar("SHOW synchronous_commit") == "on"
    # 2. right after dispatch's consumer committed the last of another load
    load = Load(stack, 300, workers=8, deadline_s=60)
    acked += load.join()
    last = max(outbox_truth(stack, timeout=90))
    wait_until(lambda: checkpoint(db) == last, 60, 0.01, "dispatch to apply the load")
    crash_and_restart(stack)

    # intake: every acknowledged ticket, and a gap-free stream of its events
    truth = outbox_truth(stack, timeout=90)
    assert db.scalar("SELECT count(*) FROM intake.tickets WHERE number = ANY(%s)",
                     (acked,)) == len(acked)
    # dispatch caught up with that stream, having lost nothing and repeated nothing
    wait_until(lambda: checkpoint(db) == max(truth), 90, 0.2,
               "dispatch's consumer to reach intake's last sequence")
    rows = db.rows(
        "SELECT t.number, (SELECT count(*) FROM dispatch.sla_clocks c "
        "                  WHERE c.ticket_id = t.id) AS clocks, "
        "  (SELECT count(*) FROM dispatch.assign_queue q WHERE q.ticket_id = t.id "
        "   AND q.kind = 'diagnosis') + (SELECT count(*) FROM dispatch.assignments a "
        "   WHERE a.ticket_id = t.id AND a.kind = 'diagnosis' "
        "   AND a.state IN ('offered', 'accepted')) AS requests, "
        "  (SELECT count(*) FROM dispatch.ticket_status_history h "
        "   WHERE h.ticket_id = t.id AND h.status = 'new') AS opened "
        "FROM dispatch.tickets t WHERE t.number = ANY(%s)", (acked,))
    assert len(rows) == len(acked), "dispatch misses %d acknowledged tickets" % (
        len(acked) - len(rows))
    wrong = [r for r in rows if (r["clocks"], r["requests"], r["opened"]) != (3, 1, 1)]
    assert not wrong, "%d tickets without their 3 clocks and one request, e.g. %s" % (
        len(wrong), wrong[:3])
    dead = db.scalar("SELECT count(*) FROM dispatch.consumer_dead_letters")
    assert dead == 0
    # dispatch's own stream has no hole either
    seqs = [r["sequence"] for r in db.rows(
        "SELECT sequence FROM dispatch.outbox_sequenced WHERE sequence IS NOT NULL "
        "ORDER BY sequence")]
    assert seqs == list(range(1, len(seqs) + 1))
