"""Dispatch, item 5 of issue 4: external repair (docs/dispatch-api.md, "External repair").

Vendors (create, read, list, PATCH with versions, roles, events) and send-outs of a
ticket's unit: prepared -> shipped -> (follow-ups) -> returned -> inspected pass/fail, a
failed one re-routed to another vendor; the events on the bus; the vendor due date as an
SLA reference deadline (when the SLA engine's tables exist); and every kind of bad input
answered with a clear error while nothing changes (rows, history, outbox)."""

import concurrent.futures
import datetime
import signal

import pytest

import helpers
from helpers import assert_error, parse_rfc3339, rfc3339, unique, utc_now, wait_until

MISSING_TICKET = "SV-20990101-000001"
MISSING_ID = "00000000-0000-4000-8000-000000000000"


@pytest.fixture(scope="module")
def rstack(tmp_root):
    from conftest import _start_stack, _stop_stack
    stack = _start_stack(tmp_root, "repairs", dispatch=True)
    stack.holder, stack.holder_api = helpers.ticket_holder(stack, "depot_technician")
    yield stack
    _stop_stack(stack)


@pytest.fixture(scope="module")
def sub(rstack):
    return rstack.subscriber()  # every topic; dispatch's are picked out below


@pytest.fixture
def sup(rstack):
    return rstack.dispatch_api("supervisor")


@pytest.fixture
def eng(rstack):
    """The depot technician every new_ticket() is assigned to, under their own token."""
    return rstack.holder_api


def vendor_body(**over):
    body = {"name": unique("Repair station"),
            "contact": {"name": "Service desk", "phone": "+49 40 555 0100",
                        "email": "rma@station.example"},
            "address": "Hafenstrasse 1, Hamburg", "turnaround_days": 10}
    for k, v in over.items():
        if v is helpers.DROP:
            body.pop(k, None)
        else:
            body[k] = v
    return body


def new_vendor(sup, **over):
    return sup.must(sup.post("/v1/vendors", json=vendor_body(**over)), 201)


def new_ticket(stack):
    t = helpers.dispatch_ticket(stack)
    helpers.put_on_ticket(stack, stack.holder, t["number"])
    return t


def opened(t):
    """When ticket t was opened: the earliest ship date it accepts."""
    return parse_rfc3339(t["created_at"])


def iso(dt):
    """RFC 3339 with microseconds."""
    return dt.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rma():
    return unique("RMA").upper()


def prepare(api, number, vendor, **over):
    body = {"vendor_id": vendor["id"], "rma_number": rma()}
    body.update(over)
    return api.must(api.post("/v1/tickets/%s/repairs" % number, json=body), 201)


def step(api, sendout_id, what, body, status=200):
    return api.must(api.post("/v1/repairs/%s/%s" % (sendout_id, what), json=body), status)


def ship(api, s, **over):
    body = {"carrier": "DHL", "tracking": "JD014600003828"}
    body.update(over)
    return step(api, s["id"], "ship", body)


def dispatch_events(sub, subject, prefix):
    """dispatch's events about subject (a ticket number, a vendor id), arrival order."""
    return [m for m in sub.messages()
            if m.env is not None and m.env.source == helpers.DISPATCH_SOURCE
            and m.env.subject == subject and m.topic.decode().startswith(prefix)]


def wait_events(sub, subject, prefix, count):
    return wait_until(lambda: (lambda evs: evs if len(evs) >= count else None)(
        dispatch_events(sub, subject, prefix)), 15, 0.05,
        "%d %s* events about %s" % (count, prefix, subject))


def snapshot(stack, sendout_id=None):
    """What a refused request must leave alone: the send-outs, their history, vendors, our
    events in the outbox, and the send-out as the API shows it."""
    db = stack.db
    snap = {
        "sendouts": db.rows("SELECT * FROM dispatch.repair_sendouts ORDER BY seq"),
        "steps": db.scalar("SELECT count(*) FROM dispatch.repair_steps"),
        "vendors": db.rows("SELECT * FROM dispatch.vendors ORDER BY seq"),
        "outbox": db.scalar("SELECT count(*) FROM dispatch.outbox "
                            "WHERE topic LIKE 'repair.%%' OR topic LIKE 'vendor.%%'"),
        "pending": db.scalar("SELECT count(*) FROM dispatch.pending_events"),
    }
    if sendout_id:
        r = stack.dispatch_api("agent").get("/v1/repairs/" + sendout_id)
        snap["doc"] = r.json() if r.status_code == 200 else r.status_code
    return snap


# ----------------------------------------------------------------------------- vendors

def vendor_outbox(db):
    return db.scalar("SELECT count(*) FROM dispatch.outbox WHERE topic LIKE 'vendor.%%'")


