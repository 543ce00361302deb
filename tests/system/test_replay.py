"""Replay and heartbeats of the bus (issue 3): what a subscriber that missed something gets.

Replay (proto/aftercare/v1/bus.proto): a DEALER sends ["replay.request"][ReplayRequest] to
the bus's ROUTER and gets ["replay.event"][request_id][topic][Envelope]... then
["replay.end"][ReplayEnd] or ["replay.error"][ReplayError]. Every socket is a CURVE client
with a key registered in auth.bus_keys.
"""

import json
import os
import random
import re
import signal
import subprocess
import time
import uuid

import pytest
import requests
import zmq

from aftercare.v1 import bus_pb2, envelope_pb2
import helpers
from helpers import CTL_BIN, SOURCE, wait_until

BAD_REQUEST = bus_pb2.ReplayError.BAD_REQUEST
UNKNOWN_SOURCE = bus_pb2.ReplayError.UNKNOWN_SOURCE
PRUNED = bus_pb2.ReplayError.PRUNED
FORBIDDEN = bus_pb2.ReplayError.FORBIDDEN
BUSY = bus_pb2.ReplayError.BUSY


class Answer:
    """What the bus sent for one request: the events, then end or error."""

    def __init__(self, request_id):
        self.request_id = request_id
        self.events = []  # (topic bytes, envelope bytes)
        self.end = None
        self.error = None

    @property
    def done(self):
        return self.end is not None or self.error is not None

    def sequences(self):
        return [envelope_pb2.Envelope.FromString(body).sequence for _, body in self.events]

    def by_sequence(self):
        out = {}
        for topic, body in self.events:
            out[envelope_pb2.Envelope.FromString(body).sequence] = (topic, body)
        return out

    def __repr__(self):
        return "<Answer %s: %d events, end=%s error=%s>" % (
            self.request_id, len(self.events),
            self.end and (self.end.last_sequence, self.end.events),
            self.error and (bus_pb2.ReplayError.Code.Name(self.error.code), self.error.message))


class ReplayClient:
    """A DEALER on the bus's replay endpoint; answers are sorted by request id."""

    def __init__(self, stack, key="systest", rcvhwm=None):
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if rcvhwm is not None:
            self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        helpers.curve_client(self.sock, stack.keys.client(key))
        self.sock.connect(stack.bus.replay)
        self.answers = {}
        self.anonymous_errors = []  # errors with request_id "" (the request was unreadable)

    def close(self):
        self.sock.close(0)

    def send(self, frames):
        self.sock.send_multipart(frames)

    def request(self, request_id=None, source=SOURCE, from_sequence=1, to_sequence=0,
                topic_prefix=""):
        request_id = request_id or "r-" + uuid.uuid4().hex[:12]
        req = bus_pb2.ReplayRequest(request_id=request_id, source=source,
                                    from_sequence=from_sequence, to_sequence=to_sequence,
                                    topic_prefix=topic_prefix)
        self.answers[request_id] = Answer(request_id)
        self.send([b"replay.request", req.SerializeToString()])
        return request_id

    def pump(self, timeout_ms):
        """Receives what is there (waiting up to timeout_ms for the first); returns how many."""
        n = 0
        if not self.sock.poll(timeout_ms):
            return 0
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return n
            n += 1
            self._dispatch(frames)

    def _dispatch(self, frames):
        kind = frames[0]
        if kind == b"replay.event":
            assert len(frames) == 4, frames
            rid = frames[1].decode()
            self.answers.setdefault(rid, Answer(rid)).events.append((frames[2], frames[3]))
        elif kind == b"replay.end":
            assert len(frames) == 2, frames
            end = bus_pb2.ReplayEnd.FromString(frames[1])
            ans = self.answers.setdefault(end.request_id, Answer(end.request_id))
            assert not ans.done, "two final answers for %s" % end.request_id
            ans.end = end
        elif kind == b"replay.error":
            assert len(frames) == 2, frames
            err = bus_pb2.ReplayError.FromString(frames[1])
            if err.request_id == "":
                self.anonymous_errors.append(err)
                return
            ans = self.answers.setdefault(err.request_id, Answer(err.request_id))
            assert not ans.done, "two final answers for %s" % err.request_id
            ans.error = err
        else:
            raise AssertionError("unexpected message kind %r" % (frames,))

    def wait(self, request_id, timeout=30):
        deadline = time.monotonic() + timeout
        while not self.answers[request_id].done:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no final answer for %s within %.0f s: %r" % (
                    request_id, timeout, self.answers[request_id]))
            self.pump(int(min(left, 0.5) * 1000))
        return self.answers[request_id]

    def replay(self, timeout=30, **kw):
        return self.wait(self.request(**kw), timeout)

    def wait_anonymous_error(self, timeout=10):
        deadline = time.monotonic() + timeout
        while not self.anonymous_errors:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer to an unreadable request within %.0f s" % timeout)
            self.pump(int(min(left, 0.5) * 1000))
        return self.anonymous_errors.pop(0)


