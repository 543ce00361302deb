"""Security of the bus: CURVE on every socket, a ZAP handler that knows the keys in
auth.bus_keys, topic limits per key, revocation without a restart, and the keys CLI.

What a user would notice: a stranger (unknown key, or no CURVE at all) gets nothing and
cannot inject anything; a CRM key limited to `ticket.` never sees `parts.`; a service key
cannot speak for another source; a revoked key is cut off while everyone else goes on;
every refusal shows in the bus log.
"""

import os
import socket
import stat
import struct
import subprocess
import time
import uuid

import requests
import zmq
from zmq.utils.monitor import recv_monitor_message

import helpers
from aftercare.v1 import envelope_pb2
from helpers import BUS_BIN, CTL_BIN, INTAKE_BIN, unique, wait_until

HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
TEST_SOURCE = "aftercare/testsvc"


# --------------------------------------------------------------------------- helpers

def new_pair():
    public, secret = zmq.curve_keypair()
    return public.decode(), secret.decode()


def stranger(stack):
    """CURVE client keys that the bus has never heard of."""
    public, secret = new_pair()
    return public, secret, stack.keys.bus[0]


def handshake(endpoint, sock_type, curve, timeout=10):
    """The first handshake outcome of a fresh client socket: (event, value) with event one of
    EVENT_HANDSHAKE_*; (None, None) when nothing happened within timeout."""
    sock = zmq.Context.instance().socket(sock_type)
    sock.setsockopt(zmq.LINGER, 0)
    if sock_type == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    helpers.curve_client(sock, curve)
    mon = sock.get_monitor_socket(HANDSHAKE_EVENTS)
    try:
        sock.connect(endpoint)
        if not mon.poll(timeout * 1000):
            return None, None
        ev = recv_monitor_message(mon)
        return ev["event"], ev["value"]
    finally:
        sock.disable_monitor()
        mon.close(0)
        sock.close(0)


def assert_refused(endpoint, sock_type, curve):
    event, value = handshake(endpoint, sock_type, curve)
    assert event == zmq.EVENT_HANDSHAKE_FAILED_AUTH, (endpoint, event, value)
    assert value == 400, "ZAP status %r" % value


def envelope(topic, source, seq, subject=None):
    """[topic, Envelope bytes] of a well-formed event (type aftercare.<topic>.v1)."""
    env = envelope_pb2.Envelope(id=str(uuid.uuid4()), source=source,
                                type="aftercare.%s.v1" % topic,
                                subject=subject or unique("SUBJ"), sequence=seq,
                                spec_version="1.0")
    return [topic.encode(), env.SerializeToString()]


class Publisher:
    """An XPUB on the bus input with the given CURVE keys, ready once the bus subscribed."""

    def __init__(self, stack, curve, timeout=10):
        self.sock = zmq.Context.instance().socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        helpers.curve_client(self.sock, curve)
        self.sock.connect(stack.bus.input)
        assert self.sock.poll(timeout * 1000, zmq.POLLIN), "the bus never subscribed"
        self.sock.recv()

    def send(self, frames):
        self.sock.send_multipart(frames)

    def close(self):
        self.sock.close(0)


def register(stack, name, kind="subscriber", source=None, topics=()):
    """Allows a new key and waits until the bus has reloaded its keys: a libzmq client
    refused once (here: by a bus that has not heard of the key yet) never retries."""
    reloads = stack.bus.log_text().count("keys: reloaded")
    stack.keys.register(stack.db, name, kind, source, topics)
    wait_until(lambda: stack.bus.log_text().count("keys: reloaded") > reloads, 10, 0.02,
               "the bus to reload its keys")


def register_service(stack, name):
    register(stack, name, "service", TEST_SOURCE)
    return Publisher(stack, stack.keys.client(name))


def bus_log_has(stack, text, timeout=5):
    return wait_until(lambda: text in stack.bus.log_text(), timeout, 0.1,
                      "bus log line containing %r" % text)


def subjects(sub, since=0):
    out = set()
    for m in sub.messages(since):
        if m.env is not None:
            out.add(m.env.subject)
    return out


