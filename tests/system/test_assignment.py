"""Assignment, item 2 of issue 4 (docs/dispatch-api.md "## Assignment"): a new ticket gets
a technical-support owner, an accepted plan its work engineer; the automatic choice honours
skill, region, shift and capacity and explains itself (score breakdown, funnel, "why");
decline moves to the next candidate; nobody fitting leaves the ticket in the visible queue
with ONE assignment.unfilled alert; supervisors assign and reassign with a reason; bad
input and illegal steps are refused and change nothing; capacity holds under a burst.

One stack serves the module. Its dispatch is shared by every test, so each test gives its
tickets a product model of its own (unique("M")) and its engineers that model as their
skill: the filters keep the tests apart."""

import datetime
import hashlib
import signal
import time

import pytest

import helpers
from helpers import assert_error, unique, wait_until

from aftercare.v1 import dispatch_pb2

ALWAYS = {"around_the_clock": True}
TERMS = ["load", "skill_level", "sla_slack", "customer_tier"]
WEIGHTS = {"load": 0.4, "skill_level": 0.3, "sla_slack": 0.2, "customer_tier": 0.1}


@pytest.fixture(scope="module")
def astack(tmp_root):
    from conftest import _start_stack, _stop_stack
    stack = _start_stack(tmp_root, "assignment", dispatch=True)
    yield stack
    _stop_stack(stack)


@pytest.fixture(scope="module")
def sub(astack):
    return astack.subscriber()


@pytest.fixture
def sup(astack):
    return astack.dispatch_api("supervisor")


@pytest.fixture
def eng_api(astack):
    return astack.dispatch_api("engineer")


# ----------------------------------------------------------------------------- helpers

def engineer(sup, model, role="technical_support", level=3, capacity=3, regions=("north",),
             availability="available", shift=ALWAYS, name=None, extra_skills=()):
    skills = [{"kind": "product_line", "name": model, "level": level}] if model else []
    skills += list(extra_skills)
    body = {"name": name or unique("Eng"), "role": role, "skills": skills,
            "regions": list(regions), "capacity": capacity, "availability": availability,
            "contact": {"email": "eng@example.com"}, "shift": shift}
    return sup.must(sup.post("/v1/engineers", json=body), 201)


def product(stack, model, region="north", customer=None):
    cust = customer or stack.probe_customer
    return stack.api("agent").new_product(cust["id"], model=model, region=region)


def ticket(stack, prod, customer=None, **over):
    over.setdefault("category", "fault_repair")
    return helpers.dispatch_ticket(stack, customer=customer, product_id=prod["id"], **over)


def post_ticket(stack, prod, **over):
    """Creates a ticket in intake without waiting for dispatch."""
    agent = stack.api("agent")
    body = helpers.ticket_body(stack.probe_customer["id"], prod["id"], category="fault_repair",
                               **over)
    return agent.must(agent.post("/v1/tickets", json=body), 201)


def answer(api, assignment_id, verb, body):
    """POST /v1/assignments/{id}/accept|decline, expecting 200. A 503 "unavailable" means,
    by the API's contract, that nothing changed and the client should retry: it is retried
    (it happens when the SLA engine's transaction and this one deadlock on the ticket's
    clocks: accepting a diagnosis is the ticket's first response)."""
    for attempt in range(3):
        r = api.post("/v1/assignments/%s/%s" % (assignment_id, verb), json=body)
        if r.status_code != 503 or attempt == 2:
            return api.must(r, 200)
        assert_error(r, 503, "unavailable")
        time.sleep(0.2)


def history(api, number):
    return api.must(api.get("/v1/tickets/%s/assignments" % number), 200)


def dispatch_events(sub, topic, subject=None, since=0):
    """Dispatch's events of a topic, each once (a restarted relay resends what it had
    published but not yet seen acknowledged: the same event, the same sequence)."""
    seen, out = set(), []
    for m in sub.messages(since):
        if (m.topic == topic.encode() and m.env is not None
                and m.env.source == helpers.DISPATCH_SOURCE
                and (subject is None or m.env.subject == subject)
                and m.env.id not in seen):
            seen.add(m.env.id)
            out.append(m)
    return out


def wait_event(sub, topic, subject, since=0, count=1, timeout=15):
    found = []

    def seen():
        found[:] = dispatch_events(sub, topic, subject, since)
        return len(found) >= count
    wait_until(seen, timeout, 0.05, "%d %s event(s) for %s" % (count, topic, subject))
    return found