@pytest.fixture
def replayer(stack):
    clients = []

    def make(key="systest", **kw):
        c = ReplayClient(stack, key, **kw)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def last_seq(db):
    return db.scalar("SELECT last_seq FROM intake.outbox_state")


def wait_numbered(db, timeout=30):
    wait_until(lambda: db.scalar("SELECT count(*) FROM intake.outbox_pending_run") == 0,
               timeout, 0.1, "the relay to number every outbox row")
    return last_seq(db)


def metrics(stack):
    r = requests.get(stack.bus.url + "/metrics", timeout=5)
    assert r.status_code == 200, r.text[:300]
    out = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def stats(stack, token=None):
    token = token or stack.tokens["admin"]
    r = requests.get(stack.bus.url + "/v1/stats", timeout=5,
                     headers={"Authorization": "Bearer " + token})
    assert r.status_code == 200, r.text[:300]
    return r.json()


def envelope_bytes(topic, type_=None, source=SOURCE):
    """A packed envelope of the real shape for topic."""
    type_ = type_ or "aftercare.%s.v1" % topic
    body = envelope_pb2.Envelope(id=str(uuid.uuid4()), source=source, type=type_,
                                 subject="SV-20260101-000001", spec_version="1.0",
                                 time="2026-01-01T00:00:00Z", partition_key=str(uuid.uuid4()),
                                 correlation_id="x" * 36, ticket_version=1)
    body.ticket_created.ticket.description = "replay test " + "d" * 400
    return body.SerializeToString()


def insert_events(db, topic, n, type_=None, source=SOURCE):
    """Commits n outbox rows directly (as a service would), envelopes of the real shape."""
    db.rows("INSERT INTO intake.outbox (event_id, topic, envelope) "
            "SELECT gen_random_uuid(), %s, %s FROM generate_series(1, %s)",
            (topic, envelope_bytes(topic, type_, source), n))


# --------------------------------------------------------------------------- replay

def test_replay_equals_what_was_published(stack, sub, replayer, db):
    mark = sub.mark()
    numbers = [stack.probe() for _ in range(30)]
    sub.wait_subjects(numbers, since=mark)
    live = {m.env.sequence: (m.topic, m.body) for m in sub.events()}
    latest = wait_numbered(db)

    ans = replayer().replay(from_sequence=1)
    assert ans.error is None, ans
    seqs = ans.sequences()
    assert seqs == list(range(1, latest + 1)), "not contiguous from 1: %s..." % seqs[:20]
    assert ans.end.source == SOURCE
    assert ans.end.from_sequence == 1
    assert ans.end.last_sequence == latest
    assert ans.end.events == len(ans.events)
    replayed = ans.by_sequence()
    for seq, (topic, body) in live.items():
        assert replayed[seq] == (topic, body), "sequence %d differs from what was published" % seq
    # and from the middle, with an upper bound
    ans = replayer().replay(from_sequence=5, to_sequence=12)
    assert ans.sequences() == list(range(5, 13))
    assert (ans.end.last_sequence, ans.end.events) == (12, 8)
    assert [replayed[s] for s in range(5, 13)] == ans.events
    ans = replayer().replay(from_sequence=7, to_sequence=7)
    assert ans.sequences() == [7] and ans.end.last_sequence == 7


