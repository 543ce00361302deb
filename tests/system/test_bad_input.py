"""Bad input gets the documented error and changes nothing: no row, no event.

Every case checks the status, the JSON error (code, and field where one is to blame) and
that no table of the intake schema changed its row count. The last test checks, once for
the whole batch, that no event went out on the bus.
"""

import datetime
import json
import time
import uuid

import pytest

from helpers import (DROP, assert_error, customer_body, product_body, rfc3339, ticket_body,
                     unique, utc_now)


class Ctx:
    """Things the cases refer to, made once before the watch starts."""


@pytest.fixture(scope="module")
def bad(shared_stack):
    s = shared_stack
    agent = s.api("agent")
    ctx = Ctx()
    ctx.cust = agent.new_customer()
    ctx.other_cust = agent.new_customer()
    ctx.prod = agent.new_product(ctx.cust["id"], purchase_date="2025-03-01")
    ctx.other_prod = agent.new_product(ctx.other_cust["id"])
    ctx.ticket = agent.new_ticket(ctx.cust["id"], ctx.prod["id"])
    ctx.cancelled = agent.new_ticket(ctx.cust["id"])
    agent.must(agent.transition(ctx.cancelled["number"], "cancelled", "duplicate"), 200)
    ctx.sub = s.subscriber()      # probe event seen: the subscriber receives
    ctx.mark = ctx.sub.mark()     # nothing after this point may be published
    ctx.stack = s
    yield ctx
    ctx.sub.close()


def T(c, **over):
    """A valid ticket body for the context's customer and product, with changes."""
    body = ticket_body(c.cust["id"], c.prod["id"])
    body.update(over)
    return {k: v for k, v in body.items() if v is not DROP}


FUTURE = rfc3339(utc_now() + datetime.timedelta(days=2))
TOMORROW = (utc_now() + datetime.timedelta(days=2)).strftime("%Y-%m-%d")

