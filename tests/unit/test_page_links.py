"""The links to the pages for people (shared/page_links.py): signed, expiring, one kind each."""

from __future__ import annotations

import time

import pytest

from shared import page_links
from shared.config import Settings

SETTINGS = Settings(api_token="a-token-long-enough-for-the-check-0123456789", public_url="https://pay.example.org")


def test_a_link_names_its_subject_until_it_expires() -> None:
    url = page_links.url(SETTINGS, page_links.CHECKOUT, "r-1:ü/x")
    assert url is not None and url.startswith("https://pay.example.org/pay/pay.")
    token = url.rsplit("/", 1)[1]
    link = page_links.read(SETTINGS, page_links.CHECKOUT, token)
    assert link.subject == "r-1:ü/x"
    assert link.expires_at == pytest.approx(time.time() + 24 * 3600, abs=5)
    with pytest.raises(page_links.ExpiredLink):
        page_links.read(SETTINGS, page_links.CHECKOUT, token, now=time.time() + 24 * 3600 + 10)
    setup = page_links.token(SETTINGS, page_links.SETUP, "seti_1:ann")
    assert setup is not None
    with pytest.raises(page_links.ExpiredLink):
        page_links.read(SETTINGS, page_links.SETUP, setup, now=time.time() + 3600 + 10)  # a set-up lives 1 h


def test_two_links_to_one_subject_differ_only_by_expiry_and_cannot_be_guessed() -> None:
    first = page_links.token(SETTINGS, page_links.CHECKOUT, "r1", now=1_000_000)
    assert first == page_links.token(SETTINGS, page_links.CHECKOUT, "r1", now=1_000_000)
    assert first != page_links.token(SETTINGS, page_links.CHECKOUT, "r1", now=1_000_001)
    assert first != page_links.token(Settings(api_token="another-token-long-enough-0123456789abcdef"),
                                     page_links.CHECKOUT, "r1", now=1_000_000)
    assert len(first.rsplit(".", 1)[1]) == 43  # 256 bits of HMAC-SHA256


@pytest.mark.parametrize("change", ["subject", "expiry", "signature", "kind", "shape", "key"])
def test_an_altered_or_foreign_link_is_refused(change: str) -> None:
    token = page_links.token(SETTINGS, page_links.CHECKOUT, "r1")
    assert token is not None
    kind, subject, expires, signature = token.split(".")
    settings, wanted = SETTINGS, page_links.CHECKOUT
    altered = {
        "subject": f"{kind}.cjI.{expires}.{signature}",  # "r2"
        "expiry": f"{kind}.{subject}.{int(expires) + 3600}.{signature}",
        "signature": f"{kind}.{subject}.{expires}.{signature[:-2]}AA",
        "kind": token,
        "shape": f"{kind}.{subject}.{expires}",
        "key": token,
    }[change]
    if change == "kind":
        wanted = page_links.SETUP  # a checkout link does not open a set-up page
    if change == "key":
        settings = Settings(api_token="another-token-long-enough-0123456789abcdef")
    with pytest.raises(page_links.BadLink):
        page_links.read(settings, wanted, altered)


def test_without_an_api_token_no_links_are_made_or_read() -> None:
    assert page_links.url(Settings(), page_links.CHECKOUT, "r1") is None
    token = page_links.token(SETTINGS, page_links.CHECKOUT, "r1")
    assert token is not None
    with pytest.raises(page_links.BadLink):
        page_links.read(Settings(), page_links.CHECKOUT, token)


def test_a_status_document_gets_its_checkout_url_only_while_it_awaits_a_card() -> None:
    waiting = {"request_id": "r1", "status": "awaiting_card", "checkout": {"amount": "20.00"}}
    with_url = page_links.with_checkout_url(SETTINGS, waiting)
    assert with_url["checkout"]["url"].startswith("https://pay.example.org/pay/")
    assert "url" not in waiting["checkout"]  # a copy
    paid = {"request_id": "r1", "status": "paid", "checkout": {"amount": "20.00"}}
    assert page_links.with_checkout_url(SETTINGS, paid) == paid


def test_the_public_address_and_stripe_js_come_from_the_environment() -> None:
    default = Settings.from_env({})
    assert (default.public_url, default.stripe_js_url) == ("http://127.0.0.1:8000", "https://js.stripe.com/v3/")
    chosen = Settings.from_env({"PAYMENTS_PUBLIC_URL": "https://pay.example.org/",
                                "PAYMENTS_STRIPE_JS_URL": "http://127.0.0.1:8420/js.stripe.com/v3/"})
    assert (chosen.public_url, chosen.stripe_js_url) == ("https://pay.example.org",
                                                         "http://127.0.0.1:8420/js.stripe.com/v3/")
