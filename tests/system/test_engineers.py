"""Dispatch, item 1 of issue 4: engineers over HTTP (docs/dispatch-api.md) — create, read,
list with filters and keyset pagination, PATCH with versions, roles, every kind of bad
input (a clear error and nothing changed), the events on the bus, and restarts.

One private stack (PostgreSQL, bus, intake, dispatch) serves the module; tests that need
a fresh outbox (sequence from 1) make their own."""

import copy
import json
import os
import signal
import subprocess

import pytest
import requests

import helpers
from helpers import assert_error, unique, wait_until


@pytest.fixture(scope="module")
def dstack(tmp_root):
    from conftest import _start_stack, _stop_stack
    stack = _start_stack(tmp_root, "engineers", dispatch=True)
    yield stack
    _stop_stack(stack)


@pytest.fixture
def sup(dstack):
    return dstack.dispatch_api("supervisor")


SHIFT = {"time_zone": "Europe/Berlin",
         "working_hours": {"mon": ["08:00-12:00", "13:00-17:00"], "tue": ["08:00-17:00"],
                           "wed": ["08:00-17:00"], "thu": ["08:00-17:00"],
                           "fri": ["08:00-14:00"]}}


def engineer_body(**over):
    body = {
        "name": unique("Engineer"),
        "role": "field_engineer",
        "skills": [{"kind": "product_line", "name": "X200", "level": 4},
                   {"kind": "category", "name": "fault_repair", "level": 3}],
        "regions": ["north", "east"],
        "capacity": 3,
        "availability": "available",
        "contact": {"phone": "+49 30 1234567", "email": "eng@example.com"},
        "shift": copy.deepcopy(SHIFT),
    }
    for k, v in over.items():
        if v is helpers.DROP:
            body.pop(k, None)
        else:
            body[k] = v
    return body


def engineer_events(db):
    """engineer.* rows in dispatch's outbox (tickets' events come and go in the
    background: assignment, SLA)."""
    return db.scalar("SELECT count(*) FROM dispatch.outbox WHERE topic LIKE 'engineer.%%'")


def create(api, **over):
    return api.must(api.post("/v1/engineers", json=engineer_body(**over)), 201)


def counts(db):
    return (db.scalar("SELECT count(*) FROM dispatch.engineers"),
            db.scalar("SELECT count(*) FROM dispatch.engineer_skills"),
            engineer_events(db))


# ----------------------------------------------------------------------------- create / get

def test_create_and_get(dstack, sup):
    body = engineer_body()
    doc = sup.must(sup.post("/v1/engineers", json=body), 201)
    assert helpers.is_uuid(doc["id"])
    assert doc["version"] == 1
    for k in ("name", "role", "regions", "capacity", "availability", "contact", "shift"):
        assert doc[k] == body[k], k
    assert sorted(map(json.dumps, doc["skills"])) == sorted(map(json.dumps, body["skills"]))
    assert helpers.parse_rfc3339(doc["created_at"]) and doc["updated_at"] == doc["created_at"]
    for role in ("agent", "engineer", "supervisor", "admin"):
        api = dstack.dispatch_api(role)
        assert api.must(api.get("/v1/engineers/" + doc["id"]), 200) == doc
    rows = dstack.db.rows("SELECT kind, name, level FROM dispatch.engineer_skills "
                          "WHERE engineer_id = %s ORDER BY kind", (doc["id"],))
    assert rows == [{"kind": "category", "name": "fault_repair", "level": 3},
                    {"kind": "product_line", "name": "X200", "level": 4}]


def test_create_defaults(sup):
    doc = create(sup, skills=helpers.DROP, regions=helpers.DROP, availability=helpers.DROP,
                 contact={"email": "only@example.com"}, role="technical_support", capacity=0)
    assert doc["skills"] == [] and doc["regions"] == []
    assert doc["availability"] == "available"
    assert doc["contact"] == {"email": "only@example.com"}
    assert doc["capacity"] == 0


def test_around_the_clock_shift(sup):
    doc = create(sup, shift={"around_the_clock": True})
    assert doc["shift"] == {"around_the_clock": True}


