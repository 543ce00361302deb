"""aftercarectl against the running stack: tokens, tickets, and the event tail."""

import json
import os
import re
import subprocess
import time

import pytest

from helpers import CTL_BIN, NUMBER_RE, ctl_bus_env, next_sequence, unique, wait_until


def ctl(stack, *args, token=None, timeout=30, env_extra=None):
    env = dict(os.environ)
    env.update({"AC_INTAKE_URL": stack.intake.url, "AC_ADMIN_DB": stack.pg.env["AC_ADMIN_DB"]})
    env.pop("AC_TOKEN", None)
    if token:
        env["AC_TOKEN"] = token
    env.update(env_extra or {})
    return subprocess.run([CTL_BIN] + list(args), env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def cli_token(stack):
    name = unique("cli-agent")
    p = ctl(stack, "token", "create", "--role", "agent", "--name", name)
    assert p.returncode == 0, p.stderr
    token = p.stdout.strip()
    assert re.fullmatch(r"act_[0-9a-f]{64}", token), repr(p.stdout)
    assert p.stdout == token + "\n", "token create must print only the token"
    # the service learns about it without a restart
    api = stack.anon()
    api.headers["Authorization"] = "Bearer " + token
    wait_until(lambda: api.get("/v1/tickets?limit=1").status_code == 200, 10, 0.1,
               "the new token to be accepted")
    return token


def test_token_create_stores_only_a_hash(stack, cli_token):
    import hashlib
    rows = stack.db.rows("SELECT name, role, token_sha256, revoked_at FROM auth.tokens "
                         "WHERE token_sha256 = %s", (hashlib.sha256(cli_token.encode()).hexdigest(),))
    assert len(rows) == 1 and rows[0]["role"] == "agent" and rows[0]["revoked_at"] is None
    assert stack.db.scalar("SELECT count(*) FROM auth.tokens WHERE token_sha256 = %s",
                           (cli_token,)) == 0
    p = ctl(stack, "token", "create", "--role", "wizard")
    assert p.returncode == 2 and p.stdout == ""


def test_engineer_token_names_its_engineer(stack):
    """token create --engineer: stored with the token, shown by token list; refused for
    another role or a malformed id (exit 2, nothing stored)."""
    import hashlib
    import uuid
    eng = str(uuid.uuid4())
    name = unique("cli-eng")
    p = ctl(stack, "token", "create", "--role", "engineer", "--engineer", eng, "--name", name)
    assert p.returncode == 0, p.stderr
    digest = hashlib.sha256(p.stdout.strip().encode()).hexdigest()
    assert str(stack.db.scalar("SELECT engineer_id FROM auth.tokens WHERE token_sha256 = %s",
                               (digest,))) == eng
    listed = ctl(stack, "token", "list")
    assert listed.returncode == 0, listed.stderr
    [line] = [x for x in listed.stdout.splitlines() if x.startswith(name + " ")]
    assert line.split()[1] == "engineer" and line.split()[-1] == eng
    for args, msg in ((["--role", "agent", "--engineer", eng], "role engineer only"),
                      (["--role", "engineer", "--engineer", "bob"], "a UUID")):
        bad = unique("cli-bad")
        p = ctl(stack, "token", "create", "--name", bad, *args)
        assert p.returncode == 2 and p.stdout == "" and msg in p.stderr, p.stderr
        assert stack.db.scalar("SELECT count(*) FROM auth.tokens WHERE name = %s", (bad,)) == 0


def test_ticket_create_show_list(stack, cli_token):
    cust = stack.api("agent").new_customer()
    p = ctl(stack, "ticket", "create", "--customer", cust["id"], "--category", "consultation",
            "--channel", "phone", "--description", "How do I reset it?", token=cli_token)
    assert p.returncode == 0, p.stderr
    number, prio, status = p.stdout.split()
    assert NUMBER_RE.match(number) and prio == "P4" and status == "new"
    t = stack.api("agent").ticket(number)
    assert t["description"] == "How do I reset it?" and t["customer"]["id"] == cust["id"]

    p = ctl(stack, "ticket", "create", "--customer", cust["id"], "--category", "complaint",
            "--channel", "email", "--description", "Late engineer", "--urgency", "urgent",
            "--expedite", "--json", token=cli_token)
    assert p.returncode == 0, p.stderr
    t2 = json.loads(p.stdout)
    assert t2["priority"] == "P1" and t2["expedite"] is True

    p = ctl(stack, "ticket", "show", number, token=cli_token)
    assert p.returncode == 0, p.stderr
    assert number in p.stdout and "consultation" in p.stdout and "How do I reset it?" in p.stdout
    p = ctl(stack, "ticket", "show", number, "--json", token=cli_token)
    assert json.loads(p.stdout)["number"] == number

    p = ctl(stack, "ticket", "list", "--customer", cust["id"], "--all", "--limit", "1",
            token=cli_token)
    assert p.returncode == 0, p.stderr
    listed = re.findall(r"SV-\d{8}-\d{6}", p.stdout)
    assert listed == [t2["number"], number], p.stdout  # newest first, both pages

    # failures: unknown ticket -> 1, usage -> 2, bad token -> 1; messages on stderr
    p = ctl(stack, "ticket", "show", "SV-20000101-999999", token=cli_token)
    assert p.returncode == 1 and p.stdout == "" and p.stderr
    p = ctl(stack, "ticket", "create", "--customer", cust["id"], token=cli_token)
    assert p.returncode == 2 and p.stderr
    p = ctl(stack, "ticket", "show", number, token="act_" + "1" * 64)
    assert p.returncode == 1 and p.stderr


def test_ticket_create_idempotency_key(stack, cli_token):
    cust = stack.api("agent").new_customer()
    args = ["ticket", "create", "--customer", cust["id"], "--category", "training",
            "--channel", "web", "--description", "Training request",
            "--idempotency-key", unique("cli-key")]
    a = ctl(stack, *args, token=cli_token)
    b = ctl(stack, *args, token=cli_token)
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    assert a.stdout.split()[0] == b.stdout.split()[0]
    assert stack.db.scalar("SELECT count(*) FROM intake.tickets t JOIN intake.customers c "
                           "ON c.id = t.customer_id WHERE c.id = %s", (cust["id"],)) == 1


def test_events_tail_json(stack, cli_token):
    env = dict(os.environ)
    env.update(ctl_bus_env(stack))
    # only this test's tickets may appear (see helpers.next_sequence)
    start = next_sequence(stack)
    tail = subprocess.Popen([CTL_BIN, "events", "tail", "--json", "--count", "3",
                             "--from", "aftercare/intake:%d" % start,
                             "--endpoint", stack.bus.output, "--topic", "ticket."],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    agent = stack.api("agent")
    cust = agent.new_customer()
    made = {}
    try:
        deadline = time.monotonic() + 30
        while tail.poll() is None and time.monotonic() < deadline:
            t = agent.new_ticket(cust["id"], channel="monitoring", urgency="critical")
            made[t["number"]] = t
            time.sleep(0.3)
        assert tail.poll() is not None, "events tail --count 3 did not stop"
        out, err = tail.communicate(timeout=10)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
    assert tail.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 3, out
    evs = [json.loads(line) for line in lines]
    seqs = [e["sequence"] for e in evs]
    assert seqs == list(range(start, start + 3)), (start, seqs)
    for e in evs:
        assert e["topic"] == "ticket.created"
        assert e["type"] == "aftercare.ticket.created.v1"
        assert e["source"] == "aftercare/intake"
        assert e["subject"] in made, (e["subject"], list(made))
        t = made[e["subject"]]
        assert e["partition_key"] == t["id"]
        assert e["ticket_version"] == 1
        assert e["spec_version"] == "1.0"
        snap = e["ticket_created"]["ticket"]
        assert snap["number"] == t["number"] and snap["id"] == t["id"]
        assert snap["urgency"] in ("URGENCY_CRITICAL", "critical")
        assert snap["priority"] in ("PRIORITY_P1", "P1")


def test_events_tail_needs_curve_keys(stack, tmp_path):
    """Without a key file or the bus's public key the tail says what is missing (exit 2);
    an unreadable key file is an error naming it (exit 1); --from is checked."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("AC_CTL_KEY_FILE", "AC_BUS_SERVER_KEY")}

    def tail(*args, **env):
        return subprocess.run([CTL_BIN, "events", "tail", "--count", "1"] + list(args),
                              env=dict(base, **env), capture_output=True, text=True, timeout=10,
                              stdin=subprocess.DEVNULL)

    good = ctl_bus_env(stack)
    p = tail(AC_BUS_SERVER_KEY=good["AC_BUS_SERVER_KEY"])
    assert p.returncode == 2 and p.stdout == "" and "AC_CTL_KEY_FILE" in p.stderr, p.stderr
    p = tail(AC_CTL_KEY_FILE=good["AC_CTL_KEY_FILE"])
    assert p.returncode == 2 and "AC_BUS_SERVER_KEY" in p.stderr, p.stderr
    missing = str(tmp_path / "nope.key")
    p = tail("--key-file", missing, AC_BUS_SERVER_KEY=good["AC_BUS_SERVER_KEY"])
    assert p.returncode == 1 and missing in p.stderr, p.stderr
    for bad in ("aftercare/intake", "aftercare/intake:0", ":5", "aftercare/intake:x"):
        p = tail("--from", bad, **good)
        assert p.returncode == 2 and "--from" in p.stderr, (bad, p.stderr)
