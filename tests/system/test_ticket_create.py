"""Creating tickets: rows, the ticket.created event, numbers, priority and warranty."""

import datetime
import time
import uuid

import pytest

from helpers import (NUMBER_RE, DROP, assert_envelope, is_uuid, parse_rfc3339, same_instant,
                     unique, utc_now)


def test_create_writes_rows_and_publishes_one_event(api, db, sub):
    agent = api("agent")
    cust = agent.new_customer(kind="company", tier="vip", name=unique("Acme GmbH"))
    prod = agent.new_product(cust["id"], model=unique("HX-200"), purchase_date="2025-03-01")
    sup = api("supervisor")
    sup.must(sup.put("/v1/warranty-policies/" + prod["model"],
                     json={"months": 24, "description": "standard"}), 200)
    mark = sub.mark()
    request_id = str(uuid.uuid4())
    body = {
        "channel": "phone", "customer_id": cust["id"], "product_id": prod["id"],
        "category": "fault_repair", "description": "Pump makes a grinding noise",
        "occurred_at": "2026-01-10T08:30:00Z", "urgency": "urgent", "expedite": False,
        "contact": {"name": "Jo", "phone": "+49 30 7654321", "email": "jo@acme.example"},
        "attachments": [{"name": "noise.mp4", "url": "https://files.example/noise.mp4",
                         "content_type": "video/mp4"}],
    }
    before = utc_now() - datetime.timedelta(seconds=5)
    r = agent.post("/v1/tickets", json=body, headers={"X-Request-Id": request_id})
    t = agent.must(r, 201)

    # the response
    assert NUMBER_RE.match(t["number"]), t["number"]
    assert t["number"][3:11] == utc_now().strftime("%Y%m%d") or \
        t["number"][3:11] == before.strftime("%Y%m%d")
    assert r.headers.get("Location") == "/v1/tickets/" + t["number"]
    assert is_uuid(t["id"])
    assert t["status"] == "new" and t["version"] == 1
    assert t["priority"] == "P1"  # urgent -> P2, VIP raises one level
    assert t["channel"] == "phone" and t["category"] == "fault_repair"
    assert t["urgency"] == "urgent" and t["expedite"] is False
    assert t["customer"]["id"] == cust["id"] and t["customer"]["tier"] == "vip"
    assert t["product"]["id"] == prod["id"] and t["product"]["model"] == prod["model"]
    assert t["warranty"]["in_warranty"] is True
    assert t["warranty"]["expires_on"] == "2027-03-01"
    assert t["warranty"]["reason"] == "covered until 2027-03-01"
    assert t["contact"] == {"name": "Jo", "phone": "+49 30 7654321", "email": "jo@acme.example"}
    assert t["attachments"][0]["url"] == "https://files.example/noise.mp4"
    assert same_instant(t["occurred_at"], "2026-01-10T08:30:00Z")
    assert before <= parse_rfc3339(t["created_at"]) <= utc_now() + datetime.timedelta(seconds=5)
    assert t["resolved_at"] is None and t["closed_at"] is None

    # the rows
    rows = db.rows("SELECT * FROM intake.tickets WHERE number = %s", (t["number"],))
    assert len(rows) == 1
    row = rows[0]
    assert str(row["id"]) == t["id"]
    assert row["status"] == "new" and row["priority"] == "P1" and row["version"] == 1
    assert str(row["customer_id"]) == cust["id"] and str(row["product_id"]) == prod["id"]
    assert row["description"] == body["description"]
    hist = db.rows("SELECT * FROM intake.ticket_status_history WHERE ticket_id = %s", (t["id"],))
    assert len(hist) == 1, hist
    assert hist[0]["from_status"] is None and hist[0]["to_status"] == "new"
    assert hist[0]["actor"] == "agent"

    # the event, exactly once
    [m] = sub.wait_for(t["number"], "ticket.created", since=mark)
    created = assert_envelope(m, t, "ticket.created", "ticket_created")
    env = m.env
    assert env.type == "aftercare.ticket.created.v1"
    assert env.ticket_version == 1
    assert env.correlation_id == request_id
    assert created.ticket.warranty.in_warranty is True
    assert created.ticket.warranty.expires_on == "2027-03-01"
    outbox = db.rows("SELECT sequence, topic FROM intake.outbox_sequenced WHERE event_id = %s",
                     (env.id,))
    assert outbox and outbox[0]["sequence"] == env.sequence and outbox[0]["topic"] == "ticket.created"

    # the GET agrees, with one history entry
    g = agent.ticket(t["number"])
    assert g["id"] == t["id"] and g["version"] == 1
    assert [(h["from"], h["to"]) for h in g["history"]] == [(None, "new")]
    assert g["history"][0]["actor"] == "agent"

    time.sleep(0.5)  # a duplicate would arrive right behind the original
    dups = [x for x in sub.events(mark) if x.env.subject == t["number"]]
    assert len(dups) == 1, dups


