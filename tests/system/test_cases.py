"""Dispatch, item 6 of issue 4: difficult cases (docs/dispatch-api.md, "Difficult cases").

A ticket is flagged as difficult with an owner, collects tracking notes, escalates up the
chain engineer -> supervisor -> manager with a reason (the new owner given or chosen, and
always of the new level's role), changes owner, and is closed with a resolution; each step
is an event (case.*) on the bus. Bad input — unknown ticket or engineer, flagging twice,
an owner of the wrong role, escalating beyond manager, anything on a closed case — gets a
clear error and changes nothing."""

import concurrent.futures
import signal

import pytest

import helpers
from helpers import assert_error, unique, wait_until
from test_engineers import engineer_body

MISSING_TICKET = "SV-20990101-000001"
MISSING_ID = "00000000-0000-4000-8000-000000000000"


@pytest.fixture(scope="module")
def cstack(tmp_root):
    from conftest import _start_stack, _stop_stack
    stack = _start_stack(tmp_root, "cases", dispatch=True)
    stack.holder, stack.holder_api = helpers.ticket_holder(stack)
    yield stack
    _stop_stack(stack)


@pytest.fixture(scope="module")
def sub(cstack):
    return cstack.subscriber()  # every topic; dispatch's case.* are picked out below


@pytest.fixture
def sup(cstack):
    return cstack.dispatch_api("supervisor")


@pytest.fixture
def eng(cstack):
    """The engineer every new_ticket() is assigned to, under their own token."""
    return cstack.holder_api


def new_engineer(cstack, role, **over):
    api = cstack.dispatch_api("supervisor")
    return api.must(api.post("/v1/engineers", json=engineer_body(
        role=role, name=unique(role.capitalize()), **over)), 201)


@pytest.fixture(scope="module")
def team(cstack):
    """A field engineer, a depot technician, two supervisors and a manager."""
    return {
        "field": new_engineer(cstack, "field_engineer"),
        "depot": new_engineer(cstack, "depot_technician"),
        "sup": new_engineer(cstack, "supervisor"),
        "sup2": new_engineer(cstack, "supervisor"),
        "mgr": new_engineer(cstack, "manager"),
    }


def new_ticket(stack):
    t = helpers.dispatch_ticket(stack)
    helpers.put_on_ticket(stack, stack.holder, t["number"])
    return t


def flag(api, number, owner, reason="Intermittent fault nobody can reproduce"):
    return api.must(api.post("/v1/tickets/%s/case" % number,
                             json={"reason": reason, "owner_engineer_id": owner["id"]}), 201)


def act(api, case_id, what, body, status=200):
    return api.must(api.post("/v1/cases/%s/%s" % (case_id, what), json=body), status)


def case_events(sub, number):
    return [m for m in sub.messages()
            if m.env is not None and m.env.source == helpers.DISPATCH_SOURCE
            and m.env.subject == number and m.topic.startswith(b"case.")]


def wait_case_events(sub, number, count):
    return wait_until(lambda: (lambda evs: evs if len(evs) >= count else None)(
        case_events(sub, number)), 15, 0.05, "%d case events about %s" % (count, number))


def snapshot(stack, case_id=None):
    """What a refused request must leave alone: cases, entries, our events, the case doc."""
    db = stack.db
    snap = {
        "cases": db.rows("SELECT * FROM dispatch.difficult_cases ORDER BY seq"),
        "entries": db.scalar("SELECT count(*) FROM dispatch.case_entries"),
        "outbox": db.scalar("SELECT count(*) FROM dispatch.outbox WHERE topic LIKE 'case.%%'"),
    }
    if case_id:
        r = stack.dispatch_api("agent").get("/v1/cases/" + case_id)
        snap["doc"] = r.json() if r.status_code == 200 else r.status_code
    return snap


# ----------------------------------------------------------------------------- the flow

