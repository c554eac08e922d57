"""Liveness and readiness: `/healthz` says the process is up, `/readyz` that the database and
the broker answer. `/readyz` reuses its answer for `PAYMENTS_OPS_CACHE_SECONDS`, so calling it
in a loop cannot load the database or the broker."""

from __future__ import annotations

import redis
from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue
from kombu import Connection
from sqlalchemy import text

from shared.client import QUEUES
from shared.config import is_redis
from webhook import context

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz() -> ResponseReturnValue:
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
def readyz() -> ResponseReturnValue:
    checks = context.recent("readyz").get(lambda: {"database": _database_ok(), "broker": _broker_ok()})
    ready = all(checks.values())
    body = {"status": "ready" if ready else "not_ready", "checks": checks}
    return jsonify(body), 200 if ready else 503


def _database_ok() -> bool:
    try:
        with context.engine().connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


def _broker_ok() -> bool:
    try:
        with Connection(context.settings().broker_url, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
        return True
    except Exception:
        return False


def queue_depths() -> dict[str, int] | None:
    url = context.settings().broker_url
    if not is_redis(url):
        return None
    try:
        client = redis.Redis.from_url(url, socket_timeout=2)
        try:
            with client.pipeline() as pipe:
                for queue in QUEUES:
                    pipe.llen(queue)
                return dict(zip(QUEUES, pipe.execute(), strict=True))
        finally:
            client.close()
    except redis.RedisError:
        return None