def test_get_unknown_and_malformed_ids(sup):
    assert_error(sup.get("/v1/engineers/00000000-0000-4000-8000-000000000000"), 404,
                 "not_found")
    assert_error(sup.get("/v1/engineers/not-a-uuid"), 404, "not_found")
    assert_error(sup.patch("/v1/engineers/00000000-0000-4000-8000-000000000000",
                           json={"capacity": 1}), 404, "not_found")


# ----------------------------------------------------------------------------- roles

@pytest.mark.parametrize("role,status", [("agent", 403), ("engineer", 403),
                                         ("warehouse", 403), ("integration", 403),
                                         ("supervisor", 201), ("admin", 201)])
def test_create_roles(dstack, role, status):
    api = dstack.dispatch_api(role)
    before = counts(dstack.db)
    r = api.post("/v1/engineers", json=engineer_body())
    assert r.status_code == status, r.text
    if status != 201:
        assert_error(r, status)
        assert counts(dstack.db) == before


def test_read_and_patch_roles(dstack, sup):
    doc = create(sup)
    path = "/v1/engineers/" + doc["id"]
    for role in ("warehouse", "integration"):
        assert_error(dstack.dispatch_api(role).get(path), 403)
        assert_error(dstack.dispatch_api(role).get("/v1/engineers"), 403)
    for role in ("agent", "engineer"):
        assert_error(dstack.dispatch_api(role).patch(path, json={"capacity": 9}), 403)
    assert_error(dstack.dispatch_api(None).get(path), 401)
    assert sup.must(sup.get(path), 200)["capacity"] == 3
    admin = dstack.dispatch_api("admin")
    assert admin.must(admin.patch(path, json={"capacity": 9}), 200)["capacity"] == 9


# ----------------------------------------------------------------------------- bad input

BAD_CREATES = [
    ("negative capacity", {"capacity": -1}, "capacity"),
    ("fractional capacity", {"capacity": 1.5}, "capacity"),
    ("unknown role", {"role": "wizard"}, "role"),
    ("unknown availability", {"availability": "asleep"}, "availability"),
    ("bad email", {"contact": {"email": "not-an-email"}}, "contact.email"),
    ("bad phone", {"contact": {"phone": "call me"}}, "contact.phone"),
    ("no contact", {"contact": {}}, "contact"),
    ("unknown contact field", {"contact": {"fax": "123"}}, "contact.fax"),
    ("overlapping shifts", {"shift": {"time_zone": "UTC",
                                      "working_hours": {"mon": ["08:00-12:00", "11:00-15:00"]}}},
     "shift.working_hours.mon[1]"),
    ("impossible hour", {"shift": {"time_zone": "UTC",
                                   "working_hours": {"mon": ["08:00-25:00"]}}},
     "shift.working_hours.mon[0]"),
    ("impossible minute", {"shift": {"time_zone": "UTC",
                                     "working_hours": {"tue": ["08:61-10:00"]}}},
     "shift.working_hours.tue[0]"),
    ("end before start", {"shift": {"time_zone": "UTC",
                                    "working_hours": {"tue": ["17:00-08:00"]}}},
     "shift.working_hours.tue[0]"),
    ("unknown time zone", {"shift": {"time_zone": "Mars/Olympus",
                                     "working_hours": {"mon": ["08:00-17:00"]}}},
     "shift.time_zone"),
    ("no working time", {"shift": {"time_zone": "UTC", "working_hours": {}}},
     "shift.working_hours"),
    ("shift not an object", {"shift": "9 to 5"}, "shift"),
    ("skill level 0", {"skills": [{"kind": "category", "name": "training", "level": 0}]},
     "skills[0].level"),
    ("skill level 6", {"skills": [{"kind": "category", "name": "training", "level": 6}]},
     "skills[0].level"),
    ("skill kind", {"skills": [{"kind": "hobby", "name": "chess", "level": 2}]},
     "skills[0].kind"),
    ("duplicate skill", {"skills": [{"kind": "category", "name": "training", "level": 2},
                                    {"kind": "category", "name": "training", "level": 3}]},
     "skills[1]"),
    ("duplicate region", {"regions": ["north", "north"]}, "regions[1]"),
    ("empty region", {"regions": [""]}, "regions[0]"),
    ("empty name", {"name": ""}, "name"),
    ("missing name", {"name": helpers.DROP}, "name"),
    ("missing role", {"role": helpers.DROP}, "role"),
    ("missing capacity", {"capacity": helpers.DROP}, "capacity"),
    ("missing shift", {"shift": helpers.DROP}, "shift"),
    ("unknown field", {"salary": 100}, "salary"),
]