def wait_current(api, number, timeout=15, kind=None, engineer_id=None):
    """The open assignment of the ticket, once there is one (of that kind / engineer)."""
    got = []

    def ready():
        h = history(api, number)
        for a in h["open"]:
            if (kind is None or a["kind"] == kind) and (
                    engineer_id is None or a["engineer"]["id"] == engineer_id):
                got[:] = [a]
                return True
        return False
    wait_until(ready, timeout, 0.05, "an open assignment of %s" % number)
    return got[0]


def wait_queued(api, number, timeout=15):
    got = []

    def ready():
        q = history(api, number)["queued"]
        if q and q[0]["unfilled"]:
            got[:] = q
            return True
        return False
    wait_until(ready, timeout, 0.05, "%s to wait unfilled in the queue" % number)
    return got[0]


def token_name(stack, api):
    digest = hashlib.sha256(api.token.encode()).hexdigest()
    return stack.db.scalar("SELECT name FROM auth.tokens WHERE token_sha256 = %s", (digest,))


def state(db, number):
    """Everything an assignment request may change, for 'nothing changed' checks."""
    return (db.rows("SELECT a.id, a.state, a.engineer_id, a.updated_at FROM dispatch.assignments a "
                    "JOIN dispatch.tickets t ON t.id = a.ticket_id WHERE t.number = %s "
                    "ORDER BY a.seq", (number,)),
            db.rows("SELECT q.* FROM dispatch.assign_queue q JOIN dispatch.tickets t "
                    "ON t.id = q.ticket_id WHERE t.number = %s", (number,)),
            db.rows("SELECT engineer_id, open_jobs FROM dispatch.engineer_load "
                    "ORDER BY engineer_id"),
            db.scalar("SELECT count(*) FROM dispatch.outbox"),
            db.scalar("SELECT count(*) FROM dispatch.pending_events"))


def open_jobs(db, engineer_id):
    return db.scalar("SELECT open_jobs FROM dispatch.engineer_load WHERE engineer_id = %s",
                     (engineer_id,))


def off_shift_now():
    """A UTC shift of one hour a day that is 11-12 hours away from now."""
    start = (datetime.datetime.now(datetime.timezone.utc).hour + 11) % 24
    interval = "%02d:00-%02d:00" % (start, start + 1)
    return {"time_zone": "UTC",
            "working_hours": {d: [interval] for d in
                              ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}}


# ----------------------------------------------------------------------------- automatic choice

def test_new_ticket_goes_to_the_best_fit_and_says_why(astack, sup, sub):
    m = unique("M")
    best = engineer(sup, m, level=5, capacity=5)
    good = engineer(sup, m, level=2, capacity=5)
    engineer(sup, m, role="field_engineer", level=5)           # wrong role
    engineer(sup, unique("M"), level=5)                         # wrong skill
    engineer(sup, m, level=5, availability="on_leave")          # not available
    engineer(sup, m, level=5, availability="away")
    mark = sub.mark()
    t = ticket(astack, product(astack, m), urgency="urgent")

    [msg] = wait_event(sub, "ticket.assigned", t["number"], mark)
    env = msg.env
    assert env.type == "aftercare.ticket.assigned.v1" and env.partition_key == t["id"]
    body = env.ticket_assigned
    a = body.assignment
    assert a.engineer_id == best["id"] and a.engineer_name == best["name"]
    assert a.kind == dispatch_pb2.ASSIGNMENT_KIND_DIAGNOSIS
    assert a.engineer_role == dispatch_pb2.ENGINEER_ROLE_TECHNICAL_SUPPORT
    assert a.state == dispatch_pb2.ASSIGNMENT_STATE_OFFERED
    assert a.method == "auto" and a.actor == "dispatch" and a.candidates == 2
    assert [term.name for term in a.breakdown] == TERMS
    assert a.score == pytest.approx(sum(term.value * term.weight for term in a.breakdown),
                                    abs=1e-5)
    assert body.ticket.number == t["number"] and body.ticket.product_model == m
    assert body.previous_engineer_id == ""

    h = history(sup, t["number"])
    assert h["current_engineer_id"] == best["id"] and h["queued"] == []
    [doc] = h["items"]
    assert doc["id"] == a.id and doc["state"] == "offered" and doc["kind"] == "diagnosis"
    assert doc["engineer"] == {"id": best["id"], "name": best["name"],
                               "role": "technical_support"}
    terms = {x["name"]: x for x in doc["breakdown"]}
    assert list(terms) == TERMS
    assert {k: x["weight"] for k, x in terms.items()} == WEIGHTS
    assert terms["load"]["value"] == 1 and terms["load"]["detail"] == "0 of 5 open jobs"
    assert terms["skill_level"]["value"] == 1
    assert terms["skill_level"]["detail"] == "product_line %s level 5 of 5" % m
    assert terms["customer_tier"]["value"] == 0
    # urgent, standard customer: the P2 policy's first response, 2 h from the ticket's
    # opening, counts (also before the SLA engine has computed the clock: migration 016)
    slack = terms["sla_slack"]["detail"]
    assert "1h59m to the SLA deadline" in slack or "2h00m to the SLA deadline" in slack, slack
    assert doc["score"] == pytest.approx(sum(x["value"] * x["weight"] for x in terms.values()),
                                         abs=1e-5)
    # the funnel: 4 technical-support engineers have the skill, 2 of them are available
    f = doc["funnel"]
    assert (f["skill"], f["region"], f["available"], f["on_shift"], f["free_capacity"]) == \
        (4, 4, 2, 2, 2)
    assert doc["candidates"] == 2
    assert [x["engineer_id"] for x in doc["alternatives"]] == [good["id"]]
    assert doc["alternatives"][0]["score"] < doc["score"]
    assert doc["why"].startswith("best of 2 candidates")
    assert open_jobs(astack.db, best["id"]) == 1 and open_jobs(astack.db, good["id"]) == 0


