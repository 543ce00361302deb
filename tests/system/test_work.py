"""Work records (issue 4, item 4) and intake following dispatch (docs/dispatch-api.md,
"Work records"): a visit or a remote session, step by step, each step an event
visit.<step> on the bus; the illegal orders and the bad bodies refused with nothing
changed; and intake keeping the ticket's status and history current from those events
(services/intake/follow.c) — skipping, without stalling, what its transition table
refuses, applying each change once, also across a kill -9.

One private stack (PostgreSQL, bus, intake, dispatch) serves the module."""

import datetime
import hashlib
import signal
import time
import uuid

import pytest

import helpers
from helpers import assert_error, unique, wait_until

SHEET = hashlib.sha256(b"service confirmation sheet").hexdigest()


@pytest.fixture(scope="module")
def wstack(tmp_root):
    from conftest import _start_stack, _stop_stack
    stack = _start_stack(tmp_root, "work", dispatch=True)
    yield stack
    _stop_stack(stack)


@pytest.fixture(scope="module")
def sub(wstack):
    return wstack.subscriber()  # every topic: dispatch's visit.* and intake's ticket.*


@pytest.fixture(scope="module")
def eng(wstack):
    """A field engineer (dispatch's engineers)."""
    return new_engineer(wstack)


@pytest.fixture
def sup(wstack):
    return wstack.dispatch_api("supervisor")


@pytest.fixture(scope="module")
def fe(wstack, eng):
    """eng's own token: an engineer records only their own work (migration 014)."""
    return wstack.engineer_api(eng["id"])


def new_engineer(stack, **over):
    body = {"name": unique("Field engineer"), "role": "field_engineer",
            "skills": [{"kind": "category", "name": "fault_repair", "level": 3}],
            "regions": ["eu-central"], "capacity": 5, "contact": {"phone": "+49 30 1234567"},
            "shift": {"around_the_clock": True}}
    body.update(over)
    api = stack.dispatch_api("supervisor")
    return api.must(api.post("/v1/engineers", json=body), 201)


# ----------------------------------------------------------------------------- helpers

def intake_ticket(stack, number):
    api = stack.api("agent")
    return api.must(api.get("/v1/tickets/" + number), 200)


def wait_status(stack, number, status, timeout=20):
    """Waits until intake shows the ticket in `status`; returns the ticket."""
    last = {}

    def ok():
        last["t"] = intake_ticket(stack, number)
        return last["t"] if last["t"]["status"] == status else None
    try:
        return wait_until(ok, timeout, 0.05, "ticket %s to be %s" % (number, status))
    except TimeoutError:
        raise AssertionError("ticket %s is %s, not %s; history %r" % (
            number, last["t"]["status"], status, last["t"].get("history"))) from None


def transition(stack, number, to, reason="test"):
    api = stack.api("supervisor")
    return api.must(api.post("/v1/tickets/%s/transitions" % number,
                             json={"to": to, "reason": reason}), 200)


def planned_ticket(stack):
    """A fault-repair ticket that dispatch knows, moved to "planned" in intake (by hand, or
    partly by dispatch's own ticket.assigned when the assignment module is there)."""
    api = stack.api("agent")
    product = api.new_product(stack.probe_customer["id"])
    t = helpers.dispatch_ticket(stack, product_id=product["id"])
    for to in ("diagnosing", "planned"):
        def moved():
            cur = intake_ticket(stack, t["number"])["status"]
            if cur == to:
                return True
            r = stack.api("supervisor").post("/v1/tickets/%s/transitions" % t["number"],
                                             json={"to": to, "reason": "test"})
            return r.status_code == 200
        wait_until(moved, 20, 0.1, "ticket %s to be %s" % (t["number"], to))
    # dispatch's view follows intake's ticket.status_changed
    dapi = stack.dispatch_api("agent")
    wait_until(lambda: dapi.get("/v1/tickets/" + t["number"]).json()["status"] == "planned", 20,
               0.05, "dispatch to see ticket %s planned" % t["number"])
    return t


def new_record(api, number, engineer_id, kind="visit"):
    return api.must(api.post("/v1/tickets/%s/work" % number,
                             json={"kind": kind, "engineer_id": engineer_id}), 201)


def step(api, record_id, name, status=201, **body):
    body["step"] = name
    r = api.post("/v1/work/%s/steps" % record_id, json=body)
    if status != 201:
        return r
    return api.must(r, 201)


def report_body(**over):
    body = {"diagnosis": "Bearing worn out on the pump shaft",
            "actions": "Replaced the bearing, tested 30 min under load",
            "parts_used": [{"part_number": "BRG-6204", "quantity": 1, "serial_number": "B-778"}],
            "old_parts_returned": [{"part_number": "BRG-6204", "quantity": 1}],
            "attachments": ["https://files.example.com/photos/4411.jpg", "att-0042"]}
    body.update(over)
    return {k: v for k, v in body.items() if v is not helpers.DROP}


def confirmation_body(**over):
    body = {"name": "Dana Customer", "signed_at": helpers.rfc3339(helpers.utc_now()),
            "sheet_sha256": SHEET}
    body.update(over)
    return {k: v for k, v in body.items() if v is not helpers.DROP}


