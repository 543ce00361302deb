"""The consumer pattern (common/ac_consumer.h) under faults: subscribers that start late,
daemons killed with -9 in the middle of a load, and a subscriber frozen until the bus drops
for it. Two subscribers follow aftercare/intake each time:

- the sink (tests/tools/ac-consumer-sink): the consumer in database mode, which inserts a
  row per event it applies, in the same transaction as its checkpoint, into a table
  without a unique constraint — a double apply is a duplicate row, a lost event a hole;
- `aftercarectl events tail --from aftercare/intake:1 --json`: the consumer in memory mode.

What a user would notice is checked against the intake outbox itself: every numbered event
(sequence 1..last) arrives exactly once, in order, with the outbox's event id, and every
ticket the API acknowledged with 201 has its ticket.created event there.

The tests share one private stack (PostgreSQL, bus, intake) and run in file order; the last
one restarts the bus with a small per-subscriber queue.
"""

import collections
import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest
import requests
import zmq

from aftercare.v1 import bus_pb2, envelope_pb2

import conftest
import helpers
from helpers import BIN_DIR, CTL_BIN, SOURCE, wait_until

SINK_BIN = os.path.join(BIN_DIR, "tests", "tools", "ac-consumer-sink")
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


@pytest.fixture(scope="module")
def cstack(tmp_root):
    stack = conftest._start_stack(tmp_root, "consumer")
    yield stack
    conftest._stop_stack(stack)


# --------------------------------------------------------------------------- subscribers

class Sink(helpers.Daemon):
    """ac-consumer-sink on the stack's bus, with a key of its own, into schema `schema`."""

    def __init__(self, stack, schema, extra_env=None, name_suffix=""):
        self.stack = stack
        self.schema = schema
        key = helpers.unique("sink")
        stack.keys.register(stack.db, key)
        env = {
            "AC_SINK_DB": stack.pg.env["AC_SUPER_DB"],
            "AC_SINK_SCHEMA": schema,
            "AC_SINK_FOLLOW": SOURCE,
            "AC_SINK_KEY_FILE": stack.keys.path(key),
            "AC_BUS_SERVER_KEY": stack.keys.bus[0],
            "AC_BUS_OUTPUT": stack.bus.output,
            "AC_BUS_REPLAY": stack.bus.replay,
            "AC_SINK_REPLAY_TIMEOUT_MS": "2000",
            "AC_LOG_LEVEL": "info",
        }
        env.update(extra_env or {})
        super().__init__("sink-" + schema + name_suffix, [SINK_BIN], env, stack.log_dir)

    def rows(self):
        """(sequence, event_id, topic, subject) in the order applied."""
        try:
            return [(r["sequence"], r["event_id"], r["topic"], r["subject"])
                    for r in self.stack.db.rows(
                        'SELECT sequence, event_id, topic, subject FROM "%s".events '
                        "WHERE source = %%s ORDER BY id" % self.schema, (SOURCE,))]
        except Exception:  # noqa: BLE001 — the table appears once the sink has migrated
            return []

    def count(self):
        try:
            return self.stack.db.scalar('SELECT count(*) FROM "%s".events' % self.schema) or 0
        except Exception:  # noqa: BLE001
            return 0

    def stats(self):
        """The numbers of the last "sink stats" line of the log."""
        last = None
        for line in self.log_text().splitlines():
            if "sink stats" in line:
                last = line
        if last is None:
            return {}
        out = {}
        for word in last.split():
            if "=" in word:
                k, v = word.split("=", 1)
                if v.rstrip('"').isdigit():
                    out[k] = int(v.rstrip('"'))
        return out

    def check_clean(self):
        text = self.log_text()
        for marker in SANITIZER_MARKERS:
            assert marker not in text, "%s in %s:\n%s" % (marker, self.log_path, self.log_tail())


