"""The HTTP edge: a Flask app factory for the Stripe webhook, the API and health checks, and
one for the internal operations listener (`/metrics`, `webhook.ops`).

Views are thin: they check fields, open one transaction, call `shared`, and shape JSON.
"""

from __future__ import annotations

import io
import uuid
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, request

from shared import logs

from shared.cache import Recent
from shared.config import Settings
from shared.db import make_engine, make_sessions
from shared.rejections import Rejections
from shared.stripe_gateway import StripeGateway

MAX_BODY_BYTES = 1024 * 1024


def create_app(settings: Settings | None = None, *, resources: dict[str, Any] | None = None) -> Flask:
    """The public app: the API, the Stripe webhook, `/healthz` and `/readyz`; no `/metrics`."""
    from webhook import api, auth, errors, health, limits, openapi, ops, pages, stripe

    settings = settings or Settings.from_env()
    app = _base(settings, resources)
    ops.time_requests(app)
    errors.register(app)
    # The client check runs before the rate limiter (both app-level, in this order), so that
    # the limiter counts per authenticated client and an unknown token is a 401, never a 429.
    app.before_request(auth.authorise_api_request)
    limits.install(app, api.blueprint, settings)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(stripe.blueprint)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(pages.blueprint)
    app.register_blueprint(openapi.blueprint)  # public: outside `api`, so no token and no rate limit
    return app


def create_ops_app(settings: Settings | None = None, *, resources: dict[str, Any] | None = None) -> Flask:
    """The internal app: `/metrics`, `/healthz` and `/readyz`, for the metrics listener only."""
    from webhook import errors, health, ops

    settings = settings or Settings.from_env()
    app = _base(settings, resources)
    errors.register(app)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(ops.blueprint)
    return app


def create_server(settings: Settings | None = None) -> Any:
    """What gunicorn serves (`payments webhook`): the public app, and when
    PAYMENTS_METRICS_ADDRESS is set the internal app for requests accepted on that port (bind
    both addresses). They share one engine, one Redis client and the cached answers."""
    from webhook.ops import ByListener, metrics_port

    settings = settings or Settings.from_env()
    public = create_app(settings)
    port = metrics_port(settings)
    if port is None:
        return public
    ops = create_ops_app(settings, resources=public.extensions["payments"])
    return ByListener(public, ops, port)


def _base(settings: Settings, resources: dict[str, Any] | None) -> Flask:
    logs.add_secrets(settings.api_token, settings.stripe_api_key, *settings.webhook_secrets,
                     *_smtp_password(settings.smtp_url))
    app = Flask(__name__)

    @app.before_request
    def _log_context() -> None:
        request_id = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex
        logs.context.set({"request_id": request_id, "path": request.path})

    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.wsgi_app = BoundedChunkedBody(app.wsgi_app, MAX_BODY_BYTES)  # type: ignore[method-assign]
    # An id of "%2F" makes "//" in the path; merging it answered a 308 to another resource (an
    # HTML redirect, e.g. PUT /api/members/%2F/auto-topup to PUT /api/members/auto-topup).
    app.url_map.merge_slashes = False
    if resources is None:
        # No pre-ping (a round trip per request): a connection lost with the database fails one
        # request with 503 (Stripe retries it) and the pool replaces it.
        engine = make_engine(settings.database_url, pool_pre_ping=False)
        resources = {
            "settings": settings,
            "engine": engine,
            "sessions": make_sessions(engine),
            "gateway": StripeGateway(settings),
            "rejections": Rejections(settings.broker_url),
            # Per process (each gunicorn worker keeps its own), shared by the two apps.
            "recent": {name: Recent[Any](settings.ops_cache_seconds) for name in ("readyz", "metrics")},
        }
    app.extensions["payments"] = resources
    return app


class BoundedChunkedBody:
    """WSGI: a chunked body (no Content-Length) becomes a body of known length, so one over the
    limit is a 413 as a declared one is. Werkzeug only stops reading a chunked body at the
    limit and hands on the first MiB as if it were all (a 400, bad signature, instead of 413).
    At most `limit` + 1 bytes are read; the rest is never read (gunicorn then closes the
    connection)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked" and environ.get("wsgi.input_terminated"):
            stream = environ["wsgi.input"]
            body = bytearray()
            while len(body) <= self.limit:
                piece = stream.read(min(64 * 1024, self.limit + 1 - len(body)))
                if not piece:
                    break
                body += piece
            environ["wsgi.input"] = io.BytesIO(bytes(body))
            environ["CONTENT_LENGTH"] = str(len(body))  # limit + 1 when there was more
            del environ["HTTP_TRANSFER_ENCODING"]
        return self.app(environ, start_response)


def _smtp_password(url: str | None) -> list[str]:
    return [urlsplit(url).password or ""] if url else []
