#!/usr/bin/env python3
"""subscriber.py -- a complete aftercare event subscriber that applies every event exactly once.

It follows the consumer pattern of docs/events.md ("The consumer pattern, step by step"):

  1. subscribe first (SUB on the bus output: your topics and "bus.heartbeat");
  2. then replay from the checkpoint (DEALER on the replay endpoint), buffering the live
     events that arrive meanwhile;
  3. apply each event in sequence order, dropping duplicates (sequence <= checkpoint);
  4. treat a live event beyond the next expected sequence, or a heartbeat whose
     last_sequence is beyond the checkpoint, as a gap, and replay it;
  5. store the checkpoint (source -> last applied sequence) in the SAME transaction as the
     event's effect, so a crash or a redelivery never applies an event twice.

Here the "effect" is a small SQLite database (the --checkpoint file): a `tickets` table that
mirrors each ticket's latest state, and an `applied_events` journal. Put your own work
(CRM records, ERP calls that are idempotent, ...) in handle_event(); keep it inside the
transaction. After each commit the applied events are printed on stdout, one JSON line each:

  {"source": "aftercare/intake", "sequence": 42, "topic": "ticket.created", "id": "<uuid>",
   "type": "aftercare.ticket.created.v1", "subject": "SV-20261122-000042",
   "time": "2026-11-22T10:00:00.123456Z", "ticket_version": 1, "payload": {...}}

Log messages go to stderr.

Setup (Debian 12; from a checkout of aftercare, or with the .proto files you were given):

  apt-get install python3-zmq python3-protobuf protobuf-compiler
  mkdir -p gen
  protoc -I proto --python_out=gen proto/aftercare/v1/*.proto   # -> gen/aftercare/v1/*_pb2.py
  aftercarectl keys create crm --kind subscriber --topics ticket. --out crm.key

  PYTHONPATH=gen python3 docs/examples/subscriber.py \
      --key-file crm.key --server-key="$AC_BUS_SERVER_KEY" \
      --output tcp://bus.example:5571 --replay tcp://bus.example:5572 \
      --checkpoint crm-events.sqlite --topic ticket.

Options (see --help): --key-file, --server-key (the bus's public key: 40 characters of Z85,
or @FILE; write --server-key=KEY, as a Z85 key may begin with '-'), --output, --replay, --checkpoint, --topic (repeatable), --source (repeatable),
--start earliest|latest (where a source without a checkpoint begins), --max-events N and
--exit-after SECONDS (stop after that many events / seconds; for tests and batch jobs).

Exit status: 0 stopped normally (SIGINT/SIGTERM, --max-events, --exit-after); 2 bad
options or key file; 3 the stream cannot be continued without a person (events pruned,
key forbidden, unknown source, checkpoint ahead of the bus, two instances on one
checkpoint); 1 anything else.

Needs only the Python standard library, pyzmq (libzmq with CURVE) and protobuf.
"""

import argparse
import json
import logging
import os
import signal
import sqlite3
import stat
import sys
import time
import uuid

try:
    import zmq
    from zmq.utils import z85
    from google.protobuf import json_format
    from aftercare.v1 import bus_pb2, envelope_pb2, ticket_pb2
except ImportError as e:  # pragma: no cover - a setup problem, explained to the user
    sys.exit("subscriber.py: %s\nInstall python3-zmq and python3-protobuf and generate the "
             "aftercare modules: protoc -I proto --python_out=gen proto/aftercare/v1/*.proto; "
             "then run with PYTHONPATH=gen" % e)

log = logging.getLogger("subscriber")

HEARTBEAT_TOPIC = "bus.heartbeat"
HEARTBEAT_SOURCE = "aftercare/bus"
HEARTBEAT_SILENCE_S = 5.0  # no heartbeat for this long: say so (bus down, key refused)
RECONNECT_AFTER_S = 15.0  # no heartbeat for this long: re-create the sockets
FIRST_HEARTBEAT_WAIT_S = 5.0  # at start, wait this long for the subscription to be live
MAX_BUFFER = 100000  # live events held per source while a replay runs
BATCH = 1000  # events applied per transaction at most
RETRY_MIN_S, RETRY_MAX_S = 0.5, 30.0  # replay retry after BUSY / UNAVAILABLE


