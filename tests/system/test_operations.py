"""/healthz and /metrics."""

import re

import requests


def test_healthz(stack):
    r = requests.get(stack.intake.url + "/healthz", timeout=5)
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "db": "up", "tokens": "loaded"}


def test_metrics_counts_requests(stack, api):
    agent = api("agent")
    agent.get("/v1/tickets?limit=1")
    agent.get("/v1/tickets/SV-20000101-000000")

    def total():
        text = requests.get(stack.intake.url + "/metrics", timeout=5).text
        return text, sum(float(v) for v in re.findall(
            r"^\w*http_requests_total\{[^}]*\} ([0-9.e+]+)$", text, re.M))

    r = requests.get(stack.intake.url + "/metrics", timeout=5)
    assert r.status_code == 200
    assert r.headers.get("Content-Type", "").startswith("text/plain")
    text, before = total()
    assert re.search(r"^# TYPE \w*http_requests_total counter", text, re.M)
    assert re.search(r'^\w*http_requests_total\{[^}]*status="404"[^}]*\} [1-9]', text, re.M), \
        "no 404 counted"
    assert re.search(r'^\w*http_requests_total\{[^}]*status="200"[^}]*\} [1-9]', text, re.M)
    for _ in range(3):
        agent.get("/v1/tickets?limit=1")
    _, after = total()
    assert after >= before + 3
    # a latency histogram is there too
    assert re.search(r"_bucket\{[^}]*le=\"\+Inf\"", text), "no histogram buckets"


def test_unauthenticated_routes_need_no_token(stack):
    assert requests.get(stack.intake.url + "/healthz", timeout=5).status_code == 200
    assert requests.get(stack.intake.url + "/metrics", timeout=5).status_code == 200