def test_late_commit_and_holes_in_ids_number_every_row_once(stack, sub, replayer, db):
    """Ids are taken at INSERT and rows appear at COMMIT, and one statement may take ids with
    holes between them: every row still gets exactly one number, in commit order, and the
    live stream, replay and the outbox agree on it."""
    stack.probe()
    first = wait_numbered(db) + 1
    mark = sub.mark()
    late = stack.pg.connect()
    late.autocommit = False
    try:
        with late.cursor() as cur:  # the lowest ids, committed last
            cur.execute("INSERT INTO intake.outbox (event_id, topic, envelope) "
                        "SELECT gen_random_uuid(), 'ticket.closed', %s "
                        "FROM generate_series(1, 4)", (envelope_bytes("ticket.closed"),))
        insert_events(db, "ticket.created", 6)
        # 12 ids in a row, every third left out: 8 rows in 4 ranges
        db.rows("INSERT INTO intake.outbox (id, event_id, topic, envelope) "
                "SELECT x, gen_random_uuid(), 'ticket.updated', %s "
                "FROM (SELECT nextval('intake.outbox_id_seq') AS x "
                "      FROM generate_series(1, 12)) s WHERE x %% 3 <> 0",
                (envelope_bytes("ticket.updated"),))
        assert wait_numbered(db) == first + 13
        late.commit()
    finally:
        late.close()
    last = wait_numbered(db)
    assert last == first + 17
    topics = ["ticket.created"] * 6 + ["ticket.updated"] * 8 + ["ticket.closed"] * 4
    rows = db.rows("SELECT id, topic, sequence FROM intake.outbox_sequenced "
                   "WHERE id > (SELECT max(id) FROM intake.outbox_sequenced "
                   "            WHERE sequence < %s) ORDER BY sequence", (first,))
    assert [r["sequence"] for r in rows] == list(range(first, last + 1))
    assert [r["topic"] for r in rows] == topics
    ids = [r["id"] for r in rows]
    # committed first, numbered first, each statement's rows in id order
    assert ids[:14] == sorted(ids[:14]) and ids[14:] == sorted(ids[14:])
    assert max(ids[14:]) < min(ids[:14])
    assert len(set(ids)) == 18
    # live: each once, in sequence order
    live = sub.wait(lambda evs: [m for m in evs if m.env.sequence >= first]
                    if sum(m.env.sequence >= first for m in evs) >= 18 else None,
                    30, mark, "18 events")
    assert [m.env.sequence for m in live] == list(range(first, last + 1))
    assert [m.topic.decode() for m in live] == topics
    ans = replayer().replay(from_sequence=first)
    assert ans.sequences() == list(range(first, last + 1))
    assert [t.decode() if isinstance(t, bytes) else t for t, _ in ans.events] == topics
    assert ans.events == [(m.topic, m.body) for m in live]


def test_to_sequence_beyond_latest_ends_at_latest(stack, replayer, db):
    stack.probe()
    latest = wait_numbered(db)
    ans = replayer().replay(from_sequence=latest, to_sequence=latest + 1000)
    assert ans.sequences() == [latest]
    assert ans.end.last_sequence == latest


def test_nothing_to_replay_ends_at_from_minus_one(stack, replayer, db):
    stack.probe()
    latest = wait_numbered(db)
    ans = replayer().replay(from_sequence=latest + 1)
    assert ans.error is None, ans
    assert ans.events == []
    assert (ans.end.from_sequence, ans.end.last_sequence, ans.end.events) == (
        latest + 1, latest, 0)
    ans = replayer().replay(from_sequence=latest + 2)
    assert ans.error is not None and ans.error.code == BAD_REQUEST, ans
    assert ans.error.latest_sequence == latest
    assert str(latest) in ans.error.message


def test_topic_prefix_filters_but_covers_the_range(stack, api, replayer, db):
    t = api("agent").new_ticket(stack.probe_customer["id"], description="replay prefix")
    r = api("agent").transition(t["number"], "cancelled", "no longer needed")
    assert r.status_code == 200, r.text
    latest = wait_numbered(db)
    want = [r["sequence"] for r in db.rows(
        "SELECT sequence FROM intake.outbox_sequenced WHERE topic LIKE 'ticket.status%%' "
        "AND sequence <= %s ORDER BY sequence", (latest,))]
    assert want, "the transition published no ticket.status_changed event"

    ans = replayer().replay(from_sequence=1, topic_prefix="ticket.status")
    assert ans.error is None, ans
    assert {topic for topic, _ in ans.events} == {b"ticket.status_changed"}
    assert ans.sequences() == want
    assert ans.end.last_sequence == latest  # covered, though most were left out
    assert ans.end.events == len(want)

    ans = replayer().replay(from_sequence=1, topic_prefix="no.such.topic")
    assert ans.events == [] and ans.end.last_sequence == latest


def test_concurrent_replays(stack, replayer, db):
    for _ in range(10):
        stack.probe()
    latest = wait_numbered(db)
    many = [replayer() for _ in range(4)]
    one = replayer()
    rids = [c.request(from_sequence=1, to_sequence=latest) for c in many]
    own = [one.request(request_id="same-socket-%d" % i, from_sequence=1 + i, to_sequence=latest)
           for i in range(3)]
    results = [c.wait(rid) for c, rid in zip(many, rids)] + [one.wait(rid) for rid in own]
    reference = results[0].events
    assert len(reference) == latest
    for ans in results[:4]:
        assert ans.events == reference
    for i, rid in enumerate(own):
        assert one.answers[rid].events == reference[i:]
        assert one.answers[rid].end.last_sequence == latest