class Fatal(Exception):
    """The stream cannot continue without a person; the message says why (exit 3)."""


# --------------------------------------------------------------------------- CURVE keys

def read_key_file(path):
    """(public, secret) as bytes from an aftercare key file:
        # comment
        public-key = <40 characters of Z85>
        secret-key = <40 characters of Z85>
    The file must not be readable by group or others (like an ssh key)."""
    try:
        st = os.stat(path)
        with open(path, encoding="ascii") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError("key file %s: %s" % (path, e)) from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError("key file %s is readable by others (mode %03o): chmod 600 it"
                         % (path, st.st_mode & 0o777))
    keys = {}
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or name not in ("public-key", "secret-key") or len(value) != 40:
            raise ValueError("key file %s, line %d: expected 'public-key = <40 Z85 characters>' "
                             "or 'secret-key = ...'" % (path, n))
        keys[name] = value.encode("ascii")
    if "secret-key" not in keys:
        raise ValueError("key file %s has no secret-key" % path)
    try:
        public = zmq.curve_public(keys["secret-key"])
    except zmq.ZMQError as e:
        raise ValueError("key file %s: bad secret-key (%s)" % (path, e)) from None
    if keys.get("public-key", public) != public:
        raise ValueError("key file %s: public-key does not belong to secret-key" % path)
    return public, keys["secret-key"]


def read_server_key(text):
    """The bus's public key: 40 characters of Z85, or @FILE holding it (alone, or on a
    'public-key = ...' line). Z85 has '@' too: 40 characters are always the key itself."""
    if text.startswith("@") and len(text) != 40:
        path = text[1:]
        try:
            with open(path, encoding="ascii") as f:
                content = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError("server key file %s: %s" % (path, e)) from None
        text = ""
        for line in content.splitlines():
            line = line.strip()
            if line.startswith("public-key"):
                text = line.partition("=")[2].strip()
            elif line and not line.startswith("#") and "=" not in line:
                text = line
    key = text.strip().encode("ascii", "replace")
    try:
        if len(key) != 40 or len(z85.decode(key)) != 32:
            raise ValueError
    except Exception:  # noqa: BLE001 - any decoding failure means "not a key"
        raise ValueError("the bus's public key is not 40 characters of Z85") from None
    return key


# --------------------------------------------------------------------------- the effect + checkpoint

