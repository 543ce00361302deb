"""Envelope.sequence is 1, 2, 3, ... per source, across clean restarts and kill -9.

Runs on a private stack (own PostgreSQL, bus and intake) so the source starts at 1.
"""

import collections
import signal
import threading
import time

import requests

from helpers import NUMBER_RE, ticket_body


def create_batch(api, customer_id, n, tag):
    return [api.new_ticket(customer_id, channel="api", description="%s %d" % (tag, i))["number"]
            for i in range(n)]


def check_stream(stack, sub, acked):
    """Every ticket in the database has its ticket.created event; sequences 1..N."""
    in_db = {r["number"] for r in stack.db.rows("SELECT number FROM intake.tickets")}
    missing_rows = set(acked) - in_db
    assert not missing_rows, "acknowledged tickets lost: %r" % sorted(missing_rows)[:5]
    sub.wait_subjects(in_db, "ticket.created", timeout=30)
    time.sleep(0.5)
    evs = sub.events()
    by_seq = collections.defaultdict(set)
    for m in evs:
        by_seq[m.env.sequence].add((m.env.id, m.topic, m.env.subject))
    clash = {s: v for s, v in by_seq.items() if len(v) > 1}
    assert clash == {}, "one sequence, different events: %r" % list(clash.items())[:3]
    seqs = sorted(by_seq)
    assert seqs[0] == 1, "first sequence %d" % seqs[0]
    assert seqs == list(range(1, seqs[-1] + 1)), "gaps: %r" % sorted(
        set(range(1, seqs[-1] + 1)) - set(seqs))[:10]
    # one distinct event per ticket, none for tickets that do not exist
    created = collections.defaultdict(set)
    for m in evs:
        if m.topic == b"ticket.created":
            created[m.env.subject].add(m.env.id)
    assert set(created) == in_db, "events for uncommitted tickets: %r" % sorted(
        set(created) - in_db)[:5]
    multi = {n: ids for n, ids in created.items() if len(ids) != 1}
    assert multi == {}, "tickets with several distinct created events: %r" % list(multi.items())[:3]
    # the outbox agrees with what went out
    out = stack.db.rows("SELECT sequence FROM intake.outbox_sequenced WHERE sequence IS NOT NULL "
                        "ORDER BY sequence")
    assert [r["sequence"] for r in out] == seqs
    # ticket numbers are gap-free per day too
    per_day = collections.defaultdict(list)
    for n in in_db:
        m = NUMBER_RE.match(n)
        per_day[m.group(1)].append(int(m.group(2)))
    for day, nums in per_day.items():
        assert sorted(nums) == list(range(1, len(nums) + 1)), "number gaps on %s" % day
    return seqs


def test_sequence_gap_free_across_restarts(make_stack):
    stack = make_stack("seq")
    sub = stack.subscriber()
    agent = stack.api("agent")
    cust = agent.new_customer()
    acked = []

    acked += create_batch(agent, cust["id"], 15, "batch-1")
    stack.intake.restart(signal.SIGTERM)
    acked += create_batch(agent, cust["id"], 15, "batch-2")
    stack.intake.restart(signal.SIGKILL)
    acked += create_batch(agent, cust["id"], 15, "batch-3")
    seqs = check_stream(stack, sub, acked)
    assert len(seqs) >= 45

    # kill -9 while four clients are creating tickets
    stop = threading.Event()
    lock = threading.Lock()
    errors = []

    def worker(i):
        s = requests.Session()
        s.headers["Authorization"] = "Bearer " + stack.tokens["agent"]
        k = 0
        while not stop.is_set():
            k += 1
            try:
                r = s.post(stack.intake.url + "/v1/tickets", timeout=10,
                           json=ticket_body(cust["id"], channel="api",
                                            description="crash %d-%d" % (i, k)))
            except requests.RequestException as e:
                errors.append(repr(e)[:80])
                time.sleep(0.05)
                continue
            if r.status_code == 201:
                with lock:
                    acked.append(r.json()["number"])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    time.sleep(1.5)
    n_before_kill = len(acked)
    stack.intake.stop(signal.SIGKILL)
    time.sleep(0.3)
    stack.intake.start()
    stack.intake.wait_ready()
    time.sleep(1.0)
    stop.set()
    for th in threads:
        th.join(20)
    assert len(acked) > n_before_kill, "no tickets acknowledged after the restart"

    acked += create_batch(agent, cust["id"], 10, "batch-4")
    stack.intake.restart(signal.SIGTERM)
    acked += create_batch(agent, cust["id"], 5, "batch-5")
    seqs = check_stream(stack, sub, acked)
    assert len(set(acked)) == len(acked)
    dups = len([m for m in sub.events()]) - len(seqs)
    print("\n%d events (%d duplicates), %d acknowledged tickets, %d requests cut by kill -9"
          % (len(seqs), dups, len(acked), len(errors)))


def test_bus_restart_intake_keeps_accepting(make_stack):
    """The bus is killed and comes back on the same ports: intake keeps acknowledging
    tickets meanwhile, and events flow again afterwards. (A plain subscriber may miss what
    the bus relayed before it re-subscribed — that is what replay is for — so only the
    events after the reconnection are required here.)"""
    stack = make_stack("busrestart")
    sub = stack.subscriber()
    agent = stack.api("agent")
    cust = agent.new_customer()
    acked = create_batch(agent, cust["id"], 5, "before")
    sub.wait_subjects(acked, timeout=20)
    stack.bus.stop(signal.SIGKILL)
    during = create_batch(agent, cust["id"], 5, "during")
    assert stack.intake.alive()
    stack.bus.start()
    stack.bus.wait_ready()
    stack.await_flow(sub, 30)  # the subscriber is back (it may miss what came before)
    mark = sub.mark()
    after = create_batch(agent, cust["id"], 5, "after")
    sub.wait_subjects(after, timeout=30, since=mark)
    # the relay numbered and handed out everything, "during" included
    stuck = stack.db.scalar("SELECT count(*) FROM intake.outbox_pending_run")
    assert stuck == 0
    assert stack.db.scalar("SELECT count(*) FROM intake.tickets WHERE number = ANY(%s)",
                           (during,)) == len(during)
    after_seqs = sorted(m.env.sequence for m in sub.events(mark) if m.env.subject in after)
    assert after_seqs == list(range(after_seqs[0], after_seqs[0] + 5)), after_seqs
    assert after_seqs[-1] == stack.db.scalar("SELECT max(sequence) FROM intake.outbox_sequenced")
    # one event per ticket so far: the five after the restart are the last five
    total = stack.db.scalar("SELECT count(*) FROM intake.tickets")
    assert after_seqs == list(range(total - 4, total + 1)), (after_seqs, total)
