"""The Stripe gateway: the only module that imports `stripe` (DESIGN "Stripe stand-in",
invariants 5 and 9; SPEC 3 checkout, 4 auto top-up, 5 manual top-up and card refunds).

`StripeGateway` makes the few calls the service needs and returns small frozen dataclasses of
plain values, never Stripe objects. Every money-moving call carries our idempotency key as
`Idempotency-Key` and our attempt key in `metadata["attempt_key"]`, so a charge whose id was
never recorded (a crash between charge and booking) can be found again. One context manager,
`_stripe_errors`, turns every Stripe exception into ours: declined cards into `CardDeclined`,
3-D Secure into `AuthenticationRequired`, outages into the transient `StripeUnavailable`, the
rest into `StripeRequestFailed`; messages never carry the API key or a client secret.

The same code runs against Stripe and against localstripe, which differs in a few places
handled here: it returns `requires_action` where Stripe raises `authentication_required`
off-session, embeds `latest_charge` as an object, has no `amount_received` (taken here as the
amount of a succeeded intent; `PaymentIntentInfo` carries it and the currency, which
`shared.charges` checks against the attempt before booking), does not attach a SetupIntent's
card to the customer, and has neither search nor listing PaymentIntents by customer. It
ignores `Idempotency-Key` too: our attempt rows make up for that, and so does looking a
charge or a refund up by our key before making it again.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import stripe

from shared.config import Settings
from shared.errors import (
    AuthenticationRequired,
    BadSignature,
    CardDeclined,
    InvalidAmount,
    InvalidInput,
    ServiceUnavailable,
    StripeRequestFailed,
    StripeUnavailable,
)
from shared.money import format_cents

CURRENCY = "aud"
# requests' (connect, read) timeouts in seconds; the SDK's default read timeout is 80 s.
TIMEOUT = (5.0, 30.0)
# The balance is only shown (the admin summary), so it is not waited for: a short timeout.
BALANCE_TIMEOUT = (2.0, 2.0)
WEBHOOK_TOLERANCE = 300

# Secret keys, webhook secrets and client secrets, whole or masked ("sk_test_****1234").
_SECRET_TEXT = re.compile(r"\b(?:sk|rk)_(?:test|live)_\S*|\bwhsec_\S*|\b\w+_secret_\w+")


@dataclass(frozen=True)
class SetupIntentInfo:
    id: str
    client_secret: str = field(repr=False)
    status: str = "requires_payment_method"
    customer_id: str | None = None


@dataclass(frozen=True)
class CardDetails:
    """The card that paid, as the member knows it (ORIGINAL 2.6: "Payment from card **** 4242 Exp
    12/28"), and Stripe's receipt. Any part Stripe did not say is None."""

    brand: str | None = None
    last4: str | None = None
    exp_month: int | None = None
    exp_year: int | None = None
    receipt_url: str | None = None


@dataclass(frozen=True)
class PaymentIntentInfo:
    id: str
    status: str
    amount_cents: int
    amount_received_cents: int
    customer_id: str | None
    payment_method_id: str | None
    metadata: dict[str, str]
    latest_charge_id: str | None
    # Lower case, as Stripe writes it; card money is booked only in CURRENCY (SPEC 5).
    currency: str = CURRENCY
    # Why the last card tried was refused ("Your card was declined."), if it was.
    last_payment_error: str | None = None
    # The card that paid, when the PaymentIntent was read with EXPAND.
    card: CardDetails | None = None


@dataclass(frozen=True)
class CheckoutInfo:
    payment_intent_id: str
    client_secret: str = field(repr=False)
    amount_cents: int = 0


# What a PaymentIntent is read with, so that the card that paid comes with it (no extra call).
EXPAND = ["payment_method", "latest_charge"]

# Refund statuses that mean the card gets (or got) the money; `failed` and `canceled` mean not.
REFUND_MADE = ("succeeded", "pending", "requires_action")


@dataclass(frozen=True)
class RefundInfo:
    id: str
    amount_cents: int
    status: str

    @property
    def made(self) -> bool:
        return self.status in REFUND_MADE


class StripeGateway:
    """Stripe calls for one process. Without an API key every call raises `ServiceUnavailable`,
    so the service can start (and verify webhooks) before Stripe is configured."""

    def __init__(self, settings: Settings) -> None:
        self._secrets = tuple(s for s in (settings.stripe_api_key, *settings.webhook_secrets) if s)
        self._client: stripe.StripeClient | None = None
        self._quick_client: stripe.StripeClient | None = None
        if settings.stripe_api_key:
            self._client = _stripe_client(settings.stripe_api_key, settings.stripe_api_base, TIMEOUT)
            self._quick_client = _stripe_client(settings.stripe_api_key, settings.stripe_api_base, BALANCE_TIMEOUT)

    # Customers and saved cards (SPEC 4.1) -------------------------------------------------

    def ensure_customer(self, *, member_id: str, email: str, name: str, customer_id: str | None) -> str:
        """Return the member's Stripe customer: `customer_id` if known, else a new one."""
        if customer_id:
            return customer_id
        with self._errors(f"member {member_id}: create Stripe customer"):
            customer = self._v1().customers.create(
                {"email": email, "name": name, "metadata": {"member_id": member_id}}
            )
        return str(customer.id)

    def create_setup_intent(self, *, customer_id: str, member_id: str) -> SetupIntentInfo:
        """A SetupIntent for the browser to save a card for later off-session charges."""
        with self._errors(f"member {member_id}: create SetupIntent for customer {customer_id}"):
            intent = self._v1().setup_intents.create(
                {
                    "customer": customer_id,
                    "usage": "off_session",
                    "payment_method_types": ["card"],
                    "metadata": {"member_id": member_id},
                }
            )
        return SetupIntentInfo(id=intent.id, client_secret=intent.client_secret or "")

    def retrieve_setup_intent(self, setup_intent_id: str) -> SetupIntentInfo:
        with self._errors(f"SetupIntent {setup_intent_id}: retrieve"):
            intent = _as_dict(self._v1().setup_intents.retrieve(setup_intent_id))
        return SetupIntentInfo(id=str(intent["id"]), client_secret=str(intent.get("client_secret") or ""),
                               status=str(intent.get("status")), customer_id=_id(intent.get("customer")))

    def card_saved(
        self, *, customer_id: str, setup_intent_id: str | None = None, payment_method_id: str | None = None
    ) -> str:
        """Make the card of a succeeded SetupIntent (or a given PaymentMethod) the customer's
        default, attaching it first if it is not yet; returns the PaymentMethod id."""
        if (setup_intent_id is None) == (payment_method_id is None):
            raise InvalidInput("card_saved needs exactly one of setup_intent_id and payment_method_id")
        v1 = self._v1()
        with self._errors(f"customer {customer_id}: save card"):
            if setup_intent_id is not None:
                intent = _as_dict(v1.setup_intents.retrieve(setup_intent_id))
                owner = _id(intent.get("customer"))
                if owner is not None and owner != customer_id:
                    raise InvalidInput(f"SetupIntent {setup_intent_id} belongs to customer {owner}, not {customer_id}")
                status = intent.get("status")
                if status == "requires_action":
                    raise AuthenticationRequired(f"SetupIntent {setup_intent_id} still needs authentication")
                payment_method_id = _id(intent.get("payment_method"))
                if status != "succeeded" or payment_method_id is None:
                    raise CardDeclined(f"SetupIntent {setup_intent_id} is {status}: no card was saved")
            assert payment_method_id is not None
            method = _as_dict(v1.payment_methods.retrieve(payment_method_id))
            owner = _id(method.get("customer"))
            if owner is None:
                v1.payment_methods.attach(payment_method_id, {"customer": customer_id})
            elif owner != customer_id:
                raise InvalidInput(f"card {payment_method_id} belongs to customer {owner}, not {customer_id}")
            v1.customers.update(customer_id, {"invoice_settings": {"default_payment_method": payment_method_id}})
        return payment_method_id

    def default_payment_method(self, customer_id: str) -> str | None:
        """The customer's default card, or None (also for a customer deleted at Stripe)."""
        with self._errors(f"customer {customer_id}: read default card"):
            customer = _as_dict(self._v1().customers.retrieve(customer_id))
        settings = customer.get("invoice_settings") or {}
        return _id(settings.get("default_payment_method"))

    def detach_cards(self, customer_id: str) -> tuple[str, ...]:
        """Forget every card of the customer (auto top-up cancelled); returns their ids."""
        v1 = self._v1()
        with self._errors(f"customer {customer_id}: detach cards"):
            v1.customers.update(customer_id, {"invoice_settings": {"default_payment_method": ""}})
            cards = v1.payment_methods.list({"customer": customer_id, "type": "card", "limit": 100})
            methods = [card.id for card in cards.auto_paging_iter()]
            for method_id in methods:
                v1.payment_methods.detach(method_id)
        return tuple(methods)

    # Money (SPEC 3, 4.3, 5) -----------------------------------------------------------------

    def charge_saved_card(
        self,
        *,
        customer_id: str,
        amount_cents: int,
        idempotency_key: str,
        metadata: Mapping[str, str],
        payment_method_id: str | None = None,
    ) -> PaymentIntentInfo:
        """Charge the customer's default card off-session (or `payment_method_id`).

        Returns the PaymentIntent when it succeeded (or, rarely for cards, is `processing`: book
        only `succeeded`). Raises `CardDeclined`, `AuthenticationRequired` (either shape: a
        `CardError` with `authentication_required`, or localstripe's `requires_action`),
        `StripeUnavailable` (retry later with the same key) or `StripeRequestFailed`."""
        _check_amount(amount_cents)
        action = f"customer {customer_id}: charge {format_cents(amount_cents)} {CURRENCY.upper()} ({idempotency_key})"
        method = payment_method_id or self.default_payment_method(customer_id)
        if method is None:
            raise CardDeclined(f"{action}: the customer has no saved card")
        with self._errors(action):
            intent = self._v1().payment_intents.create(
                {
                    "amount": amount_cents,
                    "currency": CURRENCY,
                    "customer": customer_id,
                    "payment_method": method,
                    "payment_method_types": ["card"],
                    "off_session": True,
                    "confirm": True,
                    "metadata": _money_metadata(metadata, idempotency_key),
                    "expand": EXPAND,
                },
                {"idempotency_key": idempotency_key},
            )
        info = _intent_info(intent)
        if info.status == "requires_action":
            raise AuthenticationRequired(f"{action}: the bank asks for authentication", payment_intent_id=info.id)
        if info.status in ("requires_payment_method", "canceled"):
            raise CardDeclined(f"{action}: PaymentIntent {info.id} is {info.status}", payment_intent_id=info.id)
        return info

    def create_checkout(
        self,
        *,
        amount_cents: int,
        idempotency_key: str,
        metadata: Mapping[str, str],
        customer_id: str | None = None,
    ) -> CheckoutInfo:
        """A PaymentIntent the browser confirms with a new card (SPEC 3 step 3, 5 manual)."""
        _check_amount(amount_cents)
        params: dict[str, Any] = {
            "amount": amount_cents,
            "currency": CURRENCY,
            "payment_method_types": ["card"],
            "metadata": _money_metadata(metadata, idempotency_key),
        }
        if customer_id:
            params["customer"] = customer_id
        with self._errors(f"checkout {format_cents(amount_cents)} {CURRENCY.upper()} ({idempotency_key})"):
            intent = self._v1().payment_intents.create(params, {"idempotency_key": idempotency_key})
        return CheckoutInfo(
            payment_intent_id=intent.id, client_secret=intent.client_secret or "", amount_cents=intent.amount
        )

    def pay_checkout(self, *, payment_intent_id: str, card_token: str) -> PaymentIntentInfo:
        """Pay a checkout's PaymentIntent with the card a page tokenised in the browser
        (Stripe.js `createToken`): the card is put on the intent and the intent confirmed here.
        Returns the intent: `succeeded` (or `processing`), or `requires_action` when the bank
        wants the member to authenticate (the page then calls Stripe.js `confirmCardPayment`).
        Raises `CardDeclined` for a refused card (the member may try another)."""
        v1 = self._v1()
        with self._errors(f"PaymentIntent {payment_intent_id}: pay with a new card"):
            method = self._card_of_token(v1, card_token)
            v1.payment_intents.update(payment_intent_id, {"payment_method": method})
            intent = v1.payment_intents.confirm(payment_intent_id)
        info = _intent_info(intent)
        if info.status in ("requires_payment_method", "canceled"):
            raise CardDeclined(f"PaymentIntent {info.id}: {info.last_payment_error or 'card declined'}",
                               payment_intent_id=info.id)
        return info

    @staticmethod
    def _card_of_token(v1: Any, card_token: str) -> str:
        """A PaymentMethod made from a card token (Stripe). localstripe's PaymentMethods take raw
        card numbers only (a 400 "Bad request" with no code); its token's card (`card_...`) is
        accepted as a PaymentMethod instead, as Stripe accepts saved cards."""
        try:
            return str(v1.payment_methods.create({"type": "card", "card": {"token": card_token}}).id)
        except stripe.InvalidRequestError as exc:
            if exc.code is not None or (exc.user_message or "") != "Bad request":
                raise
        card = _id(_as_dict(v1.tokens.retrieve(card_token)).get("card"))
        if card is None:
            raise InvalidInput(f"card token {card_token}: it holds no card", field="card_token")
        return card

    def to_authenticate(self, payment_intent_id: str) -> tuple[str, str, str | None]:
        """What a page needs to have the member authenticate an off-session charge with
        Stripe.js `confirmCardPayment`: the PaymentIntent's status, client secret and card (on
        the intent, or, after Stripe's off-session `authentication_required`, on its last
        error)."""
        with self._errors(f"PaymentIntent {payment_intent_id}: retrieve"):
            intent = _as_dict(self._v1().payment_intents.retrieve(payment_intent_id))
        error = intent.get("last_payment_error")
        method = _id(intent.get("payment_method")) or (
            _id(error.get("payment_method")) if isinstance(error, Mapping) else None)
        return str(intent.get("status")), str(intent.get("client_secret") or ""), method

    def retrieve_payment_intent(self, payment_intent_id: str) -> PaymentIntentInfo:
        with self._errors(f"PaymentIntent {payment_intent_id}: retrieve"):
            intent = self._v1().payment_intents.retrieve(payment_intent_id, {"expand": EXPAND})
        return _intent_info(intent)

    def cancel_payment_intent(self, payment_intent_id: str) -> PaymentIntentInfo:
        """Cancel a PaymentIntent nobody may pay any more (an expired checkout); returns it
        `canceled`. Stripe refuses (`StripeRequestFailed`) once it succeeded or is processing."""
        with self._errors(f"PaymentIntent {payment_intent_id}: cancel"):
            intent = self._v1().payment_intents.cancel(payment_intent_id)
        return _intent_info(intent)

    def find_payment_intent(
        self, *, customer_id: str | None, attempt_key: str, belongs: Callable[[Mapping[str, str]], bool] | None = None
    ) -> PaymentIntentInfo | None:
        """The PaymentIntent we created for `attempt_key` (its id never recorded), or None.

        With a customer: Stripe's list by customer (consistent at once). Without: Stripe's
        search by metadata, which lags up to about a minute, so the reconciler should wait that
        long. localstripe supports neither query and is scanned whole instead. If several
        match (only possible on localstripe, which ignores idempotency keys), a succeeded one
        wins. `belongs` may refuse one by its metadata (`shared.topups.made_for`)."""
        found = (_intent_info(intent) for intent in self._intents_for(customer_id, attempt_key))
        matches = [
            info
            for info in found
            if info.metadata.get("attempt_key") == attempt_key and customer_id in (None, info.customer_id)
            and (belongs is None or belongs(info.metadata))
        ]
        if not matches:
            return None
        # Read again, expanded: the card that paid is booked with the money (one more call, on
        # the reconciler's rare path only).
        return self.retrieve_payment_intent(next((m for m in matches if m.status == "succeeded"), matches[0]).id)

    def refund(
        self, *, payment_intent_id: str, amount_cents: int, idempotency_key: str, metadata: Mapping[str, str]
    ) -> RefundInfo:
        """Refund part or all of a card payment to the card (SPEC 5 card refunds)."""
        _check_amount(amount_cents)
        action = f"PaymentIntent {payment_intent_id}: refund {format_cents(amount_cents)} ({idempotency_key})"
        with self._errors(action):
            refund = self._v1().refunds.create(
                {
                    "payment_intent": payment_intent_id,
                    "amount": amount_cents,
                    "metadata": _money_metadata(metadata, idempotency_key),
                },
                {"idempotency_key": idempotency_key},
            )
        return _refund_info(refund)

    def find_refund(self, *, payment_intent_id: str, attempt_key: str) -> RefundInfo | None:
        """The refund we asked for under `attempt_key` (its answer never recorded), or None.

        Both Stripe and localstripe list a PaymentIntent's refunds, consistent at once. If
        several match (only possible on localstripe, which ignores idempotency keys), one that
        succeeded or is pending wins."""
        with self._errors(f"PaymentIntent {payment_intent_id}: find refund {attempt_key}"):
            page = self._v1().refunds.list({"payment_intent": payment_intent_id, "limit": 100})
            matches = [
                _refund_info(refund)
                for refund in page.auto_paging_iter()
                if (_as_dict(refund).get("metadata") or {}).get("attempt_key") == attempt_key
            ]
        if not matches:
            return None
        return next((m for m in matches if m.status in REFUND_MADE), matches[0])

    # The federation's Stripe account (ORIGINAL 6.4) ---------------------------------------

    def available_balance(self) -> int:
        """The Stripe account's available balance in CURRENCY, in cents, asked with
        BALANCE_TIMEOUT: an admin screen shows it and must not wait on Stripe."""
        if self._quick_client is None:
            raise ServiceUnavailable("Stripe is not configured: PAYMENTS_STRIPE_API_KEY is not set")
        with self._errors("read the Stripe balance"):
            balance = _as_dict(self._quick_client.v1.balance.retrieve())
        return sum(int(funds.get("amount") or 0) for funds in balance.get("available") or ()
                   if funds.get("currency") == CURRENCY)

    @staticmethod
    def verify_webhook(
        payload: bytes, signature_header: str | None, *, secret: str | Sequence[str] | None,
        tolerance: int = WEBHOOK_TOLERANCE,
    ) -> None:
        verify_webhook(payload, signature_header, secret=secret, tolerance=tolerance)

    # Internals ------------------------------------------------------------------------------

    def _v1(self) -> Any:
        if self._client is None:
            raise ServiceUnavailable("Stripe is not configured: PAYMENTS_STRIPE_API_KEY is not set")
        return self._client.v1

    def _errors(self, action: str) -> Any:
        return _stripe_errors(action, secrets=self._secrets)

    def _intents_for(self, customer_id: str | None, attempt_key: str) -> Iterator[Any]:
        v1 = self._v1()
        with self._errors(f"find PaymentIntent of attempt {attempt_key}"):
            try:
                if customer_id is not None:
                    page = v1.payment_intents.list({"customer": customer_id, "limit": 100})
                else:
                    query = f"metadata['attempt_key']:'{_quote(attempt_key)}'"
                    page = v1.payment_intents.search({"query": query, "limit": 100})
            except stripe.InvalidRequestError as exc:
                if not _unsupported_query(exc):
                    raise
                page = v1.payment_intents.list({"limit": 100})
            yield from page.auto_paging_iter()


def _stripe_client(key: str, base: str | None, timeout: tuple[float, float]) -> stripe.StripeClient:
    return stripe.StripeClient(
        key,
        base_addresses={"api": base} if base else None,
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=timeout),
    )