def test_bad_requests_are_answered(stack, replayer, db):
    latest = wait_numbered(db)
    before = metrics(stack)
    c = replayer()
    good = bus_pb2.ReplayRequest(request_id="g", source=SOURCE, from_sequence=1,
                                 topic_prefix="ticket.").SerializeToString()
    rnd = random.Random(3)
    unreadable = [
        [b"replay.request"],
        [b"replay.request", good, b"one more"],
        [b"replay.reqest", good],
        [b"", good],
        [b"replay.request", b"\xff\xff\xff\xff\xff"],
        [b"replay.request", good[:-4]],  # truncated in the middle of the prefix string
        [b"replay.request", bytes(rnd.getrandbits(8) for _ in range(200))],
        [b"replay.request", b"\x0a" + b"x" * 200000],  # 200 kB
        [b"replay.request", bus_pb2.ReplayRequest(source=SOURCE, from_sequence=1)
         .SerializeToString()],  # no request_id
        [b"replay.request", bus_pb2.ReplayRequest(request_id="x" * 65, source=SOURCE,
                                                  from_sequence=1).SerializeToString()],
        [b"replay.request", bus_pb2.ReplayRequest(request_id="a\nb", source=SOURCE,
                                                  from_sequence=1).SerializeToString()],
    ]
    for frames in unreadable:
        c.send(frames)
        err = c.wait_anonymous_error()
        assert err.code == BAD_REQUEST, (frames[:1], err)
        assert err.message, err

    bad_ranges = [
        dict(from_sequence=0),
        dict(from_sequence=10, to_sequence=9),
        dict(from_sequence=latest + 2),
        dict(from_sequence=2 ** 63),
        dict(from_sequence=2 ** 63 - 5),  # with to 0: the query window must not overflow
        dict(from_sequence=1, to_sequence=2 ** 64 - 1),
        dict(from_sequence=1, topic_prefix="t" * 200),
    ]
    for kw in bad_ranges:
        ans = c.replay(**kw)
        assert ans.error is not None and ans.error.code == BAD_REQUEST, (kw, ans)
        assert ans.events == []
    for source in ("aftercare/nope", "", "intake", "aftercare/INTAKE"):
        ans = c.replay(source=source)
        assert ans.error is not None and ans.error.code == UNKNOWN_SOURCE, (source, ans)

    # the bus is fine, the same connection still works, and everything was counted
    assert stack.bus.alive()
    ans = c.replay(from_sequence=latest, to_sequence=latest)
    assert ans.error is None and ans.sequences() == [latest]
    after = metrics(stack)
    key = "aftercare_bus_replay_malformed_total"
    assert after[key] - before.get(key, 0) >= len(unreadable)
    key = 'aftercare_bus_replay_errors_total{code="BAD_REQUEST"}'
    assert after[key] - before.get(key, 0) >= len(unreadable) + len(bad_ranges)
    key = 'aftercare_bus_replay_errors_total{code="UNKNOWN_SOURCE"}'
    assert after[key] - before.get(key, 0) >= 4
    assert "replay: " in stack.bus.log_text()


def test_oversized_message_costs_only_that_connection(stack, replayer, db):
    latest = wait_numbered(db)
    c = replayer()
    c.send([b"replay.request", b"x" * (2 << 20)])  # beyond AC_BUS_MAX_MSG: libzmq drops the peer
    assert c.pump(1000) == 0
    time.sleep(0.2)
    assert stack.bus.alive()
    ans = replayer().replay(from_sequence=latest, to_sequence=latest)
    assert ans.sequences() == [latest]


def test_unknown_key_cannot_replay(stack, replayer):
    stack.keys.make("stranger")  # a key pair that is not in auth.bus_keys
    before = metrics(stack).get('aftercare_bus_auth_failures_total{domain="aftercare.replay"}', 0)
    c = replayer("stranger")
    c.request(from_sequence=1)
    assert c.pump(1500) == 0, "an unknown key got an answer"
    wait_until(lambda: metrics(stack).get(
        'aftercare_bus_auth_failures_total{domain="aftercare.replay"}', 0) > before, 5, 0.1,
        "the refused handshake to be counted")


