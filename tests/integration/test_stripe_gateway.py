"""shared.stripe_gateway against a real localstripe over HTTP: customers, saved cards, off-session
charges and their failures, checkouts, refunds, finding a charge by attempt key, webhook
signatures, and the mapping of every Stripe exception to ours (with no secret in a message)."""

from __future__ import annotations

import inspect
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import stripe

from shared.config import Settings
from shared.errors import (
    AuthenticationRequired,
    BadSignature,
    CardDeclined,
    InvalidAmount,
    InvalidInput,
    PaymentsError,
    ServiceUnavailable,
    StripeRequestFailed,
    StripeUnavailable,
)
from shared.stripe_gateway import PaymentIntentInfo, StripeGateway, _stripe_errors, sign_webhook, verify_webhook
from tests.e2e.processes import free_port
from tests.stripe_fixture import STRIPE_TEST_KEY, VISA, new_card, register_webhook

WEBHOOK_SECRET = "whsec_test_not_a_secret"

DECLINED_AT_CHARGE = "4000000000000341"
DECLINED_AT_ATTACH = "4000000000000002"
NEEDS_3DS = "4000002760003184"


@pytest.fixture
def gateway(stripe_api: str) -> StripeGateway:
    return StripeGateway(Settings(stripe_api_key=STRIPE_TEST_KEY, stripe_api_base=stripe_api))


_members = iter(range(1, 1_000_000))


def new_customer(gateway: StripeGateway) -> str:
    member_id = f"m{next(_members)}"
    email = f"{member_id}@example.org"
    return gateway.ensure_customer(member_id=member_id, email=email, name="Ann Lee", customer_id=None)


def customer_with_card(gateway: StripeGateway, browser: stripe.StripeClient, number: str = VISA) -> tuple[str, str]:
    customer_id = new_customer(gateway)
    return customer_id, gateway.card_saved(customer_id=customer_id, payment_method_id=new_card(browser, number))


def charge(gateway: StripeGateway, customer_id: str, cents: int = 50_00, key: str | None = None) -> PaymentIntentInfo:
    key = key or f"topup-{next(_members)}"
    return gateway.charge_saved_card(customer_id=customer_id, amount_cents=cents, idempotency_key=key, metadata={})


# Customers and saved cards --------------------------------------------------------------------


def test_a_customer_is_created_once_and_then_reused(gateway: StripeGateway, browser: stripe.StripeClient) -> None:
    customer_id = gateway.ensure_customer(member_id="ann", email="ann@example.org", name="Ann Lee", customer_id=None)

    again = gateway.ensure_customer(member_id="ann", email="ann@example.org", name="Ann Lee", customer_id=customer_id)

    assert customer_id.startswith("cus_") and again == customer_id
    customer = browser.v1.customers.retrieve(customer_id)
    assert (customer.email, customer.name) == ("ann@example.org", "Ann Lee")
    assert customer.to_dict()["metadata"] == {"member_id": "ann"}


def test_a_setup_intent_is_made_for_off_session_use(gateway: StripeGateway, browser: stripe.StripeClient) -> None:
    customer_id = new_customer(gateway)

    info = gateway.create_setup_intent(customer_id=customer_id, member_id="ann")

    assert info.id.startswith("seti_") and info.client_secret.startswith(f"{info.id}_secret_")
    assert info.client_secret not in repr(info)
    intent = browser.v1.setup_intents.retrieve(info.id)
    assert (intent.customer, intent.usage) == (customer_id, "off_session")
    assert intent.to_dict()["metadata"] == {"member_id": "ann"}


def test_the_card_of_a_succeeded_setup_intent_becomes_the_default(
    gateway: StripeGateway, browser: stripe.StripeClient
) -> None:
    customer_id = new_customer(gateway)
    assert gateway.default_payment_method(customer_id) is None
    setup = gateway.create_setup_intent(customer_id=customer_id, member_id="ann")
    card = new_card(browser, VISA)
    browser.v1.setup_intents.confirm(setup.id, {"payment_method": card})

    saved = gateway.card_saved(customer_id=customer_id, setup_intent_id=setup.id)

    assert saved == card
    assert gateway.default_payment_method(customer_id) == card
    assert browser.v1.payment_methods.retrieve(card).customer == customer_id  # attached


