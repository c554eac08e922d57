"""`payments demo` against a real `payments run` on the embedded default (SQLite database,
Celery's SQLAlchemy transport on SQLite, localstripe), with no API token set so the run makes
one and the demo reads it from var/run.json. The demo runs twice: its ids are unique per run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.processes import PAYMENTS, free_port, start, stop, wait_for

STEPS = [
    "[1/11] members ann and bob, and a club ... ok",
    "[2/11] ann tops up 60.00 by card checkout with a new card ... ok (balance 60.00)",
    "[3/11] bob saves a card for auto top-up (and is topped up 100.00) ... ok (auto top-up on, balance 100.00)",
    "[4/11] bob pays the club 150.00 (auto top-up covers it) ... ok (paid; bob 100.00, club 150.00)",
    "[5/11] ann transfers 25.00 to bob ... ok (paid; ann 35.00, bob 125.00)",
    "[6/11] the club is settled to yesterday (its money came today: nothing to settle) ... ok",
    "[7/11] the club tops ann up 20.00 at the table ... ok (paid; ann 55.00, club 130.00)",
    "[8/11] the club refunds ann's event entry of 15.00 ... ok (paid; ann 70.00, club 115.00)",
    "[9/11] the club raises an IOU of 12.00 for ann, and ann pays it ... ok (IOU paid; ann 58.00, club 127.00)",
    "[10/11] statements ... ok",
    "[11/11] final balances ... ok",
]


def test_demo_tells_the_whole_story_against_payments_run_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("PAYMENTS_"):  # the embedded default, a token made by the run
            monkeypatch.delenv(name)
    port = free_port()
    log = tmp_path / "run.log"
    stack = start(["run", "--port", str(port)], {}, log, cwd=tmp_path)
    try:
        def ready() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                return json.load(response)["status"] == "ready"

        wait_for(ready, "the stack to be ready", timeout=60)
        assert "api_token" in json.loads((tmp_path / "var" / "run.json").read_text())

        for _ in range(2):
            demo = subprocess.run([PAYMENTS, "demo"], cwd=tmp_path, capture_output=True, text=True, timeout=150)
            assert demo.returncode == 0, f"{demo.stdout}\n{demo.stderr}\n--- run.log tail\n{log.read_text()[-3000:]}"
            lines = demo.stdout.splitlines()
            for step in STEPS:
                assert any(line.startswith(step) for line in lines), f"missing {step!r} in\n{demo.stdout}"
            assert "nothing_to_settle for " in demo.stdout and "gross 0.00, net 0.00" in demo.stdout
            assert lines[-1] == "balances as expected: ann 58.00, bob 125.00, club 127.00"
            assert "statement of club-" in demo.stdout and "Settlement" not in demo.stdout

        stack.send_signal(signal.SIGINT)
        assert stack.wait(timeout=30) == 0
    finally:
        stop(stack)
    assert "payments stopped" in log.read_text()
