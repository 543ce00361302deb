"""Dispatch, item 3 of issue 4: service plans (docs/dispatch-api.md "Service plans").

An engineer proposes a plan (mode, work, parts, fee, ETA); the customer accepts or
disputes it through an agent or a signed link; a disputed plan is revised; an accepted
plan asks assignment for the engineer who does the work. Every refusal is a clear error
and changes nothing (the plan rows, the links and the plan.* outbox rows are compared
before and after); the plan.* events are read off the bus by a subscriber.

One private stack (PostgreSQL, bus, intake, dispatch with a link secret) serves the
module. dispatch.assign_request() is wrapped by a recording spy (the real function still
runs), so that the tests see acceptance ask for the work assignment whatever the
assignment module does with it."""

import datetime
import hashlib
import hmac
import signal
import threading
import time
import urllib.parse

import pytest
import requests

import helpers
from helpers import assert_error, unique, utc_now, wait_until

from aftercare.v1 import dispatch_pb2

SECRET = "plans-test-secret-0123456789abcdefghijklmnop"  # 32+ characters
NO_TICKET = "SV-20990101-000001"
NO_PLAN = "00000000-0000-4000-8000-000000000000"


@pytest.fixture(scope="module")
def dstack(tmp_root):
    from conftest import _start_stack, _stop_stack
    stack = _start_stack(tmp_root, "plans", dispatch=True,
                         dispatch_env={"AC_DISPATCH_LINK_SECRET": SECRET})
    install_assign_spy(stack.db)
    stack.holder, stack.holder_api = helpers.ticket_holder(stack)
    yield stack
    _stop_stack(stack)


@pytest.fixture(scope="module")
def sub(dstack):
    return dstack.subscriber()  # every topic; live once a probe ticket came through


@pytest.fixture
def eng(dstack):
    """The engineer every paid_ticket() and warranty_ticket() is assigned to (for its
    diagnosis), under their own token."""
    return dstack.holder_api


@pytest.fixture
def agent(dstack):
    return dstack.dispatch_api("agent")


@pytest.fixture
def sup(dstack):
    return dstack.dispatch_api("supervisor")


def install_assign_spy(db):
    db.rows("CREATE TABLE public.assign_calls (ticket_id uuid, kind text, mode text, "
            "reason text, at timestamptz DEFAULT clock_timestamp())")
    db.rows("ALTER FUNCTION dispatch.assign_request(uuid, text, text, text) "
            "RENAME TO assign_request_spied")
    db.rows("""
        CREATE FUNCTION dispatch.assign_request(p_ticket_id uuid, p_kind text, p_mode text,
                                                p_reason text)
            RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
        BEGIN
            INSERT INTO public.assign_calls (ticket_id, kind, mode, reason)
            VALUES (p_ticket_id, p_kind, p_mode, p_reason);
            PERFORM dispatch.assign_request_spied(p_ticket_id, p_kind, p_mode, p_reason);
        END $$""")


def assign_calls(db, ticket_id):
    return db.rows("SELECT kind, mode, reason FROM public.assign_calls WHERE ticket_id = %s "
                   "ORDER BY at", (ticket_id,))


# ----------------------------------------------------------------------------- helpers

def eta(hours=48):
    return helpers.rfc3339(utc_now() + datetime.timedelta(hours=hours))


def plan_body(**over):
    body = {"mode": "on_site", "work": "Replace the pump seal and test the pressure",
            "parts": [{"part_number": "SEAL-9", "description": "seal kit", "quantity": 2,
                       "unit_price_cents": 1250}],
            "fee_cents": 18900, "currency": "EUR", "eta": eta()}
    for k, v in over.items():
        if v is helpers.DROP:
            body.pop(k, None)
        else:
            body[k] = v
    return body


def paid_ticket(dstack):
    """A ticket out of warranty (no product): its plans need a quote."""
    t = helpers.dispatch_ticket(dstack)
    assert t["warranty"]["in_warranty"] is False
    helpers.put_on_ticket(dstack, dstack.holder, t["number"])
    return t


def warranty_ticket(dstack):
    """A fault on a product bought 30 days ago, its model under a 24-month warranty."""
    agent = dstack.api("agent")
    cust = agent.new_customer()
    model = unique("WP")
    sup = dstack.api("supervisor")
    sup.must(sup.put("/v1/warranty-policies/" + model, json={"months": 24}), 200)
    bought = (utc_now() - datetime.timedelta(days=30)).strftime("%Y-%m-%d")
    prod = agent.new_product(cust["id"], model=model, purchase_date=bought)
    t = helpers.dispatch_ticket(dstack, customer=cust, product_id=prod["id"],
                                category="fault_repair")
    assert t["warranty"]["in_warranty"] is True, t["warranty"]
    view = dstack.dispatch_api("agent").get("/v1/tickets/" + t["number"]).json()
    assert view["in_warranty"] is True
    helpers.put_on_ticket(dstack, dstack.holder, t["number"])
    return t


def propose(api, number, **over):
    return api.must(api.post("/v1/tickets/%s/plans" % number, json=plan_body(**over)), 201)


def state(dstack, ticket_id):
    """Everything a plan request could change for the ticket."""
    db = dstack.db
    return (db.rows("SELECT * FROM dispatch.plans WHERE ticket_id = %s ORDER BY revision",
                    (ticket_id,)),
            db.scalar("SELECT count(*) FROM dispatch.plan_links l JOIN dispatch.plans p "
                      "ON p.id = l.plan_id WHERE p.ticket_id = %s", (ticket_id,)),
            db.scalar("SELECT count(*) FROM dispatch.outbox WHERE topic LIKE 'plan.%%'"),
            len(assign_calls(db, ticket_id)))


def plan_events(sub, number, topic=None, since=0):
    return [m for m in sub.messages(since)
            if m.env is not None and m.env.source == helpers.DISPATCH_SOURCE
            and m.topic.startswith(b"plan.") and m.env.subject == number
            and (topic is None or m.topic == topic.encode())]