def test_a_newer_card_replaces_the_default(gateway: StripeGateway, browser: stripe.StripeClient) -> None:
    customer_id, first = customer_with_card(gateway, browser)
    second = gateway.card_saved(customer_id=customer_id, payment_method_id=new_card(browser, VISA))

    assert gateway.default_payment_method(customer_id) == second != first


def test_a_setup_intent_still_needing_authentication_saves_no_card(
    gateway: StripeGateway, browser: stripe.StripeClient
) -> None:
    customer_id = new_customer(gateway)
    setup = gateway.create_setup_intent(customer_id=customer_id, member_id="ann")
    browser.v1.setup_intents.confirm(setup.id, {"payment_method": new_card(browser, NEEDS_3DS)})

    with pytest.raises(AuthenticationRequired):
        gateway.card_saved(customer_id=customer_id, setup_intent_id=setup.id)
    assert gateway.default_payment_method(customer_id) is None


def test_a_card_declined_when_attached_is_not_saved(gateway: StripeGateway, browser: stripe.StripeClient) -> None:
    customer_id = new_customer(gateway)

    with pytest.raises(CardDeclined):
        gateway.card_saved(customer_id=customer_id, payment_method_id=new_card(browser, DECLINED_AT_ATTACH))
    assert gateway.default_payment_method(customer_id) is None


def test_a_card_of_another_customer_is_refused(gateway: StripeGateway, browser: stripe.StripeClient) -> None:
    _, card = customer_with_card(gateway, browser)

    with pytest.raises(InvalidInput, match="belongs to customer"):
        gateway.card_saved(customer_id=new_customer(gateway), payment_method_id=card)


def test_card_saved_needs_exactly_one_source(gateway: StripeGateway) -> None:
    with pytest.raises(InvalidInput):
        gateway.card_saved(customer_id="cus_x")
    with pytest.raises(InvalidInput):
        gateway.card_saved(customer_id="cus_x", setup_intent_id="seti_x", payment_method_id="pm_x")


def test_detaching_forgets_every_card_and_the_default(gateway: StripeGateway, browser: stripe.StripeClient) -> None:
    customer_id, first = customer_with_card(gateway, browser)
    second = gateway.card_saved(customer_id=customer_id, payment_method_id=new_card(browser, VISA))

    detached = gateway.detach_cards(customer_id)

    assert sorted(detached) == sorted([first, second])
    assert gateway.default_payment_method(customer_id) is None
    assert browser.v1.payment_methods.list({"customer": customer_id, "type": "card"}).data == []
    with pytest.raises(CardDeclined, match="no saved card"):
        charge(gateway, customer_id)


# Off-session charges (SPEC 4.3) ---------------------------------------------------------------


def test_a_charge_and_a_read_name_the_card_that_paid(gateway: StripeGateway, browser: stripe.StripeClient) -> None:
    """Issue 13 item 5: read with the PaymentMethod expanded, no extra call (new_card: 12/2034)."""
    customer_id, _ = customer_with_card(gateway, browser)

    charged = charge(gateway, customer_id)
    read = gateway.retrieve_payment_intent(charged.id)

    for info in (charged, read):
        assert info.card is not None
        assert (info.card.brand, info.card.last4, info.card.exp_month, info.card.exp_year) == ("visa", "4242", 12, 2034)


def test_an_off_session_charge_succeeds_and_reads_back_from_stripe(
    gateway: StripeGateway, browser: stripe.StripeClient
) -> None:
    customer_id, card = customer_with_card(gateway, browser)

    info = gateway.charge_saved_card(
        customer_id=customer_id, amount_cents=123_45, idempotency_key="topup-7", metadata={"member_id": "ann"}
    )

    assert info.status == "succeeded" and info.amount_cents == 123_45
    read = gateway.retrieve_payment_intent(info.id)
    assert (read.status, read.amount_cents, read.amount_received_cents) == ("succeeded", 123_45, 123_45)
    assert (read.customer_id, read.payment_method_id) == (customer_id, card)
    assert read.metadata == {"attempt_key": "topup-7", "member_id": "ann"}
    assert read.latest_charge_id is not None and read.latest_charge_id.startswith("ch_")
    intent = browser.v1.payment_intents.retrieve(info.id)
    assert (intent.amount, intent.currency) == (123_45, "aud")


