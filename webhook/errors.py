"""One place that turns errors into CONTRACT's error JSON; never a 500 for bad input, and
never a secret or a stack trace in a response."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy.exc import DBAPIError, IntegrityError
from werkzeug.exceptions import HTTPException

from shared.errors import PaymentsError, Unauthenticated

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


def error(status: int, code: str, message: str, field: str | None = None) -> ResponseReturnValue:
    body: dict[str, str] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return jsonify({"error": body}), status


def register(app: Flask) -> None:
    @app.errorhandler(PaymentsError)
    def _payments_error(exc: PaymentsError) -> ResponseReturnValue:
        if isinstance(exc, Unauthenticated):  # RFC 6750: say which scheme is wanted
            return jsonify(exc.as_dict()), exc.status, {"WWW-Authenticate": 'Bearer realm="payments"'}
        return jsonify(exc.as_dict()), exc.status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> ResponseReturnValue:
        status = exc.code or 500
        return error(status, _HTTP_CODES.get(status, "http_error"), exc.description or exc.name)

    @app.errorhandler(IntegrityError)
    def _integrity_error(exc: IntegrityError) -> ResponseReturnValue:
        # Two requests raced to create the same thing; the caller can safely retry.
        log.warning("integrity error: %s", type(exc.orig).__name__)
        return error(409, "conflict", "a concurrent request changed the same record; retry")

    @app.errorhandler(DBAPIError)
    def _database_error(exc: DBAPIError) -> ResponseReturnValue:
        log.error("database error: %s", type(exc.orig).__name__)
        return error(503, "database_unavailable", "the database is not available; retry later")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> ResponseReturnValue:
        log.exception("unexpected error")
        return error(500, "internal_error", "internal error; it has been logged")