def at(base, seconds):
    return (base + datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def arrival_met(stack, ticket):
    """When the SLA engine saw the arrival target met (dispatch.sla_on_step)."""
    return stack.db.scalar("SELECT met_at FROM dispatch.sla_clocks "
                           "WHERE ticket_id = %s AND target = 'arrival'", (ticket["id"],))


def dispatch_events(sub, since=0, prefix=b"visit."):
    return [m for m in sub.messages(since)
            if m.env is not None and m.env.source == helpers.DISPATCH_SOURCE
            and m.topic.startswith(prefix)]


def record_events(sub, record_id, since=0):
    return [m for m in dispatch_events(sub, since)
            if m.env.work_step_recorded.record.id == record_id]


def dispatch_history(ticket):
    return [(h["from"], h["to"], h["reason"]) for h in ticket["history"]
            if h["actor"] == "dispatch"]


def state_of(stack, record_id):
    """What a refused request must leave alone: the record, its steps, both outboxes."""
    api = stack.dispatch_api("supervisor")
    return (api.must(api.get("/v1/work/" + record_id), 200),
            stack.db.scalar("SELECT count(*) FROM dispatch.work_steps"),
            # visit.* only: SLA deadlines and assignments publish in the background
            stack.db.scalar("SELECT count(*) FROM dispatch.outbox WHERE topic LIKE 'visit.%%'"))


# The ticket's status in intake once it has followed the steps up to this one.
FOLLOWED = {None: "planned", "travel": "planned", "arrived": "planned",
            "started": "in_progress", "paused": "waiting_customer", "resumed": "in_progress",
            "completed": "in_progress", "confirmed": "resolved"}


def record_at(stack, api, eng, last, kind="visit"):
    """A record on a fresh planned ticket, taken through the steps up to `last`, once
    intake has followed them."""
    t = planned_ticket(stack)
    helpers.put_on_ticket(stack, eng, t["number"], kind="work")
    rec = new_record(api, t["number"], eng["id"], kind)
    path = {"visit": ["travel", "arrived", "started", "paused", "resumed", "completed",
                      "confirmed"],
            "remote": ["started", "paused", "resumed", "completed", "confirmed"]}[kind]
    if last is None:
        return t, rec
    for name in path[:path.index(last) + 1]:
        extra = {"paused": {"pause_reason": "waiting_customer"},
                 "completed": {"report": report_body()},
                 "confirmed": {"confirmation": confirmation_body()}}.get(name, {})
        rec = step(api, rec["id"], name, **extra)
    wait_status(stack, t["number"], FOLLOWED[last])
    return t, rec


# ----------------------------------------------------------------------------- a full visit

def test_full_visit(wstack, sub, eng, fe):
    t = planned_ticket(wstack)
    helpers.put_on_ticket(wstack, eng, t["number"], kind="work")
    number = t["number"]
    mark = sub.mark()
    rec = new_record(fe, number, eng["id"])
    assert helpers.is_uuid(rec["id"])
    assert rec["state"] == "created" and rec["kind"] == "visit" and rec["version"] == 1
    assert rec["ticket_number"] == number and rec["engineer_id"] == eng["id"]
    assert rec["engineer_name"] == eng["name"] and rec["steps"] == []

    base = helpers.utc_now()
    rid = rec["id"]
    r = step(fe, rid, "travel", at=at(base, 1), note="leaving the depot")
    assert r["state"] == "travel" and r["travel_at"] == at(base, 1) and r["version"] == 2
    r = step(fe, rid, "arrived", at=at(base, 30))
    assert r["state"] == "arrived" and r["arrived_at"] == at(base, 30)
    assert arrival_met(wstack, t) == helpers.parse_rfc3339(at(base, 30))  # the SLA target
    r = step(fe, rid, "started", at=at(base, 40))
    assert r["state"] == "started" and r["started_at"] == at(base, 40)
    assert wait_status(wstack, number, "in_progress")

    r = step(fe, rid, "paused", at=at(base, 60), pause_reason="waiting_parts",
             note="bearing not in the van")
    assert r["state"] == "paused" and r["pause_reason"] == "waiting_parts"
    assert wait_status(wstack, number, "waiting_parts")

    r = step(fe, rid, "resumed", at=at(base, 180))
    assert r["state"] == "resumed" and r["pause_reason"] is None
    assert r["paused_seconds"] == 120
    assert wait_status(wstack, number, "in_progress")

    rep = report_body()
    r = step(fe, rid, "completed", at=at(base, 200), report=rep)
    assert r["state"] == "completed" and r["completed_at"] == at(base, 200)
    assert r["report"] == rep
    time.sleep(0.3)  # completion alone does not move the ticket
    assert intake_ticket(wstack, number)["status"] == "in_progress"

    conf = confirmation_body(signed_at=at(base, 225), sheet_sha256=SHEET.upper())
    agent = wstack.dispatch_api("agent")  # the service desk records the customer's sign-off
    r = step(agent, rid, "confirmed", at=at(base, 230), confirmation=conf)
    assert r["state"] == "confirmed" and r["confirmed_at"] == at(base, 230)
    assert r["confirmation"] == {"name": "Dana Customer", "signed_at": at(base, 225),
                                 "sheet_sha256": SHEET}
    assert r["version"] == 8
    resolved = wait_status(wstack, number, "resolved")
    assert resolved["resolved_at"]

    # the record as read back: every step with its actor, in order
    got = fe.must(fe.get("/v1/work/" + rid), 200)
    assert got == r
    assert [s["step"] for s in got["steps"]] == ["travel", "arrived", "started", "paused",
                                                 "resumed", "completed", "confirmed"]
    assert got["steps"][0]["note"] == "leaving the depot"
    assert got["steps"][3]["pause_reason"] == "waiting_parts"
    # the actor is the token's name (the helpers name tokens systest-<role>-...)
    assert all(s["actor"].startswith("systest-engineer") for s in got["steps"][:6])
    assert got["steps"][6]["actor"].startswith("systest-agent")
    listed = fe.must(fe.get("/v1/tickets/%s/work" % number), 200)
    assert [x["id"] for x in listed["items"]] == [rid]

    # the events: one per step, in order, each with the record after the step
    evs = sub.wait(lambda _: len(record_events(sub, rid, mark)) >= 7 and
                   record_events(sub, rid, mark), 15, mark, "7 visit events")
    assert [m.topic for m in evs] == [b"visit.travel", b"visit.arrived", b"visit.started",
                                      b"visit.paused", b"visit.resumed", b"visit.completed",
                                      b"visit.confirmed"]
    from aftercare.v1 import dispatch_pb2
    steps = [dispatch_pb2.WORK_STEP_TRAVEL, dispatch_pb2.WORK_STEP_ARRIVED,
             dispatch_pb2.WORK_STEP_STARTED, dispatch_pb2.WORK_STEP_PAUSED,
             dispatch_pb2.WORK_STEP_RESUMED, dispatch_pb2.WORK_STEP_COMPLETED,
             dispatch_pb2.WORK_STEP_CONFIRMED]
    for m, want, version in zip(evs, steps, range(2, 9)):
        p = m.env.work_step_recorded
        assert m.env.type == "aftercare.%s.v1" % m.topic.decode()
        assert m.env.subject == number and m.env.partition_key == t["id"]
        assert p.step == want and p.record.last_step == want
        assert p.record.version == version and p.record.kind == "visit"
        assert p.ticket.number == number and p.ticket.id == t["id"]
        assert p.record.engineer_id == eng["id"]
    assert evs[0].env.work_step_recorded.note == "leaving the depot"
    assert evs[0].env.work_step_recorded.at == at(base, 1)
    assert evs[3].env.work_step_recorded.record.pause_reason == "waiting_parts"
    done = evs[5].env.work_step_recorded.record
    assert done.report.diagnosis == rep["diagnosis"]
    assert [(u.part_number, u.quantity, u.serial_number) for u in done.report.parts_used] == [
        ("BRG-6204", 1, "B-778")]
    assert [u.part_number for u in done.report.old_parts_returned] == ["BRG-6204"]
    assert list(done.report.attachments) == rep["attachments"]
    assert done.paused_seconds == 120
    c = evs[6].env.work_step_recorded.record.confirmation
    assert (c.name, c.signed_at, c.sheet_sha256) == ("Dana Customer", at(base, 225), SHEET)

    # intake's side: a normal status change per event, by "dispatch", each published
    assert dispatch_history(resolved) == [
        ("planned", "in_progress", "visit.started: work on site started"),
        ("in_progress", "waiting_parts", "visit.paused: waiting for parts"),
        ("waiting_parts", "in_progress", "visit.resumed: work resumed"),
        ("in_progress", "resolved", "visit.confirmed: customer confirmed (Dana Customer)")]
    mine = sub.wait(lambda evs: [m for m in evs if m.env.subject == number and
                                 m.topic in (b"ticket.status_changed", b"ticket.resolved")
                                 and m.env.ticket_version > t["version"] + 2] or None,
                    15, mark, "intake's events for %s" % number)
    paused = [m for m in sub.events(mark) if m.env.subject == number and
              m.topic == b"ticket.status_changed" and
              m.env.ticket_status_changed.reason == "visit.paused: waiting for parts"]
    assert len(paused) == 1 and paused[0].env.ticket_status_changed.actor == "dispatch"
    assert paused[0].env.ticket_status_changed.ticket.status == helpers.enum_value(
        "TICKET_STATUS", "waiting_parts")
    # the change is correlated with the dispatch event that caused it
    assert paused[0].env.correlation_id == evs[3].env.correlation_id
    assert mine
    res = sub.wait_for(number, "ticket.resolved", 15, mark)
    assert res[0].env.ticket_resolved.reason.startswith("visit.confirmed")
    # and dispatch's view of the ticket follows intake's events
    dapi = wstack.dispatch_api("agent")
    wait_until(lambda: dapi.get("/v1/tickets/" + number).json()["status"] == "resolved", 15,
               0.05, "dispatch to see %s resolved" % number)


def test_remote_session(wstack, sub, eng, fe):
    t = planned_ticket(wstack)
    helpers.put_on_ticket(wstack, eng, t["number"], kind="work")
    mark = sub.mark()
    rec = new_record(fe, t["number"], eng["id"], kind="remote")
    for illegal in ("travel", "arrived"):
        err = assert_error(step(fe, rec["id"], illegal, status=409), 409, "illegal_step", "step")
        assert "remote" in err["message"]
    r = step(fe, rec["id"], "started")
    assert r["state"] == "started" and r["arrived_at"] is None and r["travel_at"] is None
    # a remote session's start is its arrival
    assert arrival_met(wstack, t) == helpers.parse_rfc3339(r["started_at"])
    wait_status(wstack, t["number"], "in_progress")
    step(fe, rec["id"], "paused", pause_reason="waiting_customer")
    wait_status(wstack, t["number"], "waiting_customer")
    step(fe, rec["id"], "resumed")
    step(fe, rec["id"], "completed", report=report_body(parts_used=helpers.DROP,
                                                          old_parts_returned=helpers.DROP,
                                                          attachments=helpers.DROP))
    r = step(fe, rec["id"], "confirmed", confirmation=confirmation_body())
    assert r["report"]["parts_used"] == [] and r["report"]["attachments"] == []
    ticket = wait_status(wstack, t["number"], "resolved")
    assert [h[1] for h in dispatch_history(ticket)] == [
        "in_progress", "waiting_customer", "in_progress", "resolved"]
    assert dispatch_history(ticket)[0][2] == "visit.started: remote session started"
    evs = sub.wait(lambda _: len(record_events(sub, rec["id"], mark)) >= 5 and
                   record_events(sub, rec["id"], mark), 15, mark, "5 remote events")
    assert [m.topic for m in evs] == [b"visit.started", b"visit.paused", b"visit.resumed",
                                      b"visit.completed", b"visit.confirmed"]
    assert evs[0].env.work_step_recorded.record.kind == "remote"


# ----------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("kind,done,illegal", [
    ("visit", None, "started"),          # a visit arrives first
    ("visit", None, "paused"),
    ("visit", None, "completed"),
    ("visit", None, "resumed"),
    ("visit", "travel", "travel"),
    ("visit", "arrived", "travel"),
    ("visit", "arrived", "completed"),
    ("visit", "started", "resumed"),     # resume only while paused
    ("visit", "started", "confirmed"),   # confirm only after completion
    ("visit", "paused", "completed"),    # complete only while started, not paused
    ("visit", "paused", "paused"),
    ("visit", "completed", "paused"),
    ("visit", "confirmed", "travel"),    # nothing after the confirmation
    ("visit", "confirmed", "confirmed"),
    ("remote", None, "completed"),
])
def test_illegal_order(wstack, eng, fe, kind, done, illegal):
    _, rec = record_at(wstack, fe, eng, done, kind)
    before = state_of(wstack, rec["id"])
    extra = {"paused": {"pause_reason": "waiting_parts"},
             "completed": {"report": report_body()},
             "confirmed": {"confirmation": confirmation_body()}}.get(illegal, {})
    err = assert_error(step(fe, rec["id"], illegal, status=409, **extra), 409, "illegal_step",
                       "step")
    assert (done or "created") in err["message"]
    assert state_of(wstack, rec["id"]) == before


