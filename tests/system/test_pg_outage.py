"""PostgreSQL goes away under a running intake: 503, keep running, recover by itself."""

import time

import requests

from helpers import assert_error, ticket_body, wait_until


def test_postgres_outage_and_recovery(make_stack):
    stack = make_stack("pgout")
    sub = stack.subscriber()
    agent = stack.api("agent")
    cust = agent.new_customer()
    acked = {}
    for i in range(10):
        t = agent.new_ticket(cust["id"], channel="api", description="before outage %d" % i)
        acked[t["number"]] = t["id"]
    pid = stack.intake.pid

    stack.pg.stop()
    t_stop = time.monotonic()

    # Writes and reads answer 503 "unavailable" (not a hang, not a crash).
    body = ticket_body(cust["id"], channel="api", description="during outage")
    statuses = []
    for _ in range(3):
        started = time.monotonic()
        r = agent.post("/v1/tickets", json=body)
        statuses.append(r.status_code)
        assert time.monotonic() - started < 15, "a request hung during the outage"
        assert_error(r, 503, "unavailable")
    r = agent.get("/v1/tickets/" + next(iter(acked)))
    assert_error(r, 503, "unavailable")
    r = agent.get("/v1/tickets?limit=5")
    assert_error(r, 503, "unavailable")
    r = requests.get(stack.intake.url + "/healthz", timeout=10)
    assert r.status_code == 503, (r.status_code, r.text)
    # still the same process, still serving HTTP
    time.sleep(max(0.0, 2.0 - (time.monotonic() - t_stop)))
    assert stack.intake.alive(), "intake died when PostgreSQL went away"
    assert stack.intake.pid == pid
    assert stack.intake.healthz() == 503

    stack.pg.start()
    wait_until(lambda: stack.intake.healthz() == 200, 30, 0.2, "intake healthy again")
    assert stack.intake.pid == pid and stack.intake.alive(), "intake was restarted"

    def created_again():
        r = agent.post("/v1/tickets", json=ticket_body(cust["id"], channel="api",
                                                        description="after outage"))
        return r if r.status_code == 201 else None
    t = wait_until(created_again, 30, 0.5, "a ticket created after recovery").json()
    acked[t["number"]] = t["id"]

    for number, tid in acked.items():
        g = agent.get("/v1/tickets/" + number)
        assert g.status_code == 200, (number, g.status_code, g.text)
        assert g.json()["id"] == tid
    # nothing from the outage period was half-written
    assert stack.db.scalar("SELECT count(*) FROM intake.tickets WHERE description = %s",
                           ("during outage",)) == 0
    sub.wait_subjects(acked, "ticket.created", timeout=30)
    seqs = sorted({m.env.sequence for m in sub.events()})
    assert seqs == list(range(1, seqs[-1] + 1)), "sequence gaps after the outage"


def test_intake_starts_before_postgres(make_stack):
    """Started while PostgreSQL is down, intake waits (healthz 503) and comes up by itself."""
    stack = make_stack("pglate")
    stack.intake.stop()
    stack.pg.stop()
    stack.intake.start()
    time.sleep(2)
    assert stack.intake.alive(), "intake gave up when PostgreSQL was not there:\n" + \
        stack.intake.log_tail(20)
    assert stack.intake.healthz() in (None, 503)
    stack.pg.start()
    stack.intake.wait_ready(30)
    stack.api("agent").new_ticket(stack.probe_customer["id"])