def test_a_card_declined_at_charge_time_raises_card_declined(
    gateway: StripeGateway, browser: stripe.StripeClient
) -> None:
    customer_id, _ = customer_with_card(gateway, browser, DECLINED_AT_CHARGE)

    with pytest.raises(CardDeclined, match="card_declined"):
        charge(gateway, customer_id, key="topup-declined")

    # The failed PaymentIntent still carries the attempt key, for the reconciler.
    found = gateway.find_payment_intent(customer_id=customer_id, attempt_key="topup-declined")
    assert found is not None and found.status == "requires_payment_method"


@pytest.mark.parametrize("number", ["4000002760003184", "4000002500003155", "4000000000003220"])
def test_a_3ds_card_off_session_raises_authentication_required(
    gateway: StripeGateway, browser: stripe.StripeClient, number: str
) -> None:
    customer_id, _ = customer_with_card(gateway, browser, number)

    with pytest.raises(AuthenticationRequired) as raised:
        charge(gateway, customer_id)

    assert raised.value.payment_intent_id is not None
    assert gateway.retrieve_payment_intent(raised.value.payment_intent_id).status == "requires_action"


def test_stripes_own_authentication_required_error_is_mapped_with_its_intent() -> None:
    # Real Stripe raises instead of returning requires_action (localstripe cannot produce this).
    intent = {"id": "pi_123", "object": "payment_intent", "status": "requires_action"}
    message = "Authentication required."
    error_body = {"type": "card_error", "code": "authentication_required", "message": message, "payment_intent": intent}
    body = {"error": error_body}
    error = stripe.CardError(message, None, "authentication_required", json_body=body, http_status=402)

    with pytest.raises(AuthenticationRequired) as raised, _stripe_errors("charge"):
        raise error

    assert raised.value.payment_intent_id == "pi_123" and raised.value.__cause__ is error


def test_a_charge_without_a_saved_card_is_declined(gateway: StripeGateway) -> None:
    with pytest.raises(CardDeclined, match="no saved card"):
        charge(gateway, new_customer(gateway))


@pytest.mark.parametrize("cents", [0, -100, 12.5, True])
def test_a_charge_of_a_bad_amount_is_refused_before_stripe(gateway: StripeGateway, cents: object) -> None:
    with pytest.raises(InvalidAmount):
        gateway.charge_saved_card(
            customer_id="cus_x", amount_cents=cents, idempotency_key="k", metadata={}  # type: ignore[arg-type]
        )


def test_localstripe_ignores_idempotency_keys(gateway: StripeGateway, browser: stripe.StripeClient) -> None:
    # Documents the stand-in (DESIGN): real Stripe returns the first PaymentIntent again; here
    # only our attempt rows stop a double charge.
    customer_id, _ = customer_with_card(gateway, browser)

    first, second = charge(gateway, customer_id, key="same-key"), charge(gateway, customer_id, key="same-key")

    assert first.id != second.id


# Finding a charge whose id was never recorded -------------------------------------------------


def test_find_payment_intent_finds_a_charge_by_its_attempt_key(
    gateway: StripeGateway, browser: stripe.StripeClient
) -> None:
    customer_id, _ = customer_with_card(gateway, browser)
    wanted = charge(gateway, customer_id, 60_00, key="attempt-a")
    charge(gateway, customer_id, 70_00, key="attempt-b")

    found = gateway.find_payment_intent(customer_id=customer_id, attempt_key="attempt-a")

    assert found == gateway.retrieve_payment_intent(wanted.id)
    assert found is not None and (found.amount_cents, found.status) == (60_00, "succeeded")
    assert gateway.find_payment_intent(customer_id=None, attempt_key="attempt-a") == found
    assert gateway.find_payment_intent(customer_id=customer_id, attempt_key="attempt-c") is None
    assert gateway.find_payment_intent(customer_id=new_customer(gateway), attempt_key="attempt-a") is None


