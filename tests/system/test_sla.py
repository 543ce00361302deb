"""The SLA engine (issue 4, item 7; docs/dispatch-api.md, "The SLA engine"): calendars and
policies over HTTP with every kind of bad input refused (nothing changed), clocks for every
ticket, GET /v1/tickets/{n}/sla, deadlines that fire at their time (short around-the-clock
targets, a generous 2 s bound) with their sla.* events on the bus, pauses that push the
deadlines later by exactly the paused time, resolution and steps that stop clocks, a
priority change that re-bases them, vendor due dates, and restarts: kill -9 just before a
deadline and a restart after it fires it once — not zero times, not twice — and deadlines
that passed while dispatch was down fire as soon as it is back.

One private stack serves the module. Each test that needs short targets creates its own
policy with a selector no other test's tickets match (priority x tier x category), so the
tests cannot disturb each other. The restart tests come last."""

import copy
import datetime
import signal
import time
import uuid

import pytest
import requests

import helpers
from helpers import assert_error, unique, wait_until
from aftercare.v1 import dispatch_pb2

BOUND_S = 2.0  # a deadline fires within this of its due time (the benchmark measures lateness)


@pytest.fixture(scope="module")
def dstack(tmp_root):
    from conftest import _start_stack, _stop_stack
    stack = _start_stack(tmp_root, "sla", dispatch=True)
    yield stack
    _stop_stack(stack)


@pytest.fixture(scope="module")
def sub(dstack):
    return dstack.subscriber()  # every topic; live (a probe ticket came through)


@pytest.fixture
def sup(dstack):
    return dstack.dispatch_api("supervisor")


@pytest.fixture(scope="module")
def vip(dstack):
    return dstack.api("agent").new_customer(name=unique("VIP"), tier="vip")


def ts(text):
    return helpers.parse_rfc3339(text)


def mono_to_wall(mono):
    return datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(
        seconds=time.monotonic() - mono)


def sla_events(sub, number=None, since=0):
    """dispatch's sla.* events (for ticket `number`), each once: the bus delivers at least
    once, and a relay killed after publishing may publish an event again under its same id
    and sequence (DESIGN.md §4: subscribers drop what they have seen)."""
    seen, out = set(), []
    for m in sub.messages(since):
        if (m.env is not None and m.env.source == helpers.DISPATCH_SOURCE
                and m.topic.startswith(b"sla.") and (number is None or m.env.subject == number)
                and m.env.id not in seen):
            seen.add(m.env.id)
            out.append(m)
    return out


def wait_events(sub, number, count, timeout, since=0):
    wait_until(lambda: len(sla_events(sub, number, since)) >= count, timeout, 0.02,
               "%d sla.* events for %s" % (count, number))
    return sla_events(sub, number, since)


def policy(sup, selector, targets, **kw):
    body = {"name": unique("test"), "selector": selector, "targets": targets}
    body.update(kw)
    return sup.must(sup.post("/v1/sla/policies", json=body), 201)


def sla_view(dstack, number, role="agent"):
    api = dstack.dispatch_api(role)
    return api.must(api.get("/v1/tickets/%s/sla" % number), 200)


def clock_of(view, target):
    found = [c for c in view["clocks"] if c["target"] == target]
    assert len(found) == 1, view
    return found[0]


def deadline_rows(dstack, number):
    return dstack.db.rows(
        "SELECT d.* FROM dispatch.sla_deadlines d JOIN dispatch.tickets t ON t.id = d.ticket_id "
        "WHERE t.number = %s ORDER BY d.due_at NULLS LAST, d.id", (number,))


def opened_at(dstack, number):
    return dstack.db.scalar("SELECT opened_at FROM dispatch.tickets WHERE number = %s", (number,))


def armed(dstack, number, level="breach", target="first_response"):
    """Waits until the engine has computed the ticket's deadline; returns its due time."""
    def due():
        rows = [r for r in deadline_rows(dstack, number)
                if r["level"] == level and r["target"] == target and r["state"] == "pending"]
        return rows[0]["due_at"] if rows and rows[0]["due_at"] else None
    wait_until(due, 10, 0.02, "the %s %s deadline of %s to be computed" % (target, level, number))
    return due()


# ----------------------------------------------------------------------------- set-up state

def test_builtin_calendar_and_default_policies(dstack):
    api = dstack.dispatch_api("agent")
    cals = api.must(api.get("/v1/sla/calendars"), 200)["items"]
    assert {"name": "24x7", "calendar": {"around_the_clock": True}, "builtin": True,
            "version": 1} == {k: cals[0][k] for k in ("name", "calendar", "builtin", "version")}
    pols = {p["name"]: p for p in api.must(api.get("/v1/sla/policies"), 200)["items"]}
    d = pols["default"]
    assert d["selector"] == {"priority": None, "customer_tier": None, "category": None}
    assert d["targets"] == {"first_response": 8 * 3600, "arrival": 48 * 3600,
                            "resolution": 120 * 3600}
    assert d["calendar"] == "24x7" and d["business_time"] is False and d["active"] is True
    assert d["warning_fractions"] == [0.5, 0.75] and d["grace_seconds"] == 4 * 3600
    assert pols["P1"]["selector"]["priority"] == "P1"
    assert api.must(api.get("/v1/sla/policies/" + d["id"]), 200) == d