class Store:
    """SQLite: the checkpoints and the example's effect, written in one transaction."""

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS checkpoints (
            source        TEXT PRIMARY KEY,
            last_sequence INTEGER NOT NULL);
        -- The example's effect: the latest known state of each ticket.
        CREATE TABLE IF NOT EXISTS tickets (
            number     TEXT PRIMARY KEY,
            id         TEXT NOT NULL,
            status     TEXT NOT NULL,
            priority   TEXT NOT NULL,
            version    INTEGER NOT NULL,
            updated_at TEXT NOT NULL);
        -- A journal of applied events. Its primary key makes a second application of the
        -- same event fail loudly instead of silently; drop it in your own code if you like.
        CREATE TABLE IF NOT EXISTS applied_events (
            source   TEXT NOT NULL,
            sequence INTEGER NOT NULL,
            topic    TEXT NOT NULL,
            event_id TEXT NOT NULL,
            subject  TEXT NOT NULL,
            PRIMARY KEY (source, sequence));
    """

    def __init__(self, path):
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a commit survives a power cut
        self.db.executescript(self.SCHEMA)

    def checkpoint(self, source):
        """The last applied sequence of source, or None when it has never been seen."""
        row = self.db.execute("SELECT last_sequence FROM checkpoints WHERE source = ?",
                              (source,)).fetchone()
        return None if row is None else row[0]

    def commit(self, events, advances):
        """Applies events [(topic, env)] and moves the checkpoints {source: (old, new)} in
        one transaction. The checkpoint update is conditional on its old value: if another
        process moved it, nothing is applied (Fatal)."""
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            for topic, env in events:
                handle_event(cur, topic, env)
            for source, (old, new) in advances.items():
                if old is None:
                    cur.execute("INSERT INTO checkpoints (source, last_sequence) VALUES (?, ?)",
                                (source, new))
                else:
                    cur.execute("UPDATE checkpoints SET last_sequence = ? "
                                "WHERE source = ? AND last_sequence = ?", (new, source, old))
                    if cur.rowcount != 1:
                        raise Fatal("the checkpoint of %s is no longer %d: is another "
                                    "subscriber running on the same --checkpoint?" % (source, old))
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def close(self):
        self.db.close()


def handle_event(cur, topic, env):
    """YOUR CODE HERE: apply one event, inside the open transaction `cur`.

    Raise to abort the whole batch (nothing is applied, the checkpoint does not move and the
    subscriber stops; it starts again from the checkpoint). Never skip silently."""
    payload = env.WhichOneof("payload")
    cur.execute("INSERT INTO applied_events (source, sequence, topic, event_id, subject) "
                "VALUES (?, ?, ?, ?, ?)", (env.source, env.sequence, topic, env.id, env.subject))
    body = getattr(env, payload) if payload else None
    if body is not None and body.HasField("ticket"):
        # Every ticket payload carries the full snapshot after the change.
        t = body.ticket
        status = ticket_pb2.TicketStatus.Name(t.status)
        priority = ticket_pb2.Priority.Name(t.priority)
        cur.execute(
            "INSERT INTO tickets (number, id, status, priority, version, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (number) DO UPDATE SET status = excluded.status, "
            "priority = excluded.priority, version = excluded.version, "
            "updated_at = excluded.updated_at WHERE excluded.version > tickets.version",
            (t.number, t.id, status, priority, t.version, t.updated_at))


def event_line(topic, env):
    """The JSON line printed for an applied event."""
    payload = env.WhichOneof("payload")
    return json.dumps({
        "source": env.source,
        "sequence": env.sequence,
        "topic": topic,
        "id": env.id,
        "type": env.type,
        "subject": env.subject,
        "time": env.time,
        "ticket_version": env.ticket_version,
        "payload": json_format.MessageToDict(getattr(env, payload),
                                             preserving_proto_field_name=True) if payload else None,
    }, separators=(",", ":"))


# --------------------------------------------------------------------------- the consumer

class Stream:
    """What we know of one source's stream."""

    def __init__(self, source, applied):
        self.source = source
        self.is_new = applied is None  # no checkpoint yet
        self.applied = applied or 0    # last sequence applied (or covered)
        self.saved = applied           # what the checkpoint table holds (None: no row)
        self.buffer = {}               # sequence -> (topic, env): live events held back
        self.replay = None             # the replay in flight
        self.retry_at = None           # a replay to repeat after BUSY / UNAVAILABLE
        self.retry_range = None
        self.backoff = RETRY_MIN_S
        self.started = False           # the first replay (from the checkpoint) was asked
        self.heard = None              # last_sequence of the first heartbeat naming it


class Replay:
    def __init__(self, request_id, frm, to, why):
        self.request_id = request_id
        self.frm = frm
        self.to = to  # 0 = up to the latest
        self.why = why  # for the log: "checkpoint", "gap", "heartbeat", "retry"
        self.events = 0  # events of our topics received


