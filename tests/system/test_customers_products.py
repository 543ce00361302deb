"""Customers, products and warranty policies: create, read, list, paginate."""

import uuid

from helpers import DROP, assert_error, is_uuid, parse_rfc3339, unique


def walk(api, path, limit, max_pages=1000):
    """All items of a list endpoint, following next_cursor; asserts the page shape."""
    items, cursor, pages = [], None, 0
    sep = "&" if "?" in path else "?"
    while True:
        url = "%s%slimit=%d" % (path, sep, limit)
        if cursor:
            url += "&cursor=" + requests_quote(cursor)
        r = api.get(url)
        assert r.status_code == 200, (url, r.status_code, r.text)
        body = r.json()
        assert isinstance(body["items"], list)
        assert len(body["items"]) <= limit
        items += body["items"]
        pages += 1
        cursor = body.get("next_cursor")
        if not cursor:
            return items, pages
        assert pages < max_pages


def requests_quote(s):
    from urllib.parse import quote
    return quote(s, safe="")


def test_customer_create_and_get(api):
    agent = api("agent")
    body = {"kind": "company", "name": unique("Acme GmbH"), "tier": "vip",
            "phone": "+49 30 1234567", "email": "ops@acme.example",
            "contacts": [{"name": "Jo", "phone": "+49 30 7654321", "email": "jo@acme.example",
                          "role": "facility"}]}
    r = agent.post("/v1/customers", json=body)
    c = agent.must(r, 201)
    assert is_uuid(c["id"])
    for k in ("kind", "name", "tier", "phone", "email"):
        assert c[k] == body[k], k
    assert c["contacts"][0]["name"] == "Jo" and c["contacts"][0]["role"] == "facility"
    parse_rfc3339(c["created_at"])
    g = agent.must(agent.get("/v1/customers/" + c["id"]), 200)
    assert g["name"] == body["name"] and g["tier"] == "vip"
    assert g["contacts"] == c["contacts"]
    # tier defaults to standard; a person with only an email is fine
    p = agent.new_customer(kind="person", tier=DROP, email="p@example.org", phone=DROP)
    assert p["tier"] == "standard"
    assert_error(agent.get("/v1/customers/" + str(uuid.uuid4())), 404, "not_found")


def test_customer_list_pagination_and_filter(api, db):
    agent = api("agent")
    mine = {agent.new_customer(tier="vip")["id"] for _ in range(7)}
    items, pages = walk(agent, "/v1/customers", 3)
    ids = [c["id"] for c in items]
    assert len(ids) == len(set(ids)), "a customer appeared on two pages"
    assert mine <= set(ids)
    assert len(ids) == db.scalar("SELECT count(*) FROM intake.customers")
    assert pages == -(-len(ids) // 3) or pages == -(-len(ids) // 3) + 1
    vips, _ = walk(agent, "/v1/customers?tier=vip", 2)
    assert all(c["tier"] == "vip" for c in vips)
    assert mine <= {c["id"] for c in vips}
    assert len({c["id"] for c in vips}) == len(vips)


def test_product_create_get_list(api):
    agent = api("agent")
    cust = agent.new_customer()
    model = unique("HX")
    made = []
    for i in range(5):
        made.append(agent.new_product(cust["id"], model=model, serial_number="SN-%d" % i,
                                      purchase_date="2025-03-0%d" % (i + 1)))
    p = made[0]
    assert is_uuid(p["id"]) and p["customer_id"] == cust["id"] and p["model"] == model
    assert p["serial_number"] == "SN-0" and p["purchase_date"] == "2025-03-01"
    assert p["region"] == "eu-central"
    g = agent.must(agent.get("/v1/products/" + p["id"]), 200)
    assert g["serial_number"] == "SN-0"
    assert_error(agent.get("/v1/products/" + str(uuid.uuid4())), 404, "not_found")
    items, pages = walk(agent, "/v1/products?customer_id=" + cust["id"], 2)
    assert sorted(x["id"] for x in items) == sorted(x["id"] for x in made)
    assert pages == 3
    # the same serial under another model is fine; under the same model it is a conflict
    agent.new_product(cust["id"], model=unique("OTHER"), serial_number="SN-0")
    r = agent.post("/v1/products", json={"customer_id": cust["id"], "model": model,
                                         "serial_number": "SN-0", "region": "eu",
                                         "purchase_date": "2025-01-01"})
    assert_error(r, 409, "conflict")


def test_warranty_policies(api):
    sup = api("supervisor")
    model = unique("WP")
    p = sup.must(sup.put("/v1/warranty-policies/" + model,
                         json={"months": 24, "description": "two years"}), 200)
    assert p["months"] == 24 and p.get("model") == model
    p = sup.must(sup.put("/v1/warranty-policies/" + model, json={"months": 36}), 200)
    assert p["months"] == 36
    items = sup.must(sup.get("/v1/warranty-policies"), 200)["items"]
    mine = [x for x in items if x.get("model") == model]
    assert len(mine) == 1 and mine[0]["months"] == 36
    for months in (0, 241, "12", None):
        r = sup.put("/v1/warranty-policies/" + model, json={"months": months})
        assert_error(r, 422, ("invalid_field", "missing_field"), "months")
    assert_error(api("agent").put("/v1/warranty-policies/" + model, json={"months": 12}),
                 403, "forbidden")
    # admin may call everything
    api("admin").must(api("admin").put("/v1/warranty-policies/" + model,
                                       json={"months": 12}), 200)