def ctl(stack, *args, timeout=30):
    env = dict(os.environ, AC_ADMIN_DB=stack.pg.env["AC_ADMIN_DB"])
    return subprocess.run([CTL_BIN] + list(args), env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def key_rows(stack):
    return stack.db.rows("SELECT public_key, name, kind, source, topics, revoked_at "
                         "FROM auth.bus_keys ORDER BY created_at, name")


def metric(stack, name, labels=""):
    """A figure from the bus's /metrics (aftercare_bus_<name>{labels})."""
    text = requests.get(stack.bus.url + "/metrics", timeout=5).text
    want = "aftercare_bus_%s%s " % (name, labels)
    for line in text.splitlines():
        if line.startswith(want):
            return float(line.split()[-1])
    raise AssertionError("no %s in /metrics:\n%s" % (want, text))


# --------------------------------------------------------------------------- strangers

def test_unknown_key_receives_nothing_and_is_refused_everywhere(stack, sub):
    curve = stranger(stack)
    before = metric(stack, "auth_failures_total", '{domain="aftercare.output"}')
    spy = helpers.Subscriber(stack.bus.output, b"", curve)
    try:
        numbers = [stack.probe() for _ in range(3)]
        sub.wait_subjects(numbers)
        time.sleep(0.5)  # what the spy could have got, it would have by now
        assert spy.messages() == []
    finally:
        spy.close()
    for endpoint, sock_type in ((stack.bus.output, zmq.SUB), (stack.bus.input, zmq.XPUB),
                                (stack.bus.replay, zmq.DEALER)):
        assert_refused(endpoint, sock_type, curve)
    bus_log_has(stack, "refused key %s on aftercare.output" % curve[0])
    bus_log_has(stack, "refused key %s on aftercare.input" % curve[0])
    bus_log_has(stack, "refused key %s on aftercare.replay" % curve[0])
    after = metric(stack, "auth_failures_total", '{domain="aftercare.output"}')
    assert after > before  # counted, not only logged
    assert stack.bus.alive()


def test_plain_client_receives_nothing(stack, sub):
    plain = helpers.Subscriber(stack.bus.output, b"", None)
    try:
        numbers = [stack.probe() for _ in range(3)]
        sub.wait_subjects(numbers)
        time.sleep(0.5)
        assert plain.messages() == []
    finally:
        plain.close()
    event, _ = handshake(stack.bus.output, zmq.SUB, None)
    assert event is not None and event != zmq.EVENT_HANDSHAKE_SUCCEEDED, event
    # nor can a plain publisher get into the input
    event, _ = handshake(stack.bus.input, zmq.XPUB, None)
    assert event is not None and event != zmq.EVENT_HANDSHAKE_SUCCEEDED, event
    assert stack.bus.alive()


def failures(stack, sock, reason):
    return metric(stack, "handshake_failures_total", '{socket="%s",reason="%s"}' % (sock, reason))


def test_failures_before_zap_are_counted_and_logged(stack):
    """No CURVE, the wrong server key, or not ZeroMQ at all: the ZAP handler never hears of
    them, yet each is counted per socket and reason, and logged."""
    before = {(sock, reason): failures(stack, sock, reason)
              for sock, reason in (("output", "not_curve"), ("output", "cryptographic"),
                                   ("input", "not_zmtp"))}
    # The wrong server key: the bus cannot open the client's HELLO.
    public, secret = new_pair()
    event, _ = handshake(stack.bus.output, zmq.SUB, (public, secret, new_pair()[0]))
    assert event is not None and event != zmq.EVENT_HANDSHAKE_SUCCEEDED, event
    # Not ZeroMQ at all.
    with socket.create_connection(("127.0.0.1", stack.bus.input_port), timeout=5) as raw:
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n" * 8)
        try:
            while raw.recv(4096):  # until the bus hangs up (closing first could reset it)
                pass
        except ConnectionResetError:
            pass  # it hung up on what it had not read
    # No CURVE: the client sees the mismatch too and may hang up before the bus has read
    # its greeting (then the bus counts an "incomplete" handshake), so a few tries.
    for _ in range(20):
        event, _ = handshake(stack.bus.output, zmq.SUB, None)
        assert event is not None and event != zmq.EVENT_HANDSHAKE_SUCCEEDED, event
        if failures(stack, "output", "not_curve") > before[("output", "not_curve")]:
            break
    for (sock, reason), n in before.items():
        wait_until(lambda sock=sock, reason=reason, n=n: failures(stack, sock, reason) > n,
                   10, 0.1, "a %s failure counted on the %s" % (reason, sock))
    bus_log_has(stack, "on aftercare.output: handshake failed: the client does not use CURVE")
    bus_log_has(stack, "on aftercare.output: handshake failed: CURVE boxes do not open")
    bus_log_has(stack, "on aftercare.input: connection closed before a handshake")
    r = requests.get(stack.bus.url + "/v1/stats", timeout=5,
                     headers={"Authorization": "Bearer " + stack.tokens["admin"]})
    assert r.status_code == 200, r.text
    assert r.json()["handshake_failures"]["output"]["not_curve"] >= 1
    assert stack.bus.alive()


def test_connected_subscribers_are_counted(make_stack):
    s = make_stack("subscribers")

    def count():
        return metric(s, "subscribers")

    assert count() == 0  # intake follows nothing: only the input is connected
    assert metric(s, "connections", '{socket="input"}') == 1
    # failed handshakes are no connections, and their closing takes none away
    for _ in range(3):
        event, _ = handshake(s.bus.output, zmq.SUB, stranger(s))
        assert event == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    subs = [s.subscriber() for _ in range(3)]
    wait_until(lambda: count() == 3, 10, 0.1, "3 subscribers")
    assert metric(s, "connections", '{socket="output"}') == 3
    env = dict(os.environ, AC_BUS_URL=s.bus.url, AC_TOKEN=s.tokens["admin"])
    p = subprocess.run([CTL_BIN, "events", "stats"], env=env, capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 0, p.stderr
    assert "subscribers 3," in p.stdout, p.stdout
    subs.pop().close()
    wait_until(lambda: count() == 2, 10, 0.1, "2 subscribers after one closed")
    for sub in subs:
        sub.close()
    wait_until(lambda: count() == 0, 10, 0.1, "no subscribers after all closed")
    assert metric(s, "handshake_failures_total", '{socket="output",reason="refused"}') == 3


def test_unknown_key_cannot_publish(stack, sub):
    curve = stranger(stack)
    sock = zmq.Context.instance().socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 0)
    helpers.curve_client(sock, curve)
    sock.connect(stack.bus.input)
    try:
        # the bus never subscribes to it, so nothing it sends leaves its socket
        assert not sock.poll(2000, zmq.POLLIN), "the bus subscribed to an unknown publisher"
        forged = envelope("ticket.created", helpers.SOURCE, 1)
        sock.send_multipart(forged)
        forged_subject = envelope_pb2.Envelope.FromString(forged[1]).subject
        number = stack.probe()
        sub.wait_for(number, "ticket.created")
        time.sleep(0.3)
        assert forged_subject not in subjects(sub)
    finally:
        sock.close(0)
    bus_log_has(stack, "refused key %s on aftercare.input" % curve[0])


def test_subscriber_key_cannot_publish(stack):
    # systest is a live subscriber key: it may listen, not speak
    assert_refused(stack.bus.input, zmq.XPUB, stack.keys.client("systest"))
    bus_log_has(stack, "refused key %s on aftercare.input" % stack.keys.public("systest"))
    bus_log_has(stack, "not a service key")


# --------------------------------------------------------------------------- publishers

def test_service_key_cannot_publish_for_another_source(stack, sub):
    name = unique("testsvc")
    pub = register_service(stack, name)
    try:
        before = metric(stack, "unauthorised_total")
        mark = sub.mark()
        # as intake: dropped; as itself: forwarded (same connection, so in this order)
        forged = envelope("ticket.created", helpers.SOURCE, 10 ** 9)
        own = envelope("parts.reserved", TEST_SOURCE, 1)
        pub.send(forged)
        pub.send(own)
        own_subject = envelope_pb2.Envelope.FromString(own[1]).subject
        wait_until(lambda: own_subject in subjects(sub, mark), 10, 0.05, "its own event")
        got = sub.messages(mark)
        assert envelope_pb2.Envelope.FromString(forged[1]).subject not in subjects(sub, mark)
        assert [m.topic for m in got if m.topic != b"bus.heartbeat"
                and not (m.env and m.env.source == helpers.SOURCE)] == [b"parts.reserved"]
    finally:
        pub.close()
    bus_log_has(stack, 'envelope source "aftercare/intake" is not aftercare/testsvc')
    assert metric(stack, "unauthorised_total") >= before + 1


def batch(*events):
    """The relay's batch message into the bus input (common/ac_bus.h): [bus.batch][records],
    each record topic length (1 byte), topic, envelope length (4 bytes), envelope."""
    body = b"".join(bytes([len(t)]) + t + struct.pack(">I", len(e)) + e for t, e in events)
    return [b"bus.batch", body]


def test_batch_is_checked_event_by_event_and_arrives_as_single_events(stack, sub):
    name = unique("testsvc")
    pub = register_service(stack, name)
    try:
        before = metric(stack, "unauthorised_total")
        malformed = metric(stack, "malformed_total")
        mark = sub.mark()
        forged = envelope("ticket.created", helpers.SOURCE, 10 ** 9)
        heartbeat = envelope("bus.heartbeat", TEST_SOURCE, 1)
        own = [envelope("parts.reserved", TEST_SOURCE, seq) for seq in (1, 2)]
        pub.send(batch(own[0], forged, heartbeat, own[1]))
        whole = batch(envelope("parts.reserved", TEST_SOURCE, 3))
        pub.send([whole[0], whole[1][:-5]])  # truncated: dropped whole, counted
        last = envelope("parts.reserved", TEST_SOURCE, 4)
        pub.send(last)
        last_subject = envelope_pb2.Envelope.FromString(last[1]).subject
        wait_until(lambda: last_subject in subjects(sub, mark), 10, 0.05, "the event after")
        got = [m for m in sub.messages(mark) if m.topic != b"bus.heartbeat"
               and not (m.env and m.env.source == helpers.SOURCE)]
        # subscribers see the documented two frames, never a batch, in the order sent
        assert all(m.error is None for m in got)
        assert [m.topic for m in got] == [b"parts.reserved"] * 3
        assert [m.env.sequence for m in got] == [1, 2, 4]
    finally:
        pub.close()
    assert metric(stack, "unauthorised_total") >= before + 2  # the forged event, the heartbeat
    assert metric(stack, "malformed_total") >= malformed + 1
    bus_log_has(stack, "dropped a batch from the input")


def test_service_key_cannot_forge_a_heartbeat(stack, sub):
    crm = unique("crm")
    register(stack, crm, topics=["ticket."])
    crm_sub = stack.subscriber(b"", key=crm)
    pub = register_service(stack, unique("testsvc"))
    try:
        before = metric(stack, "unauthorised_total")
        mark, crm_mark = sub.mark(), crm_sub.mark()
        # its own source and a type matching the topic: only the bus may speak on bus.*
        forged = envelope("bus.heartbeat", TEST_SOURCE, 1)
        assert envelope_pb2.Envelope.FromString(forged[1]).type == "aftercare.bus.heartbeat.v1"
        own = envelope("ticket.noted", TEST_SOURCE, 2)
        pub.send(forged)
        pub.send(own)
        own_subject = envelope_pb2.Envelope.FromString(own[1]).subject
        wait_until(lambda: own_subject in subjects(sub, mark), 10, 0.05, "its own event")
        wait_until(lambda: own_subject in subjects(crm_sub, crm_mark), 10, 0.05,
                   "its own event at the restricted key")
        for s_ in (sub, crm_sub):
            assert all(m.env is None or m.env.source != TEST_SOURCE
                       for m in s_.messages() if m.topic == b"bus.heartbeat")
    finally:
        pub.close()
    bus_log_has(stack, 'topic "bus.heartbeat" is reserved for the bus')
    assert metric(stack, "unauthorised_total") >= before + 1


def test_heartbeat_never_claims_more_than_the_outbox_numbered(make_stack):
    s = make_stack("hbcap")
    register(s, "intake2", "service", helpers.SOURCE)  # a buggy second key for the source
    pub = Publisher(s, s.keys.client("intake2"))
    hb = helpers.Subscriber(s.bus.output, b"bus.heartbeat", s.keys.client("systest"))
    events = s.subscriber(b"ticket.")
    try:
        s.probe()
        wait_until(lambda: s.db.scalar("SELECT count(*) FROM intake.outbox_pending_run") == 0,
                   30, 0.1, "numbering")
        bogus = envelope("ticket.noted", helpers.SOURCE, 10 ** 9)
        pub.send(bogus)
        bogus_subject = envelope_pb2.Envelope.FromString(bogus[1]).subject
        wait_until(lambda: bogus_subject in subjects(events), 10, 0.05, "the bogus event")
        mark = len(hb.messages())
        wait_until(lambda: len(hb.messages()) >= mark + 4, 10, 0.1, "four more heartbeats")
        outbox_last = s.db.scalar("SELECT last_seq FROM intake.outbox_state")
        for m in hb.messages()[mark:]:
            pos = {p.source: p.last_sequence for p in m.env.bus_heartbeat.sources}
            assert pos[helpers.SOURCE] <= outbox_last, (pos, outbox_last)

        # an honest event still shows at once: the bus reads the outbox again soon
        number = s.probe()
        events.wait_for(number, "ticket.created")
        latest = s.db.scalar("SELECT last_seq FROM intake.outbox_state")
        mark = len(hb.messages())

        def carries(seq):
            return any({p.source: p.last_sequence for p in m.env.bus_heartbeat.sources}
                       .get(helpers.SOURCE) == seq for m in hb.messages()[mark:])
        wait_until(lambda: carries(latest), 5, 0.05, "a heartbeat carrying %d" % latest)
    finally:
        pub.close()
        hb.close()


def test_topic_limited_key_never_sees_other_topics(stack, sub):
    crm = unique("crm")
    denied_before = metric(stack, "topics_denied_total")
    register(stack, crm, topics=["ticket."])
    publisher = register_service(stack, unique("testsvc"))
    crm_all = stack.subscriber(b"", key=crm)           # asks for everything
    crm_parts = helpers.Subscriber(stack.bus.output, b"parts.", stack.keys.client(crm))
    try:
        mark_all, mark_sub = crm_all.mark(), sub.mark()
        parts = envelope("parts.reserved", TEST_SOURCE, 1)
        tick = envelope("ticket.noted", TEST_SOURCE, 2)
        publisher.send(parts)
        publisher.send(tick)
        parts_subject = envelope_pb2.Envelope.FromString(parts[1]).subject
        tick_subject = envelope_pb2.Envelope.FromString(tick[1]).subject
        # an unrestricted key sees both: they were published and forwarded
        wait_until(lambda: {parts_subject, tick_subject} <= subjects(sub, mark_sub), 10, 0.05,
                   "both test events at the unrestricted subscriber")
        # the CRM gets the ticket event (after the parts one on the same pipe, were it sent)
        wait_until(lambda: tick_subject in subjects(crm_all, mark_all), 10, 0.05,
                   "the ticket event at the CRM")
        number = stack.probe()
        crm_all.wait_for(number, "ticket.created", since=mark_all)
        topics = {m.topic for m in crm_all.messages()}
        assert all(t.startswith(b"ticket.") or t == b"bus.heartbeat" for t in topics), topics
        assert parts_subject not in subjects(crm_all)
        assert crm_parts.messages() == []
    finally:
        crm_parts.close()
        publisher.close()
    bus_log_has(stack, 'may not see "parts."')
    assert metric(stack, "topics_denied_total") >= denied_before + 1


# --------------------------------------------------------------------------- revocation

def test_revoked_or_narrowed_key_is_cut_off_without_restart(make_stack):
    s = make_stack("revoke")
    register(s, "victim")
    register(s, "narrowed")
    victim = s.subscriber(key="victim")
    narrowed = s.subscriber(key="narrowed")
    other = s.subscriber()
    bus_pid = s.bus.pid
    log_before = s.bus.log_text().count("output re-created")

    p = ctl(s, "keys", "revoke", "victim")
    assert p.returncode == 0, p.stderr
    # cut off within a bounded time: the bus re-creates its output
    wait_until(lambda: s.bus.log_text().count("output re-created") > log_before, 5, 0.05,
               "the output to be re-created after the revocation")
    # the others reconnect by themselves and get the stream again
    numbers = s.await_flow(other, 20)
    s.await_flow(narrowed, 20)
    # the re-created output is counted afresh: the two that came back, not the revoked one
    wait_until(lambda: metric(s, "subscribers") == 2, 10, 0.1, "2 subscribers on the new output")
    time.sleep(0.5)
    assert not set(numbers) & subjects(victim), "the revoked key still receives events"
    assert_refused(s.bus.output, zmq.SUB, s.keys.client("victim"))
    bus_log_has(s, "refused key %s on aftercare.output" % s.keys.public("victim"))

    # narrowing a key's topics cuts it off as well; it comes back with the new limit
    log_before = s.bus.log_text().count("output re-created")
    s.db.rows("UPDATE auth.bus_keys SET topics = '{survey.}' WHERE name = 'narrowed'")
    wait_until(lambda: s.bus.log_text().count("output re-created") > log_before, 5, 0.05,
               "the output to be re-created after the narrowing")
    numbers = s.await_flow(other, 20)
    mark = narrowed.mark()
    numbers += s.await_flow(other, 20)
    time.sleep(0.5)
    assert not set(numbers) & subjects(narrowed, mark), "the narrowed key still sees tickets"

    assert s.bus.pid == bus_pid and s.bus.alive(), "the bus was restarted"
    assert s.intake.alive()


def test_widened_then_narrowed_back_key_is_cut_off(make_stack):
    s = make_stack("narrowback")
    register(s, "crm", topics=["survey."])
    # let into the output with [survey.]: "" becomes survey. and bus.heartbeat
    first = helpers.Subscriber(s.bus.output, b"", s.keys.client("crm"))
    wait_until(lambda: first.messages(), 10, 0.05, "a heartbeat at the key")
    other = s.subscriber()

    def keys_changed(sql):
        reloads = s.bus.log_text().count("keys: reloaded")
        s.db.rows(sql)
        wait_until(lambda: s.bus.log_text().count("keys: reloaded") > reloads, 10, 0.02,
                   "the bus to reload its keys")

    recreated = s.bus.log_text().count("output re-created")
    keys_changed("UPDATE auth.bus_keys SET topics = '{survey.,ticket.}' WHERE name = 'crm'")
    tickets = helpers.Subscriber(s.bus.output, b"ticket.", s.keys.client("crm"))
    try:
        s.await_flow(tickets, 20)  # the widened key receives tickets
        keys_changed("UPDATE auth.bus_keys SET topics = '{survey.}' WHERE name = 'crm'")
        wait_until(lambda: s.bus.log_text().count("output re-created") > recreated, 5, 0.05,
                   "the output to be re-created after narrowing back")
        numbers = s.await_flow(other, 20)
        mark = tickets.mark()
        numbers += s.await_flow(other, 20)
        time.sleep(0.5)
        assert not set(numbers) & subjects(tickets, mark), "the narrowed key still sees tickets"
    finally:
        tickets.close()
        first.close()


# --------------------------------------------------------------------------- start-up

def run_daemon(argv, env, timeout=15):
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_bus_refuses_to_start_without_a_good_key_file(tmp_path):
    base = {"PATH": os.environ.get("PATH", ""), "AC_BUS_DB": "host=/nonexistent dbname=x",
            "AC_BUS_INPUT_BIND": "tcp://127.0.0.1:1", "AC_BUS_OUTPUT_BIND": "tcp://127.0.0.1:2",
            "AC_BUS_REPLAY_BIND": "tcp://127.0.0.1:3", "AC_BUS_HTTP_PORT": "4"}
    p = run_daemon([BUS_BIN], base)
    assert p.returncode == 2 and "AC_BUS_SECRET_KEY_FILE" in p.stderr, p.stderr

    missing = str(tmp_path / "missing.key")
    p = run_daemon([BUS_BIN], dict(base, AC_BUS_SECRET_KEY_FILE=missing))
    assert p.returncode == 2 and missing in p.stderr, p.stderr

    public, secret = new_pair()
    loose = tmp_path / "loose.key"
    loose.write_text("public-key = %s\nsecret-key = %s\n" % (public, secret))
    loose.chmod(0o644)
    p = run_daemon([BUS_BIN], dict(base, AC_BUS_SECRET_KEY_FILE=str(loose)))
    assert p.returncode == 2 and "readable by others" in p.stderr, p.stderr

    wrong = tmp_path / "wrong.key"
    wrong.write_text("public-key = %s\nsecret-key = %s\n" % (new_pair()[0], secret))
    wrong.chmod(0o600)
    p = run_daemon([BUS_BIN], dict(base, AC_BUS_SECRET_KEY_FILE=str(wrong)))
    assert p.returncode == 2 and "does not belong" in p.stderr, p.stderr


def test_intake_refuses_to_start_without_good_keys(tmp_path):
    public, secret = new_pair()
    key = tmp_path / "intake.key"
    key.write_text("public-key = %s\nsecret-key = %s\n" % (public, secret))
    key.chmod(0o600)
    base = {"PATH": os.environ.get("PATH", ""), "AC_INTAKE_DB": "host=/nonexistent dbname=x",
            "AC_INTAKE_KEY_FILE": str(key)}
    p = run_daemon([INTAKE_BIN], base)
    assert p.returncode == 2 and "AC_BUS_SERVER_KEY" in p.stderr, p.stderr
    p = run_daemon([INTAKE_BIN], dict(base, AC_BUS_SERVER_KEY="not-a-key"))
    assert p.returncode == 2 and "AC_BUS_SERVER_KEY" in p.stderr, p.stderr
    p = run_daemon([INTAKE_BIN], dict(base, AC_BUS_SERVER_KEY=new_pair()[0],
                                      AC_INTAKE_KEY_FILE=str(tmp_path / "nope.key")))
    assert p.returncode == 2 and "nope.key" in p.stderr, p.stderr


# --------------------------------------------------------------------------- aftercarectl keys

def test_keys_cli_validates_everything_and_changes_nothing_on_error(stack, tmp_path):
    out = str(tmp_path / "k.key")
    rows = key_rows(stack)
    bad = [
        (["keys", "create", "bad name", "--kind", "subscriber", "--out", out], "key name"),
        (["keys", "create", "-x", "--kind", "subscriber", "--out", out], ""),
        (["keys", "create", "n1", "--kind", "admin", "--out", out], "--kind"),
        (["keys", "create", "n1", "--out", out], "--kind is required"),
        (["keys", "create", "n1", "--kind", "service", "--out", out], "--source"),
        (["keys", "create", "n1", "--kind", "service", "--source", "intake", "--out", out],
         "aftercare/"),
        (["keys", "create", "n1", "--kind", "service", "--source", "aftercare/Intake",
          "--out", out], "aftercare/"),
        (["keys", "create", "n1", "--kind", "subscriber", "--source", "aftercare/x",
          "--out", out], "only service keys"),
        (["keys", "create", "n1", "--kind", "subscriber", "--topics", "Ticket.", "--out", out],
         "topic prefix"),
        (["keys", "create", "n1", "--kind", "subscriber", "--topics", "ticket..x", "--out", out],
         "topic prefix"),
        (["keys", "create", "n1", "--kind", "subscriber", "--topics", ".ticket", "--out", out],
         "topic prefix"),
        (["keys", "create", "n1", "--kind", "subscriber", "--topics", ",", "--out", out],
         "--topics"),
        # an empty list would mean "every topic" in auth.bus_keys: refused, never stored
        (["keys", "create", "n1", "--kind", "subscriber", "--topics", "", "--out", out],
         "--topics is empty"),
        (["keys", "allow", "n1", "--kind", "subscriber", "--public-key", new_pair()[0],
          "--topics", ""], "--topics is empty"),
        (["keys", "create", "n1", "--kind", "subscriber", "--topics", "a.,a.", "--out", out],
         "twice"),
        (["keys", "create", "n1", "--kind", "subscriber"], "--out"),
        (["keys", "allow", "n1", "--kind", "subscriber"], "--public-key"),
        (["keys", "allow", "n1", "--kind", "subscriber", "--public-key", "x" * 39], "Z85"),
        (["keys", "allow", "n1", "--kind", "subscriber", "--public-key", "~" * 40], "Z85"),
        (["keys", "allow", "n1", "--kind", "bus", "--public-key", new_pair()[0]], "--kind"),
        (["keys", "revoke"], "NAME"),
    ]
    for args, text in bad:
        p = ctl(stack, *args)
        assert p.returncode == 2, (args, p.returncode, p.stderr)
        assert text in p.stderr, (args, p.stderr)
        assert not os.path.exists(out), args
    assert key_rows(stack) == rows

    # create: a 0600 key file whose public key is registered, printed alone on stdout
    name = unique("cli-crm")
    p = ctl(stack, "keys", "create", name, "--kind", "subscriber", "--topics",
            "ticket.,survey.", "--out", out)
    assert p.returncode == 0, p.stderr
    public = p.stdout.strip()
    assert p.stdout == public + "\n" and len(public) == 40
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    with open(out) as f:
        assert "public-key = %s\n" % public in f.read()
    row = [r for r in key_rows(stack) if r["name"] == name]
    assert len(row) == 1 and row[0]["public_key"] == public
    assert row[0]["kind"] == "subscriber" and row[0]["topics"] == ["ticket.", "survey."]

    # the same name again: refused, and no file left behind
    rows = key_rows(stack)
    out2 = str(tmp_path / "k2.key")
    p = ctl(stack, "keys", "create", name, "--kind", "subscriber", "--out", out2)
    assert p.returncode == 1 and "already exists" in p.stderr, p.stderr
    assert not os.path.exists(out2)
    # an existing key file is never overwritten
    p = ctl(stack, "keys", "create", unique("other"), "--kind", "subscriber", "--out", out)
    assert p.returncode == 1 and "exists" in p.stderr, p.stderr
    assert key_rows(stack) == rows

    # allow: an integrator's own public key; the same key twice is refused
    integrator = unique("erp")
    their_public = new_pair()[0]
    p = ctl(stack, "keys", "allow", integrator, "--public-key", their_public, "--kind",
            "service", "--source", "aftercare/erp-bridge")
    assert p.returncode == 0, p.stderr
    p = ctl(stack, "keys", "allow", unique("again"), "--public-key", their_public, "--kind",
            "subscriber")
    assert p.returncode == 1 and "already registered as '%s'" % integrator in p.stderr, p.stderr

    # list shows both, with kind, source, topics and the public key
    p = ctl(stack, "keys", "list")
    assert p.returncode == 0, p.stderr
    lines = {ln.split()[0]: ln for ln in p.stdout.splitlines()[1:]}
    assert "subscriber" in lines[name] and "ticket.,survey." in lines[name]
    assert public in lines[name]
    assert "aftercare/erp-bridge" in lines[integrator] and their_public in lines[integrator]

    # revoke: once, then "already", then an unknown name fails; a revoked key stays revoked
    p = ctl(stack, "keys", "revoke", integrator)
    assert p.returncode == 0 and "revoked" in p.stderr, p.stderr
    p = ctl(stack, "keys", "revoke", integrator)
    assert p.returncode == 0 and "already revoked" in p.stderr, p.stderr
    p = ctl(stack, "keys", "revoke", unique("nobody"))
    assert p.returncode == 1 and "no key named" in p.stderr, p.stderr
    p = ctl(stack, "keys", "allow", integrator, "--public-key", their_public, "--kind",
            "subscriber")
    assert p.returncode == 1 and "revoked" in p.stderr, p.stderr
    p = ctl(stack, "keys", "list")
    revoked_line = [ln for ln in p.stdout.splitlines() if ln.startswith(integrator + " ")]
    assert revoked_line and revoked_line[0].split()[-1] != "-"


def test_keys_create_bus_kind_registers_nothing(stack, tmp_path):
    rows = key_rows(stack)
    out = str(tmp_path / "bus.key")
    p = ctl(stack, "keys", "create", "bus", "--kind", "bus", "--out", out)
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.strip()) == 40
    assert key_rows(stack) == rows
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