# id, role, method, path(ctx), body(ctx) [dict -> JSON, bytes -> raw], headers, status, code, field
CASES = [
    ("malformed_json", "agent", "POST", "/v1/tickets", b'{"channel": "phone",', None,
     400, "malformed_json", None),
    ("json_array_body", "agent", "POST", "/v1/tickets", b'[{"channel": "phone"}]', None,
     400, "malformed_json", None),
    ("json_string_body", "agent", "POST", "/v1/tickets", b'"hello"', None,
     400, "malformed_json", None),
    ("empty_body", "agent", "POST", "/v1/tickets", b'', None, 400, "malformed_json", None),
    ("invalid_utf8", "agent", "POST", "/v1/tickets",
     b'{"channel": "phone", "description": "\xff\xfe"}', None, 400, "malformed_json", None),
    ("urgency_number", "agent", "POST", "/v1/tickets", lambda c: T(c, urgency=5), None,
     422, "invalid_field", "urgency"),
    ("expedite_string", "agent", "POST", "/v1/tickets", lambda c: T(c, expedite="yes"), None,
     422, "invalid_field", "expedite"),
    ("description_number", "agent", "POST", "/v1/tickets", lambda c: T(c, description=42),
     None, 422, "invalid_field", "description"),
    ("contact_not_object", "agent", "POST", "/v1/tickets", lambda c: T(c, contact="Jo"),
     None, 422, "invalid_field", "contact"),
    ("missing_channel", "agent", "POST", "/v1/tickets", lambda c: T(c, channel=DROP), None,
     422, "missing_field", "channel"),
    ("missing_customer_id", "agent", "POST", "/v1/tickets", lambda c: T(c, customer_id=DROP),
     None, 422, "missing_field", "customer_id"),
    ("missing_category", "agent", "POST", "/v1/tickets", lambda c: T(c, category=DROP), None,
     422, "missing_field", "category"),
    ("missing_description", "agent", "POST", "/v1/tickets",
     lambda c: T(c, description=DROP), None, 422, "missing_field", "description"),
    ("missing_product_for_fault_repair", "agent", "POST", "/v1/tickets",
     lambda c: T(c, product_id=DROP), None, 422, "missing_field", "product_id"),
    ("channel_fax", "agent", "POST", "/v1/tickets", lambda c: T(c, channel="fax"), None,
     422, "invalid_field", "channel"),
    ("category_unknown", "agent", "POST", "/v1/tickets", lambda c: T(c, category="plumbing"),
     None, 422, "invalid_field", "category"),
    ("urgency_unknown", "agent", "POST", "/v1/tickets", lambda c: T(c, urgency="extreme"),
     None, 422, "invalid_field", "urgency"),
    ("unknown_field", "agent", "POST", "/v1/tickets", lambda c: T(c, colour="red"), None,
     422, "unknown_field", "colour"),
    ("unknown_nested_field", "agent", "POST", "/v1/tickets",
     lambda c: T(c, contact={"name": "Jo", "fax": "123"}), None,
     422, "unknown_field", "contact.fax"),
    ("description_4001", "agent", "POST", "/v1/tickets", lambda c: T(c, description="x" * 4001),
     None, 422, "invalid_field", "description"),
    ("description_empty", "agent", "POST", "/v1/tickets", lambda c: T(c, description=""),
     None, 422, "invalid_field", "description"),
    ("customer_name_201", "agent", "POST", "/v1/customers",
     lambda c: customer_body(name="n" * 201), None, 422, "invalid_field", "name"),
    ("contact_name_201", "agent", "POST", "/v1/tickets",
     lambda c: T(c, contact={"name": "n" * 201}), None, 422, "invalid_field", "contact.name"),
    ("occurred_at_garbage", "agent", "POST", "/v1/tickets",
     lambda c: T(c, occurred_at="yesterday at noon"), None, 422, "invalid_field", "occurred_at"),
    ("occurred_at_bad_month", "agent", "POST", "/v1/tickets",
     lambda c: T(c, occurred_at="2026-13-01T10:00:00Z"), None,
     422, "invalid_field", "occurred_at"),
    ("occurred_at_future", "agent", "POST", "/v1/tickets",
     lambda c: T(c, occurred_at=FUTURE), None, 422, "invalid_field", "occurred_at"),
    ("occurred_before_purchase", "agent", "POST", "/v1/tickets",
     lambda c: T(c, occurred_at="2025-02-28T10:00:00Z"), None,
     422, "invalid_field", "occurred_at"),
    ("purchase_date_future", "agent", "POST", "/v1/products",
     lambda c: product_body(c.cust["id"], purchase_date=TOMORROW), None,
     422, "invalid_field", "purchase_date"),
    ("purchase_date_garbage", "agent", "POST", "/v1/products",
     lambda c: product_body(c.cust["id"], purchase_date="2025-02-30"), None,
     422, "invalid_field", "purchase_date"),
    ("customer_phone_letters", "agent", "POST", "/v1/customers",
     lambda c: customer_body(phone="call me maybe"), None, 422, "invalid_field", "phone"),
    ("customer_phone_short", "agent", "POST", "/v1/customers",
     lambda c: customer_body(phone="+12345"), None, 422, "invalid_field", "phone"),
    ("customer_email_no_at", "agent", "POST", "/v1/customers",
     lambda c: customer_body(email="ops.acme.example"), None, 422, "invalid_field", "email"),
    ("customer_no_phone_no_email", "agent", "POST", "/v1/customers",
     lambda c: customer_body(phone=DROP, email=DROP), None,
     422, ("missing_field", "invalid_field"), None),
    ("customer_kind_unknown", "agent", "POST", "/v1/customers",
     lambda c: customer_body(kind="robot"), None, 422, "invalid_field", "kind"),
    ("customer_contact_email", "agent", "POST", "/v1/customers",
     lambda c: customer_body(contacts=[{"name": "A", "email": "a@b.example"},
                                       {"name": "B", "email": "b@@example"}]), None,
     422, "invalid_field", "contacts[1].email"),
    ("ticket_contact_email", "agent", "POST", "/v1/tickets",
     lambda c: T(c, contact={"name": "Jo", "email": "jo at acme"}), None,
     422, "invalid_field", "contact.email"),
    ("attachment_missing_url", "agent", "POST", "/v1/tickets",
     lambda c: T(c, attachments=[{"name": "a.png", "url": "https://x.example/a.png"},
                                 {"name": "b.png"}]), None,
     422, "missing_field", "attachments[1].url"),
    ("too_many_attachments", "agent", "POST", "/v1/tickets",
     lambda c: T(c, attachments=[{"name": "a%d" % i, "url": "https://x.example/%d" % i}
                                 for i in range(21)]), None, 422, "invalid_field", "attachments"),
    ("unknown_customer", "agent", "POST", "/v1/tickets",
     lambda c: T(c, customer_id=str(uuid.uuid4()), product_id=DROP, category="consultation"),
     None, 422, "unknown_reference", "customer_id"),
    ("unknown_product", "agent", "POST", "/v1/tickets",
     lambda c: T(c, product_id=str(uuid.uuid4())), None,
     422, "unknown_reference", "product_id"),
    ("product_of_another_customer", "agent", "POST", "/v1/tickets",
     lambda c: T(c, product_id=c.other_prod["id"]), None,
     422, "unknown_reference", "product_id"),
    ("product_for_unknown_customer", "agent", "POST", "/v1/products",
     lambda c: product_body(str(uuid.uuid4())), None, 422, "unknown_reference", "customer_id"),
    ("malformed_uuid", "agent", "POST", "/v1/tickets",
     lambda c: T(c, customer_id="not-a-uuid"), None, 422, "invalid_field", "customer_id"),
    ("duplicate_serial", "agent", "POST", "/v1/products",
     lambda c: product_body(c.cust["id"], model=c.prod["model"],
                            serial_number=c.prod["serial_number"]), None, 409, "conflict", None),
    ("illegal_transition", "agent", "POST", lambda c: "/v1/tickets/%s/transitions"
     % c.ticket["number"], lambda c: {"to": "closed"}, None, 409, "illegal_transition", None),
    ("transition_from_cancelled", "supervisor", "POST", lambda c: "/v1/tickets/%s/transitions"
     % c.cancelled["number"], lambda c: {"to": "new"}, None, 409, "illegal_transition", None),
    ("unknown_status", "agent", "POST", lambda c: "/v1/tickets/%s/transitions"
     % c.ticket["number"], lambda c: {"to": "teleported"}, None, 422, "invalid_field", "to"),
    ("cancel_without_reason", "agent", "POST", lambda c: "/v1/tickets/%s/transitions"
     % c.ticket["number"], lambda c: {"to": "cancelled"}, None, 422, "missing_field", "reason"),
    ("transition_version_conflict", "agent", "POST", lambda c: "/v1/tickets/%s/transitions"
     % c.ticket["number"], lambda c: {"to": "diagnosing", "expected_version": 99}, None,
     409, "version_conflict", None),
    ("transition_unknown_ticket", "agent", "POST", "/v1/tickets/SV-20000101-999999/transitions",
     lambda c: {"to": "diagnosing"}, None, 404, "not_found", None),
    ("patch_status", "agent", "PATCH", lambda c: "/v1/tickets/" + c.ticket["number"],
     lambda c: {"status": "closed"}, None, 422, ("unknown_field", "invalid_field"), "status"),
    ("patch_version_conflict", "agent", "PATCH", lambda c: "/v1/tickets/" + c.ticket["number"],
     lambda c: {"urgency": "critical", "expected_version": 42}, None,
     409, "version_conflict", None),
    ("patch_bad_urgency", "agent", "PATCH", lambda c: "/v1/tickets/" + c.ticket["number"],
     lambda c: {"urgency": "soon"}, None, 422, "invalid_field", "urgency"),
    ("patch_cancelled_ticket", "agent", "PATCH", lambda c: "/v1/tickets/" + c.cancelled["number"],
     lambda c: {"urgency": "critical"}, None, 409, "conflict", None),
    ("warranty_months_0", "supervisor", "PUT", "/v1/warranty-policies/HX-ZERO",
     lambda c: {"months": 0}, None, 422, "invalid_field", "months"),
    ("warranty_by_agent", "agent", "PUT", "/v1/warranty-policies/HX-AGENT",
     lambda c: {"months": 12}, None, 403, "forbidden", None),
    ("body_over_limit", "agent", "POST", "/v1/tickets",
     lambda c: json.dumps(T(c, description="x" * 100000)).encode(), None,
     413, "payload_too_large", None),
    ("text_plain", "agent", "POST", "/v1/tickets",
     lambda c: json.dumps(T(c)).encode(), {"Content-Type": "text/plain"},
     415, "unsupported_media_type", None),
    ("no_content_type", "agent", "POST", "/v1/tickets",
     lambda c: json.dumps(T(c)).encode(), {"Content-Type": None},
     415, "unsupported_media_type", None),
    ("no_token", None, "POST", "/v1/tickets", lambda c: T(c), None, 401, "unauthorized", None),
    ("bad_token", "bogus", "POST", "/v1/tickets", lambda c: T(c), None,
     401, "unauthorized", None),
    ("no_token_get", None, "GET", lambda c: "/v1/tickets/" + c.ticket["number"], None, None,
     401, "unauthorized", None),
    ("basic_auth", None, "GET", "/v1/tickets", None, {"Authorization": "Basic YWRtaW46YWRtaW4="},
     401, "unauthorized", None),
    ("warehouse_creates_ticket", "warehouse", "POST", "/v1/tickets", lambda c: T(c), None,
     403, "forbidden", None),
    ("engineer_creates_customer", "engineer", "POST", "/v1/customers",
     lambda c: customer_body(), None, 403, "forbidden", None),
    ("warehouse_transition", "warehouse", "POST", lambda c: "/v1/tickets/%s/transitions"
     % c.ticket["number"], lambda c: {"to": "diagnosing"}, None, 403, "forbidden", None),
    ("list_bad_status", "agent", "GET", "/v1/tickets?status=sleeping", None, None,
     422, "invalid_field", "status"),
    ("list_bad_priority", "agent", "GET", "/v1/tickets?priority=P5", None, None,
     422, "invalid_field", "priority"),
    ("list_limit_0", "agent", "GET", "/v1/tickets?limit=0", None, None,
     422, "invalid_field", "limit"),
    ("list_limit_201", "agent", "GET", "/v1/tickets?limit=201", None, None,
     422, "invalid_field", "limit"),
    ("list_bad_created_from", "agent", "GET", "/v1/tickets?created_from=last-week", None, None,
     422, "invalid_field", "created_from"),
    ("list_bad_customer_id", "agent", "GET", "/v1/tickets?customer_id=42", None, None,
     422, "invalid_field", "customer_id"),
    ("list_bad_cursor", "agent", "GET", "/v1/tickets?cursor=%27%3B--", None, None,
     422, "invalid_field", "cursor"),
    ("customer_list_bad_tier", "agent", "GET", "/v1/customers?tier=gold", None, None,
     422, "invalid_field", "tier"),
    ("idempotency_key_empty", "agent", "POST", "/v1/tickets", lambda c: T(c),
     {"Idempotency-Key": ""}, 400, "invalid_header", None),
    ("idempotency_key_201", "agent", "POST", "/v1/tickets", lambda c: T(c),
     {"Idempotency-Key": "k" * 201}, 400, "invalid_header", None),
    ("unknown_ticket", "agent", "GET", "/v1/tickets/SV-20000101-999999", None, None,
     404, "not_found", None),
    ("unknown_customer_get", "agent", "GET", lambda c: "/v1/customers/" + str(uuid.uuid4()),
     None, None, 404, "not_found", None),
    ("unknown_route", "agent", "GET", "/v1/spaceships", None, None, 404, "not_found", None),
    ("method_not_allowed", "agent", "DELETE", lambda c: "/v1/tickets/" + c.ticket["number"],
     None, None, 405, "method_not_allowed", None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(bad, case):
    name, role, method, path, body, headers, status, code, field = case
    s = bad.stack
    path = path(bad) if callable(path) else path
    body = body(bad) if callable(body) else body
    if role is None:
        client = s.anon()
    elif role == "bogus":
        client = s.anon()
        client.headers["Authorization"] = "Bearer act_" + "0" * 64
    else:
        client = s.api(role)
    hdrs = {}
    data = None
    if isinstance(body, dict):
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    elif isinstance(body, bytes):
        data = body
        hdrs["Content-Type"] = "application/json"
    hdrs.update(headers or {})
    before = s.db.counts()
    r = client.request(method, path, data=data, headers=hdrs)
    assert_error(r, status, code, field)
    after = s.db.counts()
    assert after == before, "rows changed: %r" % {
        t: (before.get(t), after.get(t)) for t in set(before) | set(after)
        if before.get(t) != after.get(t)}
    # the ticket used by transition/PATCH cases is untouched
    t = s.api("agent").ticket(bad.ticket["number"])
    assert t["version"] == 1 and t["status"] == "new", t


def test_bad_input_batch_published_nothing(bad):
    """Runs after the cases above (file order): none of them published an event."""
    time.sleep(0.5)
    leaked = bad.sub.events(bad.mark)
    assert leaked == [], leaked
    # and the subscriber was listening all along: a real change still comes through,
    # as the very next sequence after the last event before the batch
    last_seq = max(m.env.sequence for m in bad.sub.events(0))
    number = bad.stack.probe()
    [m] = bad.sub.wait_for(number, "ticket.created", since=bad.mark)
    assert bad.sub.events(bad.mark) == [m]
    assert m.env.sequence == last_seq + 1, (m.env.sequence, last_seq)


def test_revoked_token_is_refused_without_restart(stack, db):
    from helpers import insert_token
    token = insert_token(db, "agent", unique("to-revoke"))
    client = stack.anon()
    client.headers["Authorization"] = "Bearer " + token
    deadline = time.monotonic() + 10
    while client.get("/v1/tickets?limit=1").status_code != 200:
        assert time.monotonic() < deadline, "new token never accepted"
        time.sleep(0.1)
    db.rows("UPDATE auth.tokens SET revoked_at = now() WHERE token_sha256 = encode(sha256(%s::bytea), 'hex')",
            (token.encode(),))
    deadline = time.monotonic() + 10
    while True:
        r = client.get("/v1/tickets?limit=1")
        if r.status_code == 401:
            assert_error(r, 401, "unauthorized")
            break
        assert time.monotonic() < deadline, "revoked token still accepted: %d" % r.status_code
        time.sleep(0.1)
