"""The real `payments webhook` (gunicorn, two worker processes) with its internal metrics
listener (ISSUE 12, items 5 and 7): `/metrics` only on the metrics port, a chunked body over
1 MiB refused with 413 as a declared one is (Flask's test client cannot send a chunked body),
and refused deliveries counted across both processes."""

from __future__ import annotations

import http.client
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.stripe_gateway import sign_webhook
from tests.e2e.processes import free_port, private_redis, start, stop, wait_for

SECRET = "whsec_server_not_a_secret"
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    log = tmp_path_factory.mktemp("webhook-server") / "webhook.log"
    port, metrics_port = free_port(), free_port()
    with private_redis() as broker:
        env = {"PAYMENTS_DATABASE_URL": database_url, "PAYMENTS_BROKER_URL": broker.url,
               "PAYMENTS_STRIPE_WEBHOOK_SECRET": SECRET, "PAYMENTS_OPS_CACHE_SECONDS": "0"}
        process = start(["webhook", "--port", str(port), "--workers", "2", "--metrics-port", str(metrics_port)],
                        env, log)
        try:
            wait_for(lambda: get(port, "/healthz")[0] == 200 and get(metrics_port, "/healthz")[0] == 200,
                     "the webhook server and its metrics listener", 30)
            yield {"port": port, "metrics": metrics_port}
        finally:
            stop(process)
    assert "metrics listening on http://127.0.0.1:" in Path(log).read_text()


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def post_chunked(port: int, chunks: Iterator[bytes], headers: dict[str, str]) -> tuple[int, dict]:
    """POST with Transfer-Encoding: chunked and no Content-Length."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", "/stripe/webhook", body=chunks, headers=headers, encode_chunked=True)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before reading it all: its answer is still there
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    return response.status, answer


def rejected(metrics_text: str) -> dict[str, int]:
    return {m[1]: int(float(m[2])) for m in re.finditer(
        r'^payments_webhook_rejected_total\{reason="(\w+)"\} (\S+)$', metrics_text, re.M)}


def test_metrics_are_served_on_the_internal_port_only(server) -> None:
    assert get(server["port"], "/metrics")[0] == 404
    status, text = get(server["metrics"], "/metrics")
    assert status == 200 and "# TYPE payments_inbox_events gauge" in text
    assert get(server["metrics"], "/api/admin/summary")[0] == 404  # the internal app has no API
    assert get(server["port"], "/readyz")[0] == 200


def test_a_chunked_body_over_one_mib_is_refused_with_413_and_counted(server) -> None:
    before = rejected(get(server["metrics"], "/metrics")[1])["too_large"]
    body = json.dumps({"id": "evt_chunked_huge", "object": "event", "type": "x",
                       "data": {"object": {"padding": "x" * (MIB + 10)}}}).encode()
    chunks = iter([body[i:i + 64 * 1024] for i in range(0, len(body), 64 * 1024)])
    status, answer = post_chunked(server["port"], chunks, {"Content-Type": "application/json",
                                                           "Stripe-Signature": sign_webhook(body, SECRET)})
    assert status == 413 and answer["error"]["code"] == "payload_too_large"
    assert rejected(get(server["metrics"], "/metrics")[1])["too_large"] == before + 1


def test_a_small_chunked_delivery_is_accepted(server) -> None:
    body = json.dumps({"id": "evt_chunked_small", "object": "event", "type": "customer.updated",
                       "data": {"object": {"id": "cus_1"}}}).encode()
    status, answer = post_chunked(server["port"], iter([body[:10], body[10:]]),
                                  {"Content-Type": "application/json", "Stripe-Signature": sign_webhook(body, SECRET)})
    assert (status, answer) == (200, {"received": True, "duplicate": False})


def test_refused_deliveries_are_counted_once_each_across_the_worker_processes(server) -> None:
    before = rejected(get(server["metrics"], "/metrics")[1])["bad_signature"]
    body = b'{"id": "evt_forged", "object": "event"}'
    for _ in range(40):  # a new connection each: both processes take some
        request = urllib.request.Request(f"http://127.0.0.1:{server['port']}/stripe/webhook", data=body, method="POST",
                                         headers={"Stripe-Signature": sign_webhook(body, "whsec_someone_else")})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 400
        refused.value.close()
    for _ in range(4):  # whichever process answers the scrape
        assert rejected(get(server["metrics"], "/metrics")[1])["bad_signature"] == before + 40


def test_request_timings_are_added_up_across_the_worker_processes(server) -> None:
    """prometheus-client's multiprocess mode: each gunicorn worker times the requests it
    answers, and whichever one answers the scrape reports them all."""
    count = re.compile(r'^payments_http_request_duration_seconds_count\{method="GET",route="/healthz",status="200"\} (\S+)$',
                       re.M)

    def timed() -> float:
        found = count.search(get(server["metrics"], "/metrics")[1])
        return float(found[1]) if found else 0.0

    before = timed()
    for _ in range(40):  # a new connection each: both processes take some
        assert get(server["port"], "/healthz")[0] == 200
    for _ in range(4):  # whichever process answers the scrape
        assert timed() == before + 40


def test_the_metrics_address_can_come_from_the_environment_as_in_compose(database_url: str, tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    log = tmp_path / "webhook.log"
    env = {"PAYMENTS_DATABASE_URL": database_url, "PAYMENTS_BROKER_URL": "redis://127.0.0.1:1/0",
           "PAYMENTS_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}"}
    process = start(["webhook", "--port", str(port), "--workers", "1"], env, log)
    try:
        wait_for(lambda: get(metrics_port, "/healthz")[0] == 200, "the metrics listener", 30)
        assert get(metrics_port, "/metrics")[0] == 200
        assert get(port, "/metrics")[0] == 404
    finally:
        stop(process)