def test_load_spreads_equal_engineers(astack, sup, sub):
    m = unique("M")
    e1 = engineer(sup, m, level=4, capacity=4)
    e2 = engineer(sup, m, level=4, capacity=4)
    prod = product(astack, m)
    first = ticket(astack, prod)
    a1 = wait_current(sup, first["number"])
    second = ticket(astack, prod)
    a2 = wait_current(sup, second["number"])
    # equal scores: fewer open jobs, then the smaller id; then the other one is less loaded
    assert a1["engineer"]["id"] == min(e1["id"], e2["id"])
    assert a2["engineer"]["id"] != a1["engineer"]["id"]
    assert {x["name"]: x["detail"] for x in a2["breakdown"]}["load"] == "0 of 4 open jobs"


def test_a_batch_notifies_nobody_and_its_event_goes_out_at_once(astack, sup, sub):
    """The worker's batch sends no NOTIFY (migration 017): it takes its engineers' new
    counts from the database's answer and wakes the outbox relay itself — so its
    ticket.assigned is on the bus at once, not at the relay's one-second poll."""
    m = unique("M")
    e = engineer(sup, m, level=4, capacity=5)
    prod = product(astack, m)
    listener = astack.pg.connect()
    listener.cursor().execute("LISTEN dispatch_assign; LISTEN dispatch_outbox")
    delays = []
    for _ in range(3):
        mark = sub.mark()
        t = ticket(astack, prod)
        [assigned] = wait_event(sub, "ticket.assigned", t["number"], mark)
        [created] = [x for x in sub.messages(mark) if x.topic == b"ticket.created"
                     and x.env.subject == t["number"]]
        delays.append(assigned.at - created.at)
    listener.poll()
    notes = [(n.channel, n.payload) for n in listener.notifies]
    listener.close()
    assert [x for x in notes if x[0] == "dispatch_outbox" or x[1].startswith("load ")] == []
    assert open_jobs(astack.db, e["id"]) == 3
    assert max(delays) < 0.7, delays


def test_vip_prefers_skill(astack, sup, sub):
    """The same situation twice — an idle engineer of level 2 and an expert who already has
    one of their two jobs: a standard ticket goes to the idle one, a VIP ticket to the
    expert."""
    vip = astack.api("agent").new_customer(tier="vip")

    def busy_expert():
        m = unique("M")
        idle = engineer(sup, m, level=2, capacity=10)
        expert = engineer(sup, m, level=5, capacity=2)
        first = ticket(astack, product(astack, m))
        assert wait_current(sup, first["number"])["engineer"]["id"] == expert["id"]
        return m, idle, expert

    m, idle, expert = busy_expert()
    std = wait_current(sup, ticket(astack, product(astack, m))["number"])
    assert std["engineer"]["id"] == idle["id"], std["why"]
    m, idle, expert = busy_expert()
    t = ticket(astack, product(astack, m, customer=vip), customer=vip)
    a = wait_current(sup, t["number"])
    assert a["engineer"]["id"] == expert["id"], a["why"]
    terms = {x["name"]: x for x in a["breakdown"]}
    assert terms["customer_tier"]["value"] == 1.0 and "VIP" in terms["customer_tier"]["detail"]
    assert a["alternatives"][0]["engineer_id"] == idle["id"]


