"""Dispatch follows intake's ticket events (issue 4): GET /v1/tickets/{number} on dispatch
shows its view of every ticket intake created, kept current with updates and status
changes, and a dispatch that was down catches up from its checkpoint."""

import os
import signal
import subprocess

import pytest

import helpers
from helpers import assert_error, unique, wait_until


@pytest.fixture(scope="module")
def dstack(tmp_root):
    from conftest import _start_stack, _stop_stack
    stack = _start_stack(tmp_root, "dtickets", dispatch=True)
    yield stack
    _stop_stack(stack)


def dview(stack, number):
    r = stack.dispatch_api("agent").get("/v1/tickets/" + number)
    return r.json() if r.status_code == 200 else None


def test_created_ticket_appears_with_its_facts(dstack):
    agent = dstack.api("agent")
    cust = agent.new_customer(name=unique("VIP"), tier="vip")
    prod = agent.new_product(cust["id"], model="X200", region="north")
    t = helpers.dispatch_ticket(dstack, customer=cust, product_id=prod["id"],
                                urgency="critical", category="fault_repair")
    v = dview(dstack, t["number"])
    assert v["id"] == t["id"]
    assert v["priority"] == t["priority"] == "P1"
    assert v["customer_tier"] == "vip"
    assert v["product_model"] == "X200" and v["region"] == "north"
    assert v["category"] == "fault_repair"
    assert v["status"] == "new"
    assert v["version"] == t["version"]
    assert v["in_warranty"] == t["warranty"]["in_warranty"]


def test_changes_follow(dstack):
    agent = dstack.api("agent")
    t = helpers.dispatch_ticket(dstack)
    r = agent.post("/v1/tickets/%s/transitions" % t["number"],
                   json={"to": "needs_info", "reason": "serial number missing"})
    assert r.status_code == 200, r.text
    wait_until(lambda: dview(dstack, t["number"])["status"] == "needs_info", 15, 0.05,
               "dispatch to see needs_info")
    r = agent.patch("/v1/tickets/" + t["number"], json={"urgency": "critical"})
    assert r.status_code == 200, r.text
    wait_until(lambda: dview(dstack, t["number"])["priority"] == "P1", 15, 0.05,
               "dispatch to see the new priority")
    hist = dstack.db.rows(
        "SELECT h.status FROM dispatch.ticket_status_history h JOIN dispatch.tickets t "
        "ON t.id = h.ticket_id WHERE t.number = %s ORDER BY h.version", (t["number"],))
    assert [h["status"] for h in hist] == ["new", "needs_info"]


def test_unknown_and_malformed_numbers(dstack):
    api = dstack.dispatch_api("agent")
    assert_error(api.get("/v1/tickets/SV-20990101-000001"), 404, "not_found")
    assert_error(api.get("/v1/tickets/nonsense"), 404, "not_found")
    assert dstack.dispatch_api(None).get("/v1/tickets/SV-20990101-000001").status_code == 401


def test_dispatch_down_catches_up(dstack):
    dstack.dispatch.stop(signal.SIGKILL)
    agent = dstack.api("agent")
    numbers = [agent.new_ticket(dstack.probe_customer["id"], description="while down %d" % i)
               ["number"] for i in range(20)]
    dstack.dispatch.start()
    dstack.dispatch.wait_ready()
    wait_until(lambda: all(dview(dstack, n) for n in numbers), 30, 0.1,
               "dispatch to catch up with 20 tickets made while it was down")
    # applied once each: one history row per ticket
    n = dstack.db.scalar(
        "SELECT count(*) FROM dispatch.ticket_status_history h JOIN dispatch.tickets t "
        "ON t.id = h.ticket_id WHERE t.number = ANY(%s)", (numbers,))
    assert n == 20