def test_flag_notes_escalate_twice_close_with_events(cstack, sup, eng, sub, team):
    t = new_ticket(cstack)
    c = flag(eng, t["number"], team["field"])
    assert helpers.is_uuid(c["id"]) and c["state"] == "open" and c["level"] == "engineer"
    assert c["ticket_number"] == t["number"] and c["ticket_id"] == t["id"]
    assert c["owner_engineer_id"] == team["field"]["id"]
    assert c["owner_name"] == team["field"]["name"] and c["owner_role"] == "field_engineer"
    assert c["reason"] == "Intermittent fault nobody can reproduce"
    assert c["notes"] == [] and c["notes_count"] == 0 and c["version"] == 1

    c = act(eng, c["id"], "notes", {"note": "Swapped the controller, fault came back"}, 201)
    c = act(sup, c["id"], "notes", {"note": "Customer logs show a pattern at 02:00"}, 201)
    assert [n["note"] for n in c["notes"]] == ["Swapped the controller, fault came back",
                                               "Customer logs show a pattern at 02:00"]
    assert c["notes_count"] == 2 and all(n["actor"] and n["at"] for n in c["notes"])

    # up to a supervisor chosen by dispatch, then to the manager named by the caller
    c = act(eng, c["id"], "escalate", {"reason": "Needs a goodwill replacement decision"})
    assert c["level"] == "supervisor" and c["owner_role"] == "supervisor"
    c = act(sup, c["id"], "escalate", {"reason": "Replacement above my budget",
                                       "owner_engineer_id": team["mgr"]["id"]})
    assert c["level"] == "manager" and c["owner_engineer_id"] == team["mgr"]["id"]

    # beyond manager: refused, nothing changed
    before = snapshot(cstack, c["id"])
    err = assert_error(sup.post("/v1/cases/%s/escalate" % c["id"],
                                json={"reason": "Still stuck"}), 409, "illegal_transition")
    assert "manager" in err["message"]
    assert snapshot(cstack, c["id"]) == before

    c = act(sup, c["id"], "close", {"resolution": "Unit replaced under goodwill"})
    assert c["state"] == "closed" and c["resolution"] == "Unit replaced under goodwill"
    assert c["closed_at"] and c["version"] == 6
    assert [h["kind"] for h in c["history"]] == [
        "flagged", "noted", "noted", "escalated", "escalated", "closed"]
    assert [(h.get("from_level"), h.get("to_level")) for h in c["history"][3:5]] == [
        ("engineer", "supervisor"), ("supervisor", "manager")]
    agent = cstack.dispatch_api("agent")
    assert agent.must(agent.get("/v1/cases/" + c["id"]), 200) == c
    assert agent.must(agent.get("/v1/tickets/%s/case" % t["number"]), 200) == c

    evs = wait_case_events(sub, t["number"], 6)
    assert [m.topic.decode() for m in evs] == [
        "case.flagged", "case.noted", "case.noted", "case.escalated", "case.escalated",
        "case.closed"]
    for m in evs:
        e = m.env
        assert e.partition_key == t["id"] and e.type == "aftercare.%s.v1" % m.topic.decode()
        assert e.WhichOneof("payload") == "case_step"
        assert e.case_step.ticket.number == t["number"]
        assert e.case_step.difficult_case.id == c["id"] and e.case_step.actor
    steps = [m.env.case_step for m in evs]
    assert [s.difficult_case.version for s in steps] == [1, 2, 3, 4, 5, 6]
    assert steps[0].note == "Intermittent fault nobody can reproduce"
    assert steps[0].difficult_case.owner_name == team["field"]["name"]
    assert steps[2].note == "Customer logs show a pattern at 02:00"
    assert steps[2].difficult_case.notes == 2
    assert (steps[3].from_level, steps[3].to_level) == ("engineer", "supervisor")
    assert steps[3].note == "Needs a goodwill replacement decision"
    assert (steps[4].from_level, steps[4].to_level) == ("supervisor", "manager")
    assert steps[4].difficult_case.owner_engineer_id == team["mgr"]["id"]
    assert steps[5].note == "Unit replaced under goodwill"
    assert steps[5].difficult_case.state == "closed"