class Tail:
    """`aftercarectl events tail --json` with the given options; a thread collects lines."""

    def __init__(self, stack, *args, key="systest"):
        env = dict(os.environ, **helpers.ctl_bus_env(stack, key))
        self.err_path = os.path.join(stack.log_dir, helpers.unique("tail") + ".stderr")
        self.err = open(self.err_path, "wb")
        self.proc = subprocess.Popen([CTL_BIN, "events", "tail", "--json"] + list(args),
                                     stdout=subprocess.PIPE, stderr=self.err, env=env,
                                     stdin=subprocess.DEVNULL)
        self.events = []
        self.lock = threading.Lock()
        self.bad_lines = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                self.bad_lines.append(line)
                continue
            with self.lock:
                self.events.append(ev)

    def seqs(self, source=SOURCE):
        with self.lock:
            return [int(e["sequence"]) for e in self.events if e.get("source") == source]

    def snapshot(self):
        with self.lock:
            return list(self.events)

    def stderr(self):
        if not self.err.closed:
            self.err.flush()
        with open(self.err_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def check_clean(self):
        """After stop(): exited 0, with no sanitizer report (leaks are reported at exit)."""
        text = self.stderr()
        assert self.proc.returncode == 0, "tail exited %s:\n%s" % (self.proc.returncode,
                                                                 text[-3000:])
        for marker in SANITIZER_MARKERS:
            assert marker not in text, "%s in the tail's stderr:\n%s" % (marker, text[-3000:])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.thread.join(5)
        self.err.close()
        return self.proc.returncode


# --------------------------------------------------------------------------- load and truth

class Load:
    """A thread pool of HTTP clients creating tickets until `total` were acknowledged (201)
    or stop() is called. Failures (a daemon killed under it) are retried, not counted."""

    def __init__(self, stack, total, workers=12, deadline_s=90, description=None):
        self.stack = stack
        self.total = total
        self.body = {} if description is None else {"description": description}
        self.acked = []
        self.failures = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.deadline = time.monotonic() + deadline_s
        self.threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]
        for t in self.threads:
            t.start()

    def _work(self):
        api = helpers.Api(self.stack.intake.url, self.stack.tokens["agent"])
        customer = self.stack.probe_customer["id"]
        while not self.stopping.is_set() and time.monotonic() < self.deadline:
            with self.lock:
                if len(self.acked) >= self.total:
                    return
            try:
                r = api.post("/v1/tickets", json=helpers.ticket_body(customer, **self.body),
                             timeout=10)
            except requests.RequestException:
                with self.lock:
                    self.failures += 1
                time.sleep(0.05)
                continue
            if r.status_code == 201:
                with self.lock:
                    self.acked.append(r.json()["number"])
            else:
                with self.lock:
                    self.failures += 1
                time.sleep(0.05)

    def done(self):
        with self.lock:
            return len(self.acked)

    def wait_for(self, n, timeout=60):
        wait_until(lambda: self.done() >= n, timeout, 0.02, "%d acknowledged tickets" % n)

    def stop(self):
        self.stopping.set()
        return self.join()

    def join(self, timeout=120):
        for t in self.threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self.threads), "load threads hang"
        return list(self.acked)


def outbox_truth(stack, timeout=60):
    """Waits until intake's relay has numbered every outbox row, then returns
    {sequence: event_id} of all of them."""
    def settled():
        n = stack.db.scalar("SELECT count(*) FROM intake.outbox_pending_run")
        return n == 0
    wait_until(settled, timeout, 0.1, "the relay to number every outbox row")
    rows = stack.db.rows("SELECT sequence, event_id::text AS id FROM intake.outbox_sequenced "
                         "WHERE sequence IS NOT NULL")
    truth = {r["sequence"]: r["id"] for r in rows}
    last = stack.db.scalar("SELECT last_seq FROM intake.outbox_state")
    assert sorted(truth) == list(range(1, last + 1)), "the outbox itself has holes"
    return truth


def assert_stream(who, seqs, ids, truth, ordered=True):
    """seqs/ids as received; truth {sequence: event_id}: every event once, (in order)."""
    last = max(truth)
    dups = sorted(s for s, n in collections.Counter(seqs).items() if n > 1)
    assert not dups, "%s: %d events applied more than once, e.g. %s" % (who, len(dups), dups[:10])
    missing = sorted(set(truth) - set(seqs))
    assert not missing, "%s: %d of %d events missing, e.g. %s" % (
        who, len(missing), last, missing[:10])
    extra = sorted(set(seqs) - set(truth))
    assert not extra, "%s: events that the outbox never had: %s" % (who, extra[:10])
    if ordered:
        assert seqs == sorted(seqs), "%s: out of order near %s" % (
            who, next(seqs[i:i + 3] for i in range(len(seqs) - 1) if seqs[i] > seqs[i + 1]))
    wrong = [s for s, i in zip(seqs, ids) if truth[s] != i]
    assert not wrong, "%s: event ids differ from the outbox at %s" % (who, wrong[:10])