BAD_STEPS = [
    # (what, state before, body, status, code, field)
    ("no step", None, {}, 422, "missing_field", "step"),
    ("unknown step", None, {"step": "teleported"}, 422, "invalid_field", "step"),
    ("step not a string", None, {"step": 3}, 422, "invalid_field", "step"),
    ("unknown field", None, {"step": "travel", "speed": 3}, 422, "unknown_field", "speed"),
    ("bad at", None, {"step": "travel", "at": "yesterday"}, 422, "invalid_field", "at"),
    ("at in the future", None, {"step": "travel", "at": "2099-01-01T00:00:00Z"}, 422,
     "invalid_field", "at"),
    ("at before the ticket", None, {"step": "travel", "at": "2001-01-01T00:00:00Z"}, 422,
     "invalid_field", "at"),
    ("at before the last step", "arrived", {"step": "started", "at": "PAST"}, 422,
     "invalid_field", "at"),
    ("note too long", None, {"step": "travel", "note": "x" * 2001}, 422, "invalid_field",
     "note"),
    ("expected_version", None, {"step": "travel", "expected_version": 7}, 409,
     "version_conflict", "expected_version"),
    ("expected_version type", None, {"step": "travel", "expected_version": "1"}, 422,
     "invalid_field", "expected_version"),
    ("pause without reason", "started", {"step": "paused"}, 422, "missing_field",
     "pause_reason"),
    ("bad pause reason", "started", {"step": "paused", "pause_reason": "lunch"}, 422,
     "invalid_field", "pause_reason"),
    ("pause reason with another step", "arrived",
     {"step": "started", "pause_reason": "waiting_parts"}, 422, "invalid_field", "pause_reason"),
    ("completed without report", "started", {"step": "completed"}, 422, "missing_field",
     "report"),
    ("report with another step", "arrived", {"step": "started", "report": "REPORT"}, 422,
     "invalid_field", "report"),
    ("report not an object", "started", {"step": "completed", "report": "done"}, 422,
     "invalid_field", "report"),
    ("report without diagnosis", "started",
     {"step": "completed", "report": {"actions": "fixed"}}, 422, "missing_field",
     "report.diagnosis"),
    ("report empty actions", "started",
     {"step": "completed", "report": {"diagnosis": "worn", "actions": ""}}, 422,
     "invalid_field", "report.actions"),
    ("report unknown key", "started",
     {"step": "completed", "report": {"diagnosis": "d", "actions": "a", "cost": 3}}, 422,
     "unknown_field", "report.cost"),
    ("report zero quantity", "started",
     {"step": "completed", "report": {"diagnosis": "d", "actions": "a",
                                      "parts_used": [{"part_number": "P1", "quantity": 0}]}},
     422, "invalid_field", "report.parts_used[0].quantity"),
    ("report part without number", "started",
     {"step": "completed", "report": {"diagnosis": "d", "actions": "a",
                                      "old_parts_returned": [{"part_number": "P1",
                                                              "quantity": 1},
                                                             {"quantity": 1}]}},
     422, "missing_field", "report.old_parts_returned[1].part_number"),
    ("report parts not a list", "started",
     {"step": "completed", "report": {"diagnosis": "d", "actions": "a", "parts_used": {}}},
     422, "invalid_field", "report.parts_used"),
    ("report empty attachment", "started",
     {"step": "completed", "report": {"diagnosis": "d", "actions": "a",
                                      "attachments": ["a.jpg", ""]}},
     422, "invalid_field", "report.attachments[1]"),
    ("confirmed without confirmation", "completed", {"step": "confirmed"}, 422,
     "missing_field", "confirmation"),
    ("confirmation with another step", "started",
     {"step": "completed", "report": "REPORT", "confirmation": "CONF"}, 422, "invalid_field",
     "confirmation"),
    ("confirmation without name", "completed",
     {"step": "confirmed", "confirmation": {"signed_at": "NOW", "sheet_sha256": SHEET}}, 422,
     "missing_field", "confirmation.name"),
    ("confirmation bad time", "completed",
     {"step": "confirmed", "confirmation": {"name": "D", "signed_at": "today",
                                            "sheet_sha256": SHEET}},
     422, "invalid_field", "confirmation.signed_at"),
    ("confirmation signed before the work", "completed",
     {"step": "confirmed", "confirmation": {"name": "D", "signed_at": "2020-01-01T00:00:00Z",
                                            "sheet_sha256": SHEET}},
     422, "invalid_field", "confirmation.signed_at"),
    ("confirmation short hash", "completed",
     {"step": "confirmed", "confirmation": {"name": "D", "signed_at": "NOW",
                                            "sheet_sha256": SHEET[:63]}},
     422, "invalid_field", "confirmation.sheet_sha256"),
    ("confirmation hash not hex", "completed",
     {"step": "confirmed", "confirmation": {"name": "D", "signed_at": "NOW",
                                            "sheet_sha256": "g" * 64}},
     422, "invalid_field", "confirmation.sheet_sha256"),
    ("confirmation unknown key", "completed",
     {"step": "confirmed", "confirmation": {"name": "D", "signed_at": "NOW",
                                            "sheet_sha256": SHEET, "ip": "1.2.3.4"}},
     422, "unknown_field", "confirmation.ip"),
]


