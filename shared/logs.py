"""Structured logs: one JSON object per line, with the request or event being handled, and
with anything that looks like a secret removed before it is written (DESIGN invariant 9)."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import UTC, datetime

# The request id (HTTP), Stripe event id or Celery task id being handled, if any.
context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("log_context", default={})

_SECRET_TEXT = re.compile(r"\b(?:sk|rk|pk)_(?:test|live)_\w+|\bwhsec_\S+|\b\w+_secret_\w+|(?i:bearer\s+)\S+")
_secrets: set[str] = set()


def add_secrets(*values: str | None) -> None:
    """Configured secrets (API token, Stripe keys, SMTP password): never written verbatim."""
    _secrets.update(v for v in values if v and len(v) >= 4)


def redact(text: str) -> str:
    for secret in _secrets:
        text = text.replace(secret, "[secret]")
    return _SECRET_TEXT.sub("[secret]", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **context.get(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str))


def configure(level: int = logging.INFO) -> None:
    """Send every log record to stderr as JSON (idempotent)."""
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.handlers = [handler]
    root.setLevel(level)