def wait_complete(sink, tail, truth, timeout=90):
    last = max(truth)

    def complete():
        ok = sink is None or sink.count() >= last
        ok = ok and (tail is None or len(tail.seqs()) >= last)
        return ok

    try:
        wait_until(complete, timeout, 0.2, "subscribers to reach sequence %d" % last)
    except TimeoutError:
        detail = []
        if sink is not None:
            detail.append("sink has %d rows, stats %s:\n%s" % (
                sink.count(), sink.stats(), sink.log_tail(30)))
        if tail is not None:
            detail.append("tail has %d events; stderr:\n%s" % (len(tail.seqs()),
                                                               tail.stderr()[-3000:]))
        raise AssertionError("\n".join(detail)) from None
    time.sleep(0.5)  # anything more (a duplicate applied late) would show now


def check_subscribers(sink, tail, truth, acked):
    rows = sink.rows()
    assert_stream("sink", [r[0] for r in rows], [r[1] for r in rows], truth)
    created = {r[3] for r in rows if r[2] == "ticket.created"}
    lost = sorted(set(acked) - created)
    assert not lost, "sink: %d acknowledged tickets without ticket.created, e.g. %s" % (
        len(lost), lost[:5])
    evs = [e for e in tail.snapshot() if e.get("source") == SOURCE]
    assert_stream("tail", [int(e["sequence"]) for e in evs], [e["id"] for e in evs], truth)
    created = {e["subject"] for e in evs if e["topic"] == "ticket.created"}
    lost = sorted(set(acked) - created)
    assert not lost, "tail: %d acknowledged tickets without ticket.created, e.g. %s" % (
        len(lost), lost[:5])
    assert not tail.bad_lines, tail.bad_lines[:3]
    sink.check_clean()


# --------------------------------------------------------------------------- the tests

def test_late_subscribers_replay_then_follow_live(cstack):
    """Started after 1,000 events while tickets keep coming: the replay and the live stream
    join without a gap or a duplicate at the seam."""
    first = Load(cstack, 1000)
    acked = first.join()
    assert len(acked) >= 1000
    during = Load(cstack, 100000, workers=4)  # keeps creating while the subscribers start
    sink = Sink(cstack, "sink_late")
    tail = Tail(cstack, "--from", SOURCE + ":1")
    try:
        sink.start()
        # both have caught up with the replay and are following live events
        live_from = during.done()
        during.wait_for(live_from + 300, timeout=60)
        wait_until(lambda: sink.count() > 1000 + live_from and len(tail.seqs()) > 1000 + live_from,
                   60, 0.1, "the subscribers to follow live events")
        during.wait_for(during.done() + 200, timeout=60)
        acked += during.stop()
        truth = outbox_truth(cstack)
        wait_complete(sink, tail, truth)
        check_subscribers(sink, tail, truth, acked)
        stats = sink.stats()
        assert stats.get("replays", 0) >= 1, stats  # it did replay the first 1,000
    finally:
        during.stop()
        tail.stop()
        sink.stop()
    assert sink.exit_codes[-1] == 0, sink.log_tail()
    tail.check_clean()


def test_kill_intake_then_bus_under_load(cstack):
    """kill -9 of intake, then of the bus, each in the middle of a load: afterwards each
    subscriber holds every event exactly once, and every acknowledged ticket is there."""
    sink = Sink(cstack, "sink_kill")
    tail = Tail(cstack, "--from", SOURCE + ":1")
    acked = []
    try:
        sink.start()
        truth = outbox_truth(cstack)
        wait_complete(sink, tail, truth)  # caught up with what earlier tests made

        load = Load(cstack, 3000)
        load.wait_for(1000)
        cstack.intake.stop(signal.SIGKILL)
        cstack.intake.start()
        cstack.intake.wait_ready()
        acked += load.join()
        assert len(acked) >= 3000

        load = Load(cstack, 3000)
        load.wait_for(1000)
        cstack.bus.stop(signal.SIGKILL)
        cstack.bus.start()
        cstack.bus.wait_ready()
        acked += load.join()
        assert len(acked) >= 6000

        truth = outbox_truth(cstack)
        wait_complete(sink, tail, truth, timeout=120)
        check_subscribers(sink, tail, truth, acked)
        assert sink.alive() and tail.proc.poll() is None
    finally:
        tail.stop()
        sink.stop()
    assert sink.exit_codes[-1] == 0, sink.log_tail()
    tail.check_clean()


