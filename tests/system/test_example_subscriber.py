"""docs/examples/subscriber.py, the integrators' example, against a real stack: it must print
every ticket event exactly once, in sequence order, across its own restarts (SIGTERM and
kill -9), a restart of the bus, and live events that it only learns about from gaps."""

import json
import os
import re
import signal
import subprocess
import sqlite3
import sys
import threading
import time

import pytest

import helpers
from helpers import REPO, SOURCE, wait_until

EXAMPLE = os.path.join(REPO, "docs", "examples", "subscriber.py")
GEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".gen")  # made by conftest.py


class Example:
    """One docs/examples/subscriber.py with its own checkpoint file; every run appends its
    stdout (one JSON line per event) to the same file."""

    def __init__(self, stack, workdir, name, key, args=()):
        self.stack = stack
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.checkpoint = os.path.join(self.dir, "checkpoint.sqlite")
        self.out_path = os.path.join(self.dir, "stdout.jsonl")
        self.log_path = os.path.join(self.dir, "stderr.log")
        self.argv = [sys.executable, EXAMPLE,
                     "--key-file", stack.keys.path(key),
                     # (one argument: a Z85 key may begin with '-' or '@')
                     "--server-key=" + stack.keys.bus[0],
                     "--output", stack.bus.output,
                     "--replay", stack.bus.replay,
                     "--checkpoint", self.checkpoint,
                     "--replay-timeout", "3"] + list(args)
        self.proc = None
        self.exit_codes = []

    def start(self):
        env = dict(os.environ, PYTHONPATH=GEN)
        with open(self.out_path, "ab") as out, open(self.log_path, "ab") as err:
            err.write(b"\n===== start =====\n")
            err.flush()
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=err, env=env,
                                         stdin=subprocess.DEVNULL)

    def stop(self, sig=signal.SIGTERM, timeout=20):
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            rc = "hung"
        self.exit_codes.append(rc)
        self.proc = None
        return rc

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def lines(self):
        """The JSON objects printed so far by every run (complete lines only)."""
        with open(self.out_path, "rb") as f:
            data = f.read()
        return [json.loads(line) for line in data.split(b"\n")[:-1]]

    def log(self):
        return helpers.tail(self.log_path, 40)

    def checkpoint_seq(self):
        try:
            db = sqlite3.connect("file:%s?mode=ro" % self.checkpoint, uri=True, timeout=5)
            try:
                row = db.execute("SELECT last_sequence FROM checkpoints WHERE source = ?",
                                 (SOURCE,)).fetchone()
            finally:
                db.close()
        except sqlite3.Error:
            return 0
        return row[0] if row else 0

    def journal(self):
        db = sqlite3.connect(self.checkpoint)
        try:
            return db.execute("SELECT sequence, topic, subject FROM applied_events "
                              "WHERE source = ? ORDER BY sequence", (SOURCE,)).fetchall()
        finally:
            db.close()

    def wait_checkpoint(self, seq, timeout=60):
        """Waits until the example has applied (and committed) everything up to seq."""
        def done():
            if not self.alive():
                raise AssertionError("the example exited (rc %s):\n%s" % (
                    self.proc.returncode if self.proc else self.exit_codes, self.log()))
            return self.checkpoint_seq() >= seq
        try:
            wait_until(done, timeout, 0.1, "the example's checkpoint to reach %d" % seq)
        except TimeoutError:
            raise AssertionError("checkpoint %d, expected %d, within %d s:\n%s" % (
                self.checkpoint_seq(), seq, timeout, self.log())) from None

    def close(self):
        if self.alive():
            self.stop(signal.SIGKILL)


def last_seq(db):
    """The latest sequence numbered by intake's relay, once nothing is left unnumbered."""
    wait_until(lambda: db.scalar("SELECT count(*) FROM intake.outbox_pending_run") == 0,
               30, 0.1, "the relay to number every outbox row")
    return db.scalar("SELECT last_seq FROM intake.outbox_state")


def example_key(stack):
    if "example" not in stack.keys.pairs:
        stack.keys.register(stack.db, "example")
    return "example"


def make_tickets(stack, n, transitions=True):
    """n tickets; with transitions, every second one also moves to diagnosing and every
    third is updated, so other topics interleave with ticket.created."""
    api = stack.api("agent")
    numbers = []
    for i in range(n):
        number = stack.probe(api)
        numbers.append(number)
        if transitions and i % 2 == 0:
            api.must(api.transition(number, "diagnosing", reason="example test"), 200)
        if transitions and i % 3 == 0:
            api.must(api.patch("/v1/tickets/" + number, json={"urgency": "urgent"}), 200)
    return numbers


