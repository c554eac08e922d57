"""The exception tree of cobalt-payments; one handler in `webhook.errors` maps it to HTTP.

    PaymentsError                 code, HTTP status, optional field
    ├── InvalidInput      400     a value is malformed, of the wrong type, or missing
    │   ├── InvalidAmount 400     an amount is not exact cents or is outside its limits
    │   └── BadSignature  400     a Stripe webhook's signature is missing, wrong or stale
    ├── Unauthenticated   401     no token, or one that is unknown, revoked or expired
    ├── Forbidden         403     the client lacks the scope, or a binding refuses the request
    ├── NotFound          404     a member, organisation, entry or request does not exist
    ├── Conflict          409     a key is reused with a different payload
    ├── RuleViolation     422     well-formed, but a money rule forbids it
    │   ├── InsufficientFunds     an account would go below zero
    │   ├── CardDeclined          the card was declined
    │   └── AuthenticationRequired  the bank wants the member to authenticate (3-D Secure)
    ├── UnbalancedEntry   422     postings of one entry do not sum to zero
    ├── ServiceUnavailable 503    a dependency (database, broker) is not reachable
    │   └── StripeUnavailable     Stripe unreachable, rate limited or 5xx: retry, same key
    ├── StripeRequestFailed 502   Stripe refused the request (not transient: do not retry)
    └── ConfigError               a PAYMENTS_* variable has a bad value (at start-up)

Messages name the thing and the values, e.g. ``member 42: balance 12.00, needs 15.00``.
"""

from __future__ import annotations


class PaymentsError(Exception):
    """Raised for every failure the service explains to its caller."""

    code = "error"
    status = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def as_dict(self) -> dict[str, object]:
        body: dict[str, object] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return {"error": body}


class InvalidInput(PaymentsError):
    """Raised when a value is malformed, of the wrong type, or missing."""

    code = "invalid_input"
    status = 400


class InvalidAmount(InvalidInput):
    """Raised when an amount is not an exact number of cents or is outside its limits."""

    code = "invalid_amount"


class Unauthenticated(PaymentsError):
    """Raised when a request carries no client token, or one that is unknown, revoked or expired."""

    code = "unauthenticated"
    status = 401


class Forbidden(PaymentsError):
    """Raised when an authenticated client lacks the scope for an action, or one of its bindings
    (route codes, request-id prefix, organisations) refuses it; the message names which."""

    code = "forbidden"
    status = 403


class NotFound(PaymentsError):
    """Raised when a member, organisation, entry or request does not exist."""

    code = "not_found"
    status = 404


class Conflict(PaymentsError):
    """Raised when an idempotency key is reused with a different payload."""

    code = "conflict"
    status = 409


class RuleViolation(PaymentsError):
    """Raised when a well-formed request is forbidden by a money rule."""

    code = "rule_violation"
    status = 422


class InsufficientFunds(RuleViolation):
    """Raised when a booking would take an account below zero; carries the balance it saw."""

    code = "insufficient_funds"

    def __init__(self, message: str, *, account_id: int, balance: int, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.account_id = account_id
        self.balance = balance


class UnbalancedEntry(PaymentsError):
    """Raised when the postings of one journal entry do not sum to zero."""

    code = "unbalanced_entry"
    status = 422


class ServiceUnavailable(PaymentsError):
    """Raised when the database or broker cannot be reached, or the API is not configured."""

    code = "unavailable"
    status = 503


class ConfigError(PaymentsError):
    """Raised at start-up when a PAYMENTS_* variable has a bad value."""

    code = "config_error"
    status = 500


class CardDeclined(RuleViolation):
    """Raised when Stripe declines a card; carries the PaymentIntent id when Stripe gave one."""

    code = "card_declined"

    def __init__(self, message: str, *, payment_intent_id: str | None = None, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.payment_intent_id = payment_intent_id


class AuthenticationRequired(RuleViolation):
    """Raised when an off-session charge needs the member to authenticate (3-D Secure); carries
    the PaymentIntent id when known, so the member can be sent to finish it."""

    code = "authentication_required"

    def __init__(self, message: str, *, payment_intent_id: str | None = None, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.payment_intent_id = payment_intent_id


class StripeUnavailable(ServiceUnavailable):
    """Raised when Stripe cannot be reached, rate limits us or answers 5xx: transient, so the
    caller retries later with the same idempotency key."""

    code = "stripe_unavailable"


class StripeRequestFailed(PaymentsError):
    """Raised when Stripe refuses a request for a reason a retry will not change (bad key, no
    permission, invalid parameters, idempotency key reused with other parameters)."""

    code = "stripe_request_failed"
    status = 502


class BadSignature(InvalidInput):
    """Raised when a Stripe webhook's signature is missing, does not match, or is too old."""

    code = "bad_signature"