def wait_plan_event(sub, number, topic, count=1, since=0):
    return wait_until(lambda: (lambda evs: evs if len(evs) >= count else None)(
        plan_events(sub, number, topic, since)), 15, 0.05,
        "%d %s event(s) for %s" % (count, topic, number))


def issue_link(api, plan_id, **body):
    r = api.post("/v1/plans/%s/link" % plan_id, json=body)
    return api.must(r, 201)


def customer(dstack):
    """A client without a token: what the customer's browser is."""
    return helpers.Api(dstack.dispatch.url)


def link_parts(path):
    u = urllib.parse.urlsplit(path)
    q = dict(urllib.parse.parse_qsl(u.query))
    return u.path, q


def sign(plan_id, revision, expires, secret=SECRET):
    msg = "aftercare.plan-link.v1\n%s\n%d\n%d" % (plan_id, revision, expires)
    return hmac.new(secret.encode(), msg.encode(), hashlib.sha256).hexdigest()


def with_query(path, **q):
    return path + "?" + urllib.parse.urlencode(q)


def token_name(dstack, role, api=None):
    """The name of role's token (or of api's token)."""
    token = api.token if api is not None else dstack.tokens[role]
    digest = hashlib.sha256(token.encode()).hexdigest()
    return dstack.db.scalar("SELECT name FROM auth.tokens WHERE token_sha256 = %s", (digest,))


# ----------------------------------------------------------------------------- the happy paths

def test_propose_then_accept_through_an_agent(dstack, sub, eng, agent):
    t = paid_ticket(dstack)
    mark = sub.mark()
    body = plan_body(mode="on_site")
    r = eng.post("/v1/tickets/%s/plans" % t["number"], json=body)
    p = eng.must(r, 201)
    assert helpers.is_uuid(p["id"])
    assert p["ticket_id"] == t["id"] and p["ticket_number"] == t["number"]
    assert p["revision"] == 1 and p["state"] == "proposed"
    assert p["mode"] == "on_site" and p["work"] == body["work"]
    assert p["parts"] == body["parts"]
    assert p["free_of_charge"] is False and p["fee_cents"] == 18900 and p["currency"] == "EUR"
    assert helpers.same_instant(p["eta"], body["eta"])
    assert p["proposed_by"] == token_name(dstack, "engineer", eng)
    assert p["supersedes_plan_id"] is None and p["superseded_by_plan_id"] is None
    assert p["decided_at"] is None and p["via"] is None
    # readable by everyone who works on tickets, in the ticket's history too
    for role in ("agent", "engineer", "supervisor", "integration", "admin"):
        api = dstack.dispatch_api(role)
        assert api.must(api.get("/v1/plans/" + p["id"]), 200) == p
    hist = agent.must(agent.get("/v1/tickets/%s/plans" % t["number"]), 200)
    assert hist == {"ticket_number": t["number"], "items": [p]}
    # the ticket as both events see it (the acceptance then moves it on to planned)
    view = agent.must(agent.get("/v1/tickets/" + t["number"]), 200)

    a = agent.must(agent.post("/v1/plans/%s/accept" % p["id"],
                              json={"customer_name": "Jo Smith", "note": "agreed by phone"}), 200)
    assert a["state"] == "accepted" and a["via"] == "agent"
    assert a["decided_by"] == token_name(dstack, "agent")
    assert a["customer_name"] == "Jo Smith" and a["decision_note"] == "agreed by phone"
    assert helpers.parse_rfc3339(a["decided_at"])
    # intake soon moves the ticket on to planned (plan.accepted): its status may differ
    got = agent.must(agent.get("/v1/plans/" + p["id"]), 200)
    assert dict(got, ticket_status=None) == dict(a, ticket_status=None)
    # acceptance asked assignment for the engineer who does the work
    assert assign_calls(dstack.db, t["id"]) == [
        {"kind": "work", "mode": "on_site", "reason": "service plan revision 1 accepted"}]

    proposed, = wait_plan_event(sub, t["number"], "plan.proposed", since=mark)
    accepted, = wait_plan_event(sub, t["number"], "plan.accepted", since=mark)
    for m, st in ((proposed, dispatch_pb2.PLAN_STATE_PROPOSED),
                  (accepted, dispatch_pb2.PLAN_STATE_ACCEPTED)):
        env = m.env
        assert env.type == "aftercare.%s.v1" % m.topic.decode()
        assert env.partition_key == t["id"] and env.subject == t["number"]
        assert env.ticket_version == view["version"] == env.plan_changed.ticket.version
        assert env.WhichOneof("payload") == "plan_changed"
        pc = env.plan_changed
        assert pc.ticket.number == t["number"] and pc.ticket.id == t["id"]
        assert pc.plan.id == p["id"] and pc.plan.ticket_id == t["id"]
        assert pc.plan.state == st and pc.plan.revision == 1
        assert pc.plan.mode == dispatch_pb2.PLAN_MODE_ON_SITE
        assert pc.plan.fee_cents == 18900 and pc.plan.currency == "EUR"
        assert not pc.plan.free_of_charge
        assert [(x.part_number, x.description, x.quantity, x.unit_price_cents)
                for x in pc.plan.parts] == [("SEAL-9", "seal kit", 2, 1250)]
        assert helpers.same_instant(pc.plan.eta, body["eta"])
        assert pc.plan.proposed_by == p["proposed_by"]
    assert proposed.env.plan_changed.via == ""
    ap = accepted.env.plan_changed
    assert ap.via == "agent" and ap.plan.decided_by == a["decided_by"]
    assert ap.plan.customer_name == "Jo Smith" and ap.plan.decision_note == "agreed by phone"
    assert helpers.same_instant(ap.plan.decided_at, a["decided_at"])
    assert proposed.env.sequence < accepted.env.sequence