def test_ticket_without_product_and_defaults(api, sub):
    agent = api("agent")
    cust = agent.new_customer(kind="person", name=unique("Jo Doe"), phone="+44 20 7946 0958",
                              email="jo@example.org")
    mark = sub.mark()
    before = utc_now() - datetime.timedelta(seconds=5)
    r = agent.post("/v1/tickets", json={"channel": "web", "customer_id": cust["id"],
                                         "category": "consultation",
                                         "description": "How do I descale it?"})
    t = agent.must(r, 201)
    assert t["urgency"] == "normal" and t["expedite"] is False
    assert t["priority"] == "P4"
    assert t["product"] in (None, {}) or not t["product"].get("id")
    assert t["warranty"]["in_warranty"] is False
    assert t["warranty"]["reason"] == "no product on the ticket"
    assert not t["warranty"].get("expires_on")
    # occurred_at defaults to now
    assert before <= parse_rfc3339(t["occurred_at"]) <= utc_now() + datetime.timedelta(seconds=5)
    # contact defaults from the customer
    assert t["contact"]["phone"] == "+44 20 7946 0958"
    assert t["contact"]["email"] == "jo@example.org"
    [m] = sub.wait_for(t["number"], "ticket.created", since=mark)
    assert_envelope(m, t, "ticket.created", "ticket_created")
    # a generated correlation id when the client sends none
    assert m.env.correlation_id


def test_numbers_are_unique_and_well_formed(api):
    agent = api("agent")
    cust = agent.new_customer()
    numbers = [agent.new_ticket(cust["id"])["number"] for _ in range(5)]
    assert len(set(numbers)) == 5
    for n in numbers:
        assert NUMBER_RE.match(n), n
    seqs = [int(NUMBER_RE.match(n).group(2)) for n in numbers]
    if len({NUMBER_RE.match(n).group(1) for n in numbers}) == 1:
        assert seqs == sorted(seqs)
        assert seqs[-1] - seqs[0] == 4  # nothing else ran: no gaps


PRIORITY_CASES = [
    # urgency, category, tier, expedite, expected
    ("critical", "fault_repair", "standard", False, "P1"),
    ("urgent", "fault_repair", "standard", False, "P2"),
    ("normal", "fault_repair", "standard", False, "P3"),
    ("normal", "maintenance", "standard", False, "P3"),
    ("normal", "complaint", "standard", False, "P3"),
    ("normal", "consultation", "standard", False, "P4"),
    ("normal", "training", "standard", False, "P4"),
    ("urgent", "consultation", "standard", False, "P2"),
    ("normal", "consultation", "vip", False, "P3"),
    ("normal", "consultation", "vip", True, "P2"),
    ("normal", "training", "standard", True, "P3"),
    ("normal", "fault_repair", "vip", False, "P2"),
    ("normal", "fault_repair", "vip", True, "P1"),
    ("urgent", "fault_repair", "vip", False, "P1"),
    ("urgent", "complaint", "standard", True, "P1"),
    ("critical", "fault_repair", "vip", True, "P1"),
]


@pytest.fixture(scope="module")
def prio_setup(shared_stack):
    agent = shared_stack.api("agent")
    out = {}
    for tier in ("standard", "vip"):
        c = agent.new_customer(tier=tier)
        p = agent.new_product(c["id"])
        out[tier] = (c, p)
    return out


@pytest.mark.parametrize("urgency,category,tier,expedite,expected", PRIORITY_CASES,
                         ids=["%s-%s-%s-%s" % c[:4] for c in PRIORITY_CASES])