def test_revoked_key_is_refused_at_the_next_request(stack, replayer, db):
    name = helpers.unique("revokee")
    stack.keys.register(db, name)
    c = replayer(name)
    ans = c.replay(from_sequence=1, to_sequence=1)
    assert ans.error is None and ans.sequences() == [1]
    db.rows("UPDATE auth.bus_keys SET revoked_at = now() WHERE name = %s", (name,))

    def refused():
        a = c.replay(from_sequence=1, to_sequence=1, timeout=5)
        return a.error is not None and a.error.code == FORBIDDEN

    wait_until(refused, 10, 0.2, "the revoked key to be refused")


# --------------------------------------------------------------------------- keys and topics

def test_key_limited_to_ticket_never_replays_another_topic(make_stack):
    s = make_stack()
    db = s.db
    s.keys.register(db, "crm", topics=["ticket."])
    for _ in range(3):
        s.probe()
    insert_events(db, "parts.reserved", 5)
    s.probe()
    latest = wait_numbered(db)
    parts = {r["sequence"] for r in db.rows(
        "SELECT sequence FROM intake.outbox_sequenced WHERE topic = 'parts.reserved'")}
    assert len(parts) == 5

    crm = ReplayClient(s, "crm")
    full = ReplayClient(s, "systest")
    try:
        ans = crm.replay(from_sequence=1)
        assert ans.error is None, ans
        assert all(t.startswith(b"ticket.") for t, _ in ans.events), ans.events
        assert not parts & set(ans.sequences())
        assert ans.end.last_sequence == latest
        assert ans.end.events == latest - len(parts)
        ans = crm.replay(from_sequence=1, topic_prefix="parts.")
        assert ans.error is not None and ans.error.code == FORBIDDEN, ans
        ans = crm.replay(from_sequence=1, topic_prefix="")  # "" = what the key may see
        assert not parts & set(ans.sequences())
        # a key for every topic gets them, byte for byte as published
        ans = full.replay(from_sequence=1)
        assert parts <= set(ans.sequences())
        assert {t for t, _ in ans.events} >= {b"parts.reserved", b"ticket.created"}
    finally:
        crm.close()
        full.close()


# --------------------------------------------------------------------------- retention

def test_pruned_range_names_the_oldest_sequence(make_stack):
    s = make_stack(intake_env={"AC_OUTBOX_RETENTION": "2s"})
    db = s.db
    for _ in range(5):
        s.probe()
    wait_numbered(db)
    # published_seq is recorded ~2 s after the send, then rows older than 2 s go
    wait_until(lambda: (db.scalar("SELECT min(first_seq) FROM intake.outbox_run") or 10 ** 9) > 1,
               30, 0.2, "the prune job to delete the first rows")
    assert "outbox: pruned" in s.intake.log_text()
    c = ReplayClient(s)
    hb = helpers.Subscriber(s.bus.output, b"bus.heartbeat", s.keys.client("systest"))
    try:
        s.probe()
        latest = wait_numbered(db)
        ans = c.replay(from_sequence=1)
        assert ans.error is not None and ans.error.code == PRUNED, ans
        oldest = ans.error.oldest_sequence
        assert 1 < oldest <= latest + 1
        assert str(oldest) in ans.error.message
        assert ans.events == []
        # from the oldest named (unless the job went on meanwhile) replay works
        ans = c.replay(from_sequence=oldest)
        if ans.error is not None:
            assert ans.error.code == PRUNED and ans.error.oldest_sequence > oldest, ans
        else:
            assert ans.sequences() == list(range(oldest, latest + 1))

        def pruned_beat():
            for m in hb.messages():
                pos = [p for p in m.env.bus_heartbeat.sources if p.source == SOURCE]
                if pos and pos[0].oldest_sequence > 1:
                    return True
            return False
        wait_until(pruned_beat, 10, 0.2, "a heartbeat with the pruned oldest sequence")
        r = requests.get(s.intake.url + "/metrics", timeout=5)
        assert re.search(r"^aftercare_intake_outbox_pruned_total [1-9]", r.text, re.M), r.text[-800:]
    finally:
        hb.close()
        c.close()


# --------------------------------------------------------------------------- backpressure