def verify_webhook(
    payload: bytes, signature_header: str | None, *, secret: str | Sequence[str] | None,
    tolerance: int = WEBHOOK_TOLERANCE,
) -> None:
    """Check a webhook's `Stripe-Signature` against the raw body (HMAC and age only; the event
    is parsed later). Raises `BadSignature` (400) for a missing, wrong or stale signature.

    `secret` may be several secrets (a rotation): the delivery verifies if any of them signed
    it. The error reported is a matching secret's (a stale timestamp), else the first one's."""
    secrets = (secret,) if isinstance(secret, str) else tuple(secret or ())
    secrets = tuple(s for s in secrets if s)
    if not secrets:
        raise ServiceUnavailable("Stripe webhooks are not configured: PAYMENTS_STRIPE_WEBHOOK_SECRET is not set")
    if not signature_header:
        raise BadSignature("Stripe-Signature header is missing")
    if not signature_header.isascii():
        # hmac.compare_digest raises TypeError on non-ASCII text: a 500, not a bad signature.
        raise BadSignature("Stripe-Signature header is not ASCII")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise BadSignature("webhook body is not UTF-8") from None
    first_error: BadSignature | None = None
    for candidate in secrets:
        try:
            with _stripe_errors("webhook signature", secrets=secrets):
                stripe.WebhookSignature.verify_header(text, signature_header, candidate, tolerance)
        except BadSignature as exc:
            # The SDK checks the age only of a signature that matched: that error says more.
            if first_error is None or "tolerance" in exc.message.lower():
                first_error = exc
            continue
        break
    else:
        assert first_error is not None
        raise first_error
    # The SDK refuses only old timestamps; one beyond the clock skew ahead is refused too.
    if _signed_at(signature_header) > time.time() + tolerance:
        raise BadSignature("webhook signature: timestamp is in the future")