def test_vendor_create_get_list_patch_and_events(rstack, sup, sub):
    out0 = vendor_outbox(rstack.db)
    body = vendor_body()
    v = sup.must(sup.post("/v1/vendors", json=body), 201)
    assert helpers.is_uuid(v["id"]) and v["version"] == 1 and v["active"] is True
    for k in ("name", "contact", "address", "turnaround_days"):
        assert v[k] == body[k], k
    for role in ("agent", "engineer", "integration", "supervisor"):
        api = rstack.dispatch_api(role)
        assert api.must(api.get("/v1/vendors/" + v["id"]), 200) == v

    p = sup.must(sup.patch("/v1/vendors/" + v["id"],
                           json={"expected_version": 1, "turnaround_days": 5,
                                 "contact": {"email": None}}), 200)
    assert p["version"] == 2 and p["turnaround_days"] == 5
    assert p["contact"] == {"name": "Service desk", "phone": "+49 40 555 0100"}
    # nothing to change: same version, no event
    same = sup.must(sup.patch("/v1/vendors/" + v["id"], json={"turnaround_days": 5}), 200)
    assert same == p
    assert_error(sup.patch("/v1/vendors/" + v["id"], json={"expected_version": 1, "active": False}),
                 409, "version_conflict", "expected_version")

    evs = wait_events(sub, v["id"], "vendor.", 2)
    assert [m.topic for m in evs] == [b"vendor.created", b"vendor.updated"]
    created, updated = evs[0].env, evs[1].env
    assert created.subject == created.partition_key == v["id"]
    assert created.ticket_version == 1 and updated.ticket_version == 2
    assert created.type == "aftercare.vendor.created.v1"
    cv = created.vendor_changed.vendor
    assert cv.name == body["name"] and cv.turnaround_days == 10 and cv.active
    assert cv.contact.email == "rma@station.example" and cv.created_at == v["created_at"]
    assert list(updated.vendor_changed.changed_fields) == ["contact", "turnaround_days"]
    assert updated.vendor_changed.vendor.contact.email == ""
    assert vendor_outbox(rstack.db) == out0 + 2  # the no-op PATCH published nothing


def test_vendor_list_filters_and_pages(sup):
    a = new_vendor(sup)
    b = new_vendor(sup, active=False)
    c = new_vendor(sup)
    page = sup.must(sup.get("/v1/vendors", params={"limit": 2}), 200)
    assert [x["id"] for x in page["items"]] == [c["id"], b["id"]]
    assert page["next_cursor"]
    rest = sup.must(sup.get("/v1/vendors", params={"limit": 2, "cursor": page["next_cursor"]}),
                    200)
    assert rest["items"][0]["id"] == a["id"]
    active = sup.must(sup.get("/v1/vendors", params={"active": "true", "limit": 200}), 200)
    ids = {x["id"] for x in active["items"]}
    assert a["id"] in ids and c["id"] in ids and b["id"] not in ids
    inactive = sup.must(sup.get("/v1/vendors", params={"active": "false"}), 200)
    assert b["id"] in {x["id"] for x in inactive["items"]}
    for q, field in (({"active": "yes"}, "active"), ({"limit": "0"}, "limit"),
                     ({"limit": "201"}, "limit"), ({"cursor": "x"}, "cursor")):
        assert_error(sup.get("/v1/vendors", params=q), 422, "invalid_field", field)


BAD_VENDORS = [
    ("no name", {"name": helpers.DROP}, 422, "missing_field", "name"),
    ("empty name", {"name": ""}, 422, "invalid_field", "name"),
    ("blank name", {"name": "   "}, 422, "invalid_field", "name"),
    ("no turnaround", {"turnaround_days": helpers.DROP}, 422, "missing_field", "turnaround_days"),
    ("zero turnaround", {"turnaround_days": 0}, 422, "invalid_field", "turnaround_days"),
    ("fractional turnaround", {"turnaround_days": 1.5}, 422, "invalid_field", "turnaround_days"),
    ("turnaround as text", {"turnaround_days": "10"}, 422, "invalid_field", "turnaround_days"),
    ("bad email", {"contact": {"email": "nope"}}, 422, "invalid_field", "contact.email"),
    ("bad phone", {"contact": {"phone": "call us"}}, 422, "invalid_field", "contact.phone"),
    ("contact without phone or email", {"contact": {"name": "Desk"}}, 422, "missing_field",
     "contact"),
    ("unknown contact part", {"contact": {"fax": "1"}}, 422, "unknown_field", "contact.fax"),
    ("active as text", {"active": "yes"}, 422, "invalid_field", "active"),
    ("unknown field", {"rating": 5}, 422, "unknown_field", "rating"),
    ("read-only field", {"version": 3}, 422, "unknown_field", "version"),
]


@pytest.mark.parametrize("what,over,status,code,field", BAD_VENDORS,
                         ids=[b[0] for b in BAD_VENDORS])
