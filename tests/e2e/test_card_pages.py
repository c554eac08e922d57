"""The pages for people in a real browser (issue 15 item 2): Debian's headless Chromium driven by
Selenium (no browser download: /usr/bin/chromium and /usr/bin/chromedriver), against the real
webhook server (gunicorn), a real worker, and localstripe with its stand-in Stripe.js. The page
takes the card with Stripe.js; Stripe's payment_intent.* events, delivered by localstripe to the
webhook server, book the money; the page shows the request's status as the service reads it.

One browser for the module. Screenshots of each page are kept under var/screenshots/."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from flask.testing import FlaskClient
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from sqlalchemy.orm import Session, sessionmaker

from shared import client as payments_client
from shared import page_links
from shared.config import Settings
from shared.stripe_gateway import StripeGateway
from tests.e2e.conftest import BROKER, PUBLISHABLE_KEY, WEBHOOK_SECRET
from tests.e2e.processes import wait_for
from tests.e2e.test_stripe_flows import auto_topup_on, emails
from tests.integration.helpers import add_member, add_organisation, balance_of
from tests.stripe_fixture import ROOT, STRIPE_TEST_KEY, VISA

pytestmark = pytest.mark.usefixtures("worker")

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = ROOT / "var" / "screenshots"
DECLINED = "4000000000000341"  # localstripe (and Stripe) decline it when charged
NEEDS_3DS = "4000002500003155"  # the bank asks for 3-D Secure


@pytest.fixture(scope="module")
def chrome() -> Iterator[WebDriver]:
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), (
        "Chromium is missing: apt-get install -y chromium chromium-driver (.ci/run does)")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=900,800", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    # No speculative connections: the test server's one sync worker would wait on an idle one.
    options.add_experimental_option("prefs", {"net.network_prediction_options": 2})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


@pytest.fixture
def server(webhook_url: str) -> str:
    return webhook_url.removesuffix("/stripe/webhook")


@pytest.fixture
def settings(settings: Settings, stripe_api: str, server: str) -> Settings:
    """The in-process API makes links to the real server (same signing key: PAYMENTS_API_TOKEN)
    and sends to the real worker's broker."""
    return replace(settings, broker_url=BROKER, stripe_api_key=STRIPE_TEST_KEY, stripe_api_base=stripe_api,
                   stripe_webhook_secret=WEBHOOK_SECRET, stripe_publishable_key=PUBLISHABLE_KEY,
                   public_url=server, stripe_js_url=f"{stripe_api}/js.stripe.com/v3/")


@pytest.fixture
def gateway(settings: Settings) -> StripeGateway:
    return StripeGateway(settings)


@pytest.fixture(autouse=True)
def _clean(clean_db: None) -> None:
    """Every test starts with empty tables."""