def test_dispute_revise_and_accept_through_signed_links(dstack, sub, eng, agent):
    t = paid_ticket(dstack)
    mark = sub.mark()
    cust = customer(dstack)
    p1 = propose(eng, t["number"], mode="on_site", fee_cents=40000)
    link1 = issue_link(agent, p1["id"], valid_hours=24)
    assert link1["plan_id"] == p1["id"] and link1["revision"] == 1
    assert link1["ticket_number"] == t["number"]
    expires_at = helpers.parse_rfc3339(link1["expires_at"])
    assert abs((expires_at - utc_now()).total_seconds() - 24 * 3600) < 120
    path1, q1 = link_parts(link1["path"])
    assert path1 == "/v1/customer/plans/" + p1["id"]
    assert q1["sig"] == sign(p1["id"], 1, int(q1["expires"]))  # the documented signature
    assert dstack.db.scalar("SELECT issued_by FROM dispatch.plan_links WHERE plan_id = %s",
                            (p1["id"],)) == token_name(dstack, "agent")

    # the customer looks at the plan: no staff names in it
    r = cust.get(link1["path"])
    seen = cust.must(r, 200)
    assert r.headers.get("Cache-Control") == "no-store"
    assert seen["id"] == p1["id"] and seen["revision"] == 1 and seen["state"] == "proposed"
    assert seen["fee_cents"] == 40000 and seen["can_decide"] is True
    assert "proposed_by" not in seen and "decided_by" not in seen

    # ... and disputes it
    d = cust.must(cust.post(link1["path"].replace(p1["id"], p1["id"] + "/dispute", 1),
                            json={"reason": "Too expensive; can it be repaired remotely?",
                                  "name": "Jo Smith"}), 200)
    assert d["state"] == "disputed" and d["can_decide"] is False
    staff = agent.must(agent.get("/v1/plans/" + p1["id"]), 200)
    assert staff["state"] == "disputed" and staff["via"] == "link"
    assert staff["decided_by"] == "customer (signed link)"
    assert staff["decision_note"] == "Too expensive; can it be repaired remotely?"
    disputed, = wait_plan_event(sub, t["number"], "plan.disputed", since=mark)
    assert disputed.env.plan_changed.via == "link"
    assert disputed.env.plan_changed.plan.state == dispatch_pb2.PLAN_STATE_DISPUTED
    assert assign_calls(dstack.db, t["id"]) == []

    # the engineer revises it
    p2 = propose(eng, t["number"], mode="remote", fee_cents=9900, parts=[])
    assert p2["revision"] == 2 and p2["supersedes_plan_id"] == p1["id"]
    assert p2["state"] == "proposed"
    old = agent.must(agent.get("/v1/plans/" + p1["id"]), 200)
    assert old["state"] == "superseded" and old["superseded_by_plan_id"] == p2["id"]
    revised, = wait_plan_event(sub, t["number"], "plan.revised", since=mark)
    assert revised.env.plan_changed.plan.id == p2["id"]
    assert revised.env.plan_changed.plan.supersedes_plan_id == p1["id"]
    assert revised.env.plan_changed.plan.revision == 2
    hist = agent.must(agent.get("/v1/tickets/%s/plans" % t["number"]), 200)["items"]
    assert [(x["revision"], x["state"]) for x in hist] == [(1, "superseded"), (2, "proposed")]

    # the old link is for a superseded revision: 409, whatever it is used for
    before = state(dstack, t["id"])
    assert_error(cust.get(link1["path"]), 409, "plan_superseded")
    for action in ("accept", "dispute"):
        assert_error(cust.post(link1["path"].replace(p1["id"], p1["id"] + "/" + action, 1),
                               json={"reason": "x"} if action == "dispute" else {}),
                     409, "plan_superseded")
    assert state(dstack, t["id"]) == before

    # the new link accepts revision 2
    link2 = issue_link(agent, p2["id"])
    assert abs((helpers.parse_rfc3339(link2["expires_at"]) - utc_now()).total_seconds()
               - 72 * 3600) < 120  # the default validity
    path2, q2 = link_parts(link2["path"])
    a = cust.must(cust.post(with_query(path2 + "/accept", **q2),
                            json={"name": "Jo Smith", "note": "remote is fine"}), 200)
    assert a["state"] == "accepted" and a["revision"] == 2
    staff = agent.must(agent.get("/v1/plans/" + p2["id"]), 200)
    assert staff["via"] == "link" and staff["decided_by"] == "customer (signed link)"
    assert staff["customer_name"] == "Jo Smith"
    accepted, = wait_plan_event(sub, t["number"], "plan.accepted", since=mark)
    assert accepted.env.plan_changed.via == "link"
    assert accepted.env.plan_changed.plan.mode == dispatch_pb2.PLAN_MODE_REMOTE
    assert assign_calls(dstack.db, t["id"]) == [
        {"kind": "work", "mode": "remote", "reason": "service plan revision 2 accepted"}]
    # accepting again through the same link changes nothing
    before = state(dstack, t["id"])
    assert_error(cust.post(with_query(path2 + "/accept", **q2), json={}), 409, "plan_accepted")
    assert cust.must(cust.get(link2["path"]), 200)["state"] == "accepted"
    assert state(dstack, t["id"]) == before


@pytest.mark.parametrize("mode,topic_mode", [
    ("remote", dispatch_pb2.PLAN_MODE_REMOTE),
    ("depot_repair", dispatch_pb2.PLAN_MODE_DEPOT_REPAIR),
    ("external_repair", dispatch_pb2.PLAN_MODE_EXTERNAL_REPAIR)])
def test_every_mode_is_accepted_with_its_work_request(dstack, sub, eng, agent, mode, topic_mode):
    t = paid_ticket(dstack)
    mark = sub.mark()
    p = propose(eng, t["number"], mode=mode)
    agent.must(agent.post("/v1/plans/%s/accept" % p["id"], json={"customer_name": "Kim"}), 200)
    assert [c["mode"] for c in assign_calls(dstack.db, t["id"])] == [mode]
    ev, = wait_plan_event(sub, t["number"], "plan.accepted", since=mark)
    assert ev.env.plan_changed.plan.mode == topic_mode