def _fill(value, past):
    if value == "REPORT":
        return report_body()
    if value == "CONF":
        return confirmation_body()
    if value == "NOW":
        return helpers.rfc3339(helpers.utc_now())
    if value == "PAST":
        return past
    if isinstance(value, dict):
        return {k: _fill(v, past) for k, v in value.items()}
    return value


@pytest.mark.parametrize("what,done,body,status,code,field", BAD_STEPS,
                         ids=[b[0] for b in BAD_STEPS])
def test_bad_step(wstack, eng, fe, what, done, body, status, code, field):
    t, rec = record_at(wstack, fe, eng, done)
    # a time after the ticket was opened but before the record's last step
    past = (helpers.parse_rfc3339(t["created_at"]) + datetime.timedelta(milliseconds=1)
            ).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    before = state_of(wstack, rec["id"])
    ticket_before = intake_ticket(wstack, t["number"])
    r = fe.post("/v1/work/%s/steps" % rec["id"], json=_fill(body, past))
    assert_error(r, status, code, field)
    assert state_of(wstack, rec["id"]) == before
    assert intake_ticket(wstack, t["number"])["version"] == ticket_before["version"]


def test_create_errors(wstack, eng, fe):
    t = planned_ticket(wstack)
    n = t["number"]
    out0 = wstack.db.scalar("SELECT count(*) FROM dispatch.work_records")
    assert_error(fe.post("/v1/tickets/SV-20990101-999999/work",
                         json={"kind": "visit", "engineer_id": eng["id"]}), 404, "not_found")
    assert_error(fe.post("/v1/tickets/nonsense/work",
                         json={"kind": "visit", "engineer_id": eng["id"]}), 404, "not_found")
    sup = wstack.dispatch_api("supervisor")
    assert_error(sup.post("/v1/tickets/%s/work" % n,
                          json={"kind": "visit",
                                "engineer_id": "00000000-0000-4000-8000-000000000000"}),
                 422, "unknown_engineer", "engineer_id")
    assert_error(fe.post("/v1/tickets/%s/work" % n,
                         json={"kind": "visit", "engineer_id": "bob"}), 422, "invalid_field",
                 "engineer_id")
    assert_error(fe.post("/v1/tickets/%s/work" % n, json={"engineer_id": eng["id"]}), 422,
                 "missing_field", "kind")
    assert_error(fe.post("/v1/tickets/%s/work" % n,
                         json={"kind": "depot", "engineer_id": eng["id"]}), 422,
                 "invalid_field", "kind")
    assert_error(fe.post("/v1/tickets/%s/work" % n,
                         json={"kind": "visit", "engineer_id": eng["id"], "eta": "soon"}), 422,
                 "unknown_field", "eta")
    assert wstack.db.scalar("SELECT count(*) FROM dispatch.work_records") == out0
    # without engineer_id: for a supervisor the engineer holding the ticket, if any
    r = sup.post("/v1/tickets/%s/work" % n, json={"kind": "visit"})
    if r.status_code == 201:
        assert helpers.is_uuid(r.json()["engineer_id"])
    else:
        assert_error(r, 422, "missing_field", "engineer_id")
    # unknown record ids
    for path in ("/v1/work/00000000-0000-4000-8000-000000000000", "/v1/work/xyz"):
        assert_error(fe.get(path), 404, "not_found")
        assert_error(fe.post(path + "/steps", json={"step": "travel"}), 404, "not_found")
    assert_error(fe.get("/v1/tickets/SV-20990101-999999/work"), 404, "not_found")


