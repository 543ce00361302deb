"""Idempotency-Key on POST /v1/tickets."""

import time
import uuid

from helpers import assert_error, ticket_body


def test_same_key_same_body_replays_without_creating(api, db, sub):
    agent = api("agent")
    cust = agent.new_customer()
    body = ticket_body(cust["id"], description="idempotent " + uuid.uuid4().hex)
    key = "key-" + uuid.uuid4().hex
    mark = sub.mark()
    tickets_before = db.scalar("SELECT count(*) FROM intake.tickets")

    r1 = agent.post("/v1/tickets", json=body, headers={"Idempotency-Key": key})
    assert r1.status_code == 201, r1.text
    t1 = r1.json()
    assert r1.headers.get("Idempotent-Replayed") in (None, "false")

    r2 = agent.post("/v1/tickets", json=body, headers={"Idempotency-Key": key})
    assert r2.status_code == 201, r2.text
    assert r2.headers.get("Idempotent-Replayed") == "true"
    t2 = r2.json()
    assert t2["number"] == t1["number"] and t2["id"] == t1["id"]
    assert r2.headers.get("Location") == "/v1/tickets/" + t1["number"]

    # one ticket, one event
    assert db.scalar("SELECT count(*) FROM intake.tickets") == tickets_before + 1
    assert db.scalar("SELECT count(*) FROM intake.tickets WHERE description = %s",
                     (body["description"],)) == 1
    sub.wait_for(t1["number"], "ticket.created", since=mark)
    time.sleep(0.5)
    created = [m for m in sub.events(mark) if m.topic == b"ticket.created"
               and m.env.subject in (t1["number"], t2["number"])]
    assert len(created) == 1, created
    assert not [m for m in sub.events(mark) if m.env.subject not in (t1["number"],)
                and m.env.ticket_created.ticket.description == body["description"]]

    # same key, different body: 422, nothing created
    other = dict(body, description="something else entirely")
    r3 = agent.post("/v1/tickets", json=other, headers={"Idempotency-Key": key})
    assert_error(r3, 422, "idempotency_key_reused")
    assert db.scalar("SELECT count(*) FROM intake.tickets") == tickets_before + 1

    # the key is still good for the original body afterwards
    r4 = agent.post("/v1/tickets", json=body, headers={"Idempotency-Key": key})
    assert r4.status_code == 201 and r4.json()["number"] == t1["number"]
    assert r4.headers.get("Idempotent-Replayed") == "true"


def test_different_keys_create_different_tickets(api):
    agent = api("agent")
    cust = agent.new_customer()
    body = ticket_body(cust["id"])
    a = agent.must(agent.post("/v1/tickets", json=body,
                              headers={"Idempotency-Key": uuid.uuid4().hex}), 201)
    b = agent.must(agent.post("/v1/tickets", json=body,
                              headers={"Idempotency-Key": uuid.uuid4().hex}), 201)
    assert a["number"] != b["number"]


def test_replay_from_concurrent_duplicates_creates_one(api, db):
    """Eight clients send the same key at once (a retrying load balancer): one ticket."""
    import threading
    agent_token = api("agent").token
    cust = api("agent").new_customer()
    body = ticket_body(cust["id"], description="race " + uuid.uuid4().hex)
    key = "race-" + uuid.uuid4().hex
    results = []

    def send():
        import requests
        r = requests.post(api("agent").base + "/v1/tickets", json=body, timeout=20,
                          headers={"Authorization": "Bearer " + agent_token,
                                   "Idempotency-Key": key})
        results.append(r)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    numbers = {r.json()["number"] for r in results if r.status_code == 201}
    statuses = sorted(r.status_code for r in results)
    assert len(numbers) == 1, (numbers, statuses)
    assert statuses == [201] * 8, [(r.status_code, r.text[:200]) for r in results]
    assert db.scalar("SELECT count(*) FROM intake.tickets WHERE description = %s",
                     (body["description"],)) == 1


def test_key_is_per_caller_scope_not_leaking_other_bodies(api):
    """A key reused by another token with another body must not hand out the first ticket."""
    cust = api("agent").new_customer()
    key = "shared-" + uuid.uuid4().hex
    a = api("agent").must(api("agent").post(
        "/v1/tickets", json=ticket_body(cust["id"], description="A"),
        headers={"Idempotency-Key": key}), 201)
    r = api("integration").post("/v1/tickets", json=ticket_body(cust["id"], description="B"),
                                headers={"Idempotency-Key": key})
    # Either the key is scoped per caller (a new ticket) or it is global (reuse error);
    # never the other caller's ticket as a "replay" of a different body.
    if r.status_code == 201:
        assert r.json()["number"] != a["number"]
        assert r.json()["description"] == "B"
    else:
        assert_error(r, 422, "idempotency_key_reused")
