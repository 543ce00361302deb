"""Ticket numbers taken at commit (intake migration 009): gap-free per day while two create
batches are in flight, and the claim that keeps them so."""

import threading
import time

import psycopg2
import pytest
import requests

from helpers import NUMBER_RE, ticket_body

DAY = "2000-01-01"  # a day no ticket has: the tests below own its counter row


def _claim(conn, first, last):
    with conn.cursor() as cur:
        cur.execute("SELECT intake.numbers_claim(%s::date, %s, %s)", (DAY, first, last))


def _metric(api, name):
    for line in api.get("/metrics").text.splitlines():
        if line.startswith("aftercare_intake_" + name + " "):
            return float(line.split()[1])
    return 0.0


def _counter(db):
    return db.scalar("SELECT last FROM intake.daily_counters WHERE day = %s::date", (DAY,))


def test_claim_takes_only_the_next_numbers(stack, db):
    conn = stack.pg.connect()
    try:
        with pytest.raises(psycopg2.Error) as e:  # the day's first claim must start at 1
            _claim(conn, 2, 5)
        assert e.value.pgcode == "40001"
        assert _counter(db) is None
        _claim(conn, 1, 3)
        assert _counter(db) == 3
        for first, last in ((5, 6), (3, 4), (1, 9)):  # a gap, an overlap, a replay
            with pytest.raises(psycopg2.Error) as e:
                _claim(conn, first, last)
            assert e.value.pgcode == "40001"
            assert _counter(db) == 3
        with pytest.raises(psycopg2.Error) as e:
            _claim(conn, 4, 3)
        assert e.value.pgcode == "22023"
        _claim(conn, 4, 4)
        assert _counter(db) == 4
    finally:
        conn.close()


def _second_claim_after(stack, db, end_first, first, last):
    """Claims first..last on one connection while another holds an uncommitted claim of the
    numbers before; end_first ends that one ('commit' or 'rollback'). Returns the second
    claim's SQLSTATE (None when it succeeded) and whether it waited for the first."""
    a, b = stack.pg.connect(), stack.pg.connect()
    a.autocommit = False
    outcome = {}
    try:
        _claim(a, first - 2, first - 1)

        def second():
            try:
                _claim(b, first, last)
                outcome["pgcode"] = None
            except psycopg2.Error as e:
                outcome["pgcode"] = e.pgcode
            outcome["at"] = time.monotonic()

        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.5)
        assert t.is_alive(), "the second claim did not wait for the first one's commit"
        ended = time.monotonic()
        getattr(a, end_first)()
        t.join(10)
        assert not t.is_alive()
        assert outcome["at"] >= ended
        return outcome["pgcode"]
    finally:
        a.close()
        b.close()


def test_claim_waits_for_the_batch_before_it(stack, db):
    start = (_counter(db) or 0) + 1
    if start == 1:
        conn = stack.pg.connect()
        _claim(conn, 1, 1)
        conn.close()
        start = 2
    assert _second_claim_after(stack, db, "commit", start + 2, start + 4) is None
    assert _counter(db) == start + 4
    # the batch before fails: the numbers after it are not next any more
    before = _counter(db)
    assert _second_claim_after(stack, db, "rollback", before + 3, before + 3) == "40001"
    assert _counter(db) == before


def test_two_batches_in_flight_keep_numbers_gap_free(stack, db, sub):
    """16 clients in a closed loop make batches overlap; every number of the burst is
    unique, the burst's numbers are one gap-free run, and each has its event."""
    agent = stack.api("agent")
    customer = agent.new_customer()
    url = stack.intake.url + "/v1/tickets"
    overlapped_before = _metric(agent, "create_batches_overlapped_total")
    mark = sub.mark()
    numbers, failures = [], []
    lock = threading.Lock()

    def worker(i):
        s = requests.Session()
        s.headers["Authorization"] = "Bearer " + stack.tokens["agent"]
        for k in range(60):
            r = s.post(url, json=ticket_body(customer["id"], description="overlap %d/%d" % (i, k)),
                       timeout=30)
            with lock:
                if r.status_code == 201:
                    numbers.append(r.json()["number"])
                else:
                    failures.append((r.status_code, r.text[:200]))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert failures == []
    assert len(numbers) == 960 and len(set(numbers)) == 960
    if len({NUMBER_RE.match(n).group(1) for n in numbers}) > 1:
        pytest.skip("the burst crossed midnight (UTC)")
    seqs = sorted(int(NUMBER_RE.match(n).group(2)) for n in numbers)
    assert seqs[-1] - seqs[0] + 1 == 960, "gaps in the burst's numbers"
    day = NUMBER_RE.match(numbers[0]).group(1)
    # no number of the day is missing or doubled, and the counter is at the last one
    all_seqs = sorted(int(r["n"]) for r in db.rows(
        "SELECT substring(number from 13)::bigint AS n FROM intake.tickets "
        "WHERE number LIKE %s", ("SV-" + day + "-%",)))
    assert all_seqs == list(range(1, len(all_seqs) + 1))
    assert db.scalar("SELECT last FROM intake.daily_counters WHERE day = to_date(%s, 'YYYYMMDD')",
                     (day,)) == all_seqs[-1]
    assert _metric(agent, "create_batches_overlapped_total") > overlapped_before, \
        "no batch went out beside another: the test did not exercise the overlap"
    sub.wait_subjects(numbers, "ticket.created", timeout=60, since=mark)
