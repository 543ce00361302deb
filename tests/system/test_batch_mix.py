"""Group commit with mixed outcomes: valid and invalid creates fired together land in the
same batch (intake.create_tickets() handles a whole batch in one statement), and each
request still gets exactly its own answer."""

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from helpers import ticket_body


def _metric(api, name):
    text = api("agent").get("/metrics").text
    for line in text.splitlines():
        if line.startswith("aftercare_intake_" + name + " "):
            return float(line.split()[1])
    return 0.0


def test_mixed_batch_outcomes(api, db, sub):
    agent = api("agent")
    sup = api("supervisor")
    std = agent.new_customer()
    vip = agent.new_customer(tier="vip")
    other = agent.new_customer()
    model = "MIX-" + uuid.uuid4().hex[:8]
    sup.must(sup.put("/v1/warranty-policies/" + model, json={"months": 36}), 200)
    prod = agent.new_product(std["id"], model=model, purchase_date="2025-06-01")
    other_prod = agent.new_product(other["id"])
    tag = uuid.uuid4().hex

    def body(**over):
        over.setdefault("product_id", prod["id"])
        return ticket_body(std["id"], description="mix " + tag, category="fault_repair", **over)

    same_key = "mix-same-" + tag
    clash_key = "mix-clash-" + tag
    # (name, body, headers, expected status, expected error code or None)
    cases = []
    for i in range(6):
        cases.append(("ok%d" % i, body(urgency="urgent"), {}, 201, None))
    cases += [
        ("vip", ticket_body(vip["id"], description="mix " + tag, urgency="urgent"), {}, 201,
         None),
        ("unknown_customer", ticket_body(str(uuid.uuid4()), description="mix " + tag), {}, 422,
         "unknown_reference"),
        ("foreign_product", body(product_id=other_prod["id"]), {}, 422, "unknown_reference"),
        ("before_purchase", body(occurred_at="2025-05-01T10:00:00Z"), {}, 422, "invalid_field"),
        ("same_key_a", body(), {"Idempotency-Key": same_key}, 201, None),
        ("same_key_b", body(), {"Idempotency-Key": same_key}, 201, None),
        ("clash_a", body(urgency="critical"), {"Idempotency-Key": clash_key}, None, None),
        ("clash_b", body(urgency="normal"), {"Idempotency-Key": clash_key}, None, None),
    ]
    batches_before = _metric(api, "create_batches_total")
    requests_before = _metric(api, "create_batch_requests_total")
    tickets_before = db.scalar("SELECT count(*) FROM intake.tickets")
    mark = sub.mark()

    rounds = 5
    results = {}
    for rnd in range(rounds):
        go = threading.Barrier(len(cases))

        def fire(case, rnd=rnd):
            name, b, headers, _, _ = case
            h = {k: v + "-%d" % rnd for k, v in headers.items()}
            go.wait()
            return name, agent.post("/v1/tickets", json=b, headers=h)

        with ThreadPoolExecutor(len(cases)) as pool:
            for name, resp in pool.map(fire, cases):
                results[(rnd, name)] = resp

    created_numbers = set()
    for rnd in range(rounds):
        for name, _, _, status, code in cases:
            r = results[(rnd, name)]
            if status is not None:
                assert r.status_code == status, (rnd, name, r.status_code, r.text)
            if code is not None:
                assert r.json()["error"]["code"] == code, (rnd, name, r.text)
            if r.status_code == 201 and r.headers.get("Idempotent-Replayed") != "true":
                created_numbers.add(r.json()["number"])
        assert results[(rnd, "vip")].json()["priority"] == "P1"
        assert results[(rnd, "ok0")].json()["priority"] == "P2"
        assert results[(rnd, "ok0")].json()["warranty"]["in_warranty"] is True
        # the same key twice: one ticket, both answers name it, exactly one is a replay
        a, b = results[(rnd, "same_key_a")], results[(rnd, "same_key_b")]
        assert a.json()["number"] == b.json()["number"]
        assert sorted([a.headers.get("Idempotent-Replayed") == "true",
                       b.headers.get("Idempotent-Replayed") == "true"]) == [False, True]
        # one key, two bodies: one wins, the other is refused
        ca, cb = results[(rnd, "clash_a")], results[(rnd, "clash_b")]
        assert sorted([ca.status_code, cb.status_code]) == [201, 422], (ca.text, cb.text)
        loser = ca if ca.status_code == 422 else cb
        assert loser.json()["error"]["code"] == "idempotency_key_reused"

    per_round = 6 + 1 + 1 + 1  # ok*, vip, same_key, clash winner
    assert len(created_numbers) == per_round * rounds
    assert db.scalar("SELECT count(*) FROM intake.tickets") == tickets_before + per_round * rounds
    for number in created_numbers:
        sub.wait_for(number, "ticket.created", since=mark)
    time.sleep(0.3)
    events = [m.env.subject for m in sub.events(mark) if m.topic == b"ticket.created"
              and m.env.ticket_created.ticket.description == "mix " + tag]
    assert sorted(events) == sorted(created_numbers)  # one event per ticket, none for the rest

    # the burst really was grouped: fewer transactions than requests
    batches = _metric(api, "create_batches_total") - batches_before
    requests = _metric(api, "create_batch_requests_total") - requests_before
    assert requests == len(cases) * rounds
    assert batches < requests, (batches, requests)