def test_catch_up_mixes_new_and_changed_tickets(dstack):
    """dispatch down while intake creates tickets and changes some of them: on restart the
    backlog is applied in batches where a ticket can come several times (created, then
    paused, or given a new priority). Each ticket ends as intake has it — status, priority,
    the whole status history — with its three SLA clocks (standing still while it waits on
    the customer) and exactly one diagnosis request."""
    dstack.dispatch.stop(signal.SIGKILL)
    agent = dstack.api("agent")
    cust = dstack.probe_customer["id"]
    plain = [agent.new_ticket(cust, description="plain %d" % i)["number"] for i in range(3)]
    paused = agent.new_ticket(cust, description="to be paused")["number"]
    r = agent.post("/v1/tickets/%s/transitions" % paused,
                   json={"to": "needs_info", "reason": "serial number missing"})
    assert r.status_code == 200, r.text
    reprio = agent.new_ticket(cust, description="to be escalated", urgency="normal")["number"]
    r = agent.patch("/v1/tickets/" + reprio, json={"urgency": "critical"})
    assert r.status_code == 200, r.text
    numbers = plain + [paused, reprio]
    dstack.dispatch.start()
    dstack.dispatch.wait_ready()

    def caught_up():
        for n in numbers:
            v, t = dview(dstack, n), agent.must(agent.get("/v1/tickets/" + n), 200)
            if not v or (v["version"], v["status"], v["priority"]) != (
                    t["version"], t["status"], t["priority"]):
                return False
        return True
    wait_until(caught_up, 30, 0.1, "dispatch to catch up with what intake did meanwhile")
    db = dstack.db
    hist = db.rows("SELECT t.number, array_agg(h.status ORDER BY h.version) AS statuses "
                   "FROM dispatch.tickets t JOIN dispatch.ticket_status_history h "
                   "ON h.ticket_id = t.id WHERE t.number = ANY(%s) GROUP BY t.number",
                   (numbers,))
    assert {h["number"]: h["statuses"] for h in hist} == dict(
        [(n, ["new"]) for n in plain + [reprio]] + [(paused, ["new", "needs_info"])])
    clocks = db.rows("SELECT t.number, count(*) AS n, "
                     "bool_and(c.state = CASE WHEN t.status = 'needs_info' THEN 'paused' "
                     "ELSE 'running' END) AS as_expected "
                     "FROM dispatch.tickets t JOIN dispatch.sla_clocks c ON c.ticket_id = t.id "
                     "WHERE t.number = ANY(%s) GROUP BY t.number", (numbers,))
    assert sorted((c["number"], c["n"], c["as_expected"]) for c in clocks) == sorted(
        (n, 3, True) for n in numbers)
    requests = db.rows(
        "SELECT t.number, (SELECT count(*) FROM dispatch.assign_queue q "
        "                  WHERE q.ticket_id = t.id AND q.kind = 'diagnosis') "
        "  + (SELECT count(*) FROM dispatch.assignments a WHERE a.ticket_id = t.id "
        "     AND a.kind = 'diagnosis' AND a.state IN ('offered', 'accepted')) AS n "
        "FROM dispatch.tickets t WHERE t.number = ANY(%s)", (numbers,))
    assert sorted((r["number"], r["n"]) for r in requests) == sorted((n, 1) for n in numbers)


def test_short_link_secret_is_refused_at_start(dstack):
    env = {"PATH": os.environ.get("PATH", ""),
           "AC_DISPATCH_DB": dstack.pg.env["AC_DISPATCH_DB"],
           "AC_BUS_SERVER_KEY": dstack.keys.bus[0],
           "AC_DISPATCH_KEY_FILE": dstack.keys.path("dispatch"),
           "AC_DISPATCH_LINK_SECRET": "too-short"}
    p = subprocess.run([helpers.DISPATCH_BIN], env=env, capture_output=True, text=True,
                       timeout=20)
    assert p.returncode == 2
    assert "AC_DISPATCH_LINK_SECRET" in p.stderr and "at least 32" in p.stderr
