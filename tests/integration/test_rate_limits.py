"""Per-client rate limits on `/api/*` (issue 12 item 5): flask-limiter counting in Redis.

Apps built here share the real Redis the broker uses, as the webhook's processes do. Each test
names its clients afresh, so counts from another test or run never meet."""

from __future__ import annotations

import uuid

from flask import Flask
from sqlalchemy.orm import Session, sessionmaker

from shared import access
from tests.conftest import API_TOKEN, REDIS_URL
from tests.e2e.processes import free_port

ADMIN = {"Authorization": f"Bearer {API_TOKEN}"}


def new_client(sessions: sessionmaker[Session], scopes: list[str]) -> dict[str, str]:
    with sessions.begin() as session:
        issued = access.add(session, f"limited-{uuid.uuid4().hex[:10]}", scopes)
    return {"Authorization": f"Bearer {issued.token}"}


def limited(app_with, rate: str = "3/minute", storage: str = REDIS_URL) -> Flask:
    return app_with(rate_limit=rate, rate_limit_storage_url=storage, stripe_webhook_secret="whsec_limits")


def answers(app: Flask, headers: dict[str, str], times: int, path: str = "/api/members/ann/balance") -> list[int]:
    client = app.test_client()
    return [client.get(path, headers=headers).status_code for _ in range(times)]


def test_a_client_over_its_limit_gets_429_with_retry_after_in_the_error_json(app_with, sessions) -> None:
    app = limited(app_with)
    portal = new_client(sessions, ["payments"])

    assert answers(app, portal, 3) == [404, 404, 404]  # counted whatever the answer (no such member)
    refused = app.test_client().get("/api/members/ann/balance", headers=portal)

    assert refused.status_code == 429
    assert refused.json["error"]["code"] == "too_many_requests"
    assert "3 per 1 minute" in refused.json["error"]["message"]
    assert 0 < int(refused.headers["Retry-After"]) <= 60


def test_the_limit_is_per_client(app_with, sessions) -> None:
    app = limited(app_with)
    first, second = new_client(sessions, ["payments"]), new_client(sessions, ["payments"])

    assert answers(app, first, 4)[-1] == 429
    assert answers(app, second, 3) == [404, 404, 404]


def test_an_unknown_token_is_401_never_429_and_uses_no_client_s_allowance(app_with, sessions) -> None:
    app = limited(app_with)
    portal = new_client(sessions, ["payments"])

    assert answers(app, {"Authorization": "Bearer not-a-token"}, 5) == [401] * 5
    assert answers(app, portal, 3) == [404, 404, 404]


def test_two_processes_share_one_count_in_redis(app_with, sessions) -> None:
    one, two = limited(app_with), limited(app_with)
    portal = new_client(sessions, ["payments"])

    assert answers(one, portal, 2) == [404, 404]
    assert answers(two, portal, 2) == [404, 429]


def test_the_stripe_webhook_and_health_checks_are_not_limited(app_with, sessions) -> None:
    app = limited(app_with, "1/minute")
    client = app.test_client()

    assert [client.get("/healthz").status_code for _ in range(3)] == [200] * 3
    assert [client.post("/stripe/webhook", data=b"{}").status_code for _ in range(3)] == [400] * 3  # unsigned


def test_with_redis_unreachable_the_api_still_answers_and_each_process_counts_alone(app_with, sessions) -> None:
    app = limited(app_with, storage=f"redis://127.0.0.1:{free_port()}/0")
    portal = new_client(sessions, ["payments"])

    assert answers(app, portal, 4) == [404, 404, 404, 429]


def test_off_means_no_limit(app_with, sessions) -> None:
    limited_answer = limited(app_with).test_client().get("/api/members/ann/balance", headers=ADMIN)
    assert limited_answer.headers["X-RateLimit-Limit"] == "3"  # what a limited answer carries

    app = app_with(rate_limit=None)
    unlimited = app.test_client().get("/api/members/ann/balance", headers=ADMIN)
    assert "X-RateLimit-Limit" not in unlimited.headers
    assert answers(app, ADMIN, 30)[-1] == 404