def test_poison_event_is_dead_lettered(cstack):
    """An event whose effects fail in the database every time is recorded in the dead
    letters after a few tries; every other event is applied once, and the sink goes on."""
    truth = outbox_truth(cstack)
    poison = 7
    # a small window and small transactions: the replay of everything must be paced by
    # what the sink applies (it stops reading replayed events while half a window waits)
    sink = Sink(cstack, "sink_poison", {"AC_SINK_FAIL_SEQUENCE": str(poison),
                                        "AC_SINK_WINDOW": "256", "AC_SINK_BATCH": "16"})
    try:
        sink.start()
        wait_until(lambda: sink.count() >= len(truth) - 1, 60, 0.2, "the sink to pass the poison")
        time.sleep(0.5)
        rows = sink.rows()
        seqs = [r[0] for r in rows]
        assert poison not in seqs
        assert seqs == [s for s in sorted(truth) if s != poison], "holes or duplicates"
        dead = cstack.db.rows("SELECT sequence, event_id, topic, reason, length(envelope) AS n "
                              "FROM sink_poison.consumer_dead_letters")
        assert len(dead) == 1, dead
        assert dead[0]["sequence"] == poison and dead[0]["event_id"] == truth[poison]
        assert dead[0]["reason"].startswith("22012"), dead[0]  # division_by_zero
        assert dead[0]["n"] > 0
        assert cstack.db.scalar("SELECT last_sequence FROM sink_poison.consumer_checkpoints "
                                "WHERE source = %s", (SOURCE,)) == max(truth)
        assert sink.stats().get("dead_letters") == 1 or "dead_letters=1" in sink.log_text()
        sink.check_clean()
    finally:
        sink.stop()
    assert sink.exit_codes[-1] == 0, sink.log_tail()


def test_two_instances_apply_each_event_once(cstack):
    """Two instances of a consumer share one checkpoint table (a service run twice): each
    event is applied by one of them, once, whatever the interleaving."""
    truth = outbox_truth(cstack)
    sinks = [Sink(cstack, "sink_twins", name_suffix=str(i)) for i in range(2)]
    try:
        for s in sinks:
            s.start()
        wait_until(lambda: sinks[0].count() >= len(truth), 90, 0.2, "the twins to finish")
        load = Load(cstack, 300)
        acked = load.join()
        truth = outbox_truth(cstack)
        wait_complete(sinks[0], None, truth)
        rows = sinks[0].rows()  # the same table for both
        seqs = [r[0] for r in rows]
        assert_stream("twins", seqs, [r[1] for r in rows], truth)
        created = {r[3] for r in rows if r[2] == "ticket.created"}
        assert set(acked) <= created
        moved = sum(s.log_text().count("is no longer at") for s in sinks)
        print("checkpoint conflicts between the twins: %d" % moved)
        for s in sinks:
            s.check_clean()
    finally:
        for s in sinks:
            s.stop()
    assert [s.exit_codes[-1] for s in sinks] == [0, 0]


def test_intake_follows_with_checkpoints(cstack):
    """AC_INTAKE_FOLLOW starts intake's consumer (checkpoints in intake's schema). Its route
    table is empty until later services exist, so here it follows its own stream: the
    checkpoint reaches the end and the consumer's figures are on /metrics."""
    cstack.intake.env["AC_INTAKE_FOLLOW"] = SOURCE
    cstack.intake.restart()
    try:
        Load(cstack, 200).join()
        truth = outbox_truth(cstack)

        def checkpoint():
            return cstack.db.scalar("SELECT last_sequence FROM intake.consumer_checkpoints "
                                    "WHERE source = %s", (SOURCE,))
        wait_until(lambda: checkpoint() == max(truth), 60, 0.2, "intake's checkpoint")
        text = requests.get(cstack.intake.url + "/metrics", timeout=5).text
        assert 'aftercare_intake_consumer_replays_total{source="%s"}' % SOURCE in text, text
        assert 'aftercare_intake_consumer_next_sequence{source="%s"} %d' % (
            SOURCE, max(truth) + 1) in text, text
    finally:
        cstack.intake.env.pop("AC_INTAKE_FOLLOW", None)
        cstack.intake.restart()


