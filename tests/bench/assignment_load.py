#!/usr/bin/python3
"""The assignment benchmark's helper (tests/bench/assignment.sh), two modes:

  engineers  create N engineers on dispatch over HTTP (keep-alive, a few threads): varied
             roles (40 % technical support, 40 % field, 20 % depot), two of the product
             models each with levels 1..5, one or two regions, capacities, 5 % away; every
             shift 24x7 so that the run does not depend on the clock. Prints one key=value
             line.
  measure    a CURVE subscriber on the bus output: records, per ticket number, when its
             ticket.created (intake) and its first ticket.assigned (dispatch) arrive, and
             the created envelope's own time. Writes --ready-file once a bus.heartbeat has
             arrived (the subscription is live). On SIGUSR1 (the load is over) it waits up
             to --grace seconds for the missing assignments, then prints one key=value line:
             latency from ticket.created's receipt to ticket.assigned's receipt (p50, p99,
             max), from ticket.created's envelope time to ticket.assigned's receipt, the
             tickets measured, the achieved rate, and the tickets never assigned. Tickets
             created during the first --warmup seconds are not measured.

Debian's python3 with python3-zmq and python3-protobuf; the protobuf classes are generated
by the caller (protoc --python_out=DIR) and found through --proto-dir."""

import argparse
import datetime
import http.client
import json
import os
import random
import signal
import sys
import threading
import time
import urllib.parse


# --------------------------------------------------------------------------- engineers

def engineer_bodies(count, models, regions, seed):
    rnd = random.Random(seed)
    out = []
    for i in range(count):
        r = i % 10
        role = ("technical_support" if r < 4 else "field_engineer" if r < 8
                else "depot_technician")
        skills = [{"kind": "product_line", "name": m, "level": rnd.randint(1, 5)}
                  for m in rnd.sample(models, 2)]
        skills.append({"kind": "category", "name": "fault_repair", "level": rnd.randint(1, 5)})
        out.append({
            "name": "Bench engineer %04d" % i,
            "role": role,
            "skills": skills,
            "regions": rnd.sample(regions, rnd.randint(1, 2)),
            "capacity": rnd.randint(40, 100) if role == "technical_support" else rnd.randint(3, 10),
            "availability": "away" if rnd.random() < 0.05 else "available",
            "contact": {"email": "bench%04d@example.com" % i},
            "shift": {"around_the_clock": True},
        })
    return out


def create_engineers(args):
    url = urllib.parse.urlsplit(args.url)
    bodies = engineer_bodies(args.count, args.models.split(","), args.regions.split(","),
                             args.seed)
    errors = []
    lock = threading.Lock()

    def worker(part):
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        headers = {"Authorization": "Bearer " + args.token,
                   "Content-Type": "application/json"}
        for body in part:
            conn.request("POST", "/v1/engineers", json.dumps(body), headers)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 201:
                with lock:
                    errors.append("%d %s" % (resp.status, data[:200]))
        conn.close()

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(bodies[k::args.threads],))
               for k in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.stderr.write("engineers: %d failed, e.g. %s\n" % (len(errors), errors[0]))
        return 1
    roles = {}
    for b in bodies:
        roles[b["role"]] = roles.get(b["role"], 0) + 1
    print("engineers=%d seconds=%.1f %s" % (len(bodies), time.monotonic() - started,
                                           " ".join("%s=%d" % kv for kv in sorted(roles.items()))))
    return 0


# --------------------------------------------------------------------------- measure

def read_key_file(path):
    keys = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if "=" in line and not line.startswith("#"):
                k, v = (x.strip() for x in line.split("=", 1))
                keys[k] = v
    return keys["public-key"], keys["secret-key"]