def test_on_site_work_honours_region_and_releases_diagnosis(astack, sup, sub):
    m = unique("M")
    ts = engineer(sup, m, level=3)
    near = engineer(sup, m, role="field_engineer", level=2, regions=("north", "east"))
    engineer(sup, m, role="field_engineer", level=5, regions=("south",))   # better, far away
    depot = engineer(sup, m, role="depot_technician", level=1, regions=("south",))
    mark = sub.mark()
    t = ticket(astack, product(astack, m, region="east"))
    diag = wait_current(sup, t["number"], kind="diagnosis")
    assert diag["engineer"]["id"] == ts["id"]
    # what plans (005) do when a plan is accepted
    astack.db.rows("SELECT dispatch.assign_request(%s, 'work', 'on_site', 'plan accepted')",
                   (t["id"],))
    work = wait_current(sup, t["number"], kind="work")
    assert work["engineer"]["id"] == near["id"] and work["mode"] == "on_site"
    assert work["funnel"]["skill"] == 2 and work["funnel"]["region"] == 1
    [rel] = wait_event(sub, "assignment.released", t["number"], mark)
    ch = rel.env.assignment_changed
    assert ch.assignment.id == diag["id"]
    assert ch.assignment.state == dispatch_pb2.ASSIGNMENT_STATE_RELEASED
    assert "plan accepted" in ch.reason
    msgs = wait_event(sub, "ticket.assigned", t["number"], mark, count=2)
    assert msgs[1].env.ticket_assigned.assignment.kind == dispatch_pb2.ASSIGNMENT_KIND_WORK
    h = history(sup, t["number"])
    assert h["current_engineer_id"] == near["id"]
    assert [a["state"] for a in h["items"]] == ["offered", "released"]
    assert open_jobs(astack.db, ts["id"]) == 0
    # a revised plan for the depot: the field engineer is replaced, region does not matter
    astack.db.rows("SELECT dispatch.assign_request(%s, 'work', 'depot_repair', 'plan revised')",
                   (t["id"],))
    assert wait_current(sup, t["number"], kind="work",
                        engineer_id=depot["id"])["role"] == "depot_technician"
    assert open_jobs(astack.db, near["id"]) == 0


def test_shift_off_now_is_not_chosen(astack, sup, sub):
    m = unique("M")
    engineer(sup, m, level=5, shift=off_shift_now())          # the best, but off shift
    on = engineer(sup, m, level=1)
    t = ticket(astack, product(astack, m))
    a = wait_current(sup, t["number"])
    assert a["engineer"]["id"] == on["id"]
    assert a["funnel"]["available"] == 2 and a["funnel"]["on_shift"] == 1
    # only the off-shift engineer has this skill: the ticket waits
    m2 = unique("M")
    engineer(sup, m2, level=5, shift=off_shift_now())
    mark = sub.mark()
    t2 = ticket(astack, product(astack, m2))
    [msg] = wait_event(sub, "assignment.unfilled", t2["number"], mark)
    assert "on shift" in msg.env.assignment_unfilled.reason


# ----------------------------------------------------------------------------- capacity