def test_find_payment_intent_finds_a_checkout_without_a_customer(gateway: StripeGateway) -> None:
    checkout = gateway.create_checkout(amount_cents=25_00, idempotency_key="checkout-9", metadata={"request_id": "r9"})

    found = gateway.find_payment_intent(customer_id=None, attempt_key="checkout-9")

    assert found is not None and found.id == checkout.payment_intent_id
    assert found.metadata == {"attempt_key": "checkout-9", "request_id": "r9"}


# Checkouts and refunds ------------------------------------------------------------------------


def test_a_checkout_intent_is_created_for_the_browser(gateway: StripeGateway, browser: stripe.StripeClient) -> None:
    customer_id = new_customer(gateway)

    info = gateway.create_checkout(
        amount_cents=12_34, idempotency_key="checkout-1", metadata={"request_id": "r1"}, customer_id=customer_id
    )

    assert info.payment_intent_id.startswith("pi_") and info.amount_cents == 12_34
    assert info.client_secret.startswith(f"{info.payment_intent_id}_secret_")
    assert info.client_secret not in repr(info)
    read = gateway.retrieve_payment_intent(info.payment_intent_id)
    assert (read.status, read.amount_cents, read.amount_received_cents) == ("requires_payment_method", 12_34, 0)
    assert (read.customer_id, read.latest_charge_id) == (customer_id, None)
    assert browser.v1.payment_intents.retrieve(info.payment_intent_id).currency == "aud"


def test_a_checkout_declined_then_paid_by_another_card_reads_back_its_decline_currency_and_amount_received(
    gateway: StripeGateway, browser: stripe.StripeClient
) -> None:
    info = gateway.create_checkout(amount_cents=20_00, idempotency_key="checkout-retry", metadata={})
    browser.v1.payment_intents.update(info.payment_intent_id, {"payment_method": new_card(browser, DECLINED_AT_CHARGE)})
    with pytest.raises(stripe.CardError):
        browser.v1.payment_intents.confirm(info.payment_intent_id)

    declined = gateway.retrieve_payment_intent(info.payment_intent_id)
    assert (declined.status, declined.currency, declined.amount_received_cents) == ("requires_payment_method", "aud", 0)
    assert declined.last_payment_error == "Your card was declined."

    # Stripe lets the member retry the same PaymentIntent with another card (localstripe_server).
    browser.v1.payment_intents.update(info.payment_intent_id, {"payment_method": new_card(browser, VISA)})
    assert browser.v1.payment_intents.confirm(info.payment_intent_id).status == "succeeded"
    paid = gateway.retrieve_payment_intent(info.payment_intent_id)
    assert (paid.status, paid.currency, paid.amount_received_cents, paid.last_payment_error) == (
        "succeeded", "aud", 20_00, None)


def test_a_refund_returns_part_of_a_charge_to_the_card(gateway: StripeGateway, browser: stripe.StripeClient) -> None:
    customer_id, _ = customer_with_card(gateway, browser)
    paid = charge(gateway, customer_id, 50_00)

    refund = gateway.refund(
        payment_intent_id=paid.id, amount_cents=10_00, idempotency_key="refund-1", metadata={"member_id": "ann"}
    )

    assert refund.id.startswith("re_") and (refund.amount_cents, refund.status) == (10_00, "succeeded")
    stored = browser.v1.refunds.retrieve(refund.id)
    assert stored.payment_intent == paid.id
    assert stored.to_dict()["metadata"] == {"attempt_key": "refund-1", "member_id": "ann"}


def test_refunding_an_unknown_payment_is_a_request_failure(gateway: StripeGateway) -> None:
    with pytest.raises(StripeRequestFailed, match="pi_missing"):
        gateway.refund(payment_intent_id="pi_missing", amount_cents=1_00, idempotency_key="refund-2", metadata={})


# Webhook signatures ---------------------------------------------------------------------------