@pytest.fixture
def world(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions.begin() as session:
        return {"ann": add_member(session, "ann"), "club": add_organisation(session, "club")}


# Helpers --------------------------------------------------------------------------------------


def status_of(client: FlaskClient, auth: dict, request_id: str, wanted: str, timeout: float = 30) -> dict:
    def reached() -> dict | None:
        body = client.get(f"/api/payments/{request_id}", headers=auth).get_json()
        return body if body.get("status") == wanted else None
    return wait_for(reached, f"request {request_id} to be {wanted}", timeout)


def checkout_url(client: FlaskClient, auth: dict, request_id: str) -> str:
    url = status_of(client, auth, request_id, "awaiting_card")["checkout"]["url"]
    assert isinstance(url, str)
    return url


def open_page(chrome: WebDriver, url: str) -> None:
    chrome.get(url)
    wait_for(lambda: chrome.find_elements(By.CSS_SELECTOR, "#card input[placeholder=number]"),
             "Stripe.js to mount the card form", 15)


def enter_card(chrome: WebDriver, number: str) -> None:
    """Type a card into Stripe.js's fields (localstripe's: plain inputs named by placeholder)."""
    for field, value in (("number", number), ("exp_month", "12"), ("exp_year", "34"), ("cvc", "123"),
                         ("postal_code", "2000")):
        box = chrome.find_element(By.CSS_SELECTOR, f"#card input[placeholder={field}]")
        box.clear()
        box.send_keys(value)


def outcome(chrome: WebDriver, wanted: str, timeout: float = 30) -> str:
    def shown() -> str | None:
        box = chrome.find_element(By.ID, "outcome")
        return box.text if box.get_attribute("data-status") == wanted else None
    return wait_for(shown, f"the page to show {wanted}", timeout)


def shot(chrome: WebDriver, name: str) -> None:
    assert chrome.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def fetch(client: FlaskClient, url: str) -> tuple[int, dict[str, str], str]:
    """GET a page from the in-process app (the same code as the server's): the server has one
    sync worker, kept for the browser and localstripe's deliveries."""
    answer = client.get(urlsplit(url).path)
    return answer.status_code, dict(answer.headers), answer.get_data(as_text=True)


def adjust(client: FlaskClient, auth: dict, cents: int) -> None:
    answer = client.post("/api/adjustments", headers=auth, json={
        "request_id": "seed", "member_id": "ann", "amount": f"{cents / 100:.2f}", "description": "Opening balance",
        "admin_id": "adm"})
    assert answer.status_code == 201, answer.get_json()


def pay(client: FlaskClient, auth: dict, request_id: str = "r1", amount: str = "30.00", checkout: bool = True) -> None:
    answer = client.post("/api/payments", headers=auth, json={
        "request_id": request_id, "member_id": "ann", "amount": amount, "description": "Congress entry",
        "organisation_id": "club", "payment_type": "Entry to an event", "allow_checkout": checkout})
    assert answer.status_code == 202, answer.get_json()


# Checkout -------------------------------------------------------------------------------------


def test_a_checkout_page_shows_who_pays_what_takes_a_good_card_and_shows_the_request_paid(
    client, auth, world, sessions, chrome, stripe_api, settings
) -> None:
    adjust(client, auth, 10_00)
    pay(client, auth)
    url = checkout_url(client, auth, "r1")
    assert url.startswith(f"{settings.public_url}/pay/")
    # A calling module reading the status with shared.client gets a link as good.
    other = payments_client.status("r1", settings)["checkout"]["url"]
    assert page_links.read(settings, page_links.CHECKOUT, other.rsplit("/", 1)[1]).subject == "r1"

    status, headers, body = fetch(client, url)
    assert status == 200
    policy = headers["Content-Security-Policy"]
    assert f"script-src 'self' {stripe_api};" in policy and "frame-ancestors 'none'" in policy
    assert "default-src 'none'" in policy and "unsafe-inline" not in policy
    assert (headers["X-Frame-Options"], headers["Referrer-Policy"]) == ("DENY", "no-referrer")
    assert 'id="pay"' in body

    open_page(chrome, url)
    summary = chrome.find_element(By.ID, "summary").text
    assert "Ann Lee" in summary and "Congress entry, to" in summary
    assert chrome.find_element(By.ID, "amount").text == "20.00 AUD"  # 30.00 less the 10.00 held
    assert chrome.find_element(By.ID, "total").text == "30.00 AUD"
    enter_card(chrome, VISA)
    shot(chrome, "checkout")
    chrome.find_element(By.ID, "pay").click()

    assert outcome(chrome, "paid") == "Paid. Thank you."
    shot(chrome, "checkout-paid")
    assert status_of(client, auth, "r1", "paid")["status"] == "paid"
    assert balance_of(sessions, world["ann"]) == 0
    assert balance_of(sessions, world["club"]) == 30_00

    used, _, text = fetch(client, url)  # paid: the link is used up
    assert used == 410 and "closed" in text


def test_a_declined_card_shows_the_error_and_a_second_card_pays_a_manual_top_up(
    client, auth, world, sessions, chrome
) -> None:
    answer = client.post("/api/members/ann/topups", headers=auth,
                         json={"request_id": "t1", "amount": "60.00", "use_saved_card": False})
    assert answer.status_code == 202, answer.get_json()
    open_page(chrome, checkout_url(client, auth, "t1"))
    assert "Top up of your Bridge Credits" in chrome.find_element(By.ID, "what").text
    assert chrome.find_element(By.ID, "amount").text == "60.00 AUD"

    enter_card(chrome, DECLINED)
    chrome.find_element(By.ID, "pay").click()
    error = wait_for(lambda: chrome.find_element(By.ID, "error").text, "the decline to be shown", 20)
    assert "declined" in error.lower()
    shot(chrome, "top-up-declined")
    assert client.get("/api/payments/t1", headers=auth).get_json()["status"] == "awaiting_card"
    assert balance_of(sessions, world["ann"]) == 0

    enter_card(chrome, VISA)
    chrome.find_element(By.ID, "pay").click()
    outcome(chrome, "paid")
    assert status_of(client, auth, "t1", "paid")["status"] == "paid"
    assert balance_of(sessions, world["ann"]) == 60_00


def test_a_card_that_needs_3d_secure_is_authenticated_on_the_page_and_pays(
    client, auth, world, sessions, chrome
) -> None:
    pay(client, auth, "r3", "25.00")
    open_page(chrome, checkout_url(client, auth, "r3"))
    enter_card(chrome, NEEDS_3DS)
    chrome.find_element(By.ID, "pay").click()

    # localstripe's Stripe.js shows its 3-D Secure dialog (Stripe's shows the bank's).
    confirm = wait_for(lambda: [b for b in chrome.find_elements(By.TAG_NAME, "button")
                                if b.text == "Complete authentication"], "the 3-D Secure dialog", 20)
    shot(chrome, "checkout-3d-secure")
    confirm[0].click()
    outcome(chrome, "paid")
    assert status_of(client, auth, "r3", "paid")["status"] == "paid"
    assert balance_of(sessions, world["club"]) == 25_00


def test_an_expired_link_says_so_and_a_forged_one_is_not_found(
    client, auth, world, chrome, settings
) -> None:
    pay(client, auth, "r4", "25.00")
    url = checkout_url(client, auth, "r4")
    old = page_links.token(settings, page_links.CHECKOUT, "r4", now=time.time() - 2 * 86400)
    expired = f"{settings.public_url}/pay/{old}"
    status, headers, _ = fetch(client, expired)
    assert status == 410 and headers["X-Frame-Options"] == "DENY"
    chrome.get(expired)
    assert chrome.find_element(By.ID, "gone").text == "This link has expired. Ask for a new one."
    shot(chrome, "link-expired")

    forged = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
    assert fetch(client, forged)[0] == 404
    other = url.replace("/pay/pay.", "/pay/card.")
    assert fetch(client, other)[0] == 404  # a link of another kind (its signature covers the kind)


# Auto top-up set-up ---------------------------------------------------------------------------


def test_the_set_up_page_saves_a_card_and_turns_auto_top_up_on(client, auth, world, sessions, chrome) -> None:
    answer = client.post("/api/members/ann/auto-topup/setup", headers=auth)
    assert answer.status_code == 200, answer.get_json()
    url = answer.get_json()["url"]
    assert "/card/" in url

    open_page(chrome, url)
    assert chrome.find_element(By.ID, "payer").text == "Ann Lee"
    assert chrome.find_element(By.ID, "amount").text == "100.00 AUD"
    enter_card(chrome, VISA)
    shot(chrome, "auto-top-up-set-up")
    chrome.find_element(By.ID, "save").click()

    assert outcome(chrome, "on") == "Your card is saved and auto top-up is on."
    shot(chrome, "auto-top-up-on")
    body = client.get("/api/members/ann/balance", headers=auth).get_json()
    assert body["auto_topup"]["status"] == "on"
    # The balance (0.00) was below the low limit: the saved card tops it up.
    wait_for(lambda: balance_of(sessions, world["ann"]) == 100_00, "the first auto top-up")
    assert fetch(client, url)[0] == 410  # saved: the link is used up


# Card authentication of an auto top-up --------------------------------------------------------


def test_the_e_mailed_link_lets_the_member_authenticate_an_auto_top_up_which_is_then_booked(
    client, auth, world, sessions, gateway, browser, chrome, server
) -> None:
    auto_topup_on(sessions, gateway, browser, number=NEEDS_3DS)
    adjust(client, auth, 10_00)
    pay(client, auth, "r5", "30.00", checkout=False)
    assert status_of(client, auth, "r5", "declined")["reason"].startswith("auto top-up")
    (email,) = emails(sessions)
    assert email["kind"] == "auto_topup_action_required"
    link = email["body"].split("confirm it: ", 1)[1].split()[0]
    # The worker's PAYMENTS_PUBLIC_URL is the default; the page is on this module's server.
    page = f"{server}{urlsplit(link).path}"

    open_button = lambda: chrome.find_elements(By.ID, "pay")  # noqa: E731
    chrome.get(page)
    wait_for(open_button, "the authentication page", 15)
    assert chrome.find_element(By.ID, "payer").text == "Ann Lee"
    amount = chrome.find_element(By.ID, "amount").text
    shot(chrome, "auto-top-up-authenticate")
    chrome.find_element(By.ID, "pay").click()
    confirm = wait_for(lambda: [b for b in chrome.find_elements(By.TAG_NAME, "button")
                                if b.text == "Complete authentication"], "the 3-D Secure dialog", 20)
    confirm[0].click()

    assert outcome(chrome, "succeeded") == "Confirmed: your Bridge Credits were topped up."
    topped_up = int(amount.split()[0].replace(".", ""))
    wait_for(lambda: balance_of(sessions, world["ann"]) == 10_00 + topped_up, "the top-up to be booked")
    assert client.get("/api/members/ann/balance", headers=auth).get_json()["auto_topup"]["status"] == "on"
    assert fetch(client, page)[0] == 410  # done: the link is used up
