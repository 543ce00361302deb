"""Many clients at once: every ticket gets its own number and exactly one event."""

import collections
import threading
import time

import requests

from helpers import NUMBER_RE, ticket_body

THREADS = 8
TOTAL = 2000


def test_concurrent_creates(stack, db, sub):
    agent = stack.api("agent")
    customers = [agent.new_customer() for _ in range(4)]
    mark = sub.mark()
    url = stack.intake.url + "/v1/tickets"
    results = [[] for _ in range(THREADS)]
    failures = []

    def worker(i):
        s = requests.Session()
        s.headers["Authorization"] = "Bearer " + stack.tokens["agent"]
        for k in range(i, TOTAL, THREADS):
            body = ticket_body(customers[k % len(customers)]["id"], channel="api",
                               description="load %d" % k)
            try:
                r = s.post(url, json=body, timeout=30)
            except requests.RequestException as e:
                failures.append((k, repr(e)))
                continue
            if r.status_code != 201:
                failures.append((k, r.status_code, r.text[:200]))
                continue
            results[i].append(r.json()["number"])

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(240)
    elapsed = time.monotonic() - started
    assert not any(th.is_alive() for th in threads), "clients still running after 240 s"
    print("\n%d tickets by %d clients in %.1f s (%.0f/s)" % (TOTAL, THREADS, elapsed,
                                                              TOTAL / elapsed))
    assert failures == [], "%d failed, e.g. %r" % (len(failures), failures[:5])

    numbers = [n for r in results for n in r]
    assert len(numbers) == TOTAL
    assert len(set(numbers)) == TOTAL, "duplicate numbers: %r" % [
        n for n, c in collections.Counter(numbers).items() if c > 1][:5]
    by_day = collections.defaultdict(list)
    for n in numbers:
        m = NUMBER_RE.match(n)
        assert m, n
        by_day[m.group(1)].append(int(m.group(2)))
    for day, seqs in by_day.items():  # nothing else ran meanwhile: one gap-free block per day
        assert max(seqs) - min(seqs) + 1 == len(seqs), "gaps in %s numbers" % day

    assert db.scalar("SELECT count(*) FROM intake.tickets WHERE number = ANY(%s)",
                     (numbers,)) == TOTAL

    sub.wait_subjects(numbers, "ticket.created", timeout=90, since=mark)
    time.sleep(0.5)
    created = [m for m in sub.events(mark) if m.topic == b"ticket.created"]
    counts = collections.Counter(m.env.subject for m in created)
    wanted = set(numbers)
    assert {n for n in counts if n in wanted} == wanted
    dup = {n: c for n, c in counts.items() if n in wanted and c != 1}
    assert dup == {}, "numbers seen more than once in events: %r" % list(dup.items())[:5]
    seqs = sorted(m.env.sequence for m in created if m.env.subject in wanted)
    assert len(set(seqs)) == TOTAL
    assert seqs[-1] - seqs[0] + 1 == TOTAL, "sequence gaps within the burst"