def test_slow_client_busy_and_gone(make_stack):
    s = make_stack(bus_env={"AC_BUS_REPLAY_MAX": "2", "AC_BUS_REPLAY_BATCH": "500"})
    db = s.db
    s.probe()
    insert_events(db, "ticket.created", 30000)
    latest = wait_numbered(db, 120)

    slow = ReplayClient(s, rcvhwm=100)
    other = ReplayClient(s)
    gone = ReplayClient(s, rcvhwm=10)
    try:
        r1 = slow.request(from_sequence=1)
        r2 = slow.request(from_sequence=1, to_sequence=latest)
        # the slow client reads nothing: its streams stay paused, so the limit holds
        wait_until(lambda: stats(s)["replay"]["active"] == 2, 10, 0.1, "two active replays")
        time.sleep(0.5)
        ans = other.replay(from_sequence=1)
        assert ans.error is not None and ans.error.code == BUSY, ans
        assert stats(s)["replay"]["active"] == 2
        # now it reads: both complete, in order, nothing lost
        a1, a2 = slow.wait(r1, 120), slow.wait(r2, 120)
        for a in (a1, a2):
            assert a.error is None, a
            assert a.sequences() == list(range(1, latest + 1))
            assert a.end.last_sequence == latest
        ans = other.replay(from_sequence=latest - 10)
        assert ans.sequences() == list(range(latest - 10, latest + 1))

        # a client that goes away mid-stream only ends its own stream
        before = stats(s)["replay"]["peers_gone"]
        gone.request(from_sequence=1)
        assert gone.pump(5000) > 0
        gone.close()
        wait_until(lambda: stats(s)["replay"]["active"] == 0, 15, 0.1, "the stream to be dropped")
        assert stats(s)["replay"]["peers_gone"] > before
        assert s.bus.alive()
        ans = other.replay(from_sequence=latest, to_sequence=latest)
        assert ans.sequences() == [latest]
    finally:
        slow.close()
        other.close()


def test_stalled_client_is_dropped_and_one_key_cannot_take_every_slot(make_stack):
    s = make_stack("stall", bus_env={"AC_BUS_REPLAY_STALL_S": "2", "AC_BUS_REPLAY_PER_KEY": "1",
                            "AC_BUS_REPLAY_BATCH": "500"})
    db = s.db
    s.keys.register(db, "other")  # before it connects: a refused handshake is not retried
    s.probe()
    insert_events(db, "ticket.created", 20000)
    latest = wait_numbered(db, 120)
    stuck = ReplayClient(s, rcvhwm=10)
    same_key = ReplayClient(s)
    other = ReplayClient(s, "other")
    try:
        stuck.request(from_sequence=1)
        assert stuck.pump(5000) > 0  # it read a little, then stops reading
        wait_until(lambda: stats(s)["replay"]["active"] == 1, 10, 0.1, "one active replay")
        # the same key gets BUSY beyond AC_BUS_REPLAY_PER_KEY; another key is served
        ans = same_key.replay(from_sequence=latest, to_sequence=latest)
        assert ans.error is not None and ans.error.code == BUSY, ans
        assert "AC_BUS_REPLAY_PER_KEY" in ans.error.message
        ans = other.replay(from_sequence=latest - 5)
        assert ans.sequences() == list(range(latest - 5, latest + 1)), ans
        # nothing read for AC_BUS_REPLAY_STALL_S: the stream goes, without any other traffic
        wait_until(lambda: stats(s)["replay"]["active"] == 0, 15, 0.2,
                   "the stalled stream to be dropped")
        assert stats(s)["replay"]["stalled"] == 1
        assert metrics(s)["aftercare_bus_replay_stalled_total"] == 1
        assert "the client has not read for 2s" in s.bus.log_text()
        ans = same_key.replay(from_sequence=latest, to_sequence=latest)
        assert ans.sequences() == [latest], ans
        assert s.bus.alive()
    finally:
        stuck.close()
        same_key.close()
        other.close()


def test_outbox_lag_is_visible(make_stack):
    s = make_stack()
    db = s.db
    s.probe()
    wait_numbered(db)
    lag = 'aftercare_bus_outbox_lag{source="aftercare/intake"}'
    wait_until(lambda: metrics(s).get(lag) == 0, 10, 0.2, "no lag")
    os.kill(s.intake.pid, signal.SIGSTOP)  # the relay stops numbering and publishing
    try:
        insert_events(db, "ticket.created", 25)
        wait_until(lambda: metrics(s).get(lag) == 25, 10, 0.2, "a lag of 25")
        assert metrics(s)['aftercare_bus_outbox_unnumbered{source="aftercare/intake"}'] == 25
        assert stats(s)["sources"][0]["outbox_lag"] == 25
    finally:
        os.kill(s.intake.pid, signal.SIGCONT)
    wait_until(lambda: metrics(s).get(lag) == 0, 15, 0.2, "the lag to go")


