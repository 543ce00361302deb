"""POST /v1/tickets/{number}/transitions: the state machine and the events it publishes."""

import time

import pytest

from helpers import assert_envelope, assert_error, enum_value, parse_rfc3339

ALLOWED = {
    "new": {"needs_info", "diagnosing", "resolved", "cancelled"},
    "needs_info": {"new", "cancelled"},
    "diagnosing": {"planned", "needs_info", "waiting_customer", "resolved", "cancelled"},
    "planned": {"in_progress", "diagnosing", "waiting_customer", "cancelled"},
    "in_progress": {"waiting_parts", "waiting_customer", "waiting_external", "resolved"},
    "waiting_customer": {"in_progress"},
    "waiting_parts": {"in_progress"},
    "waiting_external": {"in_progress"},
    "resolved": {"closed", "reopened"},
    "closed": {"reopened"},
    "reopened": {"diagnosing", "in_progress"},
    "cancelled": set(),
}
STATUSES = sorted(ALLOWED)
# how to reach each status from new
PATH_TO = {
    "new": [],
    "needs_info": ["needs_info"],
    "diagnosing": ["diagnosing"],
    "planned": ["diagnosing", "planned"],
    "in_progress": ["diagnosing", "planned", "in_progress"],
    "waiting_customer": ["diagnosing", "waiting_customer"],
    "waiting_parts": ["diagnosing", "planned", "in_progress", "waiting_parts"],
    "waiting_external": ["diagnosing", "planned", "in_progress", "waiting_external"],
    "resolved": ["resolved"],
    "closed": ["resolved", "closed"],
    "reopened": ["resolved", "reopened"],
    "cancelled": ["cancelled"],
}
TOPIC = {"resolved": "ticket.resolved", "closed": "ticket.closed", "reopened": "ticket.reopened"}
PAYLOAD = {"resolved": "ticket_resolved", "closed": "ticket_closed",
           "reopened": "ticket_reopened"}


def move(api, number, to, reason="because"):
    r = api.transition(number, to, reason)
    return api.must(r, 200)


def test_full_lifecycle_events(api, sub):
    agent, eng, sup = api("agent"), api("engineer"), api("supervisor")
    cust = agent.new_customer()
    prod = agent.new_product(cust["id"])
    t = agent.new_ticket(cust["id"], prod["id"])
    sub.wait_for(t["number"], "ticket.created")
    mark = sub.mark()
    steps = [(eng, "diagnosing"), (eng, "planned"), (eng, "in_progress"),
             (eng, "waiting_parts"), (eng, "in_progress"), (eng, "resolved"),
             (sup, "closed"), (agent, "reopened"), (eng, "in_progress"), (eng, "resolved")]
    prev = "new"
    snapshots = []
    for i, (who, to) in enumerate(steps):
        r = who.transition(t["number"], to, "step %d" % i)
        cur = who.must(r, 200)
        assert cur["status"] == to and cur["version"] == i + 2
        snapshots.append((prev, to, who.role, cur))
        prev = to
    evs = sub.wait(lambda e: (lambda x: x if len(x) >= len(steps) else None)(
        [m for m in e if m.env.subject == t["number"]]), 15, mark, "lifecycle events")
    time.sleep(0.3)
    evs = [m for m in sub.events(mark) if m.env.subject == t["number"]]
    assert len(evs) == len(steps), evs
    seqs = [m.env.sequence for m in evs]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for m, (frm, to, role, cur) in zip(evs, snapshots):
        topic = TOPIC.get(to, "ticket.status_changed")
        payload = PAYLOAD.get(to, "ticket_status_changed")
        body = assert_envelope(m, cur, topic, payload)
        assert body.from_status == enum_value("TICKET_STATUS", frm)
        assert body.reason.startswith("step ")
        if payload == "ticket_status_changed":
            assert body.to_status == enum_value("TICKET_STATUS", to)
            assert body.actor == role
        if payload == "ticket_resolved":
            assert body.first_contact is False
            assert body.ticket.resolved_at
    final = agent.ticket(t["number"])
    assert [(h["from"], h["to"]) for h in final["history"]] == \
        [(None, "new")] + [(f, to) for f, to, _, _ in snapshots]
    assert [h["actor"] for h in final["history"][1:]] == [r for _, _, r, _ in snapshots]
    assert final["history"][1]["reason"] == "step 0"
    assert final["resolved_at"] is not None
    closed_step = snapshots[6][3]
    assert closed_step["closed_at"] is not None
    parse_rfc3339(closed_step["closed_at"])