def test_every_ticket_gets_clocks(dstack):
    # consultation, expedited, standard: P3, which only the catch-all "default" matches
    t = helpers.dispatch_ticket(dstack, expedite=True)
    wait_until(lambda: all(c["next_deadline"] for c in sla_view(dstack, t["number"])["clocks"]),
               10,
               0.05, "the clocks to be computed")
    v = sla_view(dstack, t["number"])
    assert v["ticket"] == t["number"] and v["priority"] == "P3" and v["status"] == "new"
    assert [c["target"] for c in v["clocks"]] == ["first_response", "arrival", "resolution"]
    opened = opened_at(dstack, t["number"])
    for c, hours in zip(v["clocks"], (8, 48, 120)):
        assert c["policy"]["name"] == "default" and c["target_seconds"] == hours * 3600
        assert c["state"] == "running" and c["breached"] is False and c["met_at"] is None
        assert c["business_time"] is False and c["calendar"] == "24x7"
        assert ts(c["due_at"]) == opened + datetime.timedelta(hours=hours)
        assert 0 <= c["elapsed_seconds"] < 60 and c["paused_seconds"] == 0
        nd = c["next_deadline"]
        assert nd["level"] == "warning" and nd["fraction"] == 0.5
        assert ts(nd["due_at"]) == opened + datetime.timedelta(hours=hours / 2)
        assert [(d["level"], d["fraction"], d["state"]) for d in c["deadlines"]] == [
            ("warning", 0.5, "pending"), ("warning", 0.75, "pending"),
            ("breach", 1.0, "pending"),
            ("escalation", 1 + 4 / hours, "pending")]
    # assignment's score reads the slack: the time to the earliest 100 %
    slack = dstack.db.scalar("SELECT dispatch.sla_slack_seconds(%s)", (t["id"],))
    assert 8 * 3600 - 60 < slack <= 8 * 3600
    # every reader role may look; others may not
    for role in ("engineer", "supervisor", "integration"):
        assert sla_view(dstack, t["number"], role)["ticket"] == t["number"]
    assert_error(dstack.dispatch_api("warehouse").get("/v1/tickets/%s/sla" % t["number"]), 403)
    assert_error(dstack.dispatch_api("agent").get("/v1/tickets/SV-20990101-000001/sla"), 404,
                 "not_found")


# ----------------------------------------------------------------------------- firing

def test_deadlines_fire_at_their_time(dstack, sup, sub):
    pol = policy(sup, {"priority": "P4", "customer_tier": "standard", "category": "training"},
                 {"first_response": 3}, warning_fractions=[0.5], grace_seconds=2)
    mark = sub.mark()
    t = helpers.dispatch_ticket(dstack, category="training")
    opened = opened_at(dstack, t["number"])
    evs = wait_events(sub, t["number"], 3, 15, mark)
    assert [m.topic for m in evs] == [b"sla.warning", b"sla.breached", b"sla.escalated"]
    want = [(dispatch_pb2.SLA_LEVEL_WARNING, 0.5, 1.5, "assignee"),
            (dispatch_pb2.SLA_LEVEL_BREACH, 1.0, 3.0, "supervisor"),
            (dispatch_pb2.SLA_LEVEL_ESCALATION, 1 + 2 / 3, 5.0, "manager")]
    rows = {r["id"]: r for r in deadline_rows(dstack, t["number"])}
    for m, (level, fraction, after_s, role) in zip(evs, want):
        e = m.env.sla_escalation
        assert m.env.WhichOneof("payload") == "sla_escalation"
        assert m.env.subject == t["number"] and m.env.partition_key == t["id"]
        assert e.ticket.number == t["number"] and e.ticket.priority == 4  # PRIORITY_P4
        assert e.level == level and abs(e.fraction - fraction) < 1e-9
        assert e.notify_role == role
        assert e.clock.target == dispatch_pb2.SLA_TARGET_FIRST_RESPONSE
        assert e.clock.policy_id == pol["id"] and e.clock.policy_name == pol["name"]
        assert e.clock.target_seconds == 3 and e.clock.business_time is False
        due = ts(e.due_at)
        # due exactly when the fraction of the target has elapsed since the ticket opened
        assert due == opened + datetime.timedelta(seconds=after_s)
        # fired at its time: not early, and within the bound (by the database's clock and
        # by the arrival on the bus)
        fired = ts(e.fired_at)
        assert due <= fired < due + datetime.timedelta(seconds=BOUND_S), (e.due_at, e.fired_at)
        assert mono_to_wall(m.at) < due + datetime.timedelta(seconds=BOUND_S + 0.5)
        assert e.clock.elapsed_seconds == int(after_s) and e.clock.paused_seconds == 0
        row = rows[int(e.deadline_id)]
        assert row["state"] == "fired" and row["fired_at"] == fired
    assert evs[1].env.sla_escalation.clock.state == "breached"
    c = clock_of(sla_view(dstack, t["number"]), "first_response")
    assert c["state"] == "running" and c["breached"] is True and c["breached_at"]
    assert c["next_deadline"] is None
    assert [d["state"] for d in c["deadlines"]] == ["fired"] * 3
    time.sleep(1.0)
    assert len(sla_events(sub, t["number"], mark)) == 3  # and nothing more