def test_database_down_is_unavailable(make_stack):
    s = make_stack()
    s.probe()
    latest = wait_numbered(s.db)
    c = ReplayClient(s)
    try:
        s.db.close()
        s.pg.stop()
        ans = c.replay(from_sequence=1, timeout=30)
        assert ans.error is not None and ans.error.code == bus_pb2.ReplayError.UNAVAILABLE, ans
        assert ans.events == []
        wait_until(lambda: requests.get(s.bus.url + "/healthz", timeout=5).status_code == 503, 15,
                   0.2, "the bus's /healthz to say the database is down")
        assert s.bus.alive()
        s.pg.start()

        def served():
            a = c.replay(from_sequence=1, timeout=10)
            return a.error is None and a.sequences() == list(range(1, latest + 1))
        wait_until(served, 30, 0.5, "replay to work again")
    finally:
        c.close()


# --------------------------------------------------------------------------- heartbeats

def heartbeats(sub):
    out = []
    for m in sub.messages():
        assert m.topic == b"bus.heartbeat"
        env = m.env
        assert env is not None, m.error
        out.append((m.at, env))
    return out


def test_heartbeat_every_second_with_the_latest_sequence(stack, db):
    hb = helpers.Subscriber(stack.bus.output, b"bus.heartbeat", stack.keys.client("systest"))
    try:
        wait_until(lambda: len(hb.messages()) >= 4, 10, 0.1, "four heartbeats")
        beats = heartbeats(hb)
        for at, env in beats:
            assert env.source == "aftercare/bus"
            assert env.type == "aftercare.bus.heartbeat.v1"
            assert env.sequence == 0
            assert env.spec_version == "1.0"
            assert helpers.is_uuid(env.id)
            assert env.WhichOneof("payload") == "bus_heartbeat"
            assert helpers.is_uuid(env.bus_heartbeat.bus_instance)
        assert len({env.bus_heartbeat.bus_instance for _, env in beats}) == 1
        numbers = [env.bus_heartbeat.beat for _, env in beats]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers
        gaps = [b[0] - a[0] for a, b in zip(beats, beats[1:])]
        assert all(0.6 < g < 1.6 for g in gaps), gaps

        stack.probe()
        latest = wait_numbered(db)
        mark = len(hb.messages())

        def carries_latest():
            for _, env in heartbeats(hb)[mark:]:
                pos = {p.source: p for p in env.bus_heartbeat.sources}
                if SOURCE in pos and pos[SOURCE].last_sequence >= latest:
                    assert pos[SOURCE].last_sequence == latest
                    assert pos[SOURCE].oldest_sequence == 1
                    return True
            return False
        wait_until(carries_latest, 5, 0.1, "a heartbeat carrying sequence %d" % latest)
    finally:
        hb.close()


def test_heartbeat_leaves_out_sources_not_read_yet(make_stack):
    # aftercare/ghost has no outbox: its position is never known, so a heartbeat must not
    # claim 0 for it (a tail without --from would start at 1 and print the whole history)
    s = make_stack("ghost",
                   bus_env={"AC_BUS_SOURCES": "aftercare/intake=intake,aftercare/ghost=ghost"})
    s.probe()
    hb = helpers.Subscriber(s.bus.output, b"bus.heartbeat", s.keys.client("systest"))
    try:
        wait_until(lambda: any(SOURCE in {p.source for p in env.bus_heartbeat.sources}
                               for _, env in heartbeats(hb)), 10, 0.1,
                   "a heartbeat carrying aftercare/intake")
        wait_until(lambda: len(hb.messages()) >= 3, 10, 0.1, "three heartbeats")
        for _, env in heartbeats(hb):
            assert "aftercare/ghost" not in {p.source for p in env.bus_heartbeat.sources}
    finally:
        hb.close()


def test_heartbeat_after_a_bus_restart(make_stack):
    s = make_stack()
    for _ in range(3):
        s.probe()
    latest = wait_numbered(s.db)
    hb = helpers.Subscriber(s.bus.output, b"bus.heartbeat", s.keys.client("systest"))
    try:
        wait_until(lambda: len(hb.messages()) >= 1, 10, 0.1, "a heartbeat")
        first = heartbeats(hb)[-1][1].bus_heartbeat.bus_instance
        s.bus.stop()
        mark = len(hb.messages())
        s.bus.start()
        s.bus.wait_ready()

        def new_instance_knows_latest():
            for _, env in heartbeats(hb)[mark:]:
                b = env.bus_heartbeat
                assert b.bus_instance != first
                pos = {p.source: p for p in b.sources}
                if pos.get(SOURCE) and pos[SOURCE].last_sequence == latest:
                    return b
            return None
        b = wait_until(new_instance_knows_latest, 15, 0.1,
                       "a heartbeat of the new bus carrying sequence %d" % latest)
        assert b.beat <= 5  # counted again from 1
    finally:
        hb.close()


# --------------------------------------------------------------------------- figures

