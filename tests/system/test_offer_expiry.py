"""Unanswered offers expire (AC_DISPATCH_OFFER_TIMEOUT, dispatch migration 021,
docs/dispatch-api.md "Nobody answers: the offer expires"): an automatic offer that the
engineer neither accepts nor declines within the timeout is declined on their behalf and
offered to the next engineer, with assignment.declined naming why; an accepted offer and a
supervisor's assignment never expire; offers that expired while dispatch was down are
declined as soon as it is back; a bad timeout is refused at start.

The stack's dispatch runs with a 3 s timeout: each step that must come before an offer
expires (an accept, a supervisor's assignment) follows the offer at once. Each test's engineers have a product model
of their own (unique("M")), so the tests do not see each other's tickets."""

import os
import subprocess
import time

import pytest
import requests

import helpers
from helpers import unique, wait_until
from test_assignment import (answer, engineer, history, open_jobs, product, ticket,
                             wait_current, wait_event)

from aftercare.v1 import dispatch_pb2

TIMEOUT_S = 3


@pytest.fixture(scope="module")
def ostack(tmp_root):
    from conftest import _start_stack, _stop_stack
    stack = _start_stack(tmp_root, "offers", dispatch=True,
                         dispatch_env={"AC_DISPATCH_OFFER_TIMEOUT": "%ds" % TIMEOUT_S})
    yield stack
    _stop_stack(stack)


@pytest.fixture(scope="module")
def sub(ostack):
    return ostack.subscriber()


@pytest.fixture
def sup(ostack):
    return ostack.dispatch_api("supervisor")


def expired_metric(stack):
    text = requests.get(stack.dispatch.url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("aftercare_dispatch_assign_offers_expired_total "):
            return float(line.split()[1])
    return 0.0


def offer_row(stack, assignment_id):
    return stack.db.rows(
        "SELECT state, ended_by, end_reason, is_excluded, "
        "       extract(epoch FROM ended_at - created_at) AS open_s "
        "FROM dispatch.assignments WHERE id = %s", (assignment_id,))[0]


def test_an_unanswered_offer_goes_to_the_next_engineer(ostack, sup, sub):
    m = unique("M")
    a_eng = engineer(sup, m, level=5)
    b_eng = engineer(sup, m, level=3)
    before = expired_metric(ostack)
    mark = sub.mark()
    t = ticket(ostack, product(ostack, m))
    first = wait_current(sup, t["number"])
    assert first["engineer"]["id"] == a_eng["id"] and first["state"] == "offered"

    # nobody answers: after the timeout (not before, and not at some much later poll) the
    # offer is declined on A's behalf and B gets the ticket
    second = wait_current(sup, t["number"], engineer_id=b_eng["id"], timeout=TIMEOUT_S + 10)
    # B accepts in time (before the checks, which take a moment): it stays, below
    answer(ostack.engineer_api(b_eng["id"]), second["id"], "accept", {})
    row = offer_row(ostack, first["id"])
    assert row["state"] == "declined" and row["ended_by"] == "dispatch"
    assert row["end_reason"] == "offer expired: no answer from %s within %d s" % (
        a_eng["name"], TIMEOUT_S)
    assert row["is_excluded"]
    assert TIMEOUT_S <= row["open_s"] < TIMEOUT_S + 5
    assert open_jobs(ostack.db, a_eng["id"]) == 0
    assert second["previous_engineer_id"] == a_eng["id"]
    assert second["reason"] == row["end_reason"]
    [dec] = wait_event(sub, "assignment.declined", t["number"], mark)
    assert dec.env.assignment_changed.reason == row["end_reason"]
    assert dec.env.assignment_changed.assignment.engineer_id == a_eng["id"]
    assert dec.env.assignment_changed.assignment.state == dispatch_pb2.ASSIGNMENT_STATE_DECLINED
    assigned = wait_event(sub, "ticket.assigned", t["number"], mark, count=2)
    assert assigned[1].env.ticket_assigned.assignment.engineer_id == b_eng["id"]
    assert expired_metric(ostack) >= before + 1

    # an accepted assignment stays, however long it is held
    time.sleep(TIMEOUT_S + 1.5)
    h = history(sup, t["number"])
    assert [(a["engineer"]["id"], a["state"]) for a in h["open"]] == [(b_eng["id"], "accepted")]


def test_the_last_engineer_lets_it_expire_and_the_queue_alerts(ostack, sup, sub):
    m = unique("M")
    only = engineer(sup, m)
    mark = sub.mark()
    t = ticket(ostack, product(ostack, m))
    offer = wait_current(sup, t["number"])
    assert offer["engineer"]["id"] == only["id"]
    [alert] = wait_event(sub, "assignment.unfilled", t["number"], mark, timeout=TIMEOUT_S + 10)
    assert "has declined this ticket" in alert.env.assignment_unfilled.reason
    h = history(sup, t["number"])
    assert h["open"] == [] and [q["kind"] for q in h["queued"]] == ["diagnosis"]
    assert h["queued"][0]["reason"].startswith("offer expired: no answer from %s" % only["name"])
    assert [a["state"] for a in h["items"]] == ["declined"]


def test_a_supervisors_assignment_does_not_expire(ostack, sup, sub):
    m = unique("M")
    auto = engineer(sup, m, level=5)
    chosen = engineer(sup, m, level=1)
    t = ticket(ostack, product(ostack, m))
    wait_current(sup, t["number"], engineer_id=auto["id"])
    r = sup.must(sup.post("/v1/tickets/%s/assign" % t["number"],
                          json={"engineer_id": chosen["id"], "reason": "knows the site"}), 201)
    assert r["method"] == "supervisor" and r["state"] == "offered"
    time.sleep(TIMEOUT_S + 1.5)
    h = history(sup, t["number"])
    assert [(a["engineer"]["id"], a["state"]) for a in h["open"]] == [(chosen["id"], "offered")]


def test_offers_that_expired_while_dispatch_was_down_expire_at_start(ostack, sup, sub):
    m = unique("M")
    a_eng = engineer(sup, m, level=5)
    b_eng = engineer(sup, m, level=3)
    t = ticket(ostack, product(ostack, m))
    first = wait_current(sup, t["number"], engineer_id=a_eng["id"])
    ostack.dispatch.stop()
    try:
        time.sleep(TIMEOUT_S + 1)
        assert offer_row(ostack, first["id"])["state"] == "offered"  # nobody to expire it
    finally:
        ostack.dispatch.start()
        ostack.dispatch.wait_ready()
    second = wait_current(sup, t["number"], engineer_id=b_eng["id"], timeout=10)
    assert second["previous_engineer_id"] == a_eng["id"]
    assert offer_row(ostack, first["id"])["ended_by"] == "dispatch"


@pytest.mark.parametrize("value", ["soon", "-5s", "8d", "15x"])
def test_a_bad_timeout_is_refused_at_start(ostack, value):
    env = {"PATH": os.environ.get("PATH", ""),
           "AC_DISPATCH_DB": ostack.pg.env["AC_DISPATCH_DB"],
           "AC_BUS_SERVER_KEY": ostack.keys.bus[0],
           "AC_DISPATCH_KEY_FILE": ostack.keys.path("dispatch"),
           "AC_DISPATCH_OFFER_TIMEOUT": value}
    p = subprocess.run([helpers.DISPATCH_BIN], env=env, capture_output=True, text=True,
                       timeout=20)
    assert p.returncode == 2
    assert "AC_DISPATCH_OFFER_TIMEOUT" in p.stderr