def dispatch_metric(dstack, name):
    text = requests.get(dstack.dispatch.url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("aftercare_dispatch_" + name + " "):
            return float(line.split()[1])
    return 0.0


def clock_rows(dstack, ticket_id):
    return dstack.db.rows(
        "SELECT target, policy_id::text, gen, computed_gen, version, due_at, next_due_at, levels "
        "FROM dispatch.sla_clocks WHERE ticket_id = %s ORDER BY target", (ticket_id,))


def test_new_ticket_clocks_go_in_computed_as_the_engine_computes_them(dstack, sup, sub):
    """Migration 019: the consumer inserts a new ticket's clocks computed, the engine arms
    them after the commit, they fire at their time; the engine computing them again finds
    the same; and a policy the consumer has not read yet still wins."""
    pol = policy(sup, {"priority": "P1", "customer_tier": "standard", "category": "complaint"},
                 {"first_response": 3, "resolution": 7200}, warning_fractions=[0.5],
                 grace_seconds=2)
    time.sleep(2.5)  # the engine reads the policies again at its next tick (every second)
    mark = sub.mark()
    proposed = dispatch_metric(dstack, "sla_clocks_proposed_total")
    t = helpers.dispatch_ticket(dstack, category="complaint", urgency="critical")
    assert dispatch_metric(dstack, "sla_clocks_proposed_total") == proposed + 2
    rows = clock_rows(dstack, t["id"])
    assert [r["target"] for r in rows] == ["first_response", "resolution"]
    # computed at the insert: not dirty, and never saved by the engine (that would make it
    # version 2), with every level in place
    for r in rows:
        assert r["policy_id"] == pol["id"]
        assert r["gen"] == r["computed_gen"] == 1 and r["version"] == 1, r
        assert r["due_at"] and r["next_due_at"] and len(r["levels"]) == 3, r
    opened = opened_at(dstack, t["number"])
    evs = wait_events(sub, t["number"], 3, 15, mark)
    assert [m.topic for m in evs] == [b"sla.warning", b"sla.breached", b"sla.escalated"]
    ids = sorted(int(m.env.sla_escalation.deadline_id) for m in evs)
    fr = [r for r in rows if r["target"] == "first_response"][0]
    assert ids == sorted(lv["id"] for lv in fr["levels"])
    for m, after_s in zip(evs, (1.5, 3.0, 5.0)):
        due = ts(m.env.sla_escalation.due_at)
        assert due == opened + datetime.timedelta(seconds=after_s)
        assert due <= ts(m.env.sla_escalation.fired_at) < due + datetime.timedelta(seconds=BOUND_S)

    # the engine, made to compute the (unfired) resolution clock again, finds the same
    before = [r for r in clock_rows(dstack, t["id"]) if r["target"] == "resolution"][0]
    dstack.db.rows("UPDATE dispatch.sla_clocks SET gen = gen + 1 "
                   "WHERE ticket_id = %s AND target = 'resolution'", (t["id"],))
    dstack.db.rows("SELECT pg_notify('dispatch_deadlines', '')")

    def recomputed():
        r = [x for x in clock_rows(dstack, t["id"]) if x["target"] == "resolution"][0]
        return r if r["computed_gen"] == r["gen"] == 2 else None
    after = wait_until(recomputed, 10, 0.05, "the engine to compute the clock again")
    for k in ("due_at", "next_due_at", "levels", "version"):
        assert after[k] == before[k], (k, before[k], after[k])

    # a policy written behind the API (the consumer has not read it): the insert sees that
    # the proposal names another policy, and the engine computes the clocks of the new one
    policy(sup, {"priority": "P1", "category": "consultation"}, {"resolution": 7200})
    time.sleep(2.5)
    direct = dstack.db.scalar(
        "INSERT INTO dispatch.sla_policies (name, priority, customer_tier, category, arrival_s, "
        "calendar_id) SELECT %s, 'P1', 'standard', 'consultation', 600, id "
        "FROM dispatch.sla_calendars WHERE name = '24x7' RETURNING id::text", (unique("direct"),))
    try:
        t2 = helpers.dispatch_ticket(dstack, category="consultation", urgency="critical")

        def computed():
            r = clock_rows(dstack, t2["id"])
            return r if r and all(x["computed_gen"] == x["gen"] for x in r) else None
        rows = wait_until(computed, 10, 0.05, "the engine to compute the clocks")
        assert [(r["target"], r["policy_id"]) for r in rows] == [("arrival", direct)]
        assert rows[0]["version"] == 2  # saved by the engine
        assert rows[0]["due_at"] == opened_at(dstack, t2["number"]) + datetime.timedelta(
            seconds=600)
    finally:
        dstack.db.rows("UPDATE dispatch.sla_policies SET active = false WHERE id = %s",
                       (direct,))


def test_pause_moves_deadlines_by_the_paused_time(dstack, sup, sub):
    policy(sup, {"priority": "P4", "customer_tier": "standard", "category": "consultation"},
           {"first_response": 4}, warning_fractions=[], grace_seconds=600)
    agent = dstack.api("agent")
    mark = sub.mark()
    t = helpers.dispatch_ticket(dstack, category="consultation")
    n = t["number"]
    opened = opened_at(dstack, n)
    assert armed(dstack, n) == opened + datetime.timedelta(seconds=4)
    assert agent.transition(n, "diagnosing").status_code == 200
    assert agent.transition(n, "waiting_customer", "serial number?").status_code == 200
    # paused: no due time, nothing armed, the view says so
    wait_until(lambda: clock_of(sla_view(dstack, n), "first_response")["state"] == "paused",
               10, 0.05, "the clock to pause")
    c = clock_of(sla_view(dstack, n), "first_response")
    # at once, also before the engine has saved its new computation (migration 015)
    assert c["due_at"] is None and c["next_deadline"] is None
    assert [d["due_at"] for d in c["deadlines"] if d["state"] == "pending"] == [None, None]
    # and the engine's rows, once it has saved them (within COMPUTE_GAP_S or so)
    wait_until(lambda: [r["due_at"] for r in deadline_rows(dstack, n)
                        if r["state"] == "pending"] == [None, None], 5, 0.05,
               "the engine to save the paused clock")
    time.sleep(5.0 - (datetime.datetime.now(datetime.timezone.utc) - opened).total_seconds())
    assert sla_events(sub, n, mark) == []  # its original due time has passed: nothing fired
    assert agent.transition(n, "in_progress").status_code == 200
    wait_until(lambda: dstack.db.scalar(
        "SELECT count(*) FROM dispatch.ticket_status_history h JOIN dispatch.tickets t "
        "ON t.id = h.ticket_id WHERE t.number = %s", (n,)) == 4, 10, 0.05, "history")
    hist = dstack.db.rows(
        "SELECT h.status, h.at FROM dispatch.ticket_status_history h JOIN dispatch.tickets t "
        "ON t.id = h.ticket_id WHERE t.number = %s ORDER BY h.version", (n,))
    assert [h["status"] for h in hist] == ["new", "diagnosing", "waiting_customer", "in_progress"]
    paused = hist[3]["at"] - hist[2]["at"]
    assert paused > datetime.timedelta(seconds=2)
    # 4 s of counted time: the due time moved later by exactly the paused time
    due = opened + datetime.timedelta(seconds=4) + paused
    wait_until(lambda: ts(clock_of(sla_view(dstack, n), "first_response")["due_at"] or
                          "1970-01-01T00:00:00Z") == due, 10, 0.05, "the new due time")
    [m] = wait_events(sub, n, 1, 15, mark)
    e = m.env.sla_escalation
    assert m.topic == b"sla.breached" and ts(e.due_at) == due
    assert due <= ts(e.fired_at) < due + datetime.timedelta(seconds=BOUND_S)
    assert e.clock.elapsed_seconds == 4 and e.clock.paused_seconds == int(paused.total_seconds())
    v = clock_of(sla_view(dstack, n), "first_response")
    assert v["paused_seconds"] == int(paused.total_seconds()) and v["state"] == "running"


def test_resolve_and_steps_stop_clocks(dstack, sup, sub, vip):
    policy(sup, {"priority": "P3", "customer_tier": "vip", "category": "training"},
           {"first_response": 3, "arrival": 3, "resolution": 3}, warning_fractions=[0.5],
           grace_seconds=1)
    agent = dstack.api("agent")
    mark = sub.mark()
    t = helpers.dispatch_ticket(dstack, customer=vip, category="training")
    n = t["number"]
    assert t["priority"] == "P3"
    armed(dstack, n, target="arrival")
    # a visit arrives (work calls this); then the ticket is resolved
    dstack.db.rows("SELECT dispatch.sla_on_step(%s, 'arrival', now())", (t["id"],))
    assert agent.transition(n, "resolved").status_code == 200
    wait_until(lambda: all(c["state"] in ("met",) for c in sla_view(dstack, n)["clocks"]), 10,
               0.05, "every clock met")
    v = sla_view(dstack, n)
    for c in v["clocks"]:
        assert c["met_at"] and c["next_deadline"] is None and c["due_at"] is None
        assert {d["state"] for d in c["deadlines"]} == {"cancelled"}
        assert c["elapsed_seconds"] < 3
    assert all(r["state"] == "cancelled" for r in deadline_rows(dstack, n))
    time.sleep(4.5)  # every due time has passed
    assert sla_events(sub, n, mark) == []
    # met stays met: a second step changes nothing
    dstack.db.rows("SELECT dispatch.sla_on_step(%s, 'arrival', now())", (t["id"],))
    assert clock_of(sla_view(dstack, n), "arrival")["met_at"] == clock_of(v, "arrival")["met_at"]


def test_priority_change_rebases_the_clocks(dstack, sup, sub):
    slow = policy(sup, {"priority": "P3", "customer_tier": "standard", "category": "complaint"},
                  {"first_response": 600}, warning_fractions=[])
    fast = policy(sup, {"priority": "P2", "customer_tier": "standard", "category": "complaint"},
                  {"first_response": 5}, warning_fractions=[], grace_seconds=600)
    agent = dstack.api("agent")
    mark = sub.mark()
    t = helpers.dispatch_ticket(dstack, category="complaint")
    n = t["number"]
    opened = opened_at(dstack, n)
    assert t["priority"] == "P3"
    assert armed(dstack, n) == opened + datetime.timedelta(seconds=600)
    assert clock_of(sla_view(dstack, n), "first_response")["policy"]["id"] == slow["id"]
    r = agent.patch("/v1/tickets/" + n, json={"urgency": "urgent"})
    assert r.status_code == 200 and r.json()["priority"] == "P2", r.text
    # the new policy's 5 s counted from when the ticket was opened, not from the change
    due = opened + datetime.timedelta(seconds=5)
    wait_until(lambda: armed(dstack, n) == due, 10, 0.05, "the re-based due time")
    c = clock_of(sla_view(dstack, n), "first_response")
    assert c["policy"]["id"] == fast["id"] and c["target_seconds"] == 5
    [m] = wait_events(sub, n, 1, 15, mark)
    e = m.env.sla_escalation
    assert m.topic == b"sla.breached" and ts(e.due_at) == due
    assert e.clock.policy_name == fast["name"] and e.ticket.priority == 2


def test_policy_change_rebases_open_clocks(dstack, sup, sub):
    pol = policy(sup, {"priority": "P2", "customer_tier": "standard", "category": "consultation"},
                 {"first_response": 3600}, warning_fractions=[])
    mark = sub.mark()
    t = helpers.dispatch_ticket(dstack, category="consultation", urgency="urgent")
    n = t["number"]
    opened = opened_at(dstack, n)
    assert armed(dstack, n) == opened + datetime.timedelta(hours=1)
    p2 = sup.must(sup.patch("/v1/sla/policies/" + pol["id"],
                            json={"expected_version": 1, "targets": {"first_response": 4}}), 200)
    assert p2["version"] == 2 and p2["targets"]["first_response"] == 4
    assert p2["targets"]["arrival"] is None
    due = opened + datetime.timedelta(seconds=4)
    wait_until(lambda: armed(dstack, n) == due, 10, 0.05, "the re-based due time")
    [m] = wait_events(sub, n, 1, 15, mark)
    assert m.topic == b"sla.breached" and ts(m.env.sla_escalation.due_at) == due
    # a target added to the policy starts that clock on the open ticket, from its opening
    sup.must(sup.patch("/v1/sla/policies/" + pol["id"], json={"targets": {"arrival": 7200}}),
             200)
    assert armed(dstack, n, target="arrival") == opened + datetime.timedelta(hours=2)
    assert clock_of(sla_view(dstack, n), "arrival")["state"] == "running"
    # and dropped again: that clock is cancelled, its deadlines with it
    sup.must(sup.patch("/v1/sla/policies/" + pol["id"], json={"targets": {"arrival": None}}),
             200)
    wait_until(lambda: clock_of(sla_view(dstack, n), "arrival")["state"] == "cancelled", 10,
               0.05, "the arrival clock to be cancelled")
    assert {r["state"] for r in deadline_rows(dstack, n) if r["target"] == "arrival"} == {
        "cancelled"}


def test_business_time_policy(dstack, sup):
    """A calendar whose only working days are after tomorrow: the clock starts counting then
    (worked by hand: today and tomorrow are holidays, every day is 00:00-24:00 UTC, so 1 h of
    business time ends the day after tomorrow at 01:00Z; the 0.5 warning at 00:30Z)."""
    today = datetime.datetime.now(datetime.timezone.utc).date()
    days = {d: ["00:00-24:00"] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
    name = unique("hol")
    cal = sup.must(sup.post("/v1/sla/calendars", json={
        "name": name, "calendar": {"time_zone": "UTC", "working_hours": days, "holidays": [
            today.isoformat(), (today + datetime.timedelta(days=1)).isoformat()]}}), 201)
    assert cal["name"] == name and cal["version"] == 1 and cal["builtin"] is False
    policy(sup, {"priority": "P1", "customer_tier": "standard", "category": "training"},
           {"resolution": 3600}, business_time=True, calendar=name)
    t = helpers.dispatch_ticket(dstack, category="training", urgency="critical")
    n = t["number"]
    start = datetime.datetime.combine(today + datetime.timedelta(days=2), datetime.time(0),
                                      datetime.timezone.utc)
    assert armed(dstack, n, target="resolution") == start + datetime.timedelta(hours=1)
    c = clock_of(sla_view(dstack, n), "resolution")
    assert c["business_time"] is True and c["calendar"] == name
    assert c["elapsed_seconds"] == 0  # no business time has passed yet
    assert ts(c["next_deadline"]["due_at"]) == start + datetime.timedelta(minutes=30)


def test_vendor_due_date(dstack, sub):
    """External repair's vendor due date (repairs calls these): a breach at the due time,
    an escalation one grace period (the ticket's policy: 4 h) later."""
    mark = sub.mark()
    t = helpers.dispatch_ticket(dstack, expedite=True)  # P3: the "default" policy's 8 h
    n = t["number"]
    ref, other = str(uuid.uuid4()), str(uuid.uuid4())
    db = dstack.db
    db.rows("SELECT dispatch.sla_arm_reference(%s, 'vendor_due', %s, now() + interval '2 s')",
            (t["id"], ref))
    db.rows("SELECT dispatch.sla_arm_reference(%s, 'vendor_due', %s, now() + interval '2 s')",
            (t["id"], other))
    db.rows("SELECT dispatch.sla_disarm_reference(%s)", (other,))  # the unit came back
    # re-arming moves it: 3 s from now
    db.rows("SELECT dispatch.sla_arm_reference(%s, 'vendor_due', %s, now() + interval '3 s')",
            (t["id"], ref))
    due = db.scalar("SELECT due_at FROM dispatch.sla_deadlines WHERE reference_id = %s "
                    "AND level = 'breach'", (ref,))
    [m] = wait_events(sub, n, 1, 10, mark)
    e = m.env.sla_escalation
    assert m.topic == b"sla.breached" and e.reference_id == ref
    assert e.clock.target == dispatch_pb2.SLA_TARGET_VENDOR_DUE and e.notify_role == "supervisor"
    assert ts(e.due_at) == due
    assert due <= ts(e.fired_at) < due + datetime.timedelta(seconds=BOUND_S)
    v = sla_view(dstack, n)
    got = {(d["reference_id"], d["level"]): (d["state"], ts(d["due_at"]))
           for d in v["vendor_deadlines"]}
    esc_due = due + datetime.timedelta(hours=4)
    assert got[(ref, "breach")] == ("fired", due)
    assert got[(ref, "escalation")] == ("pending", esc_due)
    assert got[(other, "breach")][0] == got[(other, "escalation")][0] == "cancelled"
    time.sleep(1.0)
    evs = sla_events(sub, n, mark)
    assert len(evs) == 1, [m.env.sla_escalation.clock.target for m in evs]
    # the same date again changes nothing (no second breach); a wrong target is refused
    db.rows("SELECT dispatch.sla_arm_reference(%s, 'vendor_due', %s, %s)", (t["id"], ref, due))
    assert db.scalar("SELECT state FROM dispatch.sla_deadlines WHERE reference_id = %s AND "
                     "level = 'breach'", (ref,)) == "fired"
    with pytest.raises(Exception):
        db.rows("SELECT dispatch.sla_arm_reference(%s, 'lunch', %s, now())", (t["id"], ref))


def test_a_failing_deadline_does_not_hold_up_the_others(dstack, sup, sub, vip):
    """Five breaches due together; building one's event fails (a broken function of another
    module, simulated): the other four fire on time, that one is retried every second and
    fires once the fault is gone."""
    policy(sup, {"priority": "P1", "customer_tier": "vip", "category": "training"},
           {"first_response": 4}, warning_fractions=[], grace_seconds=600)
    db = dstack.db
    original = db.scalar("SELECT pg_get_functiondef('dispatch.current_engineer(uuid)'::regprocedure)")
    mark = sub.mark()
    tickets = [helpers.dispatch_ticket(dstack, customer=vip, category="training",
                                       urgency="critical") for _ in range(5)]
    bad = tickets[2]
    db.rows("""CREATE OR REPLACE FUNCTION dispatch.current_engineer(p_ticket_id uuid)
               RETURNS uuid LANGUAGE plpgsql STABLE AS $$
               BEGIN
                   IF p_ticket_id = '%s' THEN RAISE EXCEPTION 'simulated fault'; END IF;
                   RETURN NULL;
               END $$""" % bad["id"])
    try:
        dues = {t["number"]: armed(dstack, t["number"]) for t in tickets}
        for t in tickets:
            if t is bad:
                continue
            [m] = wait_events(sub, t["number"], 1, 15, mark)
            fired = ts(m.env.sla_escalation.fired_at)
            assert dues[t["number"]] <= fired < dues[t["number"]] + datetime.timedelta(
                seconds=BOUND_S)
        time.sleep(1.5)
        assert sla_events(sub, bad["number"], mark) == []
        # (the engine arms a clock by the clock's id: its next level is what it fires)
        bad_id = db.scalar("SELECT c.id FROM dispatch.sla_clocks c WHERE c.ticket_id = %s "
                           "AND c.target = 'first_response'", (bad["id"],))
        assert "firing deadline %d failed" % bad_id in dstack.dispatch.log_text()
    finally:
        db.rows(original)
    [m] = wait_events(sub, bad["number"], 1, 15, mark)
    assert ts(m.env.sla_escalation.due_at) == dues[bad["number"]]
    time.sleep(1.0)
    assert len(sla_events(sub, bad["number"], mark)) == 1


# ----------------------------------------------------------------------------- bad input

def state_of(dstack):
    api = dstack.dispatch_api("agent")
    # (policies and calendars publish no events; deadlines fire in the background)
    return (api.must(api.get("/v1/sla/policies"), 200),
            api.must(api.get("/v1/sla/calendars"), 200))


GOOD_CAL = {"time_zone": "Europe/Berlin",
            "working_hours": {"mon": ["08:00-12:00", "13:00-17:00"], "fri": ["08:00-14:00"]},
            "holidays": ["2026-12-25"]}


def test_bad_calendars(dstack, sup):
    before = state_of(dstack)

    def cal(**over):
        c = copy.deepcopy(GOOD_CAL)
        c.update(over)
        return {"name": unique("cal"), "calendar": c}
    cases = [
        (cal(working_hours={"mon": ["25:00-26:00"]}), "calendar.working_hours.mon[0]"),
        (cal(working_hours={"mon": ["17:00-08:00"]}), "calendar.working_hours.mon[0]"),
        (cal(working_hours={"tue": ["08:00-12:00", "11:00-13:00"]}),
         "calendar.working_hours.tue[1]"),
        (cal(working_hours={"mon": ["08:60-09:00"]}), "calendar.working_hours.mon[0]"),
        (cal(working_hours={"someday": ["08:00-09:00"]}), "calendar.working_hours.someday"),
        (cal(working_hours={}), None),
        (cal(time_zone="Mars/Olympus_Mons"), "calendar.time_zone"),
        (cal(holidays=["2026-02-30"]), "calendar.holidays[0]"),
        (cal(colour="blue"), "calendar.colour"),
    ]
    for body, field in cases:
        err = assert_error(sup.post("/v1/sla/calendars", json=body), 422)
        if field:
            assert err["field"] == field, (body, err)
        assert err["message"]
    assert_error(sup.post("/v1/sla/calendars", json={"calendar": GOOD_CAL}), 422,
                 "missing_field", "name")
    assert_error(sup.post("/v1/sla/calendars", json={"name": "no spaces", "calendar": GOOD_CAL}),
                 422, "invalid_field", "name")
    assert_error(sup.post("/v1/sla/calendars", json={"name": "x", "calendar": "24x7"}), 422,
                 "invalid_field", "calendar")
    assert_error(sup.post("/v1/sla/calendars", json={"name": "24x7", "calendar": GOOD_CAL}), 409,
                 "name_taken", "name")
    assert_error(sup.patch("/v1/sla/calendars/24x7", json={"calendar": GOOD_CAL}), 409,
                 "builtin")
    assert_error(sup.patch("/v1/sla/calendars/nope", json={"calendar": GOOD_CAL}), 404)
    assert_error(dstack.dispatch_api("agent").post("/v1/sla/calendars", json=cal()), 403)
    assert state_of(dstack) == before
    # and the good one, edited with a version check
    name = unique("office")
    sup.must(sup.post("/v1/sla/calendars", json={"name": name, "calendar": GOOD_CAL}), 201)
    assert_error(sup.patch("/v1/sla/calendars/" + name, json={
        "calendar": GOOD_CAL, "expected_version": 7}), 409, "version_conflict")
    assert_error(sup.patch("/v1/sla/calendars/" + name, json={
        "calendar": cal(working_hours={"mon": ["09:00-08:00"]})["calendar"]}), 422)
    c2 = dict(GOOD_CAL, holidays=[])
    got = sup.must(sup.patch("/v1/sla/calendars/" + name, json={
        "calendar": c2, "expected_version": 1}), 200)
    assert got["version"] == 2 and got["calendar"] == c2


def test_bad_policies(dstack, sup):
    before = state_of(dstack)
    default = [p for p in before[0]["items"] if p["name"] == "default"][0]

    def body(**over):
        b = {"name": unique("bad"), "selector": {"priority": "P4", "customer_tier": "vip",
                                                  "category": "maintenance"},
             "targets": {"first_response": 60}}
        b.update(over)
        return {k: v for k, v in b.items() if v is not helpers.DROP}
    cases = [
        (body(targets={"first_response": 0}), "invalid_field", "targets.first_response"),
        (body(targets={"first_response": -60}), "invalid_field", "targets.first_response"),
        (body(targets={"resolution": 1.5}), "invalid_field", "targets.resolution"),
        (body(targets={"resolution": "3600"}), "invalid_field", "targets.resolution"),
        (body(targets={"first_response": None}), "invalid_field", "targets"),
        (body(targets={"lunch": 60}), "unknown_field", "targets.lunch"),
        (body(targets=helpers.DROP), "missing_field", "targets"),
        (body(name=helpers.DROP), "missing_field", "name"),
        (body(name=""), "invalid_field", "name"),
        (body(warning_fractions=[0]), "invalid_field", "warning_fractions[0]"),
        (body(warning_fractions=[0.5, 1]), "invalid_field", "warning_fractions[1]"),
        (body(warning_fractions=[1.5]), "invalid_field", "warning_fractions[0]"),
        (body(warning_fractions=[-0.25]), "invalid_field", "warning_fractions[0]"),
        (body(warning_fractions=[0.5, 0.5]), "invalid_field", "warning_fractions[1]"),
        (body(warning_fractions=[0.1] * 9), "invalid_field", "warning_fractions"),
        (body(warning_fractions=0.5), "invalid_field", "warning_fractions"),
        (body(grace_seconds=-1), "invalid_field", "grace_seconds"),
        (body(selector={"priority": "P5"}), "invalid_field", "selector.priority"),
        (body(selector={"customer_tier": "gold"}), "invalid_field", "selector.customer_tier"),
        (body(selector={"category": "sales"}), "invalid_field", "selector.category"),
        (body(selector={"region": "north"}), "unknown_field", "selector.region"),
        (body(business_time="yes"), "invalid_field", "business_time"),
        (body(calendar="no-such-calendar"), "invalid_field", "calendar"),
        (body(expected_version=1), "unknown_field", "expected_version"),
        (body(colour="blue"), "unknown_field", "colour"),
    ]
    for b, code, field in cases:
        assert_error(sup.post("/v1/sla/policies", json=b), 422, code, field)
    # the same selector as an active policy: no rule could choose
    err = assert_error(sup.post("/v1/sla/policies", json=body(selector={})), 409,
                       "overlapping_selector", "selector")
    assert "default" in err["message"]
    assert_error(sup.post("/v1/sla/policies", json=body(name="default")), 409, "name_taken",
                 "name")
    # the catch-all stays
    assert_error(sup.patch("/v1/sla/policies/" + default["id"], json={"active": False}), 409,
                 "default_policy_required", "selector")
    assert_error(sup.patch("/v1/sla/policies/" + default["id"],
                           json={"selector": {"category": "training"}}), 409,
                 "default_policy_required")
    assert_error(sup.patch("/v1/sla/policies/" + default["id"],
                           json={"expected_version": 99, "grace_seconds": 1}), 409,
                 "version_conflict", "expected_version")
    assert_error(sup.patch("/v1/sla/policies/" + default["id"],
                           json={"targets": {"first_response": None, "arrival": None,
                                             "resolution": None}}), 422, "invalid_field",
                 "targets")
    assert_error(sup.patch("/v1/sla/policies/" + default["id"], json={"grace_seconds": 0.5}),
                 422, "invalid_field", "grace_seconds")
    assert_error(sup.patch("/v1/sla/policies/" + str(uuid.uuid4()), json={"active": False}), 404)
    assert_error(sup.get("/v1/sla/policies/not-a-uuid"), 404)
    assert_error(dstack.dispatch_api("agent").post("/v1/sla/policies", json=body()), 403)
    assert_error(dstack.dispatch_api(None).get("/v1/sla/policies"), 401)
    assert state_of(dstack) == before
    # a deactivated policy frees its selector
    p = sup.must(sup.post("/v1/sla/policies", json=body()), 201)
    assert_error(sup.post("/v1/sla/policies", json=body()), 409, "overlapping_selector")
    off = sup.must(sup.patch("/v1/sla/policies/" + p["id"], json={"active": False}), 200)
    assert off["active"] is False and off["version"] == 2
    sup.must(sup.post("/v1/sla/policies", json=body()), 201)
    # a PATCH that changes nothing keeps the version
    assert sup.must(sup.patch("/v1/sla/policies/" + p["id"], json={"active": False}),
                    200)["version"] == 2


# ----------------------------------------------------------------------------- restarts (last)

def test_kill9_before_deadline_fires_once_after_restart(dstack, sup, sub, vip):
    policy(sup, {"priority": "P3", "customer_tier": "vip", "category": "consultation"},
           {"first_response": 5}, warning_fractions=[], grace_seconds=600)
    mark = sub.mark()
    t = helpers.dispatch_ticket(dstack, customer=vip, category="consultation")
    n = t["number"]
    due = armed(dstack, n)
    left = (due - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    assert left > 1.5, "too slow to kill before the deadline"
    time.sleep(left - 1.0)
    dstack.dispatch.stop(signal.SIGKILL)  # one second before it is due
    time.sleep(max(0.0, (due - datetime.datetime.now(datetime.timezone.utc)).total_seconds())
               + 1.5)
    assert sla_events(sub, n, mark) == []  # nothing fired while it was down
    dstack.dispatch.start()
    ready_at = datetime.datetime.now(datetime.timezone.utc)
    dstack.dispatch.wait_ready()
    [m] = wait_events(sub, n, 1, 15, mark)
    e = m.env.sla_escalation
    assert m.topic == b"sla.breached" and ts(e.due_at) == due
    assert ready_at <= ts(e.fired_at) < ready_at + datetime.timedelta(seconds=5)
    # once: a second restart, then a quiet moment — still one event and one fired row
    dstack.dispatch.restart(signal.SIGKILL)
    time.sleep(2.0)
    assert len(sla_events(sub, n, mark)) == 1
    assert dstack.db.scalar(
        "SELECT count(*) FROM dispatch.outbox o WHERE o.topic = 'sla.breached' AND "
        "position(convert_to(%s, 'UTF8') in o.envelope) > 0", (n,)) == 1
    rows = [r for r in deadline_rows(dstack, n) if r["level"] == "breach"]
    assert [r["state"] for r in rows] == ["fired"]


def test_deadlines_passed_while_down_fire_at_start(dstack, sup, sub):
    policy(sup, {"priority": "P2", "customer_tier": "standard", "category": "training"},
           {"first_response": 3}, warning_fractions=[], grace_seconds=600)
    mark = sub.mark()
    numbers = [helpers.dispatch_ticket(dstack, category="training", urgency="urgent")["number"]
               for _ in range(10)]
    dues = {n: armed(dstack, n) for n in numbers}
    assert dstack.dispatch.stop(signal.SIGTERM) == 0
    time.sleep(max(0.0, (max(dues.values()) - datetime.datetime.now(
        datetime.timezone.utc)).total_seconds()) + 1.0)
    assert all(sla_events(sub, n, mark) == [] for n in numbers)
    dstack.dispatch.start()
    ready_at = datetime.datetime.now(datetime.timezone.utc)
    dstack.dispatch.wait_ready()
    for n in numbers:
        [m] = wait_events(sub, n, 1, 15, mark)
        assert ts(m.env.sla_escalation.due_at) == dues[n]
        assert ts(m.env.sla_escalation.fired_at) < ready_at + datetime.timedelta(seconds=5)
    time.sleep(1.0)
    assert sum(len(sla_events(sub, n, mark)) for n in numbers) == 10
    log = dstack.dispatch.log_text()
    assert "deadlines armed in" in log