def test_owner_change_and_chosen_supervisor(cstack, sup, eng, sub, team):
    t = new_ticket(cstack)
    c = flag(eng, t["number"], team["field"])
    c = act(sup, c["id"], "owner", {"engineer_id": team["depot"]["id"],
                                    "reason": "Depot has the unit"})
    assert c["owner_engineer_id"] == team["depot"]["id"] and c["level"] == "engineer"
    assert c["history"][-1]["kind"] == "owner_changed"
    c = act(eng, c["id"], "escalate", {"reason": "Needs a supervisor"})
    assert c["owner_role"] == "supervisor"
    other = team["sup2"] if c["owner_engineer_id"] == team["sup"]["id"] else team["sup"]
    c = act(sup, c["id"], "owner", {"engineer_id": other["id"], "reason": "Shift change"})
    assert c["owner_engineer_id"] == other["id"] and c["level"] == "supervisor"
    evs = wait_case_events(sub, t["number"], 4)
    assert [m.topic for m in evs] == [b"case.flagged", b"case.owner_changed",
                                      b"case.escalated", b"case.owner_changed"]
    assert evs[1].env.case_step.note == "Depot has the unit"
    assert evs[3].env.case_step.difficult_case.owner_engineer_id == other["id"]


def test_chosen_owner_is_never_on_leave(cstack, sup, eng, team):
    """With every supervisor on leave there is nobody to escalate to: 409, nothing changed;
    with one back, the case goes to that one."""
    t = new_ticket(cstack)
    c = flag(eng, t["number"], team["field"])
    sups = sup.must(sup.get("/v1/engineers", params={"role": "supervisor", "limit": 200}),
                    200)["items"]
    away = [s for s in sups if s["availability"] != "on_leave"]
    for s in away:
        sup.must(sup.patch("/v1/engineers/" + s["id"], json={"availability": "on_leave"}), 200)
    try:
        before = snapshot(cstack, c["id"])
        assert_error(eng.post("/v1/cases/%s/escalate" % c["id"], json={"reason": "help"}), 409,
                     "conflict", "owner_engineer_id")
        assert snapshot(cstack, c["id"]) == before
        sup.must(sup.patch("/v1/engineers/" + team["sup2"]["id"],
                           json={"availability": "available"}), 200)
        c = act(eng, c["id"], "escalate", {"reason": "help"})
        assert c["owner_engineer_id"] == team["sup2"]["id"]
    finally:
        for s in away:
            sup.patch("/v1/engineers/" + s["id"], json={"availability": s["availability"]})


def test_owner_defaults_to_the_engineer_holding_the_ticket(cstack):
    """Without owner_engineer_id the case goes to the engineer assignment gave the ticket.
    The technical support engineer here has the only skill for a product model of its own
    and room for one job, so it gets this ticket's diagnosis and no other ticket."""
    model = unique("CASE-MODEL")
    tech = new_engineer(cstack, "technical_support", capacity=1, regions=[],
                        skills=[{"kind": "product_line", "name": model, "level": 3}],
                        shift={"around_the_clock": True})
    agent = cstack.api("agent")
    cust = agent.new_customer()
    prod = agent.new_product(cust["id"], model=model)
    t = helpers.dispatch_ticket(cstack, customer=cust, product_id=prod["id"],
                                category="fault_repair")
    dapi = cstack.dispatch_api("agent")
    wait_until(lambda: dapi.get("/v1/tickets/%s/assignments" % t["number"]).json()
               .get("current_engineer_id") == tech["id"], 30, 0.1,
               "assignment to offer the diagnosis to %s" % tech["id"])
    tech_api = cstack.engineer_api(tech["id"])
    c = tech_api.must(tech_api.post("/v1/tickets/%s/case" % t["number"],
                                    json={"reason": "odd noise"}), 201)
    assert c["owner_engineer_id"] == tech["id"] and c["owner_role"] == "technical_support"


def test_flag_again_after_close(cstack, sup, eng, team):
    t = new_ticket(cstack)
    first = flag(eng, t["number"], team["field"])
    act(eng, first["id"], "close", {"resolution": "Firmware update fixed it"})
    second = flag(eng, t["number"], team["depot"], reason="Fault is back")
    assert second["id"] != first["id"] and second["state"] == "open"
    got = eng.must(eng.get("/v1/tickets/%s/case" % t["number"]), 200)
    assert got["id"] == second["id"]
    assert eng.must(eng.get("/v1/cases/" + first["id"]), 200)["state"] == "closed"


