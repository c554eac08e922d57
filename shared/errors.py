"""The exception tree of cobalt-payments; one handler in `webhook.errors` maps it to HTTP.

    PaymentsError                 code, HTTP status, optional field
    ├── InvalidInput      400     a value is malformed, of the wrong type, or missing
    │   └── InvalidAmount 400     an amount is not exact cents or is outside its limits
    ├── NotFound          404     a member, organisation, entry or request does not exist
    ├── Conflict          409     a key is reused with a different payload
    ├── RuleViolation     422     well-formed, but a money rule forbids it
    │   └── InsufficientFunds     an account would go below zero
    ├── UnbalancedEntry   422     postings of one entry do not sum to zero
    ├── ServiceUnavailable 503    a dependency (database, broker) is not reachable
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