# ----------------------------------------------------------------------------- warranty and fees

def test_warranty_plan_is_free_and_a_fee_is_refused(dstack, sub, eng):
    t = warranty_ticket(dstack)
    url = "/v1/tickets/%s/plans" % t["number"]
    before = state(dstack, t["id"])
    assert_error(eng.post(url, json=plan_body(fee_cents=5000)), 422, "invalid_field", "fee_cents")
    assert_error(eng.post(url, json=plan_body(fee_cents=5000, free_of_charge=False)), 422,
                 "invalid_field", "free_of_charge")
    assert_error(eng.post(url, json=plan_body(fee_cents=helpers.DROP, free_of_charge=False)),
                 422, "invalid_field", "free_of_charge")
    assert state(dstack, t["id"]) == before

    mark = sub.mark()
    p = propose(eng, t["number"], fee_cents=helpers.DROP, currency=helpers.DROP)
    assert p["free_of_charge"] is True and p["fee_cents"] == 0 and p["currency"] is None
    assert p["warranty_exclusion"] is None
    ev, = wait_plan_event(sub, t["number"], "plan.proposed", since=mark)
    assert ev.env.plan_changed.plan.free_of_charge is True
    assert ev.env.plan_changed.plan.fee_cents == 0
    assert ev.env.plan_changed.ticket.in_warranty is True
    eng.must(eng.post("/v1/plans/%s/cancel" % p["id"], json={"reason": "start over"}), 200)

    # fee 0 spelled out, and free_of_charge true, are the same free plan
    p = propose(eng, t["number"], fee_cents=0, free_of_charge=True)
    assert p["free_of_charge"] is True and p["fee_cents"] == 0 and p["currency"] == "EUR"
    eng.must(eng.post("/v1/plans/%s/cancel" % p["id"], json={"reason": "start over"}), 200)


def test_warranty_exclusion_makes_a_quote(dstack, sub, eng):
    t = warranty_ticket(dstack)
    url = "/v1/tickets/%s/plans" % t["number"]
    before = state(dstack, t["id"])
    # excluded work is charged: a quote is required, free is refused
    assert_error(eng.post(url, json=plan_body(warranty_exclusion="water damage",
                                              fee_cents=helpers.DROP)),
                 422, "missing_field", "fee_cents")
    assert_error(eng.post(url, json=plan_body(warranty_exclusion="water damage",
                                              currency=helpers.DROP)),
                 422, "missing_field", "currency")
    assert_error(eng.post(url, json=plan_body(warranty_exclusion="water damage",
                                              free_of_charge=True)),
                 422, "invalid_field", "free_of_charge")
    assert state(dstack, t["id"]) == before
    mark = sub.mark()
    p = propose(eng, t["number"], warranty_exclusion="water damage", fee_cents=12000)
    assert p["free_of_charge"] is False and p["fee_cents"] == 12000
    assert p["warranty_exclusion"] == "water damage"
    ev, = wait_plan_event(sub, t["number"], "plan.proposed", since=mark)
    assert ev.env.plan_changed.plan.warranty_exclusion == "water damage"
    assert ev.env.plan_changed.plan.fee_cents == 12000


def test_out_of_warranty_needs_a_quote(dstack, eng):
    t = paid_ticket(dstack)
    url = "/v1/tickets/%s/plans" % t["number"]
    before = state(dstack, t["id"])
    assert_error(eng.post(url, json=plan_body(fee_cents=helpers.DROP)), 422, "missing_field",
                 "fee_cents")
    assert_error(eng.post(url, json=plan_body(currency=helpers.DROP)), 422, "missing_field",
                 "currency")
    assert_error(eng.post(url, json=plan_body(free_of_charge=True, fee_cents=0)), 422,
                 "invalid_field", "free_of_charge")
    assert_error(eng.post(url, json=plan_body(warranty_exclusion="misuse")), 422,
                 "invalid_field", "warranty_exclusion")
    assert state(dstack, t["id"]) == before
    # a quote of 0 (goodwill) is a quote
    p = propose(eng, t["number"], fee_cents=0, currency="CHF")
    assert p["free_of_charge"] is False and p["fee_cents"] == 0 and p["currency"] == "CHF"


# ----------------------------------------------------------------------------- links

def test_tampered_links_are_refused_and_change_nothing(dstack, eng, agent):
    t = paid_ticket(dstack)
    p = propose(eng, t["number"])
    other = propose(eng, paid_ticket(dstack)["number"])
    link = issue_link(agent, p["id"])
    path, q = link_parts(link["path"])
    flipped = q["sig"][:10] + ("0" if q["sig"][10] != "0" else "1") + q["sig"][11:]
    bad = {
        "signature changed": (path, dict(q, sig=flipped)),
        "signature cut": (path, dict(q, sig=q["sig"][:40])),
        "signature missing": (path, {k: v for k, v in q.items() if k != "sig"}),
        "expiry moved": (path, dict(q, expires=str(int(q["expires"]) + 3600))),
        "expiry missing": (path, {k: v for k, v in q.items() if k != "expires"}),
        "revision changed": (path, dict(q, rev="2")),
        "revision missing": (path, {k: v for k, v in q.items() if k != "rev"}),
        "other plan": ("/v1/customer/plans/" + other["id"], q),
        "not a plan id": ("/v1/customer/plans/nonsense", q),
        "signed with another secret": (path, dict(q, sig=sign(p["id"], 1, int(q["expires"]),
                                                               secret="x" * 40))),
        "no query": (path, {}),
    }
    cust = customer(dstack)
    before = state(dstack, t["id"]), state(dstack, other["ticket_id"])
    for what, (pth, qq) in bad.items():
        for method, suffix, body in (("GET", "", None), ("POST", "/accept", {}),
                                     ("POST", "/dispute", {"reason": "no"})):
            r = cust.request(method, with_query(pth + suffix, **qq), json=body)
            err = assert_error(r, 403, "invalid_link")
            assert "new link" in err["message"], (what, err)
    assert (state(dstack, t["id"]), state(dstack, other["ticket_id"])) == before
    # the genuine link still works
    assert cust.must(cust.get(link["path"]), 200)["state"] == "proposed"
    m = requests.get(dstack.dispatch.url + "/metrics", timeout=5).text
    assert 'aftercare_dispatch_plan_link_refusals_total{reason="invalid"}' in m


