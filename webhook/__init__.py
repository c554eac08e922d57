"""The HTTP edge: a Flask app factory for the Stripe webhook, the API and health checks.

Views are thin: they check fields, open one transaction, call `shared`, and shape JSON.
"""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

from flask import Flask, request

from shared import logs

from shared.config import Settings
from shared.db import make_engine, make_sessions
from shared.stripe_gateway import StripeGateway

MAX_BODY_BYTES = 1024 * 1024


def create_app(settings: Settings | None = None) -> Flask:
    from webhook import api, errors, health, stripe

    settings = settings or Settings.from_env()
    logs.add_secrets(settings.api_token, settings.stripe_api_key, settings.stripe_webhook_secret,
                     *_smtp_password(settings.smtp_url))
    app = Flask(__name__)

    @app.before_request
    def _log_context() -> None:
        request_id = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex
        logs.context.set({"request_id": request_id, "path": request.path})

    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # An id of "%2F" makes "//" in the path; merging it answered a 308 to another resource (an
    # HTML redirect, e.g. PUT /api/members/%2F/auto-topup to PUT /api/members/auto-topup).
    app.url_map.merge_slashes = False
    # No pre-ping (a round trip per request): a connection lost with the database fails one
    # request with 503 (Stripe retries it) and the pool replaces it.
    engine = make_engine(settings.database_url, pool_pre_ping=False)
    app.extensions["payments"] = {
        "settings": settings,
        "engine": engine,
        "sessions": make_sessions(engine),
        "gateway": StripeGateway(settings),
    }
    errors.register(app)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(stripe.blueprint)
    app.register_blueprint(api.blueprint)
    return app


def _smtp_password(url: str | None) -> list[str]:
    return [urlsplit(url).password or ""] if url else []