def parse_time(text):
    """RFC 3339 with a Z -> epoch seconds (float)."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def measure(args):
    sys.path.insert(0, args.proto_dir)
    import zmq
    from aftercare.v1 import envelope_pb2

    public, secret = read_key_file(args.key_file)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public.encode())
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret.encode())
    sock.setsockopt(zmq.CURVE_SERVERKEY, args.server_key.encode())
    for prefix in (b"ticket.created", b"ticket.assigned", b"bus.heartbeat"):
        sock.setsockopt(zmq.SUBSCRIBE, prefix)
    sock.connect(args.endpoint)

    stop = {"at": None}

    def on_usr1(signum, frame):
        stop["at"] = time.monotonic()
    signal.signal(signal.SIGUSR1, on_usr1)

    created = {}   # number -> (receipt, envelope time)
    assigned = {}  # number -> receipt
    stamps = {}    # number -> (assignment created: its batch's start, ticket.assigned time)
    ready = False
    started = time.monotonic()
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    env = envelope_pb2.Envelope()
    while True:
        if stop["at"] is not None:
            waiting = [n for n in created if n not in assigned]
            if not waiting or time.monotonic() - stop["at"] > args.grace:
                break
        if not ready and time.monotonic() - started > 30:
            sys.stderr.write("measure: no bus.heartbeat within 30 s\n")
            return 1
        if not poller.poll(100):
            continue
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            now = time.time()
            topic = frames[0]
            if topic == b"bus.heartbeat":
                if not ready:
                    ready = True
                    with open(args.ready_file, "w") as f:
                        f.write("ready\n")
                continue
            if len(frames) != 2:
                continue
            env.ParseFromString(frames[1])
            if topic == b"ticket.created" and env.source == "aftercare/intake":
                created.setdefault(env.subject, (now, parse_time(env.time)))
            elif topic == b"ticket.assigned" and env.source == "aftercare/dispatch":
                if env.subject not in assigned:
                    assigned[env.subject] = now
                    a = env.ticket_assigned.assignment
                    stamps[env.subject] = (parse_time(a.created_at), parse_time(env.time))

    if not created:
        print("measured=0 missing=0")
        return 0
    first = min(c[0] for c in created.values())
    measured = {n: c for n, c in created.items() if c[0] >= first + args.warmup}
    from_receipt = sorted((assigned[n] - c[0]) * 1e3 for n, c in measured.items() if n in assigned)
    from_env = sorted((assigned[n] - c[1]) * 1e3 for n, c in measured.items() if n in assigned)
    missing = sum(1 for n in measured if n not in assigned)
    span = (max(c[0] for c in measured.values()) - min(c[0] for c in measured.values())
            if measured else 0)
    print("created=%d measured=%d assigned=%d missing=%d rate=%.1f "
          "p50_ms=%.1f p99_ms=%.1f max_ms=%.1f env_p50_ms=%.1f env_p99_ms=%.1f env_max_ms=%.1f"
          % (len(created), len(measured), len(from_receipt), missing,
             len(measured) / span if span > 0 else 0.0,
             percentile(from_receipt, 50), percentile(from_receipt, 99),
             from_receipt[-1] if from_receipt else float("nan"),
             percentile(from_env, 50), percentile(from_env, 99),
             from_env[-1] if from_env else float("nan")))
    # where the time goes (stderr; the machines' clocks are one): the subscriber's receipt of
    # ticket.created -> the assignment batch's start (dispatch's consumer, the queue) ->
    # ticket.assigned stamped (the batch: take, score, apply) -> its receipt (commit, the
    # relay, the bus)
    stages = [[], [], []]
    for n, c in measured.items():
        if n in assigned and n in stamps:
            batch_start, stamped = stamps[n]
            stages[0].append((batch_start - c[0]) * 1e3)
            stages[1].append((stamped - batch_start) * 1e3)
            stages[2].append((assigned[n] - stamped) * 1e3)
    # when the slow ones happened: a tail spread over the run is queueing; one bunched in
    # a few moments is a stall (a vacuum, a checkpoint, a long batch)
    slow = sorted(c[0] - first for n, c in measured.items()
                  if n in assigned and (assigned[n] - c[0]) * 1e3 > args.slow_ms)
    by_second = {}
    for t in slow:
        by_second[int(t)] = by_second.get(int(t), 0) + 1
    worst = sorted(by_second.items(), key=lambda kv: -kv[1])[:5]
    sys.stderr.write("slow (> %d ms): %d tickets in %d of %d seconds; most in second(s) %s\n"
                     % (args.slow_ms, len(slow), len(by_second), int(span) + 1,
                        ", ".join("%d: %d" % kv for kv in worst) or "-"))
    for name, v in zip(("created->batch", "batch", "stamped->receipt"), stages):
        v.sort()
        if v:
            sys.stderr.write("stage %s p50_ms=%.1f p99_ms=%.1f\n"
                             % (name, percentile(v, 50), percentile(v, 99)))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    e = sub.add_parser("engineers")
    e.add_argument("--url", required=True)
    e.add_argument("--token", default=os.environ.get("AC_TOKEN"))
    e.add_argument("--count", type=int, default=1000)
    e.add_argument("--models", required=True)
    e.add_argument("--regions", required=True)
    e.add_argument("--seed", type=int, default=42)
    e.add_argument("--threads", type=int, default=4)
    m = sub.add_parser("measure")
    m.add_argument("--endpoint", required=True)
    m.add_argument("--key-file", required=True)
    m.add_argument("--server-key", required=True)
    m.add_argument("--proto-dir", required=True)
    m.add_argument("--slow-ms", type=int, default=50,
                   help="latency counted as slow in the when-report (default 50)")
    m.add_argument("--ready-file", required=True)
    m.add_argument("--warmup", type=float, default=2.0)
    m.add_argument("--grace", type=float, default=10.0)
    args = ap.parse_args()
    if args.mode == "engineers":
        if not args.token:
            ap.error("--token (or AC_TOKEN) is required")
        return create_engineers(args)
    return measure(args)


if __name__ == "__main__":
    sys.exit(main())