def envelope(seq, topic="ticket.created", source=SOURCE):
    env = envelope_pb2.Envelope(id="00000000-0000-4000-8000-%012d" % seq, source=source,
                                type="aftercare.%s.v1" % topic, subject="SV-20990101-%06d" % seq,
                                sequence=seq, spec_version="1.0")
    return env.SerializeToString()


def test_consumer_survives_garbage(cstack):
    """A fake bus (it has the bus's key) sends garbage on the output and on the replay
    connection: the tail counts it, says so, and prints the real events once, in order."""
    ctx = zmq.Context.instance()
    out = ctx.socket(zmq.XPUB)
    rep = ctx.socket(zmq.ROUTER)
    ports = [helpers.free_port(helpers.NET_PORTS) for _ in range(2)]
    for sock, port in zip((out, rep), ports):
        sock.setsockopt(zmq.LINGER, 0)
        sock.curve_server = True
        sock.curve_secretkey = cstack.keys.bus[1].encode()
        sock.bind("tcp://127.0.0.1:%d" % port)
    env = dict(os.environ, **helpers.ctl_bus_env(cstack))
    env["AC_BUS_OUTPUT"] = "tcp://127.0.0.1:%d" % ports[0]
    env["AC_BUS_REPLAY"] = "tcp://127.0.0.1:%d" % ports[1]
    tail = subprocess.Popen([CTL_BIN, "events", "tail", "--from", SOURCE + ":1", "--count", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            stdin=subprocess.DEVNULL)
    try:
        assert out.poll(10000), "the tail never subscribed"
        out.recv()
        assert rep.poll(10000), "the tail never asked for a replay"
        peer, kind, body = rep.recv_multipart()
        assert kind == b"replay.request"
        req = bus_pb2.ReplayRequest()
        req.ParseFromString(body)
        assert (req.source, req.from_sequence, req.to_sequence) == (SOURCE, 1, 0)
        rid = req.request_id.encode()
        garbage = [
            [b"replay.event"],
            [b"replay.event", rid, b"ticket.created"],
            [b"replay.event", rid, b"ticket.created", b"\xff\xff not protobuf"],
            [b"replay.event", rid, b"", envelope(1)],
            [b"replay.end", b"\x0a\xff"],  # truncated
            [b"replay.error", b"\x12"],
            [b"replay.whatever", b"x"],
            [b"replay.end", bus_pb2.ReplayEnd(request_id="nobody", source=SOURCE,
                                              last_sequence=99).SerializeToString()],
        ]
        for frames in garbage:
            rep.send_multipart([peer] + frames)
        rep.send_multipart([peer, b"replay.event", rid, b"ticket.created", envelope(1)])
        rep.send_multipart([peer, b"replay.event", rid, b"ticket.created", envelope(1)])
        rep.send_multipart([peer, b"replay.end", bus_pb2.ReplayEnd(
            request_id=req.request_id, source=SOURCE, from_sequence=1, last_sequence=1,
            events=1).SerializeToString()])
        for frames in ([b"ticket.created"], [b"ticket.created", b"x", b"y"],
                       [b"ticket.created", b"\xff\xff\xff"], [b"bus.heartbeat", envelope(5)],
                       [b"ticket.created", envelope(0)]):
            out.send_multipart(frames)
        for seq in (2, 2, 3, 4):
            out.send_multipart([b"ticket.created", envelope(seq)])
        stdout, stderr = tail.communicate(timeout=20)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.communicate()
        out.close(0)
        rep.close(0)
        for port in ports:
            helpers.release_port(port)
    assert tail.returncode == 0, stderr
    seqs = [int(line.split()[0][len("seq="):]) for line in stdout.splitlines()]
    assert seqs == [1, 2, 3, 4], stdout
    m = re.search(r"skipped (\d+) malformed", stderr)
    assert m and int(m.group(1)) >= 12, stderr
    for marker in SANITIZER_MARKERS:
        assert marker not in stderr, stderr


def test_frozen_subscriber_repairs_the_gap(cstack):
    """A sink frozen (SIGSTOP) for 10 s under load overflows its queue at the bus, which
    drops for it; after SIGCONT it notices the gap and ends with the whole stream."""
    cstack.bus.env["AC_BUS_HWM"] = "100"
    cstack.bus.stop()
    cstack.bus.start()
    cstack.bus.wait_ready()
    sink = Sink(cstack, "sink_frozen", {"AC_SINK_RCVHWM": "100"})
    acked = []
    try:
        sink.start()
        truth = outbox_truth(cstack)
        wait_complete(sink, None, truth)
        gaps_before = sink.stats().get("gaps", 0)
        missed_before = sink.stats().get("live_missed", 0)

        # big events (4 kB descriptions), so that what the bus would keep in socket buffers
        # for a stopped reader (a few MB) is far less than what comes meanwhile
        load = Load(cstack, 1000000, workers=12, description="frozen " + "x" * 3900)
        load.wait_for(200)
        os.kill(sink.pid, signal.SIGSTOP)
        try:
            time.sleep(10)  # the point of the test: a subscriber that does not read for 10 s
        finally:
            os.kill(sink.pid, signal.SIGCONT)
        load.wait_for(load.done() + 500)
        acked = load.stop()

        truth = outbox_truth(cstack)
        wait_complete(sink, None, truth, timeout=120)
        rows = sink.rows()
        assert_stream("frozen sink", [r[0] for r in rows], [r[1] for r in rows], truth)
        lost = sorted(set(acked) - {r[3] for r in rows if r[2] == "ticket.created"})
        assert not lost, lost[:5]
        # not vacuous: the bus did drop for it (its live stream skipped sequences), and the
        # sink noticed and repaired the gap
        wait_until(lambda: sink.stats().get("gaps", 0) > gaps_before, 5, 0.2,
                   "the sink's stats to show the gap")
        assert sink.stats().get("live_missed", 0) > missed_before, sink.stats()
        assert "gap in %s" % SOURCE in sink.log_text(), sink.log_tail()
        sink.check_clean()
    finally:
        sink.stop()
        cstack.bus.env.pop("AC_BUS_HWM", None)
    assert sink.exit_codes[-1] == 0, sink.log_tail()


def bus_heartbeat(last, source="aftercare/bus", sequence=0, named=SOURCE):
    env = envelope_pb2.Envelope(id="00000000-0000-4000-8000-000000000000", source=source,
                                type="aftercare.bus.heartbeat.v1", sequence=sequence,
                                spec_version="1.0")
    env.bus_heartbeat.bus_instance = "fake"
    pos = env.bus_heartbeat.sources.add()
    pos.source = named
    pos.last_sequence = last
    return env.SerializeToString()


def test_consumer_heartbeats_and_replays_from_a_fake_bus(cstack):
    """A fake bus (it has the bus's key) checks three things of the tail's consumer:
    a heartbeat that is not the bus's (another source, a sequence) is ignored (no replay);
    a heartbeat announcing more than the replays deliver does not start a storm of
    requests; a replayed event that does not decode is asked for again, not passed over."""
    ctx = zmq.Context.instance()
    out = ctx.socket(zmq.XPUB)
    rep = ctx.socket(zmq.ROUTER)
    ports = [helpers.free_port(helpers.NET_PORTS) for _ in range(2)]
    for sock, port in zip((out, rep), ports):
        sock.setsockopt(zmq.LINGER, 0)
        sock.curve_server = True
        sock.curve_secretkey = cstack.keys.bus[1].encode()
        sock.bind("tcp://127.0.0.1:%d" % port)
    env = dict(os.environ, **helpers.ctl_bus_env(cstack))
    env["AC_BUS_OUTPUT"] = "tcp://127.0.0.1:%d" % ports[0]
    env["AC_BUS_REPLAY"] = "tcp://127.0.0.1:%d" % ports[1]
    tail = subprocess.Popen([CTL_BIN, "events", "tail", "--from", SOURCE + ":1", "--count", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            stdin=subprocess.DEVNULL)

    def request(timeout_ms):
        if not rep.poll(timeout_ms):
            return None, None
        peer, kind, body = rep.recv_multipart()
        assert kind == b"replay.request"
        req = bus_pb2.ReplayRequest()
        req.ParseFromString(body)
        return peer, req

    def end(peer, req, last, events=0):
        rep.send_multipart([peer, b"replay.end", bus_pb2.ReplayEnd(
            request_id=req.request_id, source=SOURCE, from_sequence=req.from_sequence,
            last_sequence=last, events=events).SerializeToString()])

    try:
        assert out.poll(10000), "the tail never subscribed"
        out.recv()
        peer, req = request(10000)
        assert req is not None, "the tail never asked for a replay"
        assert (req.from_sequence, req.to_sequence) == (1, 0)
        out.send_multipart([b"bus.heartbeat", bus_heartbeat(0)])
        end(peer, req, 0)  # an empty outbox

        # M1: forged heartbeats announce sequence 5: no replay may follow
        out.send_multipart([b"bus.heartbeat", bus_heartbeat(5, source=SOURCE)])
        out.send_multipart([b"bus.heartbeat", bus_heartbeat(5, sequence=7)])
        peer, req = request(1500)
        assert req is None, "a forged heartbeat started a replay %s" % req

        # M2: the bus's heartbeat announces 5, the replays end at 0: no storm
        out.send_multipart([b"bus.heartbeat", bus_heartbeat(5)])
        asked = 0
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            peer, req = request(100)
            if req is not None:
                asked += 1
                assert req.from_sequence == 1
                end(peer, req, 0)
        assert 1 <= asked <= 8, asked

        # L8: sequence 1 comes undecodable in a replay of 1..2: asked for again
        out.send_multipart([b"bus.heartbeat", bus_heartbeat(2)])
        peer, req = request(8000)
        assert req is not None and req.from_sequence == 1, req
        rid = req.request_id.encode()
        rep.send_multipart([peer, b"replay.event", rid, b"ticket.created", b"\xff\xff junk"])
        rep.send_multipart([peer, b"replay.event", rid, b"ticket.created", envelope(2)])
        end(peer, req, 2, events=2)
        peer, req = request(8000)
        assert req is not None and req.from_sequence == 1, req
        rid = req.request_id.encode()
        rep.send_multipart([peer, b"replay.event", rid, b"ticket.created", envelope(1)])
        end(peer, req, max(req.to_sequence, 1), events=1)
        stdout, stderr = tail.communicate(timeout=20)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.communicate()
        out.close(0)
        rep.close(0)
        for port in ports:
            helpers.release_port(port)
    assert tail.returncode == 0, stderr
    seqs = [int(line.split()[0][len("seq="):]) for line in stdout.splitlines()]
    assert seqs == [1, 2], stdout
    for marker in SANITIZER_MARKERS:
        assert marker not in stderr, stderr


def test_filtered_sink_checkpoints_past_other_topics(cstack):
    """A database-mode consumer whose topics match nothing still moves its checkpoint past
    the events of other topics (without applying any), so a restart does not replay them
    again from an old checkpoint."""
    if len(outbox_truth(cstack)) < 20:
        Load(cstack, 20).join()
    last = max(outbox_truth(cstack))
    sink = Sink(cstack, "sink_filtered", {"AC_SINK_TOPICS": "nothing."})

    def checkpoint():
        try:
            return cstack.db.scalar(
                "SELECT last_sequence FROM sink_filtered.consumer_checkpoints "
                "WHERE source = %s", (SOURCE,)) or 0
        except Exception:  # noqa: BLE001 — the table appears once the sink has migrated
            return 0

    try:
        sink.start()
        wait_until(lambda: checkpoint() >= last, 30, 0.2,
                   "the filtered sink's checkpoint to reach %d" % last)
        Load(cstack, 10).join()
        last = max(outbox_truth(cstack))
        wait_until(lambda: checkpoint() >= last, 30, 0.2,
                   "the filtered sink's checkpoint to reach %d" % last)
        assert sink.count() == 0
        sink.check_clean()
    finally:
        sink.stop()
    assert sink.exit_codes[-1] == 0, sink.log_tail()