def test_no_new_work_on_a_cancelled_ticket(wstack, eng, fe, sup):
    t = planned_ticket(wstack)
    helpers.put_on_ticket(wstack, eng, t["number"], kind="work")
    transition(wstack, t["number"], "cancelled", "customer withdrew")
    dapi = wstack.dispatch_api("agent")
    wait_until(lambda: dapi.get("/v1/tickets/" + t["number"]).json()["status"] == "cancelled",
               15, 0.05, "dispatch to see the cancellation")
    body = {"kind": "visit", "engineer_id": eng["id"]}
    # the cancellation released the engineer's assignment: not their ticket any more
    assert_error(fe.post("/v1/tickets/%s/work" % t["number"], json=body), 403,
                 "not_your_ticket")
    assert_error(sup.post("/v1/tickets/%s/work" % t["number"], json=body), 409,
                 "ticket_closed")


@pytest.mark.parametrize("role,create,travel,confirm,read", [
    ("engineer", 201, 201, 201, 200),
    ("supervisor", 201, 201, 201, 200),
    ("admin", 201, 201, 201, 200),
    ("agent", 403, 403, 201, 200),      # the service desk records only the sign-off
    ("integration", 403, 403, 403, 200),
    ("warehouse", 403, 403, 403, 403),
])
def test_roles(wstack, eng, fe, role, create, travel, confirm, read):
    api = fe if role == "engineer" else wstack.dispatch_api(role)
    t = planned_ticket(wstack)
    helpers.put_on_ticket(wstack, eng, t["number"], kind="work")
    r = api.post("/v1/tickets/%s/work" % t["number"],
                 json={"kind": "visit", "engineer_id": eng["id"]})
    assert r.status_code == create, r.text
    rec = new_record(fe, t["number"], eng["id"])
    before = state_of(wstack, rec["id"])
    r = step(api, rec["id"], "travel", status=travel)
    assert (r["state"] if travel == 201 else r.status_code) == (
        "travel" if travel == 201 else travel)
    if travel != 201:
        assert state_of(wstack, rec["id"]) == before
    _, done = record_at(wstack, fe, eng, "completed")
    r = step(api, done["id"], "confirmed", status=confirm, confirmation=confirmation_body())
    assert (r["state"] if confirm == 201 else r.status_code) == (
        "confirmed" if confirm == 201 else confirm)
    assert api.get("/v1/work/" + rec["id"]).status_code == read
    assert api.get("/v1/tickets/%s/work" % t["number"]).status_code == read
    assert_error(wstack.dispatch_api(None).get("/v1/work/" + rec["id"]), 401)


# ----------------------------------------------------------------------------- intake follows

def test_intake_skips_an_illegal_move_and_goes_on(wstack, sub, eng, fe):
    """A visit step for a ticket cancelled meanwhile: dispatch records it (the engineer did
    it), intake's transition table refuses cancelled -> in_progress, so intake skips it with
    a log line — no error, no dead letter — and applies the next events."""
    a, rec_a = record_at(wstack, fe, eng, "arrived")
    b, rec_b = record_at(wstack, fe, eng, "arrived")
    cancelled = transition(wstack, a["number"], "cancelled", "customer withdrew")
    dead0 = wstack.db.scalar("SELECT count(*) FROM intake.consumer_dead_letters")
    mark = sub.mark()
    step(fe, rec_a["id"], "started")
    step(fe, rec_b["id"], "started")
    wait_status(wstack, b["number"], "in_progress")
    sub.wait(lambda _: record_events(sub, rec_a["id"], mark), 10, mark, "visit.started of A")
    wait_until(lambda: wstack.db.scalar("SELECT count(*) FROM intake.follow_inbox") == 0, 15,
               0.05, "intake's follow inbox to drain")
    after = intake_ticket(wstack, a["number"])
    assert after["status"] == "cancelled" and after["version"] == cancelled["version"]
    assert dispatch_history(after) == []
    assert wstack.db.scalar("SELECT count(*) FROM intake.consumer_dead_letters") == dead0
    wait_until(lambda: "cannot move to in_progress: skipped" in wstack.intake.log_text(), 10,
               0.1, "intake's log line about the skipped move")
    # and later events still flow
    step(fe, rec_b["id"], "paused", pause_reason="waiting_parts")
    wait_status(wstack, b["number"], "waiting_parts")


