"""Starting and stopping the daemons the way an operator does."""

import signal
import time

import requests

from helpers import wait_until


def test_sigterm_stops_cleanly(make_stack):
    stack = make_stack("lifecycle")
    sub = stack.subscriber()
    agent = stack.api("agent")
    t = agent.new_ticket(stack.probe_customer["id"])
    sub.wait_for(t["number"], "ticket.created")
    started = time.monotonic()
    rc = stack.intake.stop(signal.SIGTERM, timeout=15)
    assert rc == 0, "intake exit status %r on SIGTERM:\n%s" % (rc, stack.intake.log_tail(30))
    assert time.monotonic() - started < 10
    rc = stack.bus.stop(signal.SIGTERM, timeout=15)
    assert rc == 0, "bus exit status %r on SIGTERM:\n%s" % (rc, stack.bus.log_tail(30))
    assert stack.sanitizer_reports() == []
    # both come back on the same ports and the ticket is still there
    stack.bus.start()
    stack.bus.wait_ready()
    stack.intake.start()
    stack.intake.wait_ready()
    assert agent.ticket(t["number"])["id"] == t["id"]


def test_sigint_stops_cleanly(make_stack):
    stack = make_stack("sigint")
    rc = stack.intake.stop(signal.SIGINT, timeout=15)
    assert rc == 0, "intake exit status %r on SIGINT" % (rc,)


def test_bad_config_fails_fast(make_stack):
    """A missing or bad setting is named at start-up and the process exits non-zero."""
    stack = make_stack("badcfg")
    stack.intake.stop()
    stack.intake.env["AC_INTAKE_HTTP_PORT"] = "not-a-port"
    stack.intake.start()
    wait_until(lambda: not stack.intake.alive(), 15, 0.1, "intake to refuse a bad port")
    assert stack.intake.proc.returncode not in (0, None)
    assert "AC_INTAKE_HTTP_PORT" in stack.intake.log_tail(20)


def test_valid_token_accepted_as_soon_as_healthy(make_stack):
    """Right after a (re)start, once /healthz says 200, a valid token must not get 401:
    clients and load balancers take healthz 200 as "ready". (Until the token table is
    loaded the honest answer is 503 "unavailable", and healthz should not be 200.)"""
    stack = make_stack("authwin")
    token = stack.tokens["agent"]
    seen = []
    for _ in range(3):
        stack.intake.stop()
        stack.intake.start()
        stack.intake.wait_ready(auth=False)
        r = requests.get(stack.intake.url + "/v1/tickets?limit=1", timeout=10,
                         headers={"Authorization": "Bearer " + token})
        seen.append((r.status_code, r.text[:120]))
    assert all(code != 401 for code, _ in seen), seen