def _signed_at(signature_header: str) -> int:
    """The `t=` of a header the SDK has verified, read as the SDK reads it (the first `t`)."""
    stamps = [item.split("=", 2)[1] for item in signature_header.split(",") if item.split("=", 1)[0] == "t"]
    return int(stamps[0])


def sign_webhook(payload: bytes, secret: str, *, timestamp: int | None = None) -> str:
    """A `Stripe-Signature` header for `payload`, as Stripe computes it (for tests)."""
    header: str = stripe.WebhookSignature.generate_signature_header(payload.decode("utf-8"), secret, timestamp)
    return header


@contextmanager
def _stripe_errors(action: str = "Stripe request", *, secrets: Iterable[str] = ()) -> Iterator[None]:
    """Turn every Stripe exception raised inside into one of ours (see shared.errors)."""
    try:
        yield
    except stripe.CardError as exc:
        message = _describe(action, exc, secrets)
        payment_intent_id = _id(getattr(exc.error, "payment_intent", None)) if exc.error else None
        if exc.code == "authentication_required":
            raise AuthenticationRequired(message, payment_intent_id=payment_intent_id) from exc
        raise CardDeclined(message, payment_intent_id=payment_intent_id) from exc
    except (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError) as exc:
        raise StripeUnavailable(_describe(action, exc, secrets)) from exc
    except stripe.IdempotencyError as exc:
        if exc.http_status == 409:
            # The same key while Stripe still runs the first request with it (one sent by a
            # worker that died): it will answer, so try again later; never a decline.
            raise StripeUnavailable(_describe(action, exc, secrets)) from exc
        raise StripeRequestFailed(_describe(action, exc, secrets)) from exc
    except stripe.SignatureVerificationError as exc:
        raise BadSignature(_describe(action, exc, secrets)) from exc
    except stripe.StripeError as exc:
        # AuthenticationError, PermissionError, InvalidRequestError and the v2 API errors:
        # retrying the same request will not help.
        raise StripeRequestFailed(_describe(action, exc, secrets)) from exc