def test_bad_vendor_changes_nothing(rstack, sup, what, over, status, code, field):
    before = snapshot(rstack)
    assert_error(sup.post("/v1/vendors", json=vendor_body(**over)), status, code, field)
    assert snapshot(rstack) == before


def test_bad_vendor_patch_and_duplicate_name(rstack, sup):
    v = new_vendor(sup)
    other = new_vendor(sup)
    before = snapshot(rstack)
    path = "/v1/vendors/" + v["id"]
    assert_error(sup.patch(path, json={"name": other["name"].upper()}), 409, "conflict", "name")
    assert_error(sup.post("/v1/vendors", json=vendor_body(name=other["name"])), 409, "conflict",
                 "name")
    assert_error(sup.patch(path, json={"contact": {"phone": None, "email": None}}), 422,
                 "missing_field", "contact")
    assert_error(sup.patch(path, json={"turnaround_days": 400}), 422, "invalid_field",
                 "turnaround_days")
    assert_error(sup.patch(path, json={"expected_version": 0}), 422, "invalid_field",
                 "expected_version")
    assert_error(sup.patch(path, json={"id": MISSING_ID}), 422, "unknown_field", "id")
    assert_error(sup.patch("/v1/vendors/" + MISSING_ID, json={"active": False}), 404, "not_found")
    assert_error(sup.get("/v1/vendors/not-an-id"), 404, "not_found")
    assert snapshot(rstack) == before


def test_vendor_roles(rstack, sup):
    v = new_vendor(sup)
    before = snapshot(rstack)
    for role in ("agent", "engineer", "warehouse", "integration"):
        api = rstack.dispatch_api(role)
        assert_error(api.post("/v1/vendors", json=vendor_body()), 403, "forbidden")
        assert_error(api.patch("/v1/vendors/" + v["id"], json={"active": False}), 403)
    assert_error(rstack.dispatch_api("warehouse").get("/v1/vendors"), 403)
    assert_error(rstack.dispatch_api(None).get("/v1/vendors/" + v["id"]), 401)
    assert snapshot(rstack) == before
    admin = rstack.dispatch_api("admin")
    assert admin.must(admin.patch("/v1/vendors/" + v["id"], json={"active": False}),
                      200)["active"] is False


# ----------------------------------------------------------------------------- send-outs

def test_sendout_lifecycle_with_events(rstack, sup, eng, sub):
    vendor = new_vendor(sup, turnaround_days=7)
    t = new_ticket(rstack)
    s = prepare(eng, t["number"], vendor)
    assert s["state"] == "prepared" and s["ticket_number"] == t["number"]
    assert s["vendor_id"] == vendor["id"] and s["vendor_name"] == vendor["name"]
    assert s["shipped_at"] is None and s["vendor_due_at"] is None and s["version"] == 1
    assert [h["step"] for h in s["history"]] == ["created"]

    shipped_at = opened(t)
    s = ship(eng, s, shipped_at=iso(shipped_at))
    assert s["state"] == "shipped" and s["carrier"] == "DHL"
    assert s["tracking"] == "JD014600003828"
    assert parse_rfc3339(s["shipped_at"]) == shipped_at
    # default due date: shipped + the vendor's turnaround
    assert parse_rfc3339(s["vendor_due_at"]) == shipped_at + datetime.timedelta(days=7)
    assert s["is_overdue"] is False

    new_due = shipped_at + datetime.timedelta(days=12)
    s = step(eng, s["id"], "followup", {"note": "Vendor waits for a spare board",
                                        "vendor_due_at": iso(new_due)})
    s = step(sup, s["id"], "followup", {"note": "Board arrived, repair under way"})
    assert s["followups"] == 2 and parse_rfc3339(s["vendor_due_at"]) == new_due

    s = step(eng, s["id"], "return", {"note": "Received in the depot"})
    assert s["state"] == "returned" and parse_rfc3339(s["returned_at"]) <= utc_now()
    s = step(eng, s["id"], "inspect", {"result": "pass"})
    assert s["state"] == "passed" and s["inspection"] == "pass" and s["inspected_at"]
    assert s["version"] == 6
    assert [h["step"] for h in s["history"]] == [
        "created", "shipped", "followed_up", "followed_up", "returned", "inspected"]
    assert s["history"][2]["note"] == "Vendor waits for a spare board"
    assert s["history"][0]["actor"] and s["created_by"] == s["history"][0]["actor"]
    agent = rstack.dispatch_api("agent")
    assert agent.must(agent.get("/v1/repairs/" + s["id"]), 200) == s
    listed = agent.must(agent.get("/v1/tickets/%s/repairs" % t["number"]), 200)
    assert [x["id"] for x in listed["items"]] == [s["id"]]

    evs = wait_events(sub, t["number"], "repair.", 6)
    assert [m.topic.decode() for m in evs] == [
        "repair.created", "repair.shipped", "repair.followed_up", "repair.followed_up",
        "repair.returned", "repair.inspected"]
    for m in evs:
        e = m.env
        assert e.subject == t["number"] and e.partition_key == t["id"]
        assert e.type == "aftercare.%s.v1" % m.topic.decode()
        assert e.WhichOneof("payload") == "repair_step"
        assert e.repair_step.ticket.number == t["number"]
        assert e.repair_step.sendout.id == s["id"]
        assert e.repair_step.sendout.vendor_name == vendor["name"]
    states = [m.env.repair_step.sendout.state for m in evs]
    assert states == ["prepared", "shipped", "shipped", "shipped", "returned", "passed"]
    shipped_ev = evs[1].env.repair_step.sendout
    assert shipped_ev.tracking == "JD014600003828" and shipped_ev.carrier == "DHL"
    assert parse_rfc3339(shipped_ev.vendor_due_at) == shipped_at + datetime.timedelta(days=7)
    assert evs[2].env.repair_step.note == "Vendor waits for a spare board"
    assert parse_rfc3339(evs[2].env.repair_step.sendout.vendor_due_at) == new_due
    assert evs[5].env.repair_step.sendout.inspection == "pass"
    assert [m.env.repair_step.sendout.version for m in evs] == [1, 2, 3, 4, 5, 6]