def test_expired_link(dstack, eng, agent):
    t = paid_ticket(dstack)
    p = propose(eng, t["number"])
    cust = customer(dstack)
    base = "/v1/customer/plans/" + p["id"]
    # a genuine signature (the documented HMAC), but the expiry has passed
    past = int(time.time()) - 60
    before = state(dstack, t["id"])
    for suffix, body in (("", None), ("/accept", {}), ("/dispute", {"reason": "late"})):
        r = cust.request("GET" if body is None else "POST",
                         with_query(base + suffix, rev=1, expires=past, sig=sign(p["id"], 1, past)),
                         json=body)
        err = assert_error(r, 403, "link_expired")
        assert "expired" in err["message"]
    assert state(dstack, t["id"]) == before
    # the same signature with a future expiry is no longer genuine
    assert_error(cust.get(with_query(base, rev=1, expires=past + 86400,
                                     sig=sign(p["id"], 1, past))), 403, "invalid_link")
    # a link made the documented way with a future expiry works
    future = int(time.time()) + 600
    assert cust.must(cust.get(with_query(base, rev=1, expires=future,
                                         sig=sign(p["id"], 1, future))), 200)["id"] == p["id"]


def test_link_only_for_a_proposed_plan(dstack, eng, agent):
    t = paid_ticket(dstack)
    p = propose(eng, t["number"])
    agent.must(agent.post("/v1/plans/%s/dispute" % p["id"],
                          json={"customer_name": "Jo", "reason": "no"}), 200)
    before = state(dstack, t["id"])
    assert_error(agent.post("/v1/plans/%s/link" % p["id"], json={}), 409, "plan_disputed")
    assert_error(agent.post("/v1/plans/%s/link" % NO_PLAN, json={}), 404, "not_found")
    assert_error(agent.post("/v1/plans/nonsense/link", json={}), 404, "not_found")
    for bad in ({"valid_hours": 0}, {"valid_hours": 721}, {"valid_hours": "24"},
                {"expires": 3}):
        assert_error(agent.post("/v1/plans/%s/link" % p["id"], json=bad), 422)
    assert state(dstack, t["id"]) == before


# ----------------------------------------------------------------------------- cancellation

def test_accept_after_cancellation_is_409(dstack, sub, eng, agent, sup):
    t = paid_ticket(dstack)
    p = propose(eng, t["number"])
    link = issue_link(agent, p["id"])
    mark = sub.mark()
    c = sup.must(sup.post("/v1/plans/%s/cancel" % p["id"],
                          json={"reason": "customer chose another vendor"}), 200)
    assert c["state"] == "cancelled" and c["cancel_reason"] == "customer chose another vendor"
    assert c["cancelled_by"] == token_name(dstack, "supervisor")
    ev, = wait_plan_event(sub, t["number"], "plan.cancelled", since=mark)
    assert ev.env.plan_changed.plan.state == dispatch_pb2.PLAN_STATE_CANCELLED
    assert ev.env.plan_changed.plan.cancel_reason == "customer chose another vendor"
    assert ev.env.plan_changed.plan.cancelled_by == c["cancelled_by"]

    before = state(dstack, t["id"])
    err = assert_error(agent.post("/v1/plans/%s/accept" % p["id"],
                                  json={"customer_name": "Jo"}), 409, "plan_cancelled")
    assert "cancelled" in err["message"]
    assert_error(agent.post("/v1/plans/%s/dispute" % p["id"],
                            json={"customer_name": "Jo", "reason": "x"}), 409, "plan_cancelled")
    path, q = link_parts(link["path"])
    cust = customer(dstack)
    assert_error(cust.post(with_query(path + "/accept", **q), json={}), 409, "plan_cancelled")
    seen = cust.must(cust.get(link["path"]), 200)
    assert seen["state"] == "cancelled" and seen["can_decide"] is False
    assert "cancel_reason" not in seen
    assert_error(sup.post("/v1/plans/%s/cancel" % p["id"], json={"reason": "again"}), 409,
                 "plan_cancelled")
    assert state(dstack, t["id"]) == before
    assert plan_events(sub, t["number"], "plan.accepted", since=mark) == []

    # after a cancellation a new plan may be proposed: the next revision, not a revision of it
    p2 = propose(eng, t["number"])
    assert p2["revision"] == 2 and p2["supersedes_plan_id"] is None


def test_accepted_plan_can_be_cancelled_then_replaced(dstack, eng, agent):
    t = paid_ticket(dstack)
    p = propose(eng, t["number"])
    agent.must(agent.post("/v1/plans/%s/accept" % p["id"], json={"customer_name": "Jo"}), 200)
    before = state(dstack, t["id"])
    # acceptance ended the diagnosis: the ticket is not the diagnosing engineer's any more
    assert_error(eng.post("/v1/tickets/%s/plans" % t["number"], json=plan_body()), 403,
                 "not_your_ticket")
    assert_error(eng.post("/v1/plans/%s/cancel" % p["id"], json={"reason": "x"}), 403,
                 "not_your_ticket")
    assert state(dstack, t["id"]) == before
    helpers.put_on_ticket(dstack, dstack.holder, t["number"], kind="work")
    before = state(dstack, t["id"])
    assert_error(eng.post("/v1/tickets/%s/plans" % t["number"], json=plan_body()), 409,
                 "plan_accepted")
    assert state(dstack, t["id"]) == before
    c = eng.must(eng.post("/v1/plans/%s/cancel" % p["id"],
                          json={"reason": "on site the unit needs the depot"}), 200)
    assert c["state"] == "cancelled" and c["customer_name"] == "Jo"  # the decision is kept
    p2 = propose(eng, t["number"], mode="depot_repair")
    assert p2["revision"] == 2
    agent.must(agent.post("/v1/plans/%s/accept" % p2["id"], json={"customer_name": "Jo"}), 200)
    assert [c["mode"] for c in assign_calls(dstack.db, t["id"])] == ["on_site", "depot_repair"]