@pytest.mark.parametrize("what,over,field", BAD_CREATES, ids=[b[0] for b in BAD_CREATES])
def test_bad_create(dstack, sup, what, over, field):
    before = counts(dstack.db)
    err = assert_error(sup.post("/v1/engineers", json=engineer_body(**over)), 422)
    assert err.get("field") == field, err
    assert counts(dstack.db) == before


def test_malformed_json_and_media_type(dstack, sup):
    before = counts(dstack.db)
    assert_error(sup.post("/v1/engineers", data="{not json",
                          headers={"Content-Type": "application/json"}), 400)
    assert_error(sup.post("/v1/engineers", data="[1, 2]",
                          headers={"Content-Type": "application/json"}), 400)
    assert_error(sup.post("/v1/engineers", data=json.dumps(engineer_body()),
                          headers={"Content-Type": "text/plain"}), 415)
    assert counts(dstack.db) == before


# A PATCH's contact is merged into the engineer's (so {} changes nothing): the rest of the
# create cases, plus the PATCH-only ones.
BAD_PATCHES = [b for b in BAD_CREATES[:14] if b[0] != "no contact"] + [
    ("null name", {"name": None}, "name"),
    ("bad expected_version", {"expected_version": 0}, "expected_version"),
    ("drop every contact", {"contact": {"phone": None, "email": None}}, "contact"),
]


@pytest.mark.parametrize("what,over,field", BAD_PATCHES, ids=[b[0] for b in BAD_PATCHES])
def test_bad_patch(dstack, sup, what, over, field):
    doc = create(sup)
    before = counts(dstack.db)
    err = assert_error(sup.patch("/v1/engineers/" + doc["id"], json=over), 422)
    assert err.get("field") == field, err
    assert counts(dstack.db) == before
    assert sup.must(sup.get("/v1/engineers/" + doc["id"]), 200) == doc


# ----------------------------------------------------------------------------- patch

def test_patch_versions(dstack, sup):
    doc = create(sup)
    path = "/v1/engineers/" + doc["id"]
    out0 = engineer_events(dstack.db)
    new = sup.must(sup.patch(path, json={"expected_version": 1, "capacity": 5,
                                         "availability": "away", "regions": ["south"],
                                         "contact": {"phone": None},
                                         "skills": [{"kind": "product_line", "name": "Z9",
                                                     "level": 5}]}), 200)
    assert new["version"] == 2 and new["capacity"] == 5 and new["availability"] == "away"
    assert new["regions"] == ["south"]
    assert new["contact"] == {"email": "eng@example.com"}
    assert new["skills"] == [{"kind": "product_line", "name": "Z9", "level": 5}]
    assert new["created_at"] == doc["created_at"]
    assert helpers.parse_rfc3339(new["updated_at"]) > helpers.parse_rfc3339(doc["updated_at"])
    assert sup.must(sup.get(path), 200) == new
    assert engineer_events(dstack.db) == out0 + 1

    # a stale version: 409, nothing changed
    err = assert_error(sup.patch(path, json={"expected_version": 1, "capacity": 7}), 409,
                       "version_conflict")
    assert err.get("field") == "expected_version"
    assert sup.must(sup.get(path), 200) == new
    # no change: no new version, no event
    same = sup.must(sup.patch(path, json={"capacity": 5}), 200)
    assert same == new
    assert engineer_events(dstack.db) == out0 + 1
    # without expected_version: last writer wins
    assert sup.must(sup.patch(path, json={"name": "Renamed"}), 200)["version"] == 3


