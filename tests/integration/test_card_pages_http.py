"""The pages for people over HTTP, without a browser or Stripe: what a link that is not ours,
an expired one, or a bad body gets (the browser flows are tests/e2e/test_card_pages.py)."""

from __future__ import annotations

import time

import pytest

from shared import page_links

PAGES = [("GET", "/pay/{}"), ("POST", "/pay/{}/card"), ("GET", "/pay/{}/status"), ("GET", "/card/{}"),
         ("POST", "/card/{}/saved"), ("GET", "/card/{}/status"), ("GET", "/auth/{}"), ("GET", "/auth/{}/status")]


@pytest.mark.parametrize(("method", "path"), PAGES)
def test_a_link_that_is_not_ours_is_not_found_and_the_page_cannot_be_framed(client, method, path) -> None:
    for token in ("nonsense", "pay.cjE.9999999999.AAAA", "x" * 3000, "%00", "pay.cjE.1e9.x"):
        answer = client.open(path.format(token), method=method, json={"card_token": "tok_1"})
        assert answer.status_code == 404, (token, answer.get_data(as_text=True)[:200])
        assert answer.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]


@pytest.mark.parametrize(("method", "path"), PAGES)
def test_an_expired_link_is_gone_with_its_own_message(client, settings, method, path) -> None:
    kind = path.split("/")[1]
    token = page_links.token(settings, kind, "r1" if kind == "pay" else "seti_1:ann", now=time.time() - 3 * 86400)
    answer = client.open(path.format(token), method=method, json={"card_token": "tok_1"})
    assert answer.status_code == 410
    assert "expired" in answer.get_data(as_text=True)


@pytest.mark.parametrize("body", [None, {}, {"card_token": 1}, {"card_token": "pm_1"}, {"card_token": "tok_" + "x" * 300},
                                  [], "tok_1"])
def test_a_card_post_without_a_card_token_is_a_400_naming_it(client, settings, body) -> None:
    token = page_links.token(settings, page_links.CHECKOUT, "r1")
    answer = client.post(f"/pay/{token}/card", json=body)
    assert answer.status_code == 400
    assert answer.get_json()["error"]["field"] == "card_token"


def test_a_checkout_link_to_a_request_without_a_checkout_is_not_found(client, settings) -> None:
    token = page_links.token(settings, page_links.CHECKOUT, "no-such-request")
    assert client.get(f"/pay/{token}").status_code == 404
    assert client.get(f"/pay/{token}/status").status_code == 404