PAYLOAD = b'{"id": "evt_1", "type": "setup_intent.succeeded"}'


def test_a_correctly_signed_payload_is_accepted() -> None:
    verify_webhook(PAYLOAD, sign_webhook(PAYLOAD, WEBHOOK_SECRET), secret=WEBHOOK_SECRET)
    StripeGateway.verify_webhook(PAYLOAD, sign_webhook(PAYLOAD, WEBHOOK_SECRET), secret=WEBHOOK_SECRET)


@pytest.mark.parametrize(
    ("payload", "header"),
    [
        pytest.param(PAYLOAD, sign_webhook(PAYLOAD, "whsec_someone_else"), id="forged"),
        pytest.param(PAYLOAD + b" ", sign_webhook(PAYLOAD, WEBHOOK_SECRET), id="tampered"),
        pytest.param(PAYLOAD, sign_webhook(PAYLOAD, WEBHOOK_SECRET, timestamp=int(time.time()) - 301), id="stale"),
        pytest.param(PAYLOAD, None, id="missing"),
        pytest.param(PAYLOAD, "", id="empty"),
        pytest.param(PAYLOAD, "t=soon,v1=abc", id="garbled"),
        pytest.param(PAYLOAD, f"t={int(time.time())}", id="no-v1"),
        pytest.param(b"\xff\xfe", "t=1,v1=abc", id="not-utf8"),
    ],
)
def test_a_bad_signature_is_refused(payload: bytes, header: str | None) -> None:
    with pytest.raises(BadSignature) as raised:
        verify_webhook(payload, header, secret=WEBHOOK_SECRET)
    assert raised.value.status == 400 and WEBHOOK_SECRET not in raised.value.message


def test_a_signature_just_inside_the_tolerance_is_accepted() -> None:
    header = sign_webhook(PAYLOAD, WEBHOOK_SECRET, timestamp=int(time.time()) - 290)
    verify_webhook(PAYLOAD, header, secret=WEBHOOK_SECRET)