def test_intake_follows_assignment_and_plan(wstack, sub):
    """The whole way with the other modules: the diagnosis assignment takes the new ticket
    to diagnosing, the accepted plan to planned; the work assignment that follows changes
    no status; the work record defaults to the engineer holding the ticket."""
    agent = wstack.api("agent")
    product = agent.new_product(wstack.probe_customer["id"])
    model = product["model"]
    skill = [{"kind": "product_line", "name": model, "level": 4}]
    support = new_engineer(wstack, role="technical_support", skills=skill)
    field = new_engineer(wstack, skills=skill, regions=[product["region"]])
    t = helpers.dispatch_ticket(wstack, product_id=product["id"])
    n = t["number"]
    diagnosing = wait_status(wstack, n, "diagnosing")
    assert dispatch_history(diagnosing) == [
        ("new", "diagnosing", "ticket.assigned: diagnosis by %s" % support["name"])]

    dapi = wstack.dispatch_api("agent")
    wait_until(lambda: dapi.get("/v1/tickets/" + n).json()["status"] == "diagnosing", 15, 0.05,
               "dispatch to see the ticket diagnosing")
    in_warranty = dapi.get("/v1/tickets/" + n).json()["in_warranty"]
    eta = helpers.rfc3339(helpers.utc_now() + datetime.timedelta(days=2))
    body = {"mode": "on_site", "work": "Replace the bearing", "eta": eta}
    if not in_warranty:
        body.update(fee_cents=18900, currency="EUR", free_of_charge=False)
    diagnoser = wstack.engineer_api(support["id"])  # holds the diagnosis: proposes the plan
    plan = diagnoser.must(diagnoser.post("/v1/tickets/%s/plans" % n, json=body), 201)
    mark = sub.mark()
    dapi.must(dapi.post("/v1/plans/%s/accept" % plan["id"], json={"customer_name": "Dana"}),
              200)
    planned = wait_status(wstack, n, "planned")
    assert dispatch_history(planned)[-1] == ("diagnosing", "planned",
                                             "plan.accepted: revision 1, on_site")
    # the work assignment goes to the field engineer; the ticket stays planned
    work = sub.wait(lambda _: [m for m in sub.messages(mark)
                               if m.topic == b"ticket.assigned" and m.env.subject == n], 20,
                    mark, "the work assignment")
    assert work[0].env.ticket_assigned.assignment.engineer_id == field["id"]
    sup = wstack.dispatch_api("supervisor")
    rec = sup.must(sup.post("/v1/tickets/%s/work" % n, json={"kind": "visit"}), 201)
    assert rec["engineer_id"] == field["id"]
    wait_until(lambda: wstack.db.scalar("SELECT count(*) FROM intake.follow_inbox") == 0, 15,
               0.05, "intake's follow inbox to drain")
    assert intake_ticket(wstack, n)["version"] == planned["version"]


def test_intake_follows_external_repair(wstack, eng, fe, sup):
    """A unit sent to an outside repair station: repair.shipped -> waiting_external,
    repair.returned -> in_progress; the other repair steps change no status."""
    t, rec = record_at(wstack, fe, eng, "started")  # eng holds the ticket's work
    vendor = sup.must(sup.post("/v1/vendors", json={
        "name": unique("Nordwerk Repair"), "contact": {"email": "rma@nordwerk.example"},
        "turnaround_days": 10}), 201)
    sendout = fe.must(fe.post("/v1/tickets/%s/repairs" % t["number"], json={
        "vendor_id": vendor["id"], "rma_number": unique("RMA-")}), 201)
    fe.must(fe.post("/v1/repairs/%s/ship" % sendout["id"],
                    json={"carrier": "DHL", "tracking": "JD014600003828"}), 200)
    shipped = wait_status(wstack, t["number"], "waiting_external")
    assert dispatch_history(shipped)[-1] == (
        "in_progress", "waiting_external", "repair.shipped: unit sent to %s" % vendor["name"])
    fe.must(fe.post("/v1/repairs/%s/followup" % sendout["id"], json={"note": "called"}), 200)
    fe.must(fe.post("/v1/repairs/%s/return" % sendout["id"], json={}), 200)
    back = wait_status(wstack, t["number"], "in_progress")
    assert dispatch_history(back)[-1] == (
        "waiting_external", "in_progress", "repair.returned: unit back from %s" % vendor["name"])
    assert back["version"] == shipped["version"] + 1  # the follow-up changed nothing


def test_confirmation_does_not_resolve_a_new_ticket(wstack, eng, fe):
    """intake's table lets new -> resolved (a first-contact resolution), but a confirmed
    visit is not one: visit.confirmed resolves only from in_progress or diagnosing."""
    t = helpers.dispatch_ticket(wstack, product_id=wstack.api("agent").new_product(
        wstack.probe_customer["id"])["id"])
    helpers.put_on_ticket(wstack, eng, t["number"], kind="work")  # keeps the ticket new
    rec = new_record(fe, t["number"], eng["id"], kind="remote")
    for name, extra in (("started", {}), ("completed", {"report": report_body()})):
        step(fe, rec["id"], name, **extra)
    wait_until(lambda: wstack.db.scalar("SELECT count(*) FROM intake.follow_inbox") == 0, 15,
               0.05, "intake's follow inbox to drain")
    if intake_ticket(wstack, t["number"])["status"] != "new":
        pytest.skip("the ticket left 'new' (a diagnosis assignment took it)")
    step(fe, rec["id"], "confirmed", confirmation=confirmation_body())
    wait_until(lambda: "visit.confirmed: the ticket is new and this event moves it to "
               "resolved only from another status: skipped" in wstack.intake.log_text(), 15,
               0.05, "intake to skip the confirmation")
    after = intake_ticket(wstack, t["number"])
    assert after["status"] == "new" and dispatch_history(after) == []
    assert after["version"] == t["version"]


