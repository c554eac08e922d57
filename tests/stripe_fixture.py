"""The `stripe_api` fixture: localstripe in a child process on a free loopback port, for the
whole test run (localstripe_server.py keeps its state in memory, so runs do not share it).

Enable it for every test with `pytest_plugins = ["tests.stripe_fixture"]` in tests/conftest.py.
Tests make their own customers, so they need no reset between tests. But localstripe keeps
every object in memory and answers a list by scanning all of them, page after page, and the
gateway lists PaymentIntents to find an attempt's: a store that only grew made each look-up
slower as the run went on (localstripe took 8 CPU-minutes of a 16-minute run). So the store is
emptied after each test module (`_empty_stripe_after_each_module`); webhook registrations stay.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import stripe

from shared.stripe_gateway import StripeGateway

from tests.e2e.processes import free_port, stop

ROOT = Path(__file__).resolve().parent.parent
# localstripe accepts any key of the form sk_...; this one is not a secret.
STRIPE_TEST_KEY = "sk_test_localstripe_not_a_secret"
VISA = "4242424242424242"
# The base URL of the running localstripe, once the `stripe_api` fixture has started it.
RUNNING: list[str] = []


def browser_for(base_url: str) -> stripe.StripeClient:
    """The member's browser (Stripe.js) talking to localstripe."""
    return stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": base_url}, max_network_retries=0)


def new_card(browser: stripe.StripeClient, number: str = VISA) -> str:
    """A card PaymentMethod; raw numbers are localstripe's way (the SDK's types know only tokens)."""
    params: Any = {"type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"}}
    return browser.v1.payment_methods.create(params).id


def customer_with_card(gateway: StripeGateway, browser: stripe.StripeClient, member_id: str, *,
                       number: str = VISA, name: str = "Ann Lee") -> str:
    """The member's Stripe customer, with `number` saved as its default card; its id."""
    customer = gateway.ensure_customer(member_id=member_id, email=f"{member_id}@example.org", name=name,
                                       customer_id=None)
    gateway.card_saved(customer_id=customer, payment_method_id=new_card(browser, number))
    return customer


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
        RUNNING[:] = [base_url]
        yield base_url
    finally:
        RUNNING.clear()
        stop(process, timeout=10)


@pytest.fixture
def browser(stripe_api: str) -> stripe.StripeClient:
    """What Stripe.js does in the member's browser (and what an admin reads at Stripe)."""
    return browser_for(stripe_api)


@pytest.fixture(scope="module", autouse=True)
def _empty_stripe_after_each_module() -> Iterator[None]:
    yield
    for base_url in RUNNING:
        reset_stripe(base_url)
