"""The service's message signature and the client's token header (shared.messages,
shared.client): pure rules, no broker."""

from __future__ import annotations

import pytest
from celery import Celery

from shared import client, messages
from shared.config import Settings
from shared.errors import ConfigError

KEY = messages.service_key("a-bootstrap-token-long-enough-for-the-check")
KWARGS = {"member_id": "ann", "key": "sweep:ann:1"}


def signed(task: str = "payments.auto_topup", args: tuple = (), kwargs: dict | None = None) -> dict[str, str]:
    assert KEY is not None
    return {messages.SIGNATURE_HEADER: messages.signature(KEY, task, args, KWARGS if kwargs is None else kwargs)}


def test_the_service_signature_verifies_for_exactly_its_task_and_arguments() -> None:
    assert messages.from_service(KEY, "payments.auto_topup", (), dict(KWARGS), signed())
    assert messages.from_service(KEY, "payments.auto_topup", [], {"key": "sweep:ann:1", "member_id": "ann"}, signed())


@pytest.mark.parametrize(("task", "args", "kwargs"), [
    ("payments.auto_topup", (), {**KWARGS, "member_id": "bob"}),
    ("payments.auto_topup", (), {**KWARGS, "extra": 1}),
    ("payments.auto_topup", (1,), KWARGS),
    ("payments.settle", (), KWARGS),
], ids=["another kwarg value", "an added kwarg", "added args", "another task"])
def test_a_copied_signature_does_not_verify_anything_else(task, args, kwargs) -> None:
    assert not messages.from_service(KEY, task, args, kwargs, signed())


@pytest.mark.parametrize("headers", [{}, {messages.SIGNATURE_HEADER: None}, {messages.SIGNATURE_HEADER: 12},
                                     {messages.SIGNATURE_HEADER: "0" * 64}], ids=["none", "null", "number", "zeros"])
def test_a_message_without_a_valid_signature_is_not_the_services(headers) -> None:
    assert not messages.from_service(KEY, "payments.auto_topup", (), KWARGS, headers)


def test_without_an_api_token_there_is_no_key_and_nothing_is_the_services() -> None:
    assert messages.service_key(None) is None and messages.service_key("") is None
    assert not messages.from_service(None, "payments.auto_topup", (), KWARGS, signed())


def test_the_key_is_derived_so_a_signature_is_not_a_hash_of_the_token_alone() -> None:
    token = "a-bootstrap-token-long-enough-for-the-check"
    assert KEY != token.encode() and messages.service_key(token + "x") != KEY


def test_a_service_app_signs_what_it_publishes_but_not_a_retry() -> None:
    app = Celery("t", broker="memory://", set_as_current=False, amqp="shared.messages:SigningAMQP")
    app.conf.payments_service_key = KEY
    first = app.amqp.as_task_v2("id-1", "payments.auto_topup", (), KWARGS)
    assert first.headers[messages.SIGNATURE_HEADER] == signed()[messages.SIGNATURE_HEADER]
    retry = app.amqp.as_task_v2("id-1", "payments.auto_topup", (), KWARGS, retries=1)
    assert messages.SIGNATURE_HEADER not in retry.headers  # it keeps the original message's headers


def test_a_client_app_signs_nothing() -> None:
    app = client.celery_for("memory://")
    assert messages.SIGNATURE_HEADER not in app.amqp.as_task_v2("id-2", "payments.pay", (), {}).headers


def test_sending_by_name_without_a_token_is_refused_before_anything_is_sent(monkeypatch) -> None:
    monkeypatch.delenv(client.TOKEN_ENV, raising=False)
    with pytest.raises(ConfigError) as caught:
        client.pay(Settings(broker_url="redis://127.0.0.1:1/0"), request_id="r1")
    assert caught.value.field == "PAYMENTS_CLIENT_TOKEN"
