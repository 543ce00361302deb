"""GET /v1/tickets/{number} and the ticket list with its filters and cursor."""

import datetime
import time
from urllib.parse import quote

import pytest

from helpers import assert_error, rfc3339, utc_now


def list_all(api, query, limit=50):
    items, cursor, pages = [], None, 0
    while True:
        url = "/v1/tickets?%slimit=%d" % (query + "&" if query else "", limit)
        if cursor:
            url += "&cursor=" + quote(cursor, safe="")
        r = api.get(url)
        assert r.status_code == 200, (url, r.status_code, r.text)
        body = r.json()
        assert len(body["items"]) <= limit
        items += body["items"]
        pages += 1
        cursor = body.get("next_cursor")
        assert pages < 500
        if not cursor:
            return items, pages


@pytest.fixture(scope="module")
def listed(shared_stack):
    """A customer with tickets made in two batches a couple of seconds apart."""
    agent = shared_stack.api("agent")
    cust = agent.new_customer()
    prod = agent.new_product(cust["id"])
    first = [
        agent.new_ticket(cust["id"], prod["id"], category="fault_repair", urgency="critical"),
        agent.new_ticket(cust["id"], category="consultation"),
        agent.new_ticket(cust["id"], prod["id"], category="maintenance", urgency="urgent"),
    ]
    time.sleep(1.5)
    mid = utc_now().replace(microsecond=0)
    time.sleep(1.0)
    second = [
        agent.new_ticket(cust["id"], category="training"),
        agent.new_ticket(cust["id"], category="complaint", urgency="critical"),
        agent.new_ticket(cust["id"], category="consultation"),
        agent.new_ticket(cust["id"], prod["id"], category="fault_repair"),
    ]
    agent.must(agent.transition(first[0]["number"], "diagnosing"), 200)
    return {"cust": cust, "first": first, "second": second, "mid": mid,
            "all": first + second}


def numbers(items):
    return [t["number"] for t in items]


def test_get_ticket_any_role(api, listed):
    t = listed["first"][0]
    for role in ("agent", "engineer", "supervisor", "warehouse", "admin", "integration"):
        g = api(role).must(api(role).get("/v1/tickets/" + t["number"]), 200)
        assert g["id"] == t["id"] and g["status"] == "diagnosing"
        assert [(h["from"], h["to"]) for h in g["history"]] == [(None, "new"),
                                                                ("new", "diagnosing")]
    assert_error(api("agent").get("/v1/tickets/SV-19990101-000001"), 404, "not_found")


def test_list_newest_first_and_cursor(api, listed):
    agent = api("agent")
    q = "customer_id=" + listed["cust"]["id"]
    items, pages = list_all(agent, q, limit=2)
    assert numbers(items) == numbers(reversed(listed["all"]))
    assert pages == 4
    one, _ = list_all(agent, q, limit=200)
    assert numbers(one) == numbers(items)
    # the default limit is 50 and the global list walks without duplicates
    r = agent.must(agent.get("/v1/tickets"), 200)
    assert len(r["items"]) <= 50
    everything, _ = list_all(agent, "", limit=200)
    assert len(numbers(everything)) == len(set(numbers(everything)))
    assert set(numbers(listed["all"])) <= set(numbers(everything))


@pytest.mark.parametrize("flt,expect", [
    ("status=diagnosing", lambda L: [L["first"][0]]),
    ("status=new", lambda L: L["first"][1:] + L["second"]),
    ("category=consultation", lambda L: [L["first"][1], L["second"][2]]),
    ("category=fault_repair", lambda L: [L["first"][0], L["second"][3]]),
    ("priority=P1", lambda L: [t for t in L["all"] if t["priority"] == "P1"]),
    ("priority=P4", lambda L: [t for t in L["all"] if t["priority"] == "P4"]),
    ("created_from=MID", lambda L: L["second"]),
    ("created_to=MID", lambda L: L["first"]),
    ("status=new&category=consultation", lambda L: [L["first"][1], L["second"][2]]),
])
def test_list_filters(api, listed, flt, expect):
    mid = quote(rfc3339(listed["mid"]), safe="")
    q = "customer_id=%s&%s" % (listed["cust"]["id"], flt.replace("MID", mid))
    items, _ = list_all(api("agent"), q, limit=3)
    want = expect(listed)
    assert want, "the fixture should make this filter non-trivial"
    wanted = set(numbers(want))
    assert numbers(items) == [n for n in numbers(reversed(listed["all"])) if n in wanted]


def test_list_filter_priorities_are_what_the_rules_say(listed):
    prios = [t["priority"] for t in listed["all"]]
    assert prios == ["P1", "P4", "P2", "P4", "P1", "P4", "P3"]


def test_created_window_with_offset(api, listed):
    """created_from with a +02:00 offset means the same instant as in UTC."""
    mid = listed["mid"].astimezone(datetime.timezone(datetime.timedelta(hours=2)))
    q = "customer_id=%s&created_from=%s" % (listed["cust"]["id"],
                                            quote(mid.isoformat(), safe=""))
    items, _ = list_all(api("agent"), q)
    assert numbers(items) == numbers(reversed(listed["second"]))