def test_patch_unknown_field_and_readonly(dstack, sup):
    doc = create(sup)
    for body, field in (({"id": doc["id"]}, "id"), ({"version": 7}, "version"),
                        ({"created_at": "2020-01-01T00:00:00Z"}, "created_at")):
        err = assert_error(sup.patch("/v1/engineers/" + doc["id"], json=body), 422,
                           "unknown_field")
        assert err.get("field") == field
    assert sup.must(sup.get("/v1/engineers/" + doc["id"]), 200) == doc


# ----------------------------------------------------------------------------- list

def test_list_filters(sup):
    region = unique("r")
    skill = unique("sk")
    a = create(sup, regions=[region], role="field_engineer",
               skills=[{"kind": "product_line", "name": skill, "level": 2}])
    b = create(sup, regions=[region, "x"], role="depot_technician", availability="on_leave")
    c = create(sup, regions=[region], role="field_engineer", availability="away",
               skills=[{"kind": "category", "name": skill, "level": 5}])

    def ids(query):
        body = sup.must(sup.get("/v1/engineers?" + query), 200)
        return [e["id"] for e in body["items"]]

    assert ids("region=" + region) == [c["id"], b["id"], a["id"]]  # newest first
    assert ids("region=%s&role=field_engineer" % region) == [c["id"], a["id"]]
    assert ids("region=%s&availability=on_leave" % region) == [b["id"]]
    assert ids("skill=" + skill) == [c["id"], a["id"]]
    assert ids("skill=%s&availability=available" % skill) == [a["id"]]
    assert ids("region=%s&role=manager" % region) == []
    assert ids("region=" + unique("nowhere")) == []


@pytest.mark.parametrize("query,field", [("role=wizard", "role"),
                                         ("availability=asleep", "availability"),
                                         ("limit=0", "limit"), ("limit=201", "limit"),
                                         ("limit=x", "limit"), ("cursor=abc", "cursor"),
                                         ("cursor=-1", "cursor"), ("region=", "region")])
def test_list_bad_query(sup, query, field):
    err = assert_error(sup.get("/v1/engineers?" + query), 422)
    assert err.get("field") == field


def test_list_pagination(sup):
    region = unique("page")
    made = [create(sup, regions=[region])["id"] for _ in range(5)]
    seen, cursor, pages = [], None, 0
    while True:
        q = "region=%s&limit=2" % region + ("&cursor=" + cursor if cursor else "")
        body = sup.must(sup.get("/v1/engineers?" + q), 200)
        pages += 1
        assert len(body["items"]) <= 2
        seen += [e["id"] for e in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(made))


# ----------------------------------------------------------------------------- events

def dispatch_events(sub, since=0):
    return [m for m in sub.messages(since)
            if m.env is not None and m.env.source == helpers.DISPATCH_SOURCE]


def test_events_from_sequence_one(make_stack):
    stack = make_stack(dispatch=True)
    sub = stack.subscriber()  # live: a probe ticket of intake has come through
    api = stack.dispatch_api("supervisor")
    doc = create(api)
    patched = api.must(api.patch("/v1/engineers/" + doc["id"],
                                 json={"expected_version": 1, "capacity": 8}), 200)
    wait_until(lambda: len(dispatch_events(sub)) >= 2, 15, what="two dispatch events")
    created, updated = dispatch_events(sub)[:2]
    assert created.topic == b"engineer.created" and updated.topic == b"engineer.updated"
    assert (created.env.sequence, updated.env.sequence) == (1, 2)
    assert created.env.type == "aftercare.engineer.created.v1"
    assert created.env.subject == doc["id"] and created.env.partition_key == doc["id"]
    assert created.env.ticket_version == 1 and updated.env.ticket_version == 2
    assert created.env.WhichOneof("payload") == "engineer_created"
    e = created.env.engineer_created.engineer
    assert e.id == doc["id"] and e.name == doc["name"] and e.capacity == 3
    assert e.role == 2 and e.availability == 1  # FIELD_ENGINEER, AVAILABLE
    assert sorted((s.kind, s.name, s.level) for s in e.skills) == [
        ("category", "fault_repair", 3), ("product_line", "X200", 4)]
    assert list(e.regions) == ["north", "east"]
    assert e.contact.email == "eng@example.com" and e.contact.phone == "+49 30 1234567"
    assert json.loads(e.shift_json) == SHIFT
    assert e.version == 1 and e.created_at == doc["created_at"]
    u = updated.env.engineer_updated
    assert list(u.changed_fields) == ["capacity"]
    assert u.engineer.capacity == 8 and u.engineer.version == patched["version"] == 2