def test_due_date_given_when_prepared_is_kept(rstack, sup, eng):
    vendor = new_vendor(sup)
    t = new_ticket(rstack)
    due = (utc_now() + datetime.timedelta(days=3)).replace(microsecond=0)
    s = prepare(eng, t["number"], vendor, vendor_due_at=rfc3339(due))
    assert parse_rfc3339(s["vendor_due_at"]) == due
    s = ship(eng, s)
    assert parse_rfc3339(s["vendor_due_at"]) == due
    # an offset is honoured and stored as UTC
    s2 = step(eng, s["id"], "followup", {"note": "asked", "vendor_due_at":
                                         "2099-05-01T12:00:00+02:00"})
    assert s2["vendor_due_at"].startswith("2099-05-01T10:00:00")


def test_failed_inspection_is_rerouted_to_another_vendor(rstack, sup, eng, sub):
    first, second = new_vendor(sup), new_vendor(sup, turnaround_days=3)
    t = new_ticket(rstack)
    s = prepare(eng, t["number"], first)
    ship(eng, s)
    step(eng, s["id"], "return", {})
    failed = step(eng, s["id"], "inspect", {"result": "fail", "note": "Still overheats"})
    assert failed["state"] == "failed" and failed["inspection_note"] == "Still overheats"
    new_rma = rma()
    n = step(eng, s["id"], "reroute", {"vendor_id": second["id"], "rma_number": new_rma,
                                       "reason": "First station cannot source the part"}, 201)
    assert n["id"] != s["id"] and n["state"] == "prepared"
    assert n["vendor_id"] == second["id"] and n["rma_number"] == new_rma
    assert n["previous_sendout_id"] == s["id"]
    old = eng.must(eng.get("/v1/repairs/" + s["id"]), 200)
    assert old["state"] == "rerouted" and old["next_sendout_id"] == n["id"]
    assert old["reroute_reason"] == "First station cannot source the part"
    assert old["history"][-1]["step"] == "rerouted"

    # the new send-out runs its own course
    n = ship(eng, n)
    assert parse_rfc3339(n["vendor_due_at"]) == parse_rfc3339(n["shipped_at"]) + \
        datetime.timedelta(days=3)
    listed = eng.must(eng.get("/v1/tickets/%s/repairs" % t["number"]), 200)
    assert [x["id"] for x in listed["items"]] == [s["id"], n["id"]]

    evs = wait_events(sub, t["number"], "repair.", 7)
    assert [m.topic.decode() for m in evs] == [
        "repair.created", "repair.shipped", "repair.returned", "repair.inspected",
        "repair.rerouted", "repair.created", "repair.shipped"]
    assert evs[3].env.repair_step.sendout.inspection == "fail"
    assert evs[3].env.repair_step.note == "Still overheats"
    evs = evs[4:]
    r = evs[0].env.repair_step
    assert r.sendout.id == s["id"] and r.sendout.state == "rerouted"
    assert r.note == "First station cannot source the part"
    c = evs[1].env.repair_step.sendout
    assert c.id == n["id"] and c.previous_sendout_id == s["id"] and c.vendor_id == second["id"]