def test_same_status_twice_changes_nothing(wstack, eng, fe):
    """Two sessions on one ticket: the second start asks for in_progress again — no new
    version, no history row, no event."""
    t, rec = record_at(wstack, fe, eng, "started")
    first = wait_status(wstack, t["number"], "in_progress")
    other = new_record(fe, t["number"], eng["id"], kind="remote")
    step(fe, other["id"], "started")
    wait_until(lambda: wstack.db.scalar("SELECT count(*) FROM intake.follow_inbox") == 0 and
               "visit.started: the ticket is in_progress already" in wstack.intake.log_text(),
               15, 0.05, "intake to see the second start")
    again = intake_ticket(wstack, t["number"])
    assert again["version"] == first["version"]
    assert dispatch_history(again) == dispatch_history(first)


def test_changes_queued_together_apply_in_order(wstack, eng, fe):
    """Changes queued in one transaction reach the applier together: each is checked
    against its ticket as the change before it left it — two moves of one ticket both land,
    in order, and a third asking for the status the ticket then has changes nothing — and
    every applied change is one new version, one history row and one event."""
    a, _ = record_at(wstack, fe, eng, "started")
    b, _ = record_at(wstack, fe, eng, "arrived")
    a0, b0 = wait_status(wstack, a["number"], "in_progress"), wait_status(wstack, b["number"],
                                                                          "planned")
    db = wstack.db
    events0 = db.scalar("SELECT count(*) FROM intake.outbox")
    changes = [(a, "visit.paused", "waiting_parts", "visit.paused: batch one"),
               (b, "visit.started", "in_progress", "visit.started: batch two"),
               (a, "visit.resumed", "in_progress", "visit.resumed: batch three"),
               (a, "visit.started", "in_progress", "visit.started: batch four")]
    sql = "; ".join("SELECT intake.follow_enqueue(%s, 'aftercare/dispatch', %s, %s, %s, %s, "
                    "NULL, %s, '')" for _ in changes)
    params = []
    for t, topic, to, reason in changes:
        params += [str(uuid.uuid4()), topic, t["id"], t["number"], to, reason]
    db.rows(sql, params)  # one implicit transaction: one NOTIFY, one take
    wait_until(lambda: db.scalar("SELECT count(*) FROM intake.follow_inbox") == 0, 15, 0.05,
               "the applier to take the four changes")
    a1, b1 = intake_ticket(wstack, a["number"]), intake_ticket(wstack, b["number"])
    assert a1["status"] == "in_progress" and a1["version"] == a0["version"] + 2
    assert dispatch_history(a1)[-2:] == [
        ("in_progress", "waiting_parts", "visit.paused: batch one"),
        ("waiting_parts", "in_progress", "visit.resumed: batch three")]
    assert b1["status"] == "in_progress" and b1["version"] == b0["version"] + 1
    assert dispatch_history(b1)[-1] == ("planned", "in_progress", "visit.started: batch two")
    assert db.scalar("SELECT count(*) FROM intake.outbox") == events0 + 3
    assert "visit.started: the ticket is in_progress already" in wstack.intake.log_text()


def test_intake_catches_up_after_kill(wstack, eng, fe):
    """intake killed (-9) while dispatch records steps: after the restart its consumer
    replays dispatch's events from its checkpoint and applies each change once."""
    t, rec = record_at(wstack, fe, eng, "arrived")
    wstack.intake.stop(signal.SIGKILL)
    try:
        step(fe, rec["id"], "started")
        step(fe, rec["id"], "paused", pause_reason="waiting_parts")
        step(fe, rec["id"], "resumed")
    finally:
        wstack.intake.start()
        wstack.intake.wait_ready()
    ticket = wait_status(wstack, t["number"], "in_progress")
    wait_until(lambda: len(dispatch_history(intake_ticket(wstack, t["number"]))) >= 3, 20,
               0.05, "the three changes")
    ticket = intake_ticket(wstack, t["number"])
    assert [h[:2] for h in dispatch_history(ticket)] == [
        ("planned", "in_progress"), ("in_progress", "waiting_parts"),
        ("waiting_parts", "in_progress")]
    # once more: a second restart replays nothing twice
    wstack.intake.restart()
    step(fe, rec["id"], "completed", report=report_body())
    step(fe, rec["id"], "confirmed", confirmation=confirmation_body())
    ticket = wait_status(wstack, t["number"], "resolved")
    assert len(dispatch_history(ticket)) == 4


def enqueue(stack, ticket, topic, to, reason):
    """Queues a change as intake's consumer does (intake.follow_enqueue, with its NOTIFY)."""
    import uuid
    stack.db.rows("SELECT intake.follow_enqueue(%s, 'aftercare/dispatch', %s, %s, %s, %s, "
                  "NULL, %s, '')", (str(uuid.uuid4()), topic, ticket["id"], ticket["number"],
                                    to, reason))