def test_failed_changes_publish_nothing(dstack, sup):
    doc = create(sup)
    out0 = engineer_events(dstack.db)
    assert_error(sup.post("/v1/engineers", json=engineer_body(capacity=-3)), 422)
    assert_error(sup.patch("/v1/engineers/" + doc["id"],
                           json={"expected_version": 9, "capacity": 1}), 409)
    assert engineer_events(dstack.db) == out0


# ----------------------------------------------------------------------------- operations

def test_healthz_and_metrics(dstack, sup):
    r = requests.get(dstack.dispatch.url + "/healthz", timeout=5)
    assert r.status_code == 200, r.text
    create(sup)
    m = requests.get(dstack.dispatch.url + "/metrics", timeout=5)
    assert m.status_code == 200
    assert "aftercare_dispatch_engineers_created_total" in m.text


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_restart_keeps_data(dstack, sup, sig):
    doc = create(sup)
    patched = sup.must(sup.patch("/v1/engineers/" + doc["id"], json={"capacity": 4}), 200)
    rc = dstack.dispatch.restart(sig)
    if sig == signal.SIGTERM:
        assert rc == 0, dstack.dispatch.log_tail()
    assert sup.must(sup.get("/v1/engineers/" + doc["id"]), 200) == patched
    # and the service works on: a new engineer, and the outbox drained to the bus
    create(sup)
    wait_until(lambda: dstack.db.scalar(
        "SELECT published_seq = last_seq FROM dispatch.outbox_state"), 15,
        what="dispatch outbox published")


# ----------------------------------------------------------------------------- aftercarectl

def ctl(dstack, role, *args):
    env = dict(os.environ, AC_DISPATCH_URL=dstack.dispatch.url, AC_TOKEN=dstack.tokens[role])
    return subprocess.run([helpers.CTL_BIN, "engineer"] + list(args), env=env,
                          capture_output=True, text=True, timeout=30)


def test_ctl_engineer(dstack, sup):
    region = unique("ctl")
    p = ctl(dstack, "supervisor", "create", "--name", "Ctl Engineer", "--role", "depot_technician",
            "--capacity", "2", "--region", region, "--skill", "product_line:X200:3",
            "--email", "ctl@example.com", "--shift", json.dumps(SHIFT), "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["role"] == "depot_technician" and doc["regions"] == [region]
    assert doc["skills"] == [{"kind": "product_line", "name": "X200", "level": 3}]
    p = ctl(dstack, "agent", "show", doc["id"])
    assert p.returncode == 0 and "Ctl Engineer" in p.stdout and "X200" in p.stdout, p.stderr
    p = ctl(dstack, "agent", "list", "--region", region)
    assert p.returncode == 0 and doc["id"] in p.stdout, p.stderr
    p = ctl(dstack, "supervisor", "update", doc["id"], "--expected-version", "1",
            "--capacity", "6", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["capacity"] == 6
    # the server's refusals come through with their field; exit status 1
    p = ctl(dstack, "supervisor", "update", doc["id"], "--capacity", "-1")
    assert p.returncode == 1 and "capacity" in p.stderr
    p = ctl(dstack, "supervisor", "update", doc["id"], "--expected-version", "1",
            "--capacity", "7")
    assert p.returncode == 1 and "version" in p.stderr
    p = ctl(dstack, "agent", "create", "--name", "x", "--role", "manager", "--capacity", "1",
            "--email", "a@b.cd", "--shift", json.dumps(SHIFT))
    assert p.returncode == 1
    # the command line's own shape: usage errors, exit status 2
    assert ctl(dstack, "supervisor", "create", "--skill", "nolevel").returncode == 2
    assert ctl(dstack, "supervisor", "show").returncode == 2
    assert sup.must(sup.get("/v1/engineers/" + doc["id"]), 200)["capacity"] == 6