def test_capacity_holds_under_a_burst(astack, sup, sub):
    m = unique("M")
    engs = [engineer(sup, m, level=3, capacity=2) for _ in range(2)]
    prod = product(astack, m)
    mark = sub.mark()
    numbers = [post_ticket(astack, prod)["number"] for _ in range(7)]
    wait_until(lambda: len(dispatch_events(sub, "ticket.assigned", since=mark)) +
               len(dispatch_events(sub, "assignment.unfilled", since=mark)) >=
               len(numbers) and all(
                   any(m_.env.subject == n for m_ in
                       dispatch_events(sub, "ticket.assigned", since=mark) +
                       dispatch_events(sub, "assignment.unfilled", since=mark))
                   for n in numbers), 20, 0.1, "every ticket assigned or unfilled")
    assigned = [x for x in dispatch_events(sub, "ticket.assigned", since=mark)
                if x.env.subject in numbers]
    unfilled = [x for x in dispatch_events(sub, "assignment.unfilled", since=mark)
                if x.env.subject in numbers]
    assert len(assigned) == 4 and len(unfilled) == 3
    per = {}
    for x in assigned:
        per.setdefault(x.env.ticket_assigned.assignment.engineer_id, []).append(x.env.subject)
    assert sorted(len(v) for v in per.values()) == [2, 2]
    assert all(open_jobs(astack.db, e["id"]) == 2 for e in engs)
    for x in unfilled:
        assert "at capacity" in x.env.assignment_unfilled.reason
    queue = sup.must(sup.get("/v1/assignments/queue?unfilled=true&limit=200"), 200)
    waiting = {q["ticket"] for q in queue["items"]}
    assert {x.env.subject for x in unfilled} <= waiting

    # freed capacity wakes the queue: a cancelled ticket's engineer takes a waiting one
    done = assigned[0]
    freed = done.env.ticket_assigned.assignment.engineer_id
    mark2 = sub.mark()
    intake_sup = astack.api("supervisor")
    intake_sup.must(intake_sup.transition(done.env.subject, "cancelled", "duplicate"), 200)
    [rel] = wait_event(sub, "assignment.released", done.env.subject, mark2)
    assert rel.env.assignment_changed.assignment.state == dispatch_pb2.ASSIGNMENT_STATE_RELEASED
    wait_until(lambda: any(x.env.subject in waiting and
                           x.env.ticket_assigned.assignment.engineer_id == freed
                           for x in dispatch_events(sub, "ticket.assigned", since=mark2)),
               15, 0.05, "a waiting ticket to get the freed engineer")
    assert open_jobs(astack.db, freed) == 2
    # every alert was published once, whatever the retries
    time.sleep(1.5)
    for n in numbers:
        assert len(dispatch_events(sub, "assignment.unfilled", n, mark)) <= 1


# ----------------------------------------------------------------------------- decline / accept

def test_decline_moves_to_next_then_queue(astack, sup, sub):
    m = unique("M")
    a_eng = engineer(sup, m, level=5)
    b_eng = engineer(sup, m, level=3)
    a_api, b_api = astack.engineer_api(a_eng["id"]), astack.engineer_api(b_eng["id"])
    mark = sub.mark()
    t = ticket(astack, product(astack, m))
    first = wait_current(sup, t["number"])
    assert first["engineer"]["id"] == a_eng["id"]

    d = answer(a_api, first["id"], "decline", {"reason": "on another site all day"})
    assert d["state"] == "declined" and d["end_reason"] == "on another site all day"
    assert open_jobs(astack.db, a_eng["id"]) == 0
    [dec] = wait_event(sub, "assignment.declined", t["number"], mark)
    assert dec.env.assignment_changed.reason == "on another site all day"
    assert dec.env.assignment_changed.assignment.state == dispatch_pb2.ASSIGNMENT_STATE_DECLINED
    second = wait_current(sup, t["number"], engineer_id=b_eng["id"])
    assert second["previous_engineer_id"] == a_eng["id"]
    assert second["reason"].startswith("declined by %s" % a_eng["name"])
    msgs = wait_event(sub, "ticket.assigned", t["number"], mark, count=2)
    assert msgs[1].env.ticket_assigned.previous_engineer_id == a_eng["id"]
    assert msgs[1].env.ticket_assigned.assignment.engineer_id == b_eng["id"]

    # the second one declines too: nobody is left; the ticket waits, the supervisor is told
    answer(b_api, second["id"], "decline", {"reason": "no parts"})
    [alert] = wait_event(sub, "assignment.unfilled", t["number"], mark)
    u = alert.env.assignment_unfilled
    assert u.kind == dispatch_pb2.ASSIGNMENT_KIND_DIAGNOSIS and "declined" in u.reason
    q = wait_queued(sup, t["number"])
    assert q["kind"] == "diagnosis" and "declined" in q["unfilled_reason"]
    queue = sup.must(sup.get("/v1/assignments/queue?kind=diagnosis&limit=200"), 200)
    assert t["number"] in [x["ticket"] for x in queue["items"]]
    h = history(sup, t["number"])
    assert [a["state"] for a in h["items"]] == ["declined", "declined"]
    assert h["current_engineer_id"] is None

    # a supervisor can still give it to one of them
    r = sup.must(sup.post("/v1/tickets/%s/assign" % t["number"],
                          json={"engineer_id": a_eng["id"], "reason": "site visit moved"}), 201)
    assert r["method"] == "supervisor" and r["engineer"]["id"] == a_eng["id"]
    assert history(sup, t["number"])["queued"] == []