def test_first_contact_resolution(api, sub):
    agent = api("agent")
    cust = agent.new_customer()
    t = agent.new_ticket(cust["id"], category="consultation")
    mark = sub.mark()
    res = move(agent, t["number"], "resolved", "explained the settings")
    assert res["status"] == "resolved" and res["resolved_at"] is not None
    [m] = sub.wait_for(t["number"], "ticket.resolved", since=mark)
    body = assert_envelope(m, res, "ticket.resolved", "ticket_resolved")
    assert body.first_contact is True
    assert body.from_status == enum_value("TICKET_STATUS", "new")
    assert body.reason == "explained the settings"
    closed = move(agent, t["number"], "closed")
    [m] = sub.wait_for(t["number"], "ticket.closed", since=mark)
    assert_envelope(m, closed, "ticket.closed", "ticket_closed")
    reo = move(agent, t["number"], "reopened", "customer called again")
    [m] = sub.wait_for(t["number"], "ticket.reopened", since=mark)
    body = assert_envelope(m, reo, "ticket.reopened", "ticket_reopened")
    assert body.from_status == enum_value("TICKET_STATUS", "closed")
    assert body.reason == "customer called again"


@pytest.mark.parametrize("src", STATUSES)
def test_transition_matrix(api, db, src):
    """From each status, every allowed move works and every other one is 409."""
    sup = api("supervisor")
    cust = sup.new_customer()
    t = sup.new_ticket(cust["id"])
    for step in PATH_TO[src]:
        move(sup, t["number"], step)
    assert sup.ticket(t["number"])["status"] == src
    version = sup.ticket(t["number"])["version"]
    for to in STATUSES:
        if to in ALLOWED[src]:
            continue
        r = sup.transition(t["number"], to, "no")
        assert_error(r, 409, "illegal_transition")
    g = sup.ticket(t["number"])
    assert g["status"] == src and g["version"] == version
    assert len(g["history"]) == len(PATH_TO[src]) + 1
    # each allowed move, each on a fresh ticket in the same state
    for to in sorted(ALLOWED[src]):
        t2 = sup.new_ticket(cust["id"])
        for step in PATH_TO[src]:
            move(sup, t2["number"], step)
        cur = move(sup, t2["number"], to, "ok")
        assert cur["status"] == to


def test_reason_rules(api):
    agent = api("agent")
    cust = agent.new_customer()
    t = agent.new_ticket(cust["id"])
    assert_error(agent.transition(t["number"], "cancelled"), 422, "missing_field", "reason")
    assert_error(agent.transition(t["number"], "needs_info", "r" * 1001), 422, "invalid_field",
                 "reason")
    move(agent, t["number"], "resolved")
    assert_error(agent.transition(t["number"], "reopened"), 422, "missing_field", "reason")
    assert_error(agent.transition(t["number"], "reopened", ""), 422, None, "reason")
    assert agent.ticket(t["number"])["status"] == "resolved"
    r = agent.transition(t["number"], "closed", expected_version=1)
    assert_error(r, 409, "version_conflict")
    move(agent, t["number"], "closed")


def test_transition_roles(api):
    cust = api("agent").new_customer()
    t = api("agent").new_ticket(cust["id"])
    for role in ("warehouse", "integration"):
        assert_error(api(role).transition(t["number"], "diagnosing"), 403, "forbidden")
    for role, to in (("engineer", "diagnosing"), ("supervisor", "planned"),
                     ("agent", "in_progress"), ("admin", "resolved")):
        move(api(role), t["number"], to)