def test_list_for_supervisors(cstack, sup, eng, team):
    t1, t2 = new_ticket(cstack), new_ticket(cstack)
    a = flag(eng, t1["number"], team["field"])
    b = flag(eng, t2["number"], team["field"])
    b = act(eng, b["id"], "escalate", {"reason": "x", "owner_engineer_id": team["sup"]["id"]})
    sup_open = sup.must(sup.get("/v1/cases", params={"state": "open", "level": "supervisor",
                                                     "limit": 200}), 200)
    ids = [x["id"] for x in sup_open["items"]]
    assert b["id"] in ids and a["id"] not in ids
    assert all(x["state"] == "open" and x["level"] == "supervisor" for x in sup_open["items"])
    assert "notes" not in sup_open["items"][0] and "notes_count" in sup_open["items"][0]
    mine = sup.must(sup.get("/v1/cases", params={"owner_engineer_id": team["sup"]["id"]}), 200)
    assert b["id"] in [x["id"] for x in mine["items"]]
    page = sup.must(sup.get("/v1/cases", params={"limit": 1}), 200)
    assert len(page["items"]) == 1 and page["next_cursor"]
    nxt = sup.must(sup.get("/v1/cases", params={"limit": 1, "cursor": page["next_cursor"]}),
                   200)
    assert nxt["items"][0]["id"] != page["items"][0]["id"]
    for q, field in (({"state": "stuck"}, "state"), ({"level": "ceo"}, "level"),
                     ({"owner_engineer_id": "x"}, "owner_engineer_id"), ({"limit": "0"}, "limit"),
                     ({"cursor": "-1"}, "cursor")):
        assert_error(sup.get("/v1/cases", params=q), 422, "invalid_field", field)
    for role in ("agent", "engineer", "integration", "warehouse"):
        assert_error(cstack.dispatch_api(role).get("/v1/cases"), 403, "forbidden")


# ----------------------------------------------------------------------------- bad input

def test_bad_flags_change_nothing(cstack, sup, eng, team):
    t = new_ticket(cstack)
    path = "/v1/tickets/%s/case" % t["number"]
    ok = {"reason": "hard", "owner_engineer_id": team["field"]["id"]}
    before = snapshot(cstack)
    cases = [
        (MISSING_TICKET, ok, 404, "not_found", None),
        ("nonsense", ok, 404, "not_found", None),
        (t["number"], {"owner_engineer_id": team["field"]["id"]}, 422, "missing_field", "reason"),
        (t["number"], dict(ok, reason="  "), 422, "invalid_field", "reason"),
        (t["number"], dict(ok, reason="x" * 4001), 422, "invalid_field", "reason"),
        (t["number"], dict(ok, reason=7), 422, "invalid_field", "reason"),
        (t["number"], dict(ok, owner_engineer_id=MISSING_ID), 422, "unknown_reference",
         "owner_engineer_id"),
        (t["number"], dict(ok, owner_engineer_id="eng-1"), 422, "invalid_field",
         "owner_engineer_id"),
        # the engineer level is owned by an engineer, not a supervisor or manager
        (t["number"], dict(ok, owner_engineer_id=team["sup"]["id"]), 422, "invalid_field",
         "owner_engineer_id"),
        (t["number"], dict(ok, owner_engineer_id=team["mgr"]["id"]), 422, "invalid_field",
         "owner_engineer_id"),
        (t["number"], dict(ok, level="manager"), 422, "unknown_field", "level"),
    ]
    for number, body, status, code, field in cases:
        assert_error(eng.post("/v1/tickets/%s/case" % number, json=body), status, code, field)
    # nobody holds this ticket, so the owner must be named
    nobodys = helpers.dispatch_ticket(cstack)
    assert_error(sup.post("/v1/tickets/%s/case" % nobodys["number"], json={"reason": "hard"}),
                 422, "missing_field", "owner_engineer_id")
    for role in ("agent", "warehouse", "integration"):
        assert_error(cstack.dispatch_api(role).post(path, json=ok), 403, "forbidden")
    assert snapshot(cstack) == before
    # flagging twice (the first with the longest reason allowed)
    c = flag(eng, t["number"], team["field"], reason="r" * 4000)
    before = snapshot(cstack, c["id"])
    err = assert_error(sup.post(path, json=ok), 409, "conflict")
    assert c["id"] in err["message"]
    assert snapshot(cstack, c["id"]) == before