def test_ticket_cancellation_stops_decisions(dstack, eng, agent):
    t = paid_ticket(dstack)
    p = propose(eng, t["number"])
    link = issue_link(agent, p["id"])
    intake = dstack.api("agent")
    r = intake.transition(t["number"], "cancelled", reason="customer withdrew the report")
    assert r.status_code == 200, r.text
    wait_until(lambda: agent.get("/v1/tickets/" + t["number"]).json()["status"] == "cancelled",
               15, 0.05, "dispatch to see the cancellation")
    before = state(dstack, t["id"])
    err = assert_error(agent.post("/v1/plans/%s/accept" % p["id"], json={"customer_name": "Jo"}),
                       409, "ticket_cancelled")
    assert t["number"] in err["message"]
    assert_error(agent.post("/v1/plans/%s/dispute" % p["id"],
                            json={"customer_name": "Jo", "reason": "x"}), 409, "ticket_cancelled")
    cust = customer(dstack)
    path, q = link_parts(link["path"])
    assert_error(cust.post(with_query(path + "/accept", **q), json={}), 409, "ticket_cancelled")
    assert cust.must(cust.get(link["path"]), 200)["can_decide"] is False
    assert_error(agent.post("/v1/plans/%s/link" % p["id"], json={}), 409, "ticket_cancelled")
    # the cancellation released the engineer's assignment: a supervisor tidies up
    assert_error(eng.post("/v1/plans/%s/cancel" % p["id"], json={"reason": "ticket gone"}), 403,
                 "not_your_ticket")
    sup = dstack.dispatch_api("supervisor")
    sup.must(sup.post("/v1/plans/%s/cancel" % p["id"], json={"reason": "ticket gone"}), 200)
    before = state(dstack, t["id"])
    assert_error(sup.post("/v1/tickets/%s/plans" % t["number"], json=plan_body()), 409,
                 "ticket_cancelled")
    assert state(dstack, t["id"]) == before


# ----------------------------------------------------------------------------- bad input

def test_unknown_things(dstack, eng, agent, sup):
    for api, method, path, body in (
            (eng, "POST", "/v1/tickets/%s/plans" % NO_TICKET, plan_body()),
            (eng, "POST", "/v1/tickets/nonsense/plans", plan_body()),
            (agent, "GET", "/v1/tickets/%s/plans" % NO_TICKET, None),
            (agent, "GET", "/v1/plans/" + NO_PLAN, None),
            (agent, "GET", "/v1/plans/nonsense", None),
            (agent, "POST", "/v1/plans/%s/accept" % NO_PLAN, {"customer_name": "Jo"}),
            (agent, "POST", "/v1/plans/%s/dispute" % NO_PLAN, {"customer_name": "Jo",
                                                              "reason": "x"}),
            (sup, "POST", "/v1/plans/%s/cancel" % NO_PLAN, {"reason": "x"})):
        assert_error(api.request(method, path, json=body), 404, "not_found")
    assert dstack.db.scalar("SELECT count(*) FROM dispatch.plans WHERE id = %s", (NO_PLAN,)) == 0


BAD_PROPOSALS = [
    ("negative fee", dict(fee_cents=-100), "invalid_field", "fee_cents"),
    ("fractional fee", dict(fee_cents=10.5), "invalid_field", "fee_cents"),
    ("negative quantity", dict(parts=[{"part_number": "A", "quantity": -1}]), "invalid_field",
     "parts[0].quantity"),
    ("zero quantity", dict(parts=[{"part_number": "A", "quantity": 0}]), "invalid_field",
     "parts[0].quantity"),
    ("negative unit price", dict(parts=[{"part_number": "A", "quantity": 1,
                                         "unit_price_cents": -1}]),
     "invalid_field", "parts[0].unit_price_cents"),
    ("part twice", dict(parts=[{"part_number": "A", "quantity": 1},
                               {"part_number": "A", "quantity": 1}]),
     "invalid_field", "parts[1].part_number"),
    ("part without number", dict(parts=[{"quantity": 1}]), "missing_field",
     "parts[0].part_number"),
    ("eta in the past", dict(eta="2020-01-01T00:00:00Z"), "invalid_field", "eta"),
    ("eta a minute ago", dict(eta=helpers.rfc3339(utc_now() - datetime.timedelta(minutes=1))),
     "invalid_field", "eta"),
    ("eta two years ahead", dict(eta=helpers.rfc3339(utc_now() + datetime.timedelta(days=730))),
     "invalid_field", "eta"),
    ("eta not a time", dict(eta="next Tuesday"), "invalid_field", "eta"),
    ("eta missing", dict(eta=helpers.DROP), "missing_field", "eta"),
    ("unknown mode", dict(mode="teleport"), "invalid_field", "mode"),
    ("mode missing", dict(mode=helpers.DROP), "missing_field", "mode"),
    ("work missing", dict(work=helpers.DROP), "missing_field", "work"),
    ("work blank", dict(work="   "), "invalid_field", "work"),
    ("work too long", dict(work="x" * 4001), "invalid_field", "work"),
    ("bad currency", dict(currency="euro"), "invalid_field", "currency"),
    ("unknown field", dict(state="accepted"), "unknown_field", "state"),
    ("revision given", dict(revision=7), "unknown_field", "revision"),
]