def _describe(action: str, exc: stripe.StripeError, secrets: Iterable[str]) -> str:
    parts = [f"{action}: Stripe {type(exc).__name__}"]
    if exc.http_status:
        parts.append(f" {exc.http_status}")
    if exc.code:
        parts.append(f" [{exc.code}]")
    detail = exc.user_message or ""
    if isinstance(detail, str) and detail:
        parts.append(f": {detail}")
    return _redact("".join(parts), secrets)


def _redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return _SECRET_TEXT.sub("[redacted]", text)


def _unsupported_query(exc: stripe.InvalidRequestError) -> bool:
    """localstripe answers a query it does not implement (listing by customer, search) with a
    bare 400 "Unexpected customer" or 404 "Not Found" and no error code; Stripe sends a code."""
    return exc.code is None and (exc.user_message or "").startswith(("Unexpected ", "Not Found"))


def _intent_info(intent: Any) -> PaymentIntentInfo:
    data = _as_dict(intent)
    status = str(data.get("status"))
    amount = int(data.get("amount") or 0)
    received = data.get("amount_received")
    if received is None:  # localstripe has no amount_received
        received = amount if status == "succeeded" else 0
    return PaymentIntentInfo(
        id=str(data["id"]),
        status=status,
        amount_cents=amount,
        amount_received_cents=int(received),
        customer_id=_id(data.get("customer")),
        payment_method_id=_id(data.get("payment_method")),
        metadata={str(k): str(v) for k, v in (data.get("metadata") or {}).items()},
        latest_charge_id=_id(data.get("latest_charge")),
        currency=str(data.get("currency") or "").lower(),
        last_payment_error=_error_message(data.get("last_payment_error")),
        card=_card_details(data.get("payment_method"), data.get("latest_charge")),
    )