class Subscriber:
    def __init__(self, args, public, secret, server_key):
        self.args = args
        self.topics = args.topic
        self.store = Store(args.checkpoint)
        self.streams = {s: Stream(s, self.store.checkpoint(s)) for s in args.source}
        self.replays = {}  # request_id -> Stream
        self.pending = []  # [(stream, topic, env, has_effect)] applied in memory, not committed
        self.applied_total = 0
        self.stats = dict(duplicates=0, gaps=0, replays=0, garbage=0, dropped_buffer=0)
        self.stopping = False
        self.heartbeat_seen = False
        self.last_heartbeat = time.monotonic()
        self.silence_reported = False
        self.bus_instance = None
        self.started_at = time.monotonic()

        self.curve = (public, secret, server_key)
        self.sub = self.dealer = None
        self.connected_at = 0.0
        self.connect()

    def connect(self):
        """(Re)creates both sockets. 1. SUB first: whatever is published from now on
        reaches us, or shows up as a gap."""
        if self.sub is not None:
            self.sub.close(0)
            self.dealer.close(0)
        ctx = zmq.Context.instance()
        self.sub = ctx.socket(zmq.SUB)
        self.dealer = ctx.socket(zmq.DEALER)
        for sock in (self.sub, self.dealer):
            sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = self.curve
            sock.linger = 0
            sock.maxmsgsize = 4 << 20
        # A bounded queue: a subscriber that falls far behind loses live events and repairs
        # the gap by replay, instead of growing without limit.
        self.sub.rcvhwm = 10000
        for prefix in self.topics + [HEARTBEAT_TOPIC]:
            self.sub.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        self.sub.connect(self.args.output)
        self.dealer.connect(self.args.replay)
        self.poller = zmq.Poller()
        self.poller.register(self.sub, zmq.POLLIN)
        self.poller.register(self.dealer, zmq.POLLIN)
        self.connected_at = time.monotonic()

    def wants(self, topic):
        return any(topic.startswith(p) for p in self.topics)

    # ---- main loop
    def run(self):
        while not self.stopping:
            now = time.monotonic()
            self.timers(now)
            if self.stopping:
                break
            ready = dict(self.poller.poll(200))
            if self.sub in ready:
                self.drain(self.sub, self.on_live)
            if self.dealer in ready:
                self.drain(self.dealer, self.on_replay)
            self.commit()
        self.commit()

    def drain(self, sock, handler):
        for _ in range(BATCH):
            if self.stopping or len(self.pending) >= BATCH:
                return
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            handler(frames)

    def timers(self, now):
        a = self.args
        if a.exit_after and now - self.started_at >= a.exit_after:
            log.info("--exit-after %s s reached", a.exit_after)
            self.stopping = True
            return
        # 2. Replay from the checkpoint once the subscription is live (the first heartbeat
        # proves it) or after a short wait (anything missed meanwhile is a gap, repaired).
        waited = now - self.started_at >= FIRST_HEARTBEAT_WAIT_S
        for st in self.streams.values():
            if st.started:
                continue
            if st.is_new and self.args.start == "latest":
                if st.heard is not None:  # --start latest needs to know where "now" is
                    self.begin(st)
            elif self.heartbeat_seen or waited:
                self.begin(st)
        if now - self.last_heartbeat >= HEARTBEAT_SILENCE_S and not self.silence_reported:
            log.warning("no heartbeat from the bus for %.0f s: the bus is down or unreachable, "
                        "or this key is not (or no longer) allowed", now - self.last_heartbeat)
            self.silence_reported = True
        if (now - self.last_heartbeat >= RECONNECT_AFTER_S and
                now - self.connected_at >= RECONNECT_AFTER_S):
            # ZeroMQ reconnects a broken TCP connection by itself, but not a connection
            # the bus refused (a key allowed only later, a bus still starting): start over.
            log.warning("still no heartbeat: reconnecting")
            self.connect()
            for st in self.streams.values():
                if st.replay:  # its answer would come on the old socket: ask again
                    r, st.replay = st.replay, None
                    self.replays.pop(r.request_id, None)
                    st.retry_at, st.retry_range = now, (r.frm, r.to)
        for st in self.streams.values():
            if st.replay and now >= st.replay.deadline:
                r = st.replay
                log.warning("replay %s of %s got no answer for %.0f s; asking again",
                            r.request_id, st.source, a.replay_timeout)
                self.replays.pop(r.request_id, None)
                st.replay = None
                if not r.to or r.to > st.applied:
                    self.request(st, st.applied + 1, r.to, "retry")
                else:
                    self.drain_buffer(st)
            if st.retry_at and now >= st.retry_at:
                frm, to = st.retry_range
                st.retry_at = st.retry_range = None
                self.request(st, max(frm, st.applied + 1), to, "retry")

    def begin(self, st):
        st.started = True
        if st.is_new and self.args.start == "latest":
            # Nothing before "now" is wanted: the first heartbeat said where the stream is.
            log.info("%s: no checkpoint, --start latest: following from sequence %d",
                     st.source, st.heard + 1)
            st.is_new = False
            self.advance(st, st.heard)
            return self.drain_buffer(st)
        self.request(st, st.applied + 1, 0, "checkpoint")

    # ---- applying
    def apply(self, st, topic, env, has_effect=True):
        """Applies one event in memory (committed at the end of the loop iteration)."""
        st.applied = env.sequence
        self.pending.append((st, topic, env, has_effect))
        if has_effect:
            self.applied_total += 1
            if self.args.max_events and self.applied_total >= self.args.max_events:
                log.info("--max-events %d reached", self.args.max_events)
                self.stopping = True

    def advance(self, st, seq):
        """Marks sequences up to seq covered without an effect (a replay found nothing
        there for our topics)."""
        if seq > st.applied:
            st.applied = seq
        self.pending.append((st, None, None, False))

    def commit(self):
        if not self.pending:
            return
        events = [(topic, env) for _, topic, env, has_effect in self.pending if has_effect]
        advances = {}
        for st in {id(p[0]): p[0] for p in self.pending}.values():
            if st.saved != st.applied:
                advances[st.source] = (st.saved, st.applied)
        if not events and not advances:
            self.pending = []
            return
        self.store.commit(events, advances)
        for source, (_, new) in advances.items():
            self.streams[source].saved = new
        out = sys.stdout
        for topic, env in events:
            out.write(event_line(topic, env) + "\n")
        out.flush()
        self.pending = []

    # ---- live events
    def on_live(self, frames):
        if len(frames) != 2:
            return self.garbage("live message of %d frames" % len(frames))
        topic = frames[0].decode("utf-8", "replace")
        env = envelope_pb2.Envelope()
        try:
            env.ParseFromString(frames[1])
        except Exception:  # noqa: BLE001 - protobuf raises DecodeError, and others on junk
            return self.garbage("live envelope does not decode (topic %r)" % topic)
        if topic == HEARTBEAT_TOPIC:
            if env.WhichOneof("payload") != "bus_heartbeat":
                return self.garbage("heartbeat without a BusHeartbeat")
            # Only the bus's own heartbeat counts: source "aftercare/bus", sequence 0. A
            # forged one could otherwise start replays or move your notion of "latest".
            if env.source != HEARTBEAT_SOURCE or env.sequence != 0:
                return self.garbage("heartbeat not from the bus (source %r, sequence %d)"
                                    % (env.source, env.sequence))
            return self.on_heartbeat(env.bus_heartbeat)
        st = self.streams.get(env.source)
        if st is None or not self.wants(topic):
            return  # a source or topic we do not follow
        seq = env.sequence
        if seq <= st.applied:
            self.stats["duplicates"] += 1
            return
        if st.replay or st.retry_at or st.buffer or not st.started:
            # 3. Hold live events back until the replay has caught up.
            if len(st.buffer) < MAX_BUFFER:
                st.buffer.setdefault(seq, (topic, env))
            else:
                self.stats["dropped_buffer"] += 1  # replayed later: it is a gap then
            if st.started and not st.replay and not st.retry_at:
                self.drain_buffer(st)
            return
        if seq == st.applied + 1:
            return self.apply(st, topic, env)
        # 4. A gap: sequences applied+1 .. seq-1 never arrived (or were other topics).
        # (With a topic filter such holes are normal: the replay then finds nothing of ours.)
        self.stats["gaps"] += 1
        st.buffer[seq] = (topic, env)
        self.request(st, st.applied + 1, seq - 1, "gap")

    def on_heartbeat(self, hb):
        self.last_heartbeat = time.monotonic()
        if self.silence_reported:
            log.info("heartbeats are back")
            self.silence_reported = False
        if hb.bus_instance != self.bus_instance:
            if self.bus_instance is not None:
                log.info("the bus restarted (instance %s)", hb.bus_instance)
            self.bus_instance = hb.bus_instance
        self.heartbeat_seen = True
        for pos in hb.sources:
            st = self.streams.get(pos.source)
            if st is None:
                continue
            if not st.started:
                if st.heard is None:
                    st.heard = pos.last_sequence
                continue
            if st.replay or st.retry_at or st.buffer or pos.last_sequence <= st.applied:
                continue
            # 4. The stream moved on without us: what we did not get is a gap.
            self.stats["gaps"] += 1
            self.request(st, st.applied + 1, pos.last_sequence, "heartbeat")

    def drain_buffer(self, st):
        """Applies the buffered events that follow the checkpoint; a hole left is a gap."""
        for seq in [s for s in st.buffer if s <= st.applied]:
            del st.buffer[seq]
            self.stats["duplicates"] += 1
        while st.applied + 1 in st.buffer and not self.stopping:
            topic, env = st.buffer.pop(st.applied + 1)
            self.apply(st, topic, env)
        if st.buffer and not self.stopping:
            first = min(st.buffer)
            self.stats["gaps"] += 1
            self.request(st, st.applied + 1, first - 1, "gap")

    # ---- replay
    def request(self, st, frm, to, why):
        """Asks for sequences frm..to (to 0: up to the latest) of st's source."""
        if to and to < frm:
            return self.drain_buffer(st)
        req = bus_pb2.ReplayRequest(
            request_id=uuid.uuid4().hex,
            source=st.source, from_sequence=frm, to_sequence=to,
            # one prefix can be asked for; with several topics ask for all the key may see
            # and skip the rest here
            topic_prefix=self.topics[0] if len(self.topics) == 1 else "")
        st.replay = Replay(req.request_id, frm, to, why)
        st.replay.deadline = time.monotonic() + self.args.replay_timeout
        self.replays[req.request_id] = st
        self.stats["replays"] += 1
        log.debug("replay %s (%s): %s %d..%s", req.request_id, why, st.source, frm,
                  to or "latest")
        self.dealer.send_multipart([b"replay.request", req.SerializeToString()])

    def on_replay(self, frames):
        kind = frames[0] if frames else b""
        if kind == b"replay.event" and len(frames) == 4:
            st = self.replays.get(frames[1].decode("ascii", "replace"))
            if st is None:
                return  # an answer to a request we gave up on
            st.replay.deadline = time.monotonic() + self.args.replay_timeout
            env = envelope_pb2.Envelope()
            try:
                env.ParseFromString(frames[3])
            except Exception:  # noqa: BLE001
                return self.garbage("replayed envelope does not decode")
            if env.source != st.source:
                return self.garbage("replayed event of source %r" % env.source)
            if env.sequence <= st.applied:
                self.stats["duplicates"] += 1
                return
            # Replay sends in sequence order and leaves out only other topics, so every
            # sequence below this one is covered.
            topic = frames[2].decode("utf-8", "replace")
            wanted = self.wants(topic)
            st.replay.events += wanted
            return self.apply(st, topic, env, has_effect=wanted)
        if kind == b"replay.end" and len(frames) == 2:
            end = bus_pb2.ReplayEnd()
            try:
                end.ParseFromString(frames[1])
            except Exception:  # noqa: BLE001
                return self.garbage("replay.end does not decode")
            st = self.replays.pop(end.request_id, None)
            if st is None:
                return
            r, st.replay = st.replay, None
            st.backoff = RETRY_MIN_S
            if r.why == "checkpoint" or r.events:
                # a hole that held events of ours was a real loss (a full queue, a restart)
                log.info("%s: replayed %d..%d (%s): %d events", st.source, r.frm,
                         end.last_sequence, r.why, r.events)
            else:
                log.debug("replay %s ended at %d: nothing of ours", r.request_id,
                          end.last_sequence)
            self.advance(st, end.last_sequence)
            st.is_new = False
            return self.drain_buffer(st)
        if kind == b"replay.error" and len(frames) == 2:
            err = bus_pb2.ReplayError()
            try:
                err.ParseFromString(frames[1])
            except Exception:  # noqa: BLE001
                return self.garbage("replay.error does not decode")
            return self.on_replay_error(err)
        return self.garbage("replay answer %r of %d frames" % (kind[:32], len(frames)))

    def on_replay_error(self, err):
        code = bus_pb2.ReplayError.Code.Name(err.code)
        st = self.replays.pop(err.request_id, None)
        if st is None:
            if err.request_id:
                return  # an answer to a request we gave up on
            raise Fatal("the bus could not read our replay request: %s %s" % (code, err.message))
        r, st.replay = st.replay, None
        if err.code in (bus_pb2.ReplayError.BUSY, bus_pb2.ReplayError.UNAVAILABLE):
            log.warning("replay of %s: %s (%s); retrying in %.1f s", st.source, code,
                        err.message, st.backoff)
            st.retry_at = time.monotonic() + st.backoff
            st.retry_range = (r.frm, r.to)
            st.backoff = min(st.backoff * 2, RETRY_MAX_S)
            return
        if err.code == bus_pb2.ReplayError.PRUNED and st.is_new and self.args.start == "earliest":
            # A new subscriber starts with the oldest event still kept.
            log.info("%s: events before %d were pruned; starting there", st.source,
                     err.oldest_sequence)
            st.applied = max(st.applied, err.oldest_sequence - 1)
            st.is_new = False
            return self.request(st, st.applied + 1, r.to, "checkpoint")
        if err.code == bus_pb2.ReplayError.PRUNED:
            raise Fatal("%s: events %d..%d are no longer kept by the bus (oldest is %d): "
                        "they cannot be applied. Restore them from another copy, or move the "
                        "checkpoint on purpose." % (st.source, r.frm, err.oldest_sequence - 1,
                                                    err.oldest_sequence))
        raise Fatal("replay of %s from %d refused: %s: %s" % (st.source, r.frm, code, err.message))

    def garbage(self, why):
        self.stats["garbage"] += 1
        log.warning("skipped a malformed message: %s", why)

    def close(self):
        self.sub.close(0)
        self.dealer.close(0)
        self.store.close()