@pytest.mark.parametrize("what,over,code,field", BAD_PROPOSALS, ids=[b[0] for b in BAD_PROPOSALS])
def test_bad_proposals_change_nothing(dstack, eng, what, over, code, field):
    t = bad_input_ticket(dstack)
    before = state(dstack, t["id"])
    assert_error(eng.post("/v1/tickets/%s/plans" % t["number"], json=plan_body(**over)), 422,
                 code, field)
    assert state(dstack, t["id"]) == before


_bad_input_ticket = {}


def bad_input_ticket(dstack):
    """One ticket without plans for every bad proposal (each must leave it without)."""
    if "t" not in _bad_input_ticket:
        _bad_input_ticket["t"] = paid_ticket(dstack)
    return _bad_input_ticket["t"]


def test_bad_bodies(dstack, eng, agent):
    t = paid_ticket(dstack)
    p = propose(eng, t["number"])
    before = state(dstack, t["id"])
    url = dstack.dispatch.url
    hdr = {"Authorization": "Bearer " + dstack.tokens["engineer"]}
    r = requests.post(url + "/v1/tickets/%s/plans" % t["number"], data="{nope",
                      headers=dict(hdr, **{"Content-Type": "application/json"}), timeout=10)
    assert_error(r, 400, "malformed_json")
    r = requests.post(url + "/v1/tickets/%s/plans" % t["number"], data="mode=remote",
                      headers=dict(hdr, **{"Content-Type": "text/plain"}), timeout=10)
    assert_error(r, 415)
    for path, body, code, field in (
            ("/v1/plans/%s/accept", {}, "missing_field", "customer_name"),
            ("/v1/plans/%s/accept", {"customer_name": ""}, "invalid_field", "customer_name"),
            ("/v1/plans/%s/accept", {"customer_name": "Jo", "reason": "x"}, "unknown_field",
             "reason"),
            ("/v1/plans/%s/dispute", {"customer_name": "Jo"}, "missing_field", "reason"),
            ("/v1/plans/%s/dispute", {"customer_name": "Jo", "reason": " "}, "invalid_field",
             "reason"),
            ("/v1/plans/%s/dispute", {"customer_name": "Jo", "reason": "x" * 1001},
             "invalid_field", "reason")):
        assert_error(agent.post(path % p["id"], json=body), 422, code, field)
    for body, code in (({}, "missing_field"), ({"reason": 5}, "invalid_field"),
                       ({"reason": "x", "force": True}, "unknown_field")):
        assert_error(eng.post("/v1/plans/%s/cancel" % p["id"], json=body), 422, code)
    # the customer's link refuses bad bodies too (after the signature passed)
    link = issue_link(agent, p["id"])
    before = state(dstack, t["id"])
    path, q = link_parts(link["path"])
    cust = customer(dstack)
    assert_error(cust.post(with_query(path + "/dispute", **q), json={}), 422, "missing_field",
                 "reason")
    assert_error(cust.post(with_query(path + "/accept", **q), json={"customer_name": "x"}), 422,
                 "unknown_field", "customer_name")
    r = requests.post(dstack.dispatch.url + with_query(path + "/accept", **q), timeout=10)
    assert r.status_code in (400, 415), r.text
    assert state(dstack, t["id"]) == before


def test_illegal_step_order(dstack, eng, agent, sup):
    t = paid_ticket(dstack)
    url = "/v1/tickets/%s/plans" % t["number"]
    p = propose(eng, t["number"])

    def refused(resp, status, code):
        before = state(dstack, t["id"])
        assert_error(resp(), status, code)
        assert state(dstack, t["id"]) == before

    # a second proposal while one waits for the customer
    refused(lambda: eng.post(url, json=plan_body()), 409, "plan_open")
    agent.must(agent.post("/v1/plans/%s/dispute" % p["id"],
                          json={"customer_name": "Jo", "reason": "too slow"}), 200)
    # a disputed plan is neither accepted nor disputed again: it is revised
    refused(lambda: agent.post("/v1/plans/%s/accept" % p["id"], json={"customer_name": "Jo"}),
            409, "plan_disputed")
    refused(lambda: agent.post("/v1/plans/%s/dispute" % p["id"],
                               json={"customer_name": "Jo", "reason": "again"}),
            409, "plan_disputed")
    p2 = propose(eng, t["number"])
    # the superseded revision can be neither decided nor cancelled
    for path, body in (("/v1/plans/%s/accept", {"customer_name": "Jo"}),
                       ("/v1/plans/%s/dispute", {"customer_name": "Jo", "reason": "x"})):
        refused(lambda: agent.post(path % p["id"], json=body), 409, "plan_superseded")
    refused(lambda: sup.post("/v1/plans/%s/cancel" % p["id"], json={"reason": "x"}), 409,
            "plan_superseded")
    agent.must(agent.post("/v1/plans/%s/accept" % p2["id"], json={"customer_name": "Jo"}), 200)
    refused(lambda: agent.post("/v1/plans/%s/accept" % p2["id"], json={"customer_name": "Jo"}),
            409, "plan_accepted")
    refused(lambda: agent.post("/v1/plans/%s/dispute" % p2["id"],
                               json={"customer_name": "Jo", "reason": "changed my mind"}),
            409, "plan_accepted")
    refused(lambda: sup.post(url, json=plan_body()), 409, "plan_accepted")
    assert len(assign_calls(dstack.db, t["id"])) == 1