def test_accept_and_illegal_steps(astack, sup, sub):
    m = unique("M")
    e = engineer(sup, m, level=4, capacity=5)
    eng_api = astack.engineer_api(e["id"])
    prod = product(astack, m)
    mark = sub.mark()
    t = ticket(astack, prod)
    a = wait_current(sup, t["number"])
    acc = answer(eng_api, a["id"], "accept", {})
    assert acc["state"] == "accepted" and acc["accepted_at"] and acc["decided_by"]
    [ev] = wait_event(sub, "assignment.accepted", t["number"], mark)
    assert ev.env.assignment_changed.assignment.state == dispatch_pb2.ASSIGNMENT_STATE_ACCEPTED
    assert open_jobs(astack.db, e["id"]) == 1            # accepted still counts

    t2 = ticket(astack, prod)
    a2 = wait_current(sup, t2["number"])
    answer(eng_api, a2["id"], "decline", {"reason": "sick"})
    wait_queued(sup, t2["number"])
    before = (state(astack.db, t["number"]), state(astack.db, t2["number"]))
    steps = [
        ("accept", a["id"], {}, 409, "illegal_transition", None),        # accepted twice
        ("decline", a["id"], {"reason": "x"}, 409, "illegal_transition", None),
        ("accept", a2["id"], {}, 409, "illegal_transition", None),       # a declined one
        ("decline", a2["id"], {"reason": "x"}, 409, "illegal_transition", None),  # twice
        ("accept", "00000000-0000-4000-8000-000000000000", {}, 404, "not_found", None),
        ("accept", "not-a-uuid", {}, 404, "not_found", None),
        ("decline", a2["id"], {}, 422, "missing_field", "reason"),
        ("decline", a2["id"], {"reason": "   "}, 422, "invalid_field", "reason"),
        ("decline", a2["id"], {"reason": 7}, 422, "invalid_field", "reason"),
        ("decline", a2["id"], {"reason": "x" * 501}, 422, "invalid_field", "reason"),
        ("accept", a["id"], {"note": "x"}, 422, "unknown_field", "note"),
    ]
    for verb, aid, body, status, code, field in steps:
        assert_error(eng_api.post("/v1/assignments/%s/%s" % (aid, verb), json=body), status,
                     code, field)
    # roles: an agent may read but not decide
    agent = astack.dispatch_api("agent")
    assert_error(agent.post("/v1/assignments/%s/accept" % a2["id"], json={}), 403)
    assert_error(astack.dispatch_api("warehouse").get("/v1/assignments/queue"), 403)
    assert_error(astack.dispatch_api(None).get("/v1/assignments/" + a["id"]), 401)
    assert agent.must(agent.get("/v1/assignments/" + a["id"]), 200)["state"] == "accepted"
    assert (state(astack.db, t["number"]), state(astack.db, t2["number"])) == before


def test_offer_is_answered_by_its_engineer_or_a_supervisor(astack, sup, eng_api):
    """An engineer's token answers only the offers made to the engineer it names; a token
    naming nobody answers none; a supervisor answers any. A refusal changes nothing."""
    m = unique("M")
    mine = engineer(sup, m, level=5, capacity=5)
    other = engineer(sup, m, level=1, capacity=5, regions=("south",))
    mine_api, other_api = astack.engineer_api(mine["id"]), astack.engineer_api(other["id"])
    prod = product(astack, m)
    t = ticket(astack, prod)
    a = wait_current(sup, t["number"])
    assert a["engineer"]["id"] == mine["id"]
    before = state(astack.db, t["number"])
    for verb, body in (("accept", {}), ("decline", {"reason": "not mine"})):
        path = "/v1/assignments/%s/%s" % (a["id"], verb)
        assert_error(other_api.post(path, json=body), 403, "not_your_assignment")
        err = assert_error(eng_api.post(path, json=body), 403, "forbidden")  # names nobody
        assert "--engineer" in err["message"]
    assert state(astack.db, t["number"]) == before  # no change, no event in the outbox
    acc = answer(mine_api, a["id"], "accept", {})
    assert acc["state"] == "accepted"
    assert acc["decided_by"] == token_name(astack, mine_api)

    # a supervisor may answer an offer made to anyone
    t2 = ticket(astack, prod)
    a2 = wait_current(sup, t2["number"])
    dec = answer(sup, a2["id"], "decline", {"reason": "engineer called in sick"})
    assert dec["state"] == "declined" and dec["decided_by"] == token_name(astack, sup)


# ----------------------------------------------------------------------------- no fit

