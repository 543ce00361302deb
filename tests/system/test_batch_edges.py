"""Edge cases of the group-commit path found in review: an Idempotency-Key inside one
batch, a key claimed by another transaction meanwhile, times that would fall before year 1,
and path parameters that are not UTF-8."""

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from helpers import assert_error, ticket_body


def _hold(db_pg, sql, params=()):
    """A separate superuser connection with an open transaction that ran sql."""
    conn = db_pg.connect("AC_SUPER_DB")
    conn.autocommit = False
    cur = conn.cursor()
    cur.execute(sql, params)
    return conn


def test_key_is_bound_only_by_a_request_that_creates(api, db, stack):
    """In one batch: A (key k, unknown customer) is rejected; B (key k, another body, valid)
    must then create its ticket, exactly as if A and B had run one after the other."""
    agent = api("agent")
    cust = agent.new_customer()
    agent.new_ticket(cust["id"])  # today's counter row exists
    key = "edge-" + uuid.uuid4().hex
    day = db.scalar("SELECT max(day) FROM intake.daily_counters")
    # Block the counter row so a first batch waits and A and B queue into the next one.
    hold = _hold(stack.pg, "SELECT 1 FROM intake.daily_counters WHERE day = %s FOR UPDATE",
                 (day,))
    try:
        with ThreadPoolExecutor(3) as pool:
            blocker = pool.submit(agent.post, "/v1/tickets", json=ticket_body(cust["id"]))
            time.sleep(0.3)  # the blocker's batch is now waiting on the row lock
            a = pool.submit(agent.post, "/v1/tickets",
                            json=ticket_body(str(uuid.uuid4()), description="A " + key),
                            headers={"Idempotency-Key": key})
            time.sleep(0.1)
            b = pool.submit(agent.post, "/v1/tickets",
                            json=ticket_body(cust["id"], description="B " + key),
                            headers={"Idempotency-Key": key})
            time.sleep(0.3)
            hold.rollback()
            ra, rb, rblock = a.result(timeout=20), b.result(timeout=20), blocker.result(timeout=20)
    finally:
        hold.close()
    assert rblock.status_code == 201, rblock.text
    assert_error(ra, 422, "unknown_reference", "customer_id")
    assert rb.status_code == 201, rb.text
    assert rb.headers.get("Idempotent-Replayed") in (None, "false")
    assert rb.json()["description"] == "B " + key
    # the key now belongs to B's ticket
    again = agent.post("/v1/tickets", json=ticket_body(cust["id"], description="B " + key),
                       headers={"Idempotency-Key": key})
    assert again.status_code == 201 and again.json()["number"] == rb.json()["number"]
    assert again.headers.get("Idempotent-Replayed") == "true"


def test_key_claimed_meanwhile_by_another_transaction(api, db, stack):
    """A key inserted by a concurrent transaction while the create waits on it: the create
    must not fail with 500; it is settled one by one (here: a different body -> 422)."""
    agent = api("agent")
    cust = agent.new_customer()
    existing = agent.new_ticket(cust["id"])
    key = "race-" + uuid.uuid4().hex
    hold = _hold(stack.pg, "INSERT INTO intake.idempotency_keys (key, request_hash, ticket_id) "
                           "VALUES (%s, 'not-this-body', %s)", (key, existing["id"]))
    try:
        result = {}

        def post():
            result["r"] = agent.post("/v1/tickets", json=ticket_body(cust["id"]),
                                     headers={"Idempotency-Key": key})

        t = threading.Thread(target=post)
        t.start()
        time.sleep(0.5)  # the batch statement now waits on the key's unique index
        hold.commit()
        t.join(20)
    finally:
        hold.close()
    assert_error(result["r"], 422, "idempotency_key_reused", "Idempotency-Key")


def test_times_before_year_one_are_refused(api, db):
    agent = api("agent")
    cust = agent.new_customer()
    before = db.scalar("SELECT count(*) FROM intake.tickets")
    r = agent.post("/v1/tickets",
                   json=ticket_body(cust["id"], occurred_at="0001-01-01T00:00:00+01:00"))
    assert_error(r, 422, "invalid_field", "occurred_at")
    r = agent.get("/v1/tickets", params={"created_from": "0001-01-01T00:00:00+01:00"})
    assert_error(r, 422, "invalid_field", "created_from")
    assert db.scalar("SELECT count(*) FROM intake.tickets") == before


def test_path_parameters_that_are_not_utf8(api):
    agent = api("agent")
    sup = api("supervisor")
    for resp in (agent.get("/v1/tickets/SV-%FF"),
                 agent.patch("/v1/tickets/%FF", json={"description": "x"}),
                 sup.put("/v1/warranty-policies/HX%FF", json={"months": 12}),
                 agent.get("/v1/customers/%C0%80")):  # overlong NUL
        assert_error(resp, 404, "not_found")