def test_bad_steps_change_nothing(cstack, sup, eng, team):
    t = new_ticket(cstack)
    c = flag(eng, t["number"], team["field"])
    cid = c["id"]
    before = snapshot(cstack, cid)
    cases = [
        ("notes", {}, 422, "missing_field", "note"),
        ("notes", {"note": ""}, 422, "invalid_field", "note"),
        ("notes", {"note": "x", "private": True}, 422, "unknown_field", "private"),
        ("escalate", {}, 422, "missing_field", "reason"),
        ("escalate", {"reason": "x", "owner_engineer_id": MISSING_ID}, 422,
         "unknown_reference", "owner_engineer_id"),
        # the new level is supervisor: neither an engineer nor a manager may own it
        ("escalate", {"reason": "x", "owner_engineer_id": team["depot"]["id"]}, 422,
         "invalid_field", "owner_engineer_id"),
        ("escalate", {"reason": "x", "owner_engineer_id": team["mgr"]["id"]}, 422,
         "invalid_field", "owner_engineer_id"),
        ("owner", {"reason": "x"}, 422, "missing_field", "engineer_id"),
        ("owner", {"engineer_id": team["depot"]["id"]}, 422, "missing_field", "reason"),
        ("owner", {"engineer_id": MISSING_ID, "reason": "x"}, 422, "unknown_reference",
         "engineer_id"),
        ("owner", {"engineer_id": team["sup"]["id"], "reason": "x"}, 422, "invalid_field",
         "engineer_id"),
        ("owner", {"engineer_id": team["field"]["id"], "reason": "x"}, 409, "conflict",
         "engineer_id"),  # owns it already
        ("close", {}, 422, "missing_field", "resolution"),
    ]
    for what, body, status, code, field in cases:
        assert_error(eng.post("/v1/cases/%s/%s" % (cid, what), json=body), status, code, field)
    valid = {"notes": {"note": "x"}, "escalate": {"reason": "x"}, "close": {"resolution": "x"},
             "owner": {"engineer_id": team["depot"]["id"], "reason": "x"}}
    for what, body in valid.items():
        assert_error(eng.post("/v1/cases/%s/%s" % (MISSING_ID, what), json=body), 404,
                     "not_found")
        assert_error(eng.post("/v1/cases/nope/%s" % what, json=body), 404, "not_found")
        for role in ("agent", "warehouse", "integration"):
            assert_error(cstack.dispatch_api(role).post("/v1/cases/%s/%s" % (cid, what),
                                                        json=body), 403, "forbidden")
    assert_error(eng.get("/v1/cases/not-an-id"), 404, "not_found")
    assert_error(eng.get("/v1/cases/" + MISSING_ID), 404, "not_found")
    assert_error(eng.get("/v1/tickets/%s/case" % MISSING_TICKET), 404, "not_found")
    assert snapshot(cstack, cid) == before

    # a closed case takes nothing more
    act(eng, cid, "close", {"resolution": "Resolved by a firmware update"})
    before = snapshot(cstack, cid)
    for what, body in (("notes", {"note": "one more thing"}),
                       ("escalate", {"reason": "reopen it"}),
                       ("owner", {"engineer_id": team["depot"]["id"], "reason": "x"}),
                       ("close", {"resolution": "again"})):
        err = assert_error(eng.post("/v1/cases/%s/%s" % (cid, what), json=body), 409,
                           "illegal_transition")
        assert "closed" in err["message"]
    assert snapshot(cstack, cid) == before


def test_ticket_never_flagged(cstack, eng):
    t = new_ticket(cstack)
    err = assert_error(eng.get("/v1/tickets/%s/case" % t["number"]), 404, "not_found")
    assert "never been flagged" in err["message"]


