"""What a view needs from the app: the settings and a transaction."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import current_app, request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.cache import Recent
from shared.config import Settings
from shared.errors import InvalidInput
from shared.rejections import Rejections
from shared.stripe_gateway import StripeGateway


def settings() -> Settings:
    return current_app.extensions["payments"]["settings"]


def engine() -> Engine:
    return current_app.extensions["payments"]["engine"]


@contextmanager
def transaction() -> Iterator[Session]:
    """One database transaction around one step; commits on success, rolls back on error."""
    with current_app.extensions["payments"]["sessions"].begin() as session:
        yield session


def json_body() -> dict[str, Any]:
    """The request's JSON object, or an error naming what is wrong with it."""
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # json.loads on thousands of nested brackets; not a ValueError
        raise InvalidInput("body: JSON nested too deeply", field="body") from None
    if not isinstance(body, dict):
        raise InvalidInput("body: expected a JSON object", field="body")
    try:  # NaN, Infinity and 1e400 parse, but the JSON columns refuse them (a 503)
        json.dumps(body, allow_nan=False)
    except (ValueError, RecursionError):
        raise InvalidInput("body: NaN or Infinity is not JSON", field="body") from None
    return body


def gateway() -> StripeGateway:
    return current_app.extensions["payments"]["gateway"]


def sessions() -> sessionmaker[Session]:
    return current_app.extensions["payments"]["sessions"]


def recent(name: str) -> Recent[Any]:
    """The app's cache of one operations answer (`readyz`, `metrics`)."""
    caches: dict[str, Recent[Any]] = current_app.extensions["payments"]["recent"]
    return caches[name]


def rejections() -> Rejections:
    return current_app.extensions["payments"]["rejections"]