def parse_args(argv):
    p = argparse.ArgumentParser(description="Follow aftercare events exactly once "
                                            "(docs/events.md).")
    p.add_argument("--key-file", required=True, help="this subscriber's CURVE key file")
    p.add_argument("--server-key", default=os.environ.get("AC_BUS_SERVER_KEY"),
                   help="the bus's public key (Z85) or @FILE; env AC_BUS_SERVER_KEY")
    p.add_argument("--output", default=os.environ.get("AC_BUS_OUTPUT", "tcp://127.0.0.1:5571"),
                   help="bus output endpoint (live events); env AC_BUS_OUTPUT")
    p.add_argument("--replay", default=os.environ.get("AC_BUS_REPLAY", "tcp://127.0.0.1:5572"),
                   help="bus replay endpoint; env AC_BUS_REPLAY")
    p.add_argument("--checkpoint", default="subscriber.sqlite",
                   help="SQLite file with the checkpoints and the effects")
    p.add_argument("--topic", action="append",
                   help="topic prefix to follow (repeatable; default ticket.)")
    p.add_argument("--source", action="append",
                   help="event source to follow (repeatable; default aftercare/intake)")
    p.add_argument("--start", choices=("earliest", "latest"), default="earliest",
                   help="where a source without a checkpoint begins: the oldest event the "
                        "bus still keeps, or the next new one")
    p.add_argument("--replay-timeout", type=float, default=10.0,
                   help="ask again when a replay has been silent this long (the bus may "
                        "have restarted meanwhile); default 10 s")
    p.add_argument("--max-events", type=int, default=0, help="stop after N applied events")
    p.add_argument("--exit-after", type=float, default=0, help="stop after S seconds")
    p.add_argument("-v", "--verbose", action="store_true", help="log every replay")
    args = p.parse_args(argv)
    args.topic = args.topic or ["ticket."]
    args.source = args.source or ["aftercare/intake"]
    if not args.server_key:
        p.error("--server-key (or AC_BUS_SERVER_KEY) is required")
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s subscriber %(levelname)s %(message)s")
    try:
        public, secret = read_key_file(args.key_file)
        server_key = read_server_key(args.server_key)
    except ValueError as e:
        log.error("%s", e)
        return 2
    sub = Subscriber(args, public, secret, server_key)

    def on_signal(signum, frame):
        sub.stopping = True
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    log.info("following %s (topics %s) from %s, replay %s; checkpoints %s",
             ", ".join("%s after %d" % (s.source, s.applied) for s in sub.streams.values()),
             ", ".join(args.topic), args.output, args.replay, args.checkpoint)
    rc = 0
    try:
        sub.run()
    except Fatal as e:
        log.error("%s", e)
        rc = 3
    finally:
        log.info("stopped: applied %d events; %s; checkpoints %s", sub.applied_total,
                 ", ".join("%s %d" % kv for kv in sub.stats.items()),
                 ", ".join("%s=%d" % (s.source, s.applied) for s in sub.streams.values()))
        sub.close()
    return rc


if __name__ == "__main__":
    sys.exit(main())