def test_no_fit_waits_in_queue_with_one_alert(astack, sup, sub):
    m = unique("M")
    mark = sub.mark()
    t = ticket(astack, product(astack, m), urgency="critical")
    [alert] = wait_event(sub, "assignment.unfilled", t["number"], mark)
    u = alert.env.assignment_unfilled
    assert u.kind == dispatch_pb2.ASSIGNMENT_KIND_DIAGNOSIS
    assert m in u.reason and "technical_support" in u.reason
    assert u.ticket.number == t["number"] and u.queued_at
    q = wait_queued(sup, t["number"])
    assert q["unfilled"] and q["unfilled_reason"] == u.reason and q["priority"] == "P1"
    listed = sup.must(sup.get("/v1/assignments/queue?unfilled=true&limit=200"), 200)
    assert t["number"] in [x["ticket"] for x in listed["items"]]
    assert listed["total"] >= 1
    # an engineer change makes the worker try again: still nobody, still one alert
    engineer(sup, unique("M"))
    wait_until(lambda: history(sup, t["number"])["queued"][0]["tries"] >= 2, 10, 0.05,
               "a retry")
    time.sleep(0.5)
    assert len(dispatch_events(sub, "assignment.unfilled", t["number"], mark)) == 1
    # someone with the skill arrives: the ticket is assigned at once, the queue is empty
    e = engineer(sup, m, level=1)
    a = wait_current(sup, t["number"], timeout=10)
    assert a["engineer"]["id"] == e["id"]
    assert history(sup, t["number"])["queued"] == []
    for bad in ("kind=repair", "unfilled=maybe", "limit=0", "limit=201", "limit=x"):
        assert_error(sup.get("/v1/assignments/queue?" + bad), 422, "invalid_field")


# ----------------------------------------------------------------------------- supervisor

def test_supervisor_reassigns_with_reason(astack, sup, sub):
    m = unique("M")
    a_eng = engineer(sup, m, level=5)
    b_eng = engineer(sup, m, level=1)
    mark = sub.mark()
    t = ticket(astack, product(astack, m))
    first = wait_current(sup, t["number"])
    assert first["engineer"]["id"] == a_eng["id"]
    r = sup.must(sup.post("/v1/tickets/%s/assign" % t["number"],
                          json={"engineer_id": b_eng["id"], "reason": "knows the customer"}),
                 201)
    assert r["method"] == "supervisor" and r["reason"] == "knows the customer"
    assert r["previous_engineer_id"] == a_eng["id"] and r["override"] is False
    assert r["why"].startswith("assigned by ") and r["score"] is None
    [rel] = wait_event(sub, "assignment.released", t["number"], mark)
    assert rel.env.assignment_changed.assignment.state == dispatch_pb2.ASSIGNMENT_STATE_REPLACED
    msgs = wait_event(sub, "ticket.assigned", t["number"], mark, count=2)
    assert msgs[1].env.ticket_assigned.assignment.method == "supervisor"
    assert msgs[1].env.ticket_assigned.previous_engineer_id == a_eng["id"]
    assert [a["state"] for a in history(sup, t["number"])["items"]] == ["offered", "replaced"]
    assert open_jobs(astack.db, a_eng["id"]) == 0 and open_jobs(astack.db, b_eng["id"]) == 1