def test_metrics_and_stats(stack, replayer, db):
    for _ in range(5):
        stack.probe()
    latest = wait_numbered(db)
    ans = replayer().replay(from_sequence=1, to_sequence=3)
    assert ans.sequences() == [1, 2, 3]

    r = requests.get(stack.bus.url + "/healthz", timeout=5)
    assert r.status_code == 200, r.text
    assert r.json()["db"] == "up" and r.json()["keys"] == "loaded"

    src = 'source="aftercare/intake"'
    wait_until(lambda: metrics(stack).get("aftercare_bus_source_last_sequence{%s}" % src) == latest,
               10, 0.2, "the metrics to show sequence %d" % latest)
    m = metrics(stack)
    assert m['aftercare_bus_forwarded_total{topic="ticket.created"}'] >= 5
    assert m["aftercare_bus_source_oldest_sequence{%s}" % src] == 1
    assert m["aftercare_bus_outbox_lag{%s}" % src] == 0
    assert m["aftercare_bus_replay_requests_total"] >= 1
    assert m["aftercare_bus_replay_completed_total"] >= 1
    assert m["aftercare_bus_replay_events_total"] >= 3
    assert m["aftercare_bus_keys_loaded"] >= 2
    assert m["aftercare_bus_db_up"] == 1
    assert m["aftercare_bus_heartbeats_total"] >= 1
    for domain in ("aftercare.input", "aftercare.output", "aftercare.replay"):
        assert 'aftercare_bus_auth_failures_total{domain="%s"}' % domain in m
    for code in ("BAD_REQUEST", "UNKNOWN_SOURCE", "PRUNED", "FORBIDDEN", "BUSY", "UNAVAILABLE"):
        assert 'aftercare_bus_replay_errors_total{code="%s"}' % code in m

    r = requests.get(stack.bus.url + "/v1/stats", timeout=5)
    helpers.assert_error(r, 401)
    r = requests.get(stack.bus.url + "/v1/stats", timeout=5,
                     headers={"Authorization": "Bearer " + stack.tokens["agent"]})
    helpers.assert_error(r, 403)
    st = stats(stack)
    assert helpers.is_uuid(st["bus_instance"])
    assert st["db"] == "up" and st["keys"] >= 2
    assert st["forwarded"] >= 5
    (source,) = [x for x in st["sources"] if x["source"] == SOURCE]
    assert source["last_sequence"] == latest and source["oldest_sequence"] == 1
    assert source["outbox_lag"] == 0
    (created,) = [t for t in st["topics"] if t["topic"] == "ticket.created"]
    assert created["forwarded"] >= 5
    assert created["rate_10s"] > 0 and created["rate_60s"] > 0
    assert st["replay"]["completed"] >= 1 and st["replay"]["events"] >= 3
    assert set(st["replay"]["errors"]) == {"BAD_REQUEST", "UNKNOWN_SOURCE", "PRUNED", "FORBIDDEN",
                                           "BUSY", "UNAVAILABLE"}
    assert set(st["auth_failures"]) == {"aftercare.input", "aftercare.output", "aftercare.replay"}


def ctl(stack, *args, token="admin", url=None):
    env = dict(os.environ, AC_BUS_URL=url or stack.bus.url)
    env.pop("AC_TOKEN", None)
    if token:
        env["AC_TOKEN"] = stack.tokens[token]
    return subprocess.run([CTL_BIN, "events", "stats"] + list(args), env=env,
                          capture_output=True, text=True, timeout=30)


def test_aftercarectl_events_stats(stack, db):
    stack.probe()
    latest = wait_numbered(db)
    wait_until(lambda: stats(stack)["sources"][0]["last_sequence"] == latest, 10, 0.2,
               "the stats to catch up")
    p = ctl(stack)
    assert p.returncode == 0, p.stderr
    assert SOURCE in p.stdout and "ticket.created" in p.stdout
    row = [line for line in p.stdout.splitlines() if line.startswith(SOURCE)]
    assert row and row[0].split()[1] == str(latest), p.stdout
    assert "replay" in p.stdout and "authentication failures" in p.stdout

    p = ctl(stack, "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["sources"][0]["source"] == SOURCE and "replay" in doc

    p = ctl(stack, token=None)
    assert p.returncode == 2 and "token" in p.stderr
    p = ctl(stack, token="agent")
    assert p.returncode == 1 and "forbidden" in p.stderr.lower(), p.stderr
    p = ctl(stack, url="http://127.0.0.1:1")
    assert p.returncode == 1 and "AC_BUS_URL" in p.stderr
    p = ctl(stack, "--bogus")
    assert p.returncode == 2