@pytest.mark.parametrize("role,method,path,body,status", [
    ("agent", "POST", "/v1/tickets/{n}/plans", "plan", 403),
    ("warehouse", "POST", "/v1/tickets/{n}/plans", "plan", 403),
    ("integration", "POST", "/v1/tickets/{n}/plans", "plan", 403),
    ("engineer", "POST", "/v1/plans/{p}/accept", {"customer_name": "Jo"}, 403),
    ("integration", "POST", "/v1/plans/{p}/accept", {"customer_name": "Jo"}, 403),
    ("engineer", "POST", "/v1/plans/{p}/dispute", {"customer_name": "Jo", "reason": "x"}, 403),
    ("engineer", "POST", "/v1/plans/{p}/link", {}, 403),
    ("agent", "POST", "/v1/plans/{p}/cancel", {"reason": "x"}, 403),
    ("warehouse", "GET", "/v1/plans/{p}", None, 403),
    ("warehouse", "GET", "/v1/tickets/{n}/plans", None, 403),
    (None, "GET", "/v1/plans/{p}", None, 401),
    (None, "POST", "/v1/plans/{p}/accept", {"customer_name": "Jo"}, 401),
    (None, "POST", "/v1/tickets/{n}/plans", "plan", 401),
])
def test_roles(dstack, eng, role, method, path, body, status):
    t = role_ticket(dstack, eng)
    api = dstack.dispatch_api(role)
    before = state(dstack, t["ticket"]["id"])
    r = api.request(method, path.format(n=t["ticket"]["number"], p=t["plan"]["id"]),
                    json=plan_body() if body == "plan" else body)
    assert_error(r, status)
    assert state(dstack, t["ticket"]["id"]) == before


_role_ticket = {}


def role_ticket(dstack, eng):
    if not _role_ticket:
        t = paid_ticket(dstack)
        _role_ticket.update(ticket=t, plan=propose(eng, t["number"]))
    return _role_ticket


def test_admin_and_supervisor_may_do_everything(dstack):
    t = paid_ticket(dstack)
    for role in ("supervisor", "admin"):
        api = dstack.dispatch_api(role)
        p = propose(api, t["number"])
        issue_link(api, p["id"])
        api.must(api.post("/v1/plans/%s/dispute" % p["id"],
                          json={"customer_name": "Jo", "reason": "x"}), 200)
        api.must(api.post("/v1/plans/%s/cancel" % p["id"], json={"reason": "x"}), 200)


def test_only_the_engineer_on_the_ticket_proposes_and_cancels(dstack, eng, agent):
    """An engineer's token proposes and cancels plans only on tickets that engineer holds
    an open assignment on; a token naming no engineer does neither. A refusal changes
    nothing; supervisors act on any ticket."""
    t = paid_ticket(dstack)  # held by eng's engineer
    other, other_api = helpers.ticket_holder(dstack)
    unlinked = dstack.dispatch_api("engineer")
    url = "/v1/tickets/%s/plans" % t["number"]
    before = state(dstack, t["id"])
    err = assert_error(other_api.post(url, json=plan_body()), 403, "not_your_ticket")
    assert other["id"] in err["message"] and t["number"] in err["message"]
    assert_error(unlinked.post(url, json=plan_body()), 403, "forbidden")
    assert state(dstack, t["id"]) == before
    p = propose(eng, t["number"])
    before = state(dstack, t["id"])
    for api, code in ((other_api, "not_your_ticket"), (unlinked, "forbidden")):
        assert_error(api.post("/v1/plans/%s/cancel" % p["id"], json={"reason": "x"}), 403, code)
    assert state(dstack, t["id"]) == before
    # a supervisor gives the other engineer the diagnosis: now the plan is theirs to cancel
    helpers.put_on_ticket(dstack, other, t["number"])
    c = other_api.must(other_api.post("/v1/plans/%s/cancel" % p["id"],
                                      json={"reason": "wrong diagnosis"}), 200)
    assert c["state"] == "cancelled"
    assert_error(eng.post(url, json=plan_body()), 403, "not_your_ticket")


def test_concurrent_proposals_make_one_plan(dstack):
    t = paid_ticket(dstack)
    results = []
    barrier = threading.Barrier(6)

    def go():
        api = helpers.Api(dstack.dispatch.url, dstack.holder_api.token)
        barrier.wait()
        results.append(api.post("/v1/tickets/%s/plans" % t["number"], json=plan_body()))
    threads = [threading.Thread(target=go) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    codes = sorted(r.status_code for r in results)
    assert codes == [201] + [409] * 5, [r.text for r in results]
    for r in results:
        if r.status_code == 409:
            assert_error(r, 409, "plan_open")
    rows = dstack.db.rows("SELECT revision FROM dispatch.plans WHERE ticket_id = %s",
                          (t["id"],))
    assert rows == [{"revision": 1}]


# ----------------------------------------------------------------------------- operations

def test_links_disabled_then_restart_keeps_plans_and_links(dstack, eng, agent):
    t = paid_ticket(dstack)
    p = propose(eng, t["number"])
    link = issue_link(agent, p["id"])
    cust = customer(dstack)
    d = dstack.dispatch
    d.env["AC_DISPATCH_LINK_SECRET"] = ""
    try:
        assert d.restart(signal.SIGTERM) == 0
        err = assert_error(agent.post("/v1/plans/%s/link" % p["id"], json={}), 503,
                           "links_disabled")
        assert "AC_DISPATCH_LINK_SECRET" in err["message"]
        assert_error(cust.get(link["path"]), 404, "not_found")
        # staff routes work without links
        assert agent.must(agent.get("/v1/plans/" + p["id"]), 200)["state"] == "proposed"
    finally:
        d.env["AC_DISPATCH_LINK_SECRET"] = SECRET
        d.restart(signal.SIGKILL)
    # the same secret again: the link from before both restarts is still good
    assert dstack.db.scalar("SELECT count(*) FROM dispatch.plan_links WHERE plan_id = %s",
                            (p["id"],)) == 1
    path, q = link_parts(link["path"])
    a = cust.must(cust.post(with_query(path + "/accept", **q), json={}), 200)
    assert a["state"] == "accepted"
    assert agent.must(agent.get("/v1/tickets/%s/plans" % t["number"]), 200)["items"][0][
        "state"] == "accepted"


def test_zz_no_sanitizer_reports(dstack):
    assert dstack.sanitizer_reports() == [], dstack.dispatch.log_tail(80)
