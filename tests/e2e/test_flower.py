"""`payments run` on Redis shows Flower (ISSUE 15, items 5 and 6): a real stack (webhook, worker,
beat, localstripe, Flower) on a Redis of the test's own, a payment sent through the API, and
Flower's own HTTP API, behind basic auth with the password `run` made up and kept in
var/run.json, showing the worker and the finished `payments.pay` task. The same run's two
`/metrics` listeners show the timings of that request and that task (prometheus-client's
multiprocess mode: the gunicorn worker and the Celery pool process observe, another process
answers the scrape). About 15 s, most of it the stack starting."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.processes import PAYMENTS, free_port, private_redis, start, stop, wait_for

TOKEN = "t0ken-for-the-flower-test-only-not-a-secret"


def call(url: str, *, method: str = "GET", body: dict | None = None, headers: dict[str, str] | None = None
         ) -> tuple[int, Any]:
    request = urllib.request.Request(url, method=method, headers={"Content-Type": "application/json", **(headers or {})},
                                     data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, None


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_run_on_redis_shows_flower_with_the_worker_and_a_finished_payment_and_metrics_time_them(
    tmp_path: Path
) -> None:
    port, log = free_port(), tmp_path / "run.log"
    with private_redis() as broker:  # no other run's worker may take this run's tasks
        stack = start(["run", "--port", str(port), "--flower-port", str(free_port())],
                      {"PAYMENTS_BROKER_URL": broker.url, "PAYMENTS_API_TOKEN": TOKEN}, log, cwd=tmp_path)
        try:
            api = f"http://127.0.0.1:{port}"
            wait_for(lambda: call(f"{api}/readyz")[0] == 200, "the stack to be ready", 60)
            run_info = json.loads((tmp_path / "var" / "run.json").read_text())
            flower, password = run_info["flower"], run_info["flower_password"]
            basic = {"Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()}
            wrong = {"Authorization": "Basic " + base64.b64encode(b"admin:guess").decode()}

            # Flower sees the worker from its heartbeats (remote control is off).
            workers = wait_for(lambda: {name: alive for name, alive in call(
                f"{flower}/api/workers?status=true", headers=basic)[1].items() if alive}, "Flower to see the worker", 30)
            assert len(workers) == 1
            assert call(f"{flower}/api/workers?status=true")[0] == 401
            assert call(f"{flower}/api/tasks", headers=wrong)[0] == 401

            auth = {"Authorization": f"Bearer {TOKEN}"}
            assert call(f"{api}/api/members/ann", method="PUT", headers=auth,
                        body={"email": "ann@example.org", "first_name": "Ann", "last_name": "Lee"})[0] == 201
            assert call(f"{api}/api/adjustments", method="POST", headers=auth,
                        body={"request_id": "adj-1", "member_id": "ann", "amount": "10.00",
                              "description": "opening", "admin_id": "op"})[0] == 201
            assert call(f"{api}/api/payments", method="POST", headers=auth,
                        body={"request_id": "pay-1", "member_id": "ann", "amount": "2.50",
                              "description": "coffee"})[0] == 202
            wait_for(lambda: call(f"{api}/api/payments/pay-1", headers=auth)[1]["status"] == "paid",
                     "the payment to be paid", 30)

            def finished_payment() -> dict | None:
                tasks = call(f"{flower}/api/tasks?taskname=payments.pay", headers=basic)[1]
                done = [task for task in tasks.values() if task["state"] == "SUCCESS"]
                return done[0] if done else None

            task = wait_for(finished_payment, "Flower to show the finished payments.pay task", 30)
            assert task["name"] == "payments.pay" and task["worker"] in workers
            assert "pay-1" in task["kwargs"]

            # The timings, from the run's two internal /metrics listeners.
            worker_figures = scrape(run_info["worker_metrics"])
            paid = ("payments_task_duration_seconds_count", (("state", "SUCCESS"), ("task", "payments.pay")))
            assert worker_figures[paid] == 1
            assert worker_figures[("payments_task_duration_seconds_sum", paid[1])] > 0
            webhook_figures = scrape(run_info["metrics"])
            posted = ("payments_http_request_duration_seconds_count",
                      (("method", "POST"), ("route", "/api/payments"), ("status", "202")))
            assert webhook_figures[posted] == 1
            assert webhook_figures[("payments_requests", (("kind", "payment"), ("status", "paid")))] == 1

            stack.send_signal(signal.SIGINT)
            assert stack.wait(timeout=30) == 0
        finally:
            stop(stack)
    output = log.read_text()
    assert f"Flower on {flower} (user admin, password in var/run.json)" in output
    assert password not in output and TOKEN not in output
    assert "payments stopped" in output


def test_flower_needs_its_password_and_a_redis_broker(tmp_path: Path) -> None:
    """CONTRACT: PAYMENTS_FLOWER_PASSWORD is required; the embedded SQLite broker carries no
    events for Flower to show, so it is refused rather than started blind."""
    def flower(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PAYMENTS, "flower", "--port", str(free_port())], env={"PATH": "/usr/bin:/bin", **env},
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)

    missing = flower({"PAYMENTS_BROKER_URL": "redis://127.0.0.1:6379/0"})
    assert missing.returncode != 0 and "PAYMENTS_FLOWER_PASSWORD is required" in missing.stderr
    comma = flower({"PAYMENTS_BROKER_URL": "redis://127.0.0.1:6379/0", "PAYMENTS_FLOWER_PASSWORD": "a,b"})
    assert comma.returncode != 0 and "may not hold a comma" in comma.stderr
    sqlite = flower({"PAYMENTS_FLOWER_PASSWORD": "not-a-secret"})
    assert sqlite.returncode != 0 and "needs a Redis broker" in sqlite.stderr