def assert_exactly_once(lines, upto, topics=("ticket.",), expected=None, ours=()):
    """Printed lines: each sequence once, increasing, all of the source, ending at the
    last wanted one; with expected (a list of sequences), exactly those. The events of the
    tickets in `ours` must carry their full snapshot."""
    seqs = [x["sequence"] for x in lines]
    assert all(x["source"] == SOURCE for x in lines), {x["source"] for x in lines}
    dups = sorted({s for s in seqs if seqs.count(s) > 1})
    assert not dups, "printed more than once: %s" % dups[:20]
    assert seqs == sorted(seqs), "out of order near %s" % next(
        (seqs[i:i + 3] for i in range(len(seqs) - 1) if seqs[i] > seqs[i + 1]), None)
    if expected is None:
        expected = list(range(1, upto + 1))
    missing = sorted(set(expected) - set(seqs))
    assert not missing, "never printed: %s (of %d)" % (missing[:20], len(missing))
    assert seqs == expected
    for x in lines:
        assert x["topic"].startswith(tuple(topics)), x["topic"]
        assert x["type"] == "aftercare.%s.v1" % x["topic"], x
        assert helpers.is_uuid(x["id"]), x
        if x["subject"] in ours:
            assert x["payload"]["ticket"]["number"] == x["subject"], x
            assert x["payload"]["ticket"]["version"] == str(x["ticket_version"]), x


def test_example_follows_replays_and_resumes_exactly_once(stack, tmp_root):
    """Started after tickets exist it replays them, then follows live; stopped (SIGTERM)
    and restarted, it resumes from its checkpoint: every event once, contiguous from 1."""
    key = example_key(stack)
    ex = Example(stack, os.path.join(tmp_root, "example"), "follow", key)
    try:
        before = make_tickets(stack, 6)
        upto = last_seq(stack.db)
        ex.start()
        ex.wait_checkpoint(upto)  # replayed from sequence 1
        during = make_tickets(stack, 8)
        upto = last_seq(stack.db)
        ex.wait_checkpoint(upto)  # followed live
        assert ex.stop() == 0, ex.log()

        stopped = make_tickets(stack, 5)  # published while it is away
        ex.start()
        after = make_tickets(stack, 5)
        upto = last_seq(stack.db)
        ex.wait_checkpoint(upto)
        assert ex.stop() == 0, ex.log()

        lines = ex.lines()
        ours = set(before + during + stopped + after)
        tickets = [r["sequence"] for r in stack.db.rows(
            "SELECT sequence FROM intake.outbox_sequenced WHERE starts_with(topic, 'ticket.') "
            "AND sequence <= %s ORDER BY sequence", (upto,))]
        # every ticket event, each once, in order (today: contiguous from 1; should another
        # test put other topics into intake's outbox, those are holes the example confirms)
        assert_exactly_once(lines, upto, expected=tickets, ours=ours)
        created = {x["subject"] for x in lines if x["topic"] == "ticket.created"}
        missing = ours - created
        assert not missing, "ticket.created never printed for %s" % sorted(missing)
        # what was printed is what was applied, once each
        assert [r[0] for r in ex.journal()] == [x["sequence"] for x in lines]
    finally:
        ex.close()


def test_example_start_latest_skips_the_past(stack, tmp_root):
    """--start latest: a new subscriber begins after the stream's position at its start
    (the first heartbeat), prints nothing older, and then everything, once each."""
    key = example_key(stack)
    ex = Example(stack, os.path.join(tmp_root, "example"), "latest", key, ["--start", "latest"])
    try:
        old = make_tickets(stack, 2)
        start = last_seq(stack.db)
        ex.start()
        wait_until(lambda: ex.checkpoint_seq() >= start, 30, 0.1,
                   "the example to record where it starts")
        new = make_tickets(stack, 4)
        upto = last_seq(stack.db)
        ex.wait_checkpoint(upto)
        assert ex.stop() == 0, ex.log()
        lines = ex.lines()
        assert lines and lines[0]["sequence"] > start, lines[:1]
        assert_exactly_once(lines, upto, expected=list(range(lines[0]["sequence"], upto + 1)),
                            ours=set(new))
        assert not {x["subject"] for x in lines} & set(old)
        assert set(new) <= {x["subject"] for x in lines}
    finally:
        ex.close()