def test_cancelled_ticket_cannot_be_flagged(cstack, eng, team):
    t = new_ticket(cstack)
    r = cstack.api("agent").transition(t["number"], "cancelled", reason="duplicate")
    assert r.status_code == 200, r.text
    dview = cstack.dispatch_api("agent")
    wait_until(lambda: dview.get("/v1/tickets/" + t["number"]).json()["status"] == "cancelled",
               15, 0.05, "dispatch to see the cancellation")
    before = snapshot(cstack)
    body = {"reason": "x", "owner_engineer_id": team["field"]["id"]}
    # the cancellation released the engineer's assignment: the ticket is no longer theirs
    assert_error(eng.post("/v1/tickets/%s/case" % t["number"], json=body), 403,
                 "not_your_ticket")
    sup = cstack.dispatch_api("supervisor")
    assert_error(sup.post("/v1/tickets/%s/case" % t["number"], json=body), 409, "conflict")
    assert snapshot(cstack) == before


def test_only_the_engineer_on_the_ticket_or_the_owner_works_the_case(cstack, sup, eng, team):
    """An engineer's token flags and works a case only on a ticket that engineer holds an
    open assignment on, or as the case's owner; a token naming no engineer does neither.
    A refusal changes nothing."""
    t = new_ticket(cstack)  # held by eng's engineer
    other, other_api = helpers.ticket_holder(cstack)
    unlinked = cstack.dispatch_api("engineer")
    before = snapshot(cstack)
    err = assert_error(other_api.post("/v1/tickets/%s/case" % t["number"],
                                      json={"reason": "odd noise"}), 403, "not_your_ticket")
    assert other["id"] in err["message"] and t["number"] in err["message"]
    assert_error(unlinked.post("/v1/tickets/%s/case" % t["number"], json={"reason": "x"}), 403,
                 "forbidden")
    assert snapshot(cstack) == before
    c = flag(eng, t["number"], team["field"])
    before = snapshot(cstack, c["id"])
    for what, body in (("notes", {"note": "seen it too"}), ("escalate", {"reason": "help"}),
                       ("owner", {"engineer_id": other["id"], "reason": "mine now"}),
                       ("close", {"resolution": "fixed"})):
        assert_error(other_api.post("/v1/cases/%s/%s" % (c["id"], what), json=body), 403,
                     "not_your_ticket")
        assert_error(unlinked.post("/v1/cases/%s/%s" % (c["id"], what), json=body), 403,
                     "forbidden")
    assert snapshot(cstack, c["id"]) == before
    # the case's owner works it without holding the ticket
    field_api = cstack.engineer_api(team["field"]["id"])
    act(field_api, c["id"], "notes", {"note": "Owner: swapped the sensor"}, 201)
    # a supervisor hands the case to the other engineer: now theirs too
    act(sup, c["id"], "owner", {"engineer_id": other["id"], "reason": "knows the model"})
    act(other_api, c["id"], "notes", {"note": "New owner: looking into it"}, 201)
    assert_error(field_api.post("/v1/cases/%s/notes" % c["id"], json={"note": "x"}), 403,
                 "not_your_ticket")


def test_concurrent_flags_make_one_case(cstack, eng, team):
    t = new_ticket(cstack)
    path = "/v1/tickets/%s/case" % t["number"]
    body = {"reason": "racing", "owner_engineer_id": team["field"]["id"]}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        # a session per thread: requests.Session is not thread-safe
        codes = list(pool.map(lambda _: helpers.Api(eng.base, eng.token).post(path, json=body)
                              .status_code, range(8)))
    assert sorted(codes) == [201] + [409] * 7, codes
    assert cstack.db.scalar("SELECT count(*) FROM dispatch.difficult_cases WHERE ticket_id = %s",
                            (t["id"],)) == 1


def test_restart_keeps_cases(cstack, eng, team):
    t = new_ticket(cstack)
    c = flag(eng, t["number"], team["field"])
    c = act(eng, c["id"], "notes", {"note": "before the restart"}, 201)
    cstack.dispatch.stop(signal.SIGKILL)
    cstack.dispatch.start()
    cstack.dispatch.wait_ready()
    assert eng.must(eng.get("/v1/cases/" + c["id"]), 200) == c
    c = act(eng, c["id"], "notes", {"note": "after the restart"}, 201)
    assert [n["note"] for n in c["notes"]] == ["before the restart", "after the restart"]


def test_no_sanitizer_reports(cstack):
    assert cstack.sanitizer_reports() == []
