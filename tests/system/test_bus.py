"""The bus daemon: it relays well-formed events and drops malformed ones without stopping."""

import os
import subprocess
import time

import pytest
import zmq

from aftercare.v1 import envelope_pb2
import helpers
from helpers import CTL_BIN


def forged(topic, type_, seq=1, source="aftercare/test"):
    env = envelope_pb2.Envelope(id="00000000-0000-4000-8000-000000000001", source=source,
                                type=type_, subject="SV-19990101-000001", sequence=seq,
                                spec_version="1.0")
    return [topic, env.SerializeToString()]


GARBAGE = [
    ("one frame", [b"ticket.created"]),
    ("three frames", [b"ticket.created", b"x", b"y"]),
    ("undecodable envelope", [b"ticket.created", b"\xff\xff\xff\xff not protobuf"]),
    ("topic does not match type", forged(b"ticket.closed", "aftercare.ticket.created.v1")),
    ("type without prefix", forged(b"ticket.created", "ticket.created")),
    ("sequence 0", forged(b"ticket.created", "aftercare.ticket.created.v1", seq=0)),
    ("empty topic", [b"", forged(b"x", "aftercare.ticket.created.v1")[1]]),
]


@pytest.fixture
def rogue(stack):
    """A publisher on the bus input, ready once the bus has subscribed to it."""
    sock = zmq.Context.instance().socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 0)
    # the intake service's own key: garbage from an authorised publisher must be dropped too
    helpers.curve_client(sock, stack.keys.client("intake"))
    sock.connect(stack.bus.input)
    assert sock.poll(10000, zmq.POLLIN), "the bus never subscribed to a new publisher"
    sock.recv()  # the subscription
    yield sock
    sock.close(0)


def test_malformed_messages_are_dropped(stack, sub, rogue):
    mark = sub.mark()
    log_lines = len(stack.bus.log_text().splitlines())
    for _, frames in GARBAGE:
        rogue.send_multipart(frames)
    time.sleep(0.3)
    number = stack.probe()
    sub.wait_for(number, "ticket.created", since=mark)
    time.sleep(0.3)
    # the bus's own heartbeats come through as well; nothing else may
    got = [m for m in sub.messages(mark) if m.topic != b"bus.heartbeat"]
    assert [m.topic for m in got] == [b"ticket.created"], got
    assert got[0].env.subject == number
    assert stack.bus.alive()
    # each one was logged
    assert len(stack.bus.log_text().splitlines()) - log_lines >= len(GARBAGE)


def test_events_tail_skips_garbage(stack, rogue):
    start = helpers.next_sequence(stack)  # only this test's probes may appear
    tail = subprocess.Popen([CTL_BIN, "events", "tail", "--count", "1",
                             "--from", "aftercare/intake:%d" % start,
                             "--endpoint", stack.bus.output],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **helpers.ctl_bus_env(stack)))
    try:
        numbers = []
        deadline = time.monotonic() + 20
        while tail.poll() is None and time.monotonic() < deadline:
            for _, frames in GARBAGE:
                rogue.send_multipart(frames)
            numbers.append(stack.probe())
            time.sleep(0.3)
        out, err = tail.communicate(timeout=10)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
    assert tail.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 1, out
    assert lines[0].startswith("seq=") and "ticket.created" in lines[0]
    assert any(n in lines[0] for n in numbers), (lines, numbers)


@pytest.mark.parametrize("bad", ["0", "65", "two", "-1"])
def test_bad_io_threads_is_refused_at_start(bad):
    """AC_BUS_IO_THREADS out of 1..64: the bus refuses to start and names the key."""
    env = dict(os.environ, AC_BUS_IO_THREADS=bad, AC_BUS_DB="host=127.0.0.1 port=1",
               AC_BUS_SECRET_KEY_FILE="/nonexistent")
    p = subprocess.run([helpers.BUS_BIN], env=env, capture_output=True, text=True, timeout=10)
    assert p.returncode == 2 and "AC_BUS_IO_THREADS" in p.stderr, (p.returncode, p.stderr)