def test_webhooks_without_a_configured_secret_are_unavailable() -> None:
    with pytest.raises(ServiceUnavailable):
        verify_webhook(PAYLOAD, sign_webhook(PAYLOAD, WEBHOOK_SECRET), secret=None)


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[bytes, str | None]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((body, self.headers.get("Stripe-Signature")))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's name)
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[bytes, str | None]]]]:
    received: list[tuple[bytes, str | None]] = []
    handler = type("Receiver", (_Receiver,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/stripe/webhook", received
    server.shutdown()
    server.server_close()
    thread.join()


def test_localstripe_webhooks_pass_verify_webhook(
    gateway: StripeGateway,
    browser: stripe.StripeClient,
    stripe_api: str,  # noqa: F811
    receiver: tuple[str, list[tuple[bytes, str | None]]],
) -> None:
    url, received = receiver
    events = ["payment_intent.succeeded"]
    register_webhook(stripe_api, f"test-{free_port()}", url=url, secret=WEBHOOK_SECRET, events=events)
    customer_id, _ = customer_with_card(gateway, browser)
    paid = charge(gateway, customer_id, 30_00, key="webhook-1")

    def delivery() -> tuple[bytes, str | None] | None:
        return next((r for r in list(received) if json.loads(r[0])["data"]["object"]["id"] == paid.id), None)

    deadline = time.monotonic() + 10
    while (found := delivery()) is None:
        assert time.monotonic() < deadline, "no payment_intent.succeeded from localstripe within 10 s"
        time.sleep(0.05)

    body, header = found
    verify_webhook(body, header, secret=WEBHOOK_SECRET)
    event = json.loads(body)
    assert event["type"] == "payment_intent.succeeded" and event["id"].startswith("evt_")
    assert event["data"]["object"]["metadata"] == {"attempt_key": "webhook-1"}
    with pytest.raises(BadSignature):
        verify_webhook(body, header, secret="whsec_wrong")


# Failures and the error mapping ---------------------------------------------------------------


def test_an_unreachable_stripe_is_unavailable() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    gateway = StripeGateway(Settings(stripe_api_key=STRIPE_TEST_KEY, stripe_api_base=closed))

    with pytest.raises(StripeUnavailable) as raised:
        gateway.ensure_customer(member_id="ann", email="ann@example.org", name="Ann Lee", customer_id=None)

    assert raised.value.status == 503 and isinstance(raised.value.__cause__, stripe.APIConnectionError)
    assert STRIPE_TEST_KEY not in raised.value.message


def test_a_refused_api_key_fails_without_showing_the_key(stripe_api: str) -> None:  # noqa: F811
    key = "not_a_stripe_key_0123456789"  # localstripe refuses anything not sk_...
    gateway = StripeGateway(Settings(stripe_api_key=key, stripe_api_base=stripe_api))

    with pytest.raises(StripeRequestFailed) as raised:
        gateway.default_payment_method("cus_x")

    assert raised.value.status == 502 and isinstance(raised.value.__cause__, stripe.AuthenticationError)
    for shown in (raised.value.message, str(raised.value), repr(raised.value), json.dumps(raised.value.as_dict())):
        assert key not in shown


def test_without_an_api_key_stripe_is_unavailable() -> None:
    gateway = StripeGateway(Settings())

    with pytest.raises(ServiceUnavailable, match="PAYMENTS_STRIPE_API_KEY"):
        gateway.create_setup_intent(customer_id="cus_x", member_id="ann")


def _stripe_error_classes() -> list[type[stripe.StripeError]]:
    found, todo = [], [stripe.StripeError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(set(found), key=lambda cls: cls.__name__)


EXPECTED = {
    stripe.APIConnectionError: StripeUnavailable,
    stripe.APIError: StripeUnavailable,
    stripe.RateLimitError: StripeUnavailable,
    stripe.CardError: CardDeclined,
    stripe.SignatureVerificationError: BadSignature,
    stripe.AuthenticationError: StripeRequestFailed,
    stripe.PermissionError: StripeRequestFailed,
    stripe.InvalidRequestError: StripeRequestFailed,
    stripe.IdempotencyError: StripeRequestFailed,
}
LEAKY = f"boom with {STRIPE_TEST_KEY}, sk_live_abc123, sk_test_****9876, whsec_xyz and pi_1_secret_abc"


def _instance(cls: type[stripe.StripeError]) -> stripe.StripeError:
    required = [
        p for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
        if p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    return cls(LEAKY, *[None] * (len(required) - 1))


def test_the_sdk_has_the_error_classes_we_expect() -> None:
    assert set(EXPECTED) <= set(_stripe_error_classes()) and len(_stripe_error_classes()) > 20


@pytest.mark.parametrize("cls", _stripe_error_classes(), ids=lambda cls: cls.__name__)
def test_every_stripe_error_is_mapped_to_ours_without_secrets(cls: type[stripe.StripeError]) -> None:
    error = _instance(cls)

    with pytest.raises(PaymentsError) as raised, _stripe_errors("charge", secrets=[STRIPE_TEST_KEY]):
        raise error

    expected = next((ours for theirs, ours in EXPECTED.items() if issubclass(cls, theirs)), StripeRequestFailed)
    assert type(raised.value) is expected and raised.value.__cause__ is error
    for secret in (STRIPE_TEST_KEY, "sk_live_abc123", "9876", "whsec_xyz", "pi_1_secret_abc"):
        assert secret not in raised.value.message


def test_a_key_still_in_use_at_stripe_is_tried_again_later_not_refused() -> None:
    """409: Stripe still runs a request sent with this key (by a worker that died); a retry gets
    its answer. Any other idempotency error (the key reused for other parameters) is final."""
    in_use = stripe.IdempotencyError("There is currently another in-progress request using this key",
                                     http_status=409, code="idempotency_key_in_use")
    with pytest.raises(StripeUnavailable), _stripe_errors("charge"):
        raise in_use
    reused = stripe.IdempotencyError("Keys for idempotent requests can only be used with the same parameters",
                                     http_status=400, code="idempotency_error")
    with pytest.raises(StripeRequestFailed), _stripe_errors("charge"):
        raise reused