def test_supervisor_refusals_change_nothing(astack, sup, sub):
    m = unique("M")
    holder = engineer(sup, m, level=5)
    leave = engineer(sup, m, availability="on_leave")
    full = engineer(sup, m, capacity=0)
    field = engineer(sup, m, role="field_engineer")
    t = ticket(astack, product(astack, m))
    wait_current(sup, t["number"])
    path = "/v1/tickets/%s/assign" % t["number"]
    before = state(astack.db, t["number"])
    cases = [
        ({"engineer_id": leave["id"], "reason": "r"}, 409, "engineer_unavailable", "engineer_id"),
        ({"engineer_id": full["id"], "reason": "r"}, 409, "engineer_at_capacity", "engineer_id"),
        ({"engineer_id": field["id"], "reason": "r"}, 409, "wrong_role", "engineer_id"),
        ({"engineer_id": holder["id"], "reason": "r"}, 409, "already_assigned", "engineer_id"),
        ({"engineer_id": "00000000-0000-4000-8000-000000000000", "reason": "r"}, 422,
         "unknown_reference", "engineer_id"),
        ({"engineer_id": "nobody", "reason": "r"}, 422, "invalid_field", "engineer_id"),
        ({"reason": "r"}, 422, "missing_field", "engineer_id"),
        ({"engineer_id": leave["id"]}, 422, "missing_field", "reason"),
        ({"engineer_id": leave["id"], "reason": ""}, 422, "invalid_field", "reason"),
        ({"engineer_id": leave["id"], "reason": "r", "kind": "repair"}, 422, "invalid_field",
         "kind"),
        ({"engineer_id": leave["id"], "reason": "r", "override": "yes"}, 422, "invalid_field",
         "override"),
        ({"engineer_id": leave["id"], "reason": "r", "priority": 1}, 422, "unknown_field",
         "priority"),
    ]
    for body, status, code, field_name in cases:
        assert_error(sup.post(path, json=body), status, code, field_name)
    assert_error(sup.post("/v1/tickets/SV-20990101-999999/assign",
                          json={"engineer_id": leave["id"], "reason": "r"}), 404, "not_found")
    assert_error(astack.dispatch_api("engineer").post(path, json={"engineer_id": leave["id"],
                                                                  "reason": "r"}), 403)
    assert state(astack.db, t["number"]) == before
    # with override, the supervisor's word goes: even beyond capacity
    r = sup.must(sup.post(path, json={"engineer_id": full["id"], "reason": "only one who can",
                                      "override": True}), 201)
    assert r["override"] is True and r["engineer"]["id"] == full["id"]
    assert open_jobs(astack.db, full["id"]) == 1 and open_jobs(astack.db, holder["id"]) == 0
    # a closed ticket takes no assignment
    intake_sup = astack.api("supervisor")
    intake_sup.must(intake_sup.transition(t["number"], "cancelled", "duplicate"), 200)
    wait_until(lambda: history(sup, t["number"])["open"] == [], 10, 0.05, "release")
    assert_error(sup.post(path, json={"engineer_id": holder["id"], "reason": "r"}), 409,
                 "ticket_closed")
    assert open_jobs(astack.db, full["id"]) == 0


# ----------------------------------------------------------------------------- other modules

def test_redispatch_and_reopen(astack, sup, sub):
    m = unique("M")
    first = engineer(sup, m, level=5)
    second = engineer(sup, m, level=2)
    mark = sub.mark()
    t = ticket(astack, product(astack, m))
    a = wait_current(sup, t["number"])
    assert a["engineer"]["id"] == first["id"]
    # the SLA engine's re-dispatch at breach + grace: taken from the holder, who is not
    # offered it again
    astack.db.rows("SELECT dispatch.redispatch(%s, 'first response breached')", (t["id"],))
    b = wait_current(sup, t["number"], engineer_id=second["id"])
    assert b["previous_engineer_id"] == first["id"]
    assert b["reason"] == "re-dispatch: first response breached"
    [rel] = wait_event(sub, "assignment.released", t["number"], mark)
    ch = rel.env.assignment_changed
    assert ch.assignment.engineer_id == first["id"]
    assert ch.assignment.state == dispatch_pb2.ASSIGNMENT_STATE_REPLACED
    assert astack.db.scalar("SELECT dispatch.current_engineer(%s)", (t["id"],)) == second["id"]
    # resolved at the first contact: released; reopened: a new diagnosis request
    intake_sup = astack.api("supervisor")
    intake_sup.must(intake_sup.transition(t["number"], "resolved", "explained"), 200)
    wait_until(lambda: history(sup, t["number"])["open"] == [], 10, 0.05, "release")
    assert history(sup, t["number"])["items"][0]["state"] == "released"
    assert open_jobs(astack.db, second["id"]) == 0
    intake_sup.must(intake_sup.transition(t["number"], "reopened", "not fixed"), 200)
    c = wait_current(sup, t["number"])
    assert c["reason"] == "ticket reopened" and c["kind"] == "diagnosis"
    assert c["engineer"]["id"] == first["id"]   # a new request: nobody is excluded


# ----------------------------------------------------------------------------- restart

def test_restart_keeps_the_queue_and_alerts_once(astack, sup, sub):
    m = unique("M")
    mark = sub.mark()
    t = ticket(astack, product(astack, m))
    wait_event(sub, "assignment.unfilled", t["number"], mark)
    astack.dispatch.restart(signal.SIGKILL)
    e = engineer(sup, m, level=2)
    a = wait_current(sup, t["number"], timeout=15)
    assert a["engineer"]["id"] == e["id"]
    assert len(dispatch_events(sub, "assignment.unfilled", t["number"], mark)) == 1
    wait_event(sub, "ticket.assigned", t["number"], mark)