@pytest.mark.slow
def test_example_repairs_losses_kills_and_topic_holes(make_stack, tmp_root):
    """Following only ticket.created (every other event is a hole it must confirm by
    replay): frozen (SIGSTOP) while the bus is killed and restarted, it misses what the bus
    forwards meanwhile and must repair that from a heartbeat or the next live event; then,
    under a steady load, it is killed (kill -9) and restarted. In the end it applied and
    printed each ticket.created exactly once, in sequence order."""
    stack = make_stack()
    key = example_key(stack)
    ex = Example(stack, os.path.join(tmp_root, "example"), "faults", key,
                 ["--topic", "ticket.created", "--verbose"])
    made = []
    stop_load = threading.Event()
    load_error = []

    def load():
        try:
            while not stop_load.is_set():
                made.extend(make_tickets(stack, 1))
                time.sleep(0.02)
        except Exception as e:  # noqa: BLE001 - reported by the test
            load_error.append(e)

    try:
        made.extend(make_tickets(stack, 5))
        ex.start()
        ex.wait_checkpoint(last_seq(stack.db))

        # 1. A loss it cannot see coming: frozen while the bus crashes, it misses what the
        # restarted bus forwards before it has reconnected. That bus sends no heartbeat for
        # a minute, so only the next live events can reveal the gap.
        ex.proc.send_signal(signal.SIGSTOP)
        stack.bus.stop(signal.SIGKILL)
        missed = make_tickets(stack, 4)  # committed while the bus is down
        stack.bus.env["AC_BUS_HEARTBEAT_MS"] = "60000"
        stack.bus.start()
        stack.bus.wait_ready()
        probe = stack.subscriber()  # intake publishes again: the backlog has gone out
        probe.close()
        stack.subscribers.remove(probe)
        ex.proc.send_signal(signal.SIGCONT)
        made.extend(missed)

        def repaired_by_live_gap():
            made.extend(make_tickets(stack, 1))
            return re.search(r"replayed \d+\.\.\d+ \(gap\): [1-9]", open(ex.log_path).read())
        try:
            wait_until(repaired_by_live_gap, 20, 0.2, "a live event to reveal the gap")
        except TimeoutError:
            raise AssertionError("no replay repaired the events missed while frozen:\n"
                                 + ex.log()) from None
        made.extend(make_tickets(stack, 1, transitions=False))  # ends on one of its topics
        ex.wait_checkpoint(last_seq(stack.db))

        # The bus restarts once more (cleanly), beating every second again.
        del stack.bus.env["AC_BUS_HEARTBEAT_MS"]
        stack.bus.stop()
        stack.bus.start()
        stack.bus.wait_ready()

        # 2. kill -9 under load, and a restart that replays what happened meanwhile.
        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        wait_until(lambda: len(made) >= 25, 60, 0.05, "the load to start")
        ex.stop(signal.SIGKILL)  # whatever it had not committed is applied after the restart
        mark = len(made)
        wait_until(lambda: len(made) >= mark + 5, 60, 0.05, "tickets while it is dead")
        ex.start()
        ex.wait_checkpoint(last_seq(stack.db))  # caught up by replay
        mark = len(made)
        wait_until(lambda: len(made) >= mark + 15, 60, 0.05, "tickets followed live")
        stop_load.set()
        loader.join(30)
        assert not load_error, load_error

        upto = last_seq(stack.db)
        ex.wait_checkpoint(upto, timeout=90)  # past the trailing holes: heartbeat replays
        assert ex.stop() == 0, ex.log()
        last_run = open(ex.log_path).read().split("===== start =====")[-1]
        assert re.search(r"stopped: .* gaps [1-9]", last_run), (
            "following live, it never met a hole to confirm by replay:\n" + ex.log())

        created = [r["sequence"] for r in stack.db.rows(
            "SELECT sequence FROM intake.outbox_sequenced WHERE topic = 'ticket.created' "
            "ORDER BY sequence")]
        journal = ex.journal()
        assert [r[0] for r in journal] == created  # applied once each (and only those)
        assert {r[2] for r in journal} >= set(made)
        # Printed: once each. A kill -9 between a commit and its print may lose the lines of
        # that one batch (printing is outside the transaction), never duplicate them.
        lines = ex.lines()
        printed = [x["sequence"] for x in lines]
        assert printed == sorted(set(printed)), "printed twice or out of order"
        assert set(printed) <= set(created)
        assert_exactly_once(lines, upto, ("ticket.created",),
                            expected=[s for s in created if s in set(printed)], ours=set(made))
        assert printed[-1] == created[-1]  # the last run printed everything it applied
        assert stack.bus.alive()
    finally:
        stop_load.set()
        ex.close()