def _card_details(method: Any, charge: Any) -> CardDetails | None:
    """From the expanded PaymentMethod (localstripe has no `payment_method_details` on its
    charges) or else the charge's `payment_method_details`; the receipt from the charge."""
    # Either may be an id only (not expanded: a listing, an event's object).
    method = method if isinstance(method, Mapping) else {}
    charge = charge if isinstance(charge, Mapping) else {}
    card = method.get("card")
    if not isinstance(card, Mapping):
        details = charge.get("payment_method_details")
        card = details.get("card") if isinstance(details, Mapping) else None
    receipt = charge.get("receipt_url")
    if not isinstance(card, Mapping) and not receipt:
        return None
    card = card if isinstance(card, Mapping) else {}

    def whole(value: Any) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def short(value: Any, length: int) -> str | None:
        return value[:length] if isinstance(value, str) and value else None

    return CardDetails(brand=short(card.get("brand"), 20), last4=short(card.get("last4"), 4),
                       exp_month=whole(card.get("exp_month")), exp_year=whole(card.get("exp_year")),
                       receipt_url=short(receipt, 500))


def _refund_info(refund: Any) -> RefundInfo:
    data = _as_dict(refund)
    return RefundInfo(id=str(data["id"]), amount_cents=int(data.get("amount") or 0),
                      status=str(data.get("status") or "pending"))


def _error_message(error: Any) -> str | None:
    if not isinstance(error, Mapping):
        return None
    message = error.get("message") or error.get("code")
    return str(message)[:200] if message else None


def _as_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, stripe.StripeObject):
        return value.to_dict()
    return dict(value)


def _id(value: Any) -> str | None:
    """An id from a field Stripe returns either as an id or as the expanded object."""
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, Mapping):
        found = value.get("id")
        return str(found) if found else None
    found = getattr(value, "id", None)
    return str(found) if found else None


def _money_metadata(metadata: Mapping[str, str], idempotency_key: str) -> dict[str, str]:
    """Our metadata with `attempt_key` (the idempotency key unless the caller set one)."""
    return {"attempt_key": idempotency_key, **{str(k): str(v) for k, v in metadata.items()}}


def _check_amount(amount_cents: int) -> None:
    if isinstance(amount_cents, bool) or not isinstance(amount_cents, int) or amount_cents <= 0:
        raise InvalidAmount(f"amount: {amount_cents!r} is not a positive number of cents", field="amount")


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")