def test_a_failing_change_is_set_aside(wstack, eng, fe):
    """A change that keeps failing (here: a trigger refuses its history row) is tried 5
    times, then set aside with its error; the changes queued behind it (the applier keeps
    the order) wait those few seconds, never for ever. A change for a ticket intake does
    not have is skipped. Clearing failed_at retries the set-aside one."""
    a, _ = record_at(wstack, fe, eng, "started")
    b, _ = record_at(wstack, fe, eng, "arrived")
    db = wstack.db
    db.rows("CREATE FUNCTION public.test_refuse_poison() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN IF NEW.reason = 'poison' THEN RAISE EXCEPTION 'poisoned'; END IF; "
            "RETURN NEW; END $$")
    db.rows("CREATE TRIGGER test_refuse_poison BEFORE INSERT ON intake.ticket_status_history "
            "FOR EACH ROW EXECUTE FUNCTION public.test_refuse_poison()")
    try:
        enqueue(wstack, a, "visit.paused", "waiting_parts", "poison")
        enqueue(wstack, {"id": "00000000-0000-4000-8000-000000000001",
                         "number": "SV-20990101-000001"}, "visit.started", "in_progress", "x")
        enqueue(wstack, b, "visit.started", "in_progress", "visit.started: queued by hand")
        wait_status(wstack, b["number"], "in_progress", timeout=60)
        row = db.rows("SELECT attempts, last_error, failed_at FROM intake.follow_inbox "
                      "WHERE ticket_id = %s", (a["id"],))
        assert len(row) == 1 and row[0]["attempts"] == 5 and row[0]["failed_at"] is not None
        assert "poisoned" in row[0]["last_error"]
        assert intake_ticket(wstack, a["number"])["status"] == "in_progress"
        log = wstack.intake.log_text()
        assert "failed 5 times: set aside" in log
        assert "for a ticket intake does not have: skipped" in log
    finally:
        db.rows("DROP TRIGGER test_refuse_poison ON intake.ticket_status_history")
        db.rows("DROP FUNCTION public.test_refuse_poison()")
    # clearing failed_at retries it
    db.rows("UPDATE intake.follow_inbox SET failed_at = NULL WHERE ticket_id = %s", (a["id"],))
    db.rows("NOTIFY intake_follow")
    wait_status(wstack, a["number"], "waiting_parts")
    assert db.scalar("SELECT count(*) FROM intake.follow_inbox") == 0


def test_no_ping_pong(wstack, eng, fe):
    """Dispatch follows intake and intake follows dispatch: after a full visit both streams
    come to rest (no event answers the other's forever)."""
    t, rec = record_at(wstack, fe, eng, "confirmed")
    wait_status(wstack, t["number"], "resolved")
    dapi = wstack.dispatch_api("agent")
    wait_until(lambda: dapi.get("/v1/tickets/" + t["number"]).json()["status"] == "resolved", 15,
               0.05, "dispatch to see the resolution")

    def counts():
        return (wstack.db.scalar("SELECT count(*) FROM intake.outbox"),
                wstack.db.scalar("SELECT count(*) FROM dispatch.outbox"),
                wstack.db.scalar("SELECT count(*) FROM intake.ticket_status_history"))
    time.sleep(1.0)
    first = counts()
    time.sleep(2.5)
    assert counts() == first


def test_follow_none(wstack, eng, fe):
    """AC_INTAKE_FOLLOW=none: no consumer — dispatch's events wait in its outbox; back on
    the default, intake picks them up from its checkpoint."""
    t, rec = record_at(wstack, fe, eng, "arrived")
    wstack.intake.env["AC_INTAKE_FOLLOW"] = "none"
    try:
        wstack.intake.restart()
        step(fe, rec["id"], "started")
        import requests
        text = requests.get(wstack.intake.url + "/metrics", timeout=5).text
        assert "aftercare_intake_consumer_next_sequence" not in text
        time.sleep(1.0)
        assert intake_ticket(wstack, t["number"])["status"] == "planned"
    finally:
        wstack.intake.env.pop("AC_INTAKE_FOLLOW", None)
        wstack.intake.restart()
    wait_status(wstack, t["number"], "in_progress")


def test_intake_follows_dispatch_by_default(wstack):
    """AC_INTAKE_FOLLOW defaults to aftercare/dispatch: the helpers do not set it, and
    intake's consumer has a checkpoint for dispatch's stream."""
    assert "AC_INTAKE_FOLLOW" not in wstack.intake.env
    wait_until(lambda: wstack.db.scalar(
        "SELECT last_sequence FROM intake.consumer_checkpoints WHERE source = %s",
        (helpers.DISPATCH_SOURCE,)) is not None, 20, 0.1, "intake's checkpoint for dispatch")
    import requests
    text = requests.get(wstack.intake.url + "/metrics", timeout=5).text
    assert 'aftercare_intake_consumer_next_sequence{source="aftercare/dispatch"}' in text
    assert 'aftercare_intake_follow_changes_total{outcome="applied"}' in text


def test_an_engineer_records_only_their_own_work(wstack, eng, fe):
    """An engineer's token opens records only for that engineer (without engineer_id: a
    record for that engineer) and only on tickets the engineer holds, and steps only
    that engineer's records; a token that names no engineer records none; a supervisor
    records anyone's. A refusal changes nothing."""
    other = new_engineer(wstack)
    other_api = wstack.engineer_api(other["id"])
    unlinked = wstack.dispatch_api("engineer")
    sup = wstack.dispatch_api("supervisor")
    t = planned_ticket(wstack)
    n = t["number"]
    helpers.put_on_ticket(wstack, eng, n, kind="work")
    rec = new_record(fe, n, eng["id"])
    own = fe.must(fe.post("/v1/tickets/%s/work" % n, json={"kind": "remote"}), 201)
    assert own["engineer_id"] == eng["id"]
    records0 = wstack.db.scalar("SELECT count(*) FROM dispatch.work_records")
    before = state_of(wstack, rec["id"])
    assert_error(other_api.post("/v1/tickets/%s/work" % n,
                                json={"kind": "visit", "engineer_id": eng["id"]}),
                 403, "not_your_work", "engineer_id")
    assert_error(step(other_api, rec["id"], "travel", status=403), 403, "not_your_work")
    err = assert_error(other_api.post("/v1/tickets/%s/work" % n, json={"kind": "visit"}), 403,
                       "not_your_ticket")
    assert other["id"] in err["message"] and n in err["message"]
    assert_error(unlinked.post("/v1/tickets/%s/work" % n,
                               json={"kind": "visit", "engineer_id": eng["id"]}),
                 403, "forbidden")
    assert_error(step(unlinked, rec["id"], "travel", status=403), 403, "forbidden")
    assert wstack.db.scalar("SELECT count(*) FROM dispatch.work_records") == records0
    assert state_of(wstack, rec["id"]) == before
    # the engineer steps their own; a supervisor steps anyone's and opens one for the other
    assert step(fe, rec["id"], "travel")["state"] == "travel"
    assert step(sup, rec["id"], "arrived")["state"] == "arrived"
    theirs = new_record(sup, n, other["id"])
    assert step(other_api, theirs["id"], "travel")["state"] == "travel"