def test_priority_rules(api, prio_setup, urgency, category, tier, expedite, expected):
    cust, prod = prio_setup[tier]
    agent = api("agent")
    with_product = category in ("fault_repair", "maintenance")
    t = agent.new_ticket(cust["id"], prod["id"] if with_product else None, category=category,
                         urgency=urgency, expedite=expedite)
    assert t["priority"] == expected
    assert agent.ticket(t["number"])["priority"] == expected


@pytest.fixture(scope="module")
def warranty_setup(shared_stack):
    agent = shared_stack.api("agent")
    sup = shared_stack.api("supervisor")
    cust = agent.new_customer()
    model = unique("WM")
    sup.must(sup.put("/v1/warranty-policies/" + model, json={"months": 12}), 200)
    covered = agent.new_product(cust["id"], model=model, purchase_date="2020-01-01")
    nopolicy_model = unique("NOPOL")
    nopolicy = agent.new_product(cust["id"], model=nopolicy_model, purchase_date="2024-06-01")
    return cust, covered, nopolicy


@pytest.mark.parametrize("case", ["in", "last_day", "expired", "no_policy", "no_product"])
def test_warranty_check(api, warranty_setup, case):
    cust, covered, nopolicy = warranty_setup
    agent = api("agent")
    if case == "in":
        t = agent.new_ticket(cust["id"], covered["id"], occurred_at="2020-06-01T10:00:00Z")
        assert t["warranty"] == {"in_warranty": True, "reason": "covered until 2021-01-01",
                                 "expires_on": "2021-01-01"}
    elif case == "last_day":
        t = agent.new_ticket(cust["id"], covered["id"], occurred_at="2021-01-01T23:00:00Z")
        assert t["warranty"]["in_warranty"] is True, t["warranty"]
        assert t["warranty"]["reason"] == "covered until 2021-01-01"
    elif case == "expired":
        t = agent.new_ticket(cust["id"], covered["id"], occurred_at="2021-01-02T08:00:00Z")
        assert t["warranty"] == {"in_warranty": False, "reason": "expired on 2021-01-01",
                                 "expires_on": "2021-01-01"}
    elif case == "no_policy":
        t = agent.new_ticket(cust["id"], nopolicy["id"])
        assert t["warranty"]["in_warranty"] is False
        assert t["warranty"]["reason"] == "no warranty policy for model %s" % nopolicy["model"]
        assert not t["warranty"].get("expires_on")
    else:
        t = agent.new_ticket(cust["id"], category="training", product_id=DROP)
        assert t["warranty"]["in_warranty"] is False
        assert t["warranty"]["reason"] == "no product on the ticket"
    # the stored ticket says the same
    assert agent.ticket(t["number"])["warranty"] == t["warranty"]


def test_roles_that_may_create(api):
    cust = api("agent").new_customer()
    for role in ("agent", "supervisor", "integration", "admin"):
        s = api(role)
        s.new_ticket(cust["id"])
    for role in ("engineer", "warehouse"):
        r = api(role).post("/v1/tickets", json={"channel": "api", "customer_id": cust["id"],
                                                 "category": "training", "description": "x"})
        assert r.status_code == 403, (role, r.status_code, r.text)


def test_created_events_go_out_at_once_without_a_notify(api, stack, sub):
    """A create commits synchronously; its outbox insert sends no NOTIFY (which would hold
    PostgreSQL's database-wide NOTIFY lock through the disk flush) but wakes intake's relay
    in-process: the event is on the bus at once, not at the relay's one-second poll."""
    agent = api("agent")
    cust = agent.new_customer(name=unique("Wake GmbH"))
    listener = stack.pg.connect()
    listener.cursor().execute("LISTEN intake_outbox")
    delays = []
    for _ in range(5):
        mark = sub.mark()
        t = agent.new_ticket(cust["id"])
        answered = time.monotonic()
        [m] = sub.wait_for(t["number"], "ticket.created", since=mark)
        delays.append(m.at - answered)
    listener.poll()
    notified = [n.channel for n in listener.notifies]
    listener.close()
    assert notified == []
    # with a lost wake each would wait for the poll: up to 1 s, 0.5 s on average
    assert max(delays) < 0.7, delays
