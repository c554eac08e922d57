"""The `stripe_api` fixture: localstripe in a child process on a free loopback port, for the
whole test run (localstripe_server.py keeps its state in memory, so runs do not share it).

Enable it for every test with `pytest_plugins = ["tests.stripe_fixture"]` in tests/conftest.py.
Tests make their own customers, so they need no reset; `reset_stripe` empties the store.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.processes import free_port, stop

ROOT = Path(__file__).resolve().parent.parent
# localstripe accepts any key of the form sk_...; this one is not a secret.
STRIPE_TEST_KEY = "sk_test_localstripe_not_a_secret"


def _answers(base_url: str) -> bool:
    # The Stripe.js stand-in needs no API key and changes nothing.
    with urllib.request.urlopen(f"{base_url}/js.stripe.com/v3/", timeout=1) as response:
        return response.status == 200


def _call(method: str, url: str, form: dict[str, str] | None = None) -> None:
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    with urllib.request.urlopen(request, timeout=5) as response:
        if response.status != 200:
            raise AssertionError(f"{method} {url}: HTTP {response.status}")


def register_webhook(base_url: str, name: str, *, url: str, secret: str, events: list[str] | None = None) -> None:
    """Have localstripe POST its events to `url`, signed with `secret` (about 1 s after the
    API call, no retries; only `events` if given)."""
    form = {"url": url, "secret": secret}
    for i, event in enumerate(events or ()):
        form[f"events[{i}]"] = event
    _call("POST", f"{base_url}/_config/webhooks/{urllib.parse.quote(name, safe='')}", form)


def reset_stripe(base_url: str) -> None:
    """Forget every customer, card and payment (webhook registrations stay)."""
    _call("DELETE", f"{base_url}/_config/data")


@pytest.fixture(scope="session")
def stripe_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a private localstripe (`http://127.0.0.1:PORT`); use it as
    `Settings(stripe_api_base=..., stripe_api_key=STRIPE_TEST_KEY)`."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("localstripe") / "localstripe.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "localstripe_server", str(port)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if _answers(base_url):
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"localstripe did not start on {base_url}; its log:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        yield base_url
    finally:
        stop(process, timeout=10)
