"""DESIGN invariant 9: no configured secret appears in any log line or error body, whatever
the request (right or wrong token, forged or valid webhook, bad input)."""

from __future__ import annotations

import io
import json
import logging
from urllib.parse import urlsplit

import pytest

from shared import logs
from shared.stripe_gateway import sign_webhook

SECRETS = {
    "api_token": "tok_live_zX9qXz0mH2",
    "stripe_api_key": "sk_test_9f8e7d6c5b4a",
    "stripe_webhook_secret": "whsec_a1b2c3d4e5f6",
    "smtp_url": "smtp://mailer:pw-Qq8Ww7@127.0.0.1:1",
}


@pytest.fixture
def written() -> io.StringIO:
    """What the JSON log handler writes, at DEBUG, for every logger."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield out
    root.removeHandler(handler)
    root.setLevel(old_level)


def test_no_configured_secret_is_written_to_the_logs_or_answers(app_with, written) -> None:
    app = app_with(**SECRETS)
    client = app.test_client()
    good = {"Authorization": f"Bearer {SECRETS['api_token']}"}
    answers = [
        client.get("/api/admin/summary", headers={"Authorization": f"Bearer {SECRETS['api_token']}x"}),
        client.get("/api/admin/summary", headers={"Authorization": SECRETS["stripe_api_key"]}),
        client.put("/api/members/ann", headers=good, json={"email": "ann@example.org", "first_name": "Ann",
                                                           "last_name": "Lee"}),
        client.post("/api/payments", headers=good, json={"request_id": "r1", "member_id": "ann", "amount": 1.5,
                                                          "description": SECRETS["stripe_webhook_secret"]}),
        client.post("/stripe/webhook", data=b'{"id": "evt_1"}', headers={"Stripe-Signature": "t=1,v1=forged"}),
    ]
    body = json.dumps({"id": "evt_ok", "object": "event", "type": "customer.created", "data": {"object": {}}}).encode()
    answers.append(client.post("/stripe/webhook", data=body,
                               headers={"Stripe-Signature": sign_webhook(body, SECRETS["stripe_webhook_secret"])}))
    logging.getLogger("payments.test").warning("a careless line: key=%s", SECRETS["stripe_api_key"])

    assert [a.status_code for a in answers][:2] == [401, 401]
    text = written.getvalue() + "".join(a.get_data(as_text=True) for a in answers)
    assert "a careless line: key=[secret]" in text  # the redaction did work
    for name, secret in SECRETS.items():
        value = urlsplit(secret).password if name == "smtp_url" else secret
        assert value not in text, f"{name} leaked"


def test_no_client_token_is_written_to_the_logs_or_answers(app_with, sessions, written) -> None:
    from shared import access

    with sessions.begin() as session:
        token = access.add(session, "portal", ["payments"], request_prefix="portal-").token
        revoked = access.add(session, "gone", ["admin"]).token
        access.revoke(session, "gone")
    client = app_with().test_client()
    answers = [
        client.get("/api/admin/summary", headers={"Authorization": f"Bearer {token}"}),  # 403
        client.post("/api/payments", headers={"Authorization": f"Bearer {token}"}, json={"request_id": "x"}),
        client.get("/api/admin/summary", headers={"Authorization": f"Bearer {token}x"}),  # 401
        client.get("/api/admin/summary", headers={"Authorization": f"Bearer {revoked}"}),  # 401
    ]
    assert [a.status_code for a in answers] == [403, 403, 401, 401]
    text = written.getvalue() + "".join(a.get_data(as_text=True) for a in answers)
    assert token not in text and revoked not in text
