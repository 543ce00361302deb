"""PATCH /v1/tickets/{number}: version, priority, ticket.updated, no-op, closed tickets."""

import time

from helpers import assert_envelope, assert_error


def test_patch_changes_bump_version_and_publish(api, sub):
    agent = api("agent")
    cust = agent.new_customer()
    prod = agent.new_product(cust["id"])
    t = agent.new_ticket(cust["id"], prod["id"], urgency="normal")
    assert t["priority"] == "P3" and t["version"] == 1
    mark = sub.mark()

    r = agent.patch("/v1/tickets/" + t["number"],
                    json={"urgency": "critical", "description": "Now it smokes",
                          "expected_version": 1})
    u = agent.must(r, 200)
    assert u["version"] == 2
    assert u["urgency"] == "critical" and u["priority"] == "P1"  # priority recomputed
    assert u["description"] == "Now it smokes"
    assert u["number"] == t["number"] and u["status"] == "new"
    [m] = sub.wait_for(t["number"], "ticket.updated", since=mark)
    upd = assert_envelope(m, u, "ticket.updated", "ticket_updated")
    assert sorted(upd.changed_fields) == ["description", "priority", "urgency"] or \
        sorted(upd.changed_fields) == ["description", "urgency"], list(upd.changed_fields)
    assert m.env.ticket_version == 2

    # GET agrees
    g = agent.ticket(t["number"])
    assert g["version"] == 2 and g["priority"] == "P1" and g["description"] == "Now it smokes"

    # a PATCH that changes nothing: 200, same version, no event
    mark2 = sub.mark()
    r = api("engineer").patch("/v1/tickets/" + t["number"],
                              json={"urgency": "critical", "description": "Now it smokes"})
    n = agent.must(r, 200)
    assert n["version"] == 2
    # expedite + contact change from another role
    r = api("integration").patch("/v1/tickets/" + t["number"],
                                 json={"expedite": True, "contact": {"name": "Sam"}})
    e = agent.must(r, 200)
    assert e["version"] == 3 and e["expedite"] is True and e["contact"]["name"] == "Sam"
    [m3] = sub.wait_for(t["number"], "ticket.updated", since=mark2)
    assert m3.env.ticket_version == 3, "the no-op PATCH published an event"
    assert sorted(m3.env.ticket_updated.changed_fields) == ["contact", "expedite"]
    time.sleep(0.5)
    assert [x.env.ticket_version for x in sub.events(mark2) if x.env.subject == t["number"]] == [3]

    # a stale expected_version is refused and changes nothing
    r = agent.patch("/v1/tickets/" + t["number"], json={"urgency": "normal",
                                                        "expected_version": 2})
    assert_error(r, 409, "version_conflict")
    assert agent.ticket(t["number"])["urgency"] == "critical"


def test_patch_category_recomputes_priority(api):
    agent = api("agent")
    cust = agent.new_customer()
    t = agent.new_ticket(cust["id"], category="consultation")
    assert t["priority"] == "P4"
    u = agent.must(agent.patch("/v1/tickets/" + t["number"], json={"category": "complaint"}), 200)
    assert u["category"] == "complaint" and u["priority"] == "P3" and u["version"] == 2


def test_patch_closed_ticket_is_conflict(api, sub):
    agent = api("agent")
    cust = agent.new_customer()
    t = agent.new_ticket(cust["id"])
    agent.must(agent.transition(t["number"], "resolved", "answered on the phone"), 200)
    c = agent.must(agent.transition(t["number"], "closed"), 200)
    sub.wait_for(t["number"], "ticket.closed")
    mark = sub.mark()
    r = agent.patch("/v1/tickets/" + t["number"], json={"description": "late edit"})
    assert_error(r, 409, "conflict")
    g = agent.ticket(t["number"])
    assert g["version"] == c["version"] and g["description"] == t["description"]
    time.sleep(0.5)
    assert [m for m in sub.events(mark) if m.env.subject == t["number"]] == []


def test_patch_roles(api):
    cust = api("agent").new_customer()
    t = api("agent").new_ticket(cust["id"])
    r = api("warehouse").patch("/v1/tickets/" + t["number"], json={"urgency": "urgent"})
    assert_error(r, 403, "forbidden")
    assert_error(api("agent").patch("/v1/tickets/SV-20000101-999998", json={"urgency": "urgent"}),
                 404, "not_found")