def sla_reference_table(db):
    """(table, reference column, due column) of the SLA engine's deadlines, or None while
    the SLA migration (004) is not there."""
    cols = {r["column_name"] for r in db.rows(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = 'dispatch' AND table_name = 'sla_deadlines'")}
    if not cols:
        return None
    ref = next((c for c in ("reference_id", "ref_id", "sendout_id") if c in cols), None)
    due = next((c for c in ("due_at", "deadline_at", "fires_at") if c in cols), None)
    if not ref or not due:
        pytest.fail("dispatch.sla_deadlines has no reference/due column I know: %s"
                    % sorted(cols))
    return ref, due


def test_vendor_due_date_is_an_sla_deadline(rstack, sup, eng):
    """With the SLA engine's migration: shipping arms a 'vendor_due' deadline keyed by the
    send-out, a follow-up with a new date moves it, the return disarms it."""
    found = sla_reference_table(rstack.db)
    if found is None:
        pytest.skip("dispatch.sla_deadlines does not exist (SLA migration 004 not there yet): "
                    "the vendor due date is stored on the send-out only")
    ref, due_col = found
    vendor = new_vendor(sup)
    t = new_ticket(rstack)
    s = ship(eng, prepare(eng, t["number"], vendor))

    def armed():
        return rstack.db.rows('SELECT * FROM dispatch.sla_deadlines WHERE "%s" = %%s' % ref,
                              (s["id"],))
    rows = armed()
    assert rows, "shipping armed no deadline for send-out %s" % s["id"]
    assert any(r[due_col] == parse_rfc3339(s["vendor_due_at"]) for r in rows), rows
    assert all(r.get("target", "vendor_due") == "vendor_due" and
               r.get("ticket_id", t["id"]) == t["id"] for r in rows), rows
    new_due = parse_rfc3339(s["vendor_due_at"]) + datetime.timedelta(days=2)
    step(eng, s["id"], "followup", {"note": "later", "vendor_due_at": iso(new_due)})
    assert any(r[due_col] == new_due for r in armed()), armed()
    step(eng, s["id"], "return", {})
    live = [r for r in armed() if r.get("state") not in ("cancelled", "fired")]
    assert not live, "the return left the vendor deadline armed: %r" % live


# ----------------------------------------------------------------------------- bad input

@pytest.fixture
def shipped(rstack, sup, eng):
    """A vendor, a ticket, and a shipped send-out."""
    vendor = new_vendor(sup)
    t = new_ticket(rstack)
    s = prepare(eng, t["number"], vendor)
    s = ship(eng, s, shipped_at=iso(opened(t)))
    return vendor, t, s


def test_bad_creates_change_nothing(rstack, sup, eng):
    vendor = new_vendor(sup)
    inactive = new_vendor(sup, active=False)
    t = new_ticket(rstack)
    path = "/v1/tickets/%s/repairs" % t["number"]
    ok = {"vendor_id": vendor["id"], "rma_number": rma()}
    before = snapshot(rstack)
    cases = [
        (MISSING_TICKET, ok, 404, "not_found", None),
        ("not-a-number", ok, 404, "not_found", None),
        (t["number"], {"vendor_id": MISSING_ID, "rma_number": rma()}, 422, "unknown_reference",
         "vendor_id"),
        (t["number"], {"vendor_id": inactive["id"], "rma_number": rma()}, 409, "conflict",
         "vendor_id"),
        (t["number"], {"vendor_id": "v-1", "rma_number": rma()}, 422, "invalid_field",
         "vendor_id"),
        (t["number"], {"vendor_id": vendor["id"]}, 422, "missing_field", "rma_number"),
        (t["number"], {"rma_number": rma()}, 422, "missing_field", "vendor_id"),
        (t["number"], dict(ok, rma_number="R#1 2"), 422, "invalid_field", "rma_number"),
        (t["number"], dict(ok, rma_number="RM"), 422, "invalid_field", "rma_number"),
        (t["number"], dict(ok, rma_number="-RMA1"), 422, "invalid_field", "rma_number"),
        (t["number"], dict(ok, rma_number="R" * 41), 422, "invalid_field", "rma_number"),
        (t["number"], dict(ok, rma_number=42), 422, "invalid_field", "rma_number"),
        (t["number"], dict(ok, vendor_due_at="tomorrow"), 422, "invalid_field", "vendor_due_at"),
        (t["number"], dict(ok, vendor_due_at="2026-12-01T10:00:00"), 422, "invalid_field",
         "vendor_due_at"),
        (t["number"], dict(ok, vendor_due_at="0000-01-01T00:00:00+01:00"), 422, "invalid_field",
         "vendor_due_at"),
        (t["number"], dict(ok, vendor_due_at="2026-02-30T10:00:00Z"), 422, "invalid_field",
         "vendor_due_at"),
        (t["number"], dict(ok, carrier="DHL"), 422, "unknown_field", "carrier"),
    ]
    for number, body, status, code, field in cases:
        assert_error(eng.post("/v1/tickets/%s/repairs" % number, json=body), status, code, field)
    assert snapshot(rstack) == before
    # a duplicate RMA at the same vendor, and a second unit while one is on its way
    s = prepare(eng, t["number"], vendor, rma_number=ok["rma_number"])
    t2 = new_ticket(rstack)
    before = snapshot(rstack, s["id"])
    assert_error(eng.post("/v1/tickets/%s/repairs" % t2["number"], json=ok), 409, "conflict",
                 "rma_number")
    assert_error(eng.post(path, json={"vendor_id": vendor["id"], "rma_number": rma()}), 409,
                 "conflict")
    assert snapshot(rstack, s["id"]) == before


def test_illegal_step_order_changes_nothing(rstack, sup, eng):
    vendor, other = new_vendor(sup), new_vendor(sup)
    t = new_ticket(rstack)
    s = prepare(eng, t["number"], vendor)
    sid = s["id"]

    def refused(what, body, status=409, code="illegal_transition", field=None):
        before = snapshot(rstack, sid)
        err = assert_error(eng.post("/v1/repairs/%s/%s" % (sid, what), json=body), status, code,
                           field)
        assert snapshot(rstack, sid) == before, "%s changed something" % what
        return err

    # prepared: no return, follow-up, inspection or re-route yet
    assert "not been shipped" in refused("return", {})["message"]
    refused("followup", {"note": "any news?"})
    assert "not been returned" in refused("inspect", {"result": "pass"})["message"]
    refused("reroute", {"vendor_id": other["id"], "rma_number": rma(), "reason": "x"})
    ship(eng, s)
    # shipped: not again, no inspection before the return
    refused("ship", {"carrier": "UPS", "tracking": "1Z999AA10123456784"})
    assert "not been returned" in refused("inspect", {"result": "fail", "note": "x"})["message"]
    step(eng, sid, "return", {})
    refused("return", {})
    refused("followup", {"note": "late"})
    step(eng, sid, "inspect", {"result": "pass"})
    # passed: a good repair is not re-routed, nor inspected twice
    err = refused("reroute", {"vendor_id": other["id"], "rma_number": rma(), "reason": "x"})
    assert "passed" in err["message"]
    refused("inspect", {"result": "fail", "note": "changed my mind"})


def test_bad_ship_input_changes_nothing(rstack, sup, eng):
    vendor = new_vendor(sup)
    t = new_ticket(rstack)
    s = prepare(eng, t["number"], vendor)
    before = snapshot(rstack, s["id"])
    path = "/v1/repairs/%s/ship" % s["id"]
    now = utc_now()
    ok = {"carrier": "DHL", "tracking": "JD014600003828"}
    cases = [
        ({"tracking": "JD014600003828"}, 422, "missing_field", "carrier"),
        ({"carrier": "DHL"}, 422, "missing_field", "tracking"),
        (dict(ok, tracking="JD-0146"), 422, "invalid_field", "tracking"),
        (dict(ok, tracking="12345"), 422, "invalid_field", "tracking"),
        (dict(ok, tracking="JD 0146 0000 3828"), 422, "invalid_field", "tracking"),
        (dict(ok, tracking="9" * 41), 422, "invalid_field", "tracking"),
        (dict(ok, carrier=""), 422, "invalid_field", "carrier"),
        (dict(ok, shipped_at="yesterday"), 422, "invalid_field", "shipped_at"),
        (dict(ok, shipped_at=rfc3339(now + datetime.timedelta(hours=1))), 422, "invalid_field",
         "shipped_at"),
        (dict(ok, shipped_at="2001-01-01T00:00:00Z"), 422, "invalid_field", "shipped_at"),
        # due date before (or at) the ship date
        (dict(ok, vendor_due_at=rfc3339(now - datetime.timedelta(days=1))), 422, "invalid_field",
         "vendor_due_at"),
        (dict(ok, shipped_at=iso(opened(t)),
              vendor_due_at=iso(opened(t))), 422, "invalid_field", "vendor_due_at"),
        # shipped before the ticket existed
        (dict(ok, shipped_at=iso(opened(t) - datetime.timedelta(hours=1))), 422,
         "invalid_field", "shipped_at"),
        (dict(ok, note="x"), 422, "unknown_field", "note"),
    ]
    for body, status, code, field in cases:
        assert_error(eng.post(path, json=body), status, code, field)
    assert_error(eng.post("/v1/repairs/%s/ship" % MISSING_ID, json=ok), 404, "not_found")
    assert_error(eng.post("/v1/repairs/nope/ship", json=ok), 404, "not_found")
    assert snapshot(rstack, s["id"]) == before

    # a due date given when prepared that the ship date overtakes
    t2 = new_ticket(rstack)
    early = prepare(eng, t2["number"], vendor,
                    vendor_due_at=rfc3339(now - datetime.timedelta(minutes=30)))
    before = snapshot(rstack, early["id"])
    err = assert_error(eng.post("/v1/repairs/%s/ship" % early["id"], json=ok), 422,
                       "invalid_field", "vendor_due_at")
    assert "not after the ship date" in err["message"]
    assert snapshot(rstack, early["id"]) == before

    # the vendor was deactivated after the send-out was prepared
    sup.must(sup.patch("/v1/vendors/" + vendor["id"], json={"active": False}), 200)
    before = snapshot(rstack, s["id"])
    assert_error(eng.post(path, json=ok), 409, "conflict", "vendor_id")
    assert snapshot(rstack, s["id"]) == before


def test_bad_followup_return_inspect_changes_nothing(rstack, eng, shipped):
    vendor, t, s = shipped
    sid = s["id"]
    before = snapshot(rstack, sid)
    shipped_at = parse_rfc3339(s["shipped_at"])
    cases = [
        ("followup", {}, 422, "missing_field", "note"),
        ("followup", {"note": " \n "}, 422, "invalid_field", "note"),
        ("followup", {"note": "x" * 2001}, 422, "invalid_field", "note"),
        ("followup", {"note": "x", "vendor_due_at": rfc3339(shipped_at)}, 422, "invalid_field",
         "vendor_due_at"),
        ("return", {"returned_at": rfc3339(shipped_at - datetime.timedelta(minutes=1))}, 422,
         "invalid_field", "returned_at"),
        ("return", {"returned_at": rfc3339(utc_now() + datetime.timedelta(hours=1))}, 422,
         "invalid_field", "returned_at"),
        ("return", {"returned": True}, 422, "unknown_field", "returned"),
    ]
    for what, body, status, code, field in cases:
        assert_error(eng.post("/v1/repairs/%s/%s" % (sid, what), json=body), status, code,
                     field)
    assert snapshot(rstack, sid) == before
    step(eng, sid, "return", {})
    before = snapshot(rstack, sid)
    for body, status, code, field in [
            ({}, 422, "missing_field", "result"),
            ({"result": "ok"}, 422, "invalid_field", "result"),
            ({"result": "fail"}, 422, "missing_field", "note"),  # a failure says why
            ({"result": "pass", "grade": 1}, 422, "unknown_field", "grade")]:
        assert_error(eng.post("/v1/repairs/%s/inspect" % sid, json=body), status, code, field)
    assert snapshot(rstack, sid) == before


def test_bad_reroute_changes_nothing(rstack, sup, eng, shipped):
    vendor, t, s = shipped
    sid = s["id"]
    other, inactive = new_vendor(sup), new_vendor(sup, active=False)
    step(eng, sid, "return", {})
    step(eng, sid, "inspect", {"result": "fail", "note": "dead on arrival"})
    before = snapshot(rstack, sid)
    ok = {"vendor_id": other["id"], "rma_number": rma(), "reason": "try elsewhere"}
    cases = [
        (dict(ok, vendor_id=vendor["id"]), 409, "conflict", "vendor_id"),  # the same vendor
        (dict(ok, vendor_id=MISSING_ID), 422, "unknown_reference", "vendor_id"),
        (dict(ok, vendor_id=inactive["id"]), 409, "conflict", "vendor_id"),
        (dict(ok, rma_number="a b"), 422, "invalid_field", "rma_number"),
        ({"vendor_id": other["id"], "rma_number": rma()}, 422, "missing_field", "reason"),
    ]
    for body, status, code, field in cases:
        assert_error(eng.post("/v1/repairs/%s/reroute" % sid, json=body), status, code, field)
    assert snapshot(rstack, sid) == before
    # re-routed once; not twice
    step(eng, sid, "reroute", ok, 201)
    before = snapshot(rstack, sid)
    assert_error(eng.post("/v1/repairs/%s/reroute" % sid,
                          json=dict(ok, rma_number=rma())), 409, "illegal_transition")
    assert snapshot(rstack, sid) == before


def test_sendout_roles(rstack, sup, eng):
    vendor = new_vendor(sup)
    t = new_ticket(rstack)
    before = snapshot(rstack)
    body = {"vendor_id": vendor["id"], "rma_number": rma()}
    for role in ("agent", "warehouse", "integration"):
        assert_error(rstack.dispatch_api(role).post("/v1/tickets/%s/repairs" % t["number"],
                                                    json=body), 403, "forbidden")
    assert snapshot(rstack) == before
    s = prepare(sup, t["number"], vendor)
    for role in ("agent", "integration"):
        api = rstack.dispatch_api(role)
        assert api.must(api.get("/v1/repairs/" + s["id"]), 200)["id"] == s["id"]
        assert_error(api.post("/v1/repairs/%s/ship" % s["id"],
                              json={"carrier": "DHL", "tracking": "JD014600003828"}), 403)
    assert_error(rstack.dispatch_api("warehouse").get("/v1/repairs/" + s["id"]), 403)
    assert_error(eng.get("/v1/repairs/" + MISSING_ID), 404, "not_found")
    assert_error(eng.get("/v1/tickets/%s/repairs" % MISSING_TICKET), 404, "not_found")


def test_closed_ticket_gets_no_sendout(rstack, sup, eng):
    vendor = new_vendor(sup)
    t = new_ticket(rstack)
    agent = rstack.api("agent")
    r = agent.transition(t["number"], "cancelled", reason="duplicate report")
    assert r.status_code == 200, r.text
    dview = rstack.dispatch_api("agent")
    wait_until(lambda: dview.get("/v1/tickets/" + t["number"]).json()["status"] == "cancelled",
               15, 0.05, "dispatch to see the cancellation")
    before = snapshot(rstack)
    body = {"vendor_id": vendor["id"], "rma_number": rma()}
    # the cancellation released the technician's assignment: the ticket is no longer theirs
    assert_error(eng.post("/v1/tickets/%s/repairs" % t["number"], json=body), 403,
                 "not_your_ticket")
    err = assert_error(sup.post("/v1/tickets/%s/repairs" % t["number"], json=body), 409,
                       "conflict")
    assert "cancelled" in err["message"]
    assert snapshot(rstack) == before


def test_only_the_engineer_on_the_ticket_handles_its_sendouts(rstack, sup, eng):
    """An engineer's token prepares and steps send-outs only of tickets that engineer
    holds an open assignment on; a token naming no engineer may do neither. Supervisors
    act on any ticket. A refusal changes nothing."""
    vendor = new_vendor(sup)
    t = new_ticket(rstack)  # held by the module's depot technician (eng)
    other, other_api = helpers.ticket_holder(rstack, "depot_technician")
    unlinked = rstack.dispatch_api("engineer")
    body = {"vendor_id": vendor["id"], "rma_number": rma()}
    before = snapshot(rstack)
    err = assert_error(other_api.post("/v1/tickets/%s/repairs" % t["number"], json=body), 403,
                       "not_your_ticket")
    assert other["id"] in err["message"] and t["number"] in err["message"]
    assert_error(unlinked.post("/v1/tickets/%s/repairs" % t["number"], json=body), 403,
                 "forbidden")
    assert snapshot(rstack) == before
    s = prepare(eng, t["number"], vendor)
    before = snapshot(rstack, s["id"])
    for what, b in (("ship", {"carrier": "DHL", "tracking": "JD014600003828"}),
                    ("followup", {"note": "Asked the vendor for news"}),
                    ("return", {}), ("inspect", {"result": "pass"}),
                    ("reroute", {"vendor_id": vendor["id"], "rma_number": rma(),
                                 "reason": "x"})):
        assert_error(other_api.post("/v1/repairs/%s/%s" % (s["id"], what), json=b), 403,
                     "not_your_ticket")
        assert_error(unlinked.post("/v1/repairs/%s/%s" % (s["id"], what), json=b), 403,
                     "forbidden")
    assert snapshot(rstack, s["id"]) == before
    # once a supervisor gives the other technician the ticket, it is theirs
    helpers.put_on_ticket(rstack, other, t["number"])
    shipped = ship(other_api, s)
    assert shipped["state"] == "shipped"
    assert_error(eng.post("/v1/repairs/%s/followup" % s["id"], json={"note": "news?"}), 403,
                 "not_your_ticket")
    act = step(sup, s["id"], "followup", {"note": "Supervisor chased the vendor"})
    assert act["id"] == s["id"]


def test_concurrent_creates_make_one_sendout(rstack, sup, eng):
    """Racing requests for the same ticket: one send-out, the others 409, no 500."""
    vendor = new_vendor(sup)
    t = new_ticket(rstack)
    path = "/v1/tickets/%s/repairs" % t["number"]
    bodies = [{"vendor_id": vendor["id"], "rma_number": rma()} for _ in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        # a session per thread: requests.Session is not thread-safe
        codes = list(pool.map(lambda b: helpers.Api(eng.base, eng.token).post(path, json=b)
                              .status_code, bodies))
    assert sorted(codes) == [201] + [409] * 7, codes
    assert rstack.db.scalar("SELECT count(*) FROM dispatch.repair_sendouts s JOIN "
                            "dispatch.tickets t ON t.id = s.ticket_id WHERE t.number = %s",
                            (t["number"],)) == 1


def test_restart_keeps_sendouts(rstack, sup, eng):
    vendor = new_vendor(sup)
    t = new_ticket(rstack)
    s = ship(eng, prepare(eng, t["number"], vendor))
    rstack.dispatch.stop(signal.SIGKILL)
    rstack.dispatch.start()
    rstack.dispatch.wait_ready()
    assert eng.must(eng.get("/v1/repairs/" + s["id"]), 200) == s
    s = step(eng, s["id"], "return", {})
    assert s["state"] == "returned" and s["version"] == 3


def test_no_sanitizer_reports(rstack):
    assert rstack.sanitizer_reports() == []
