"""Per-client rate limits on `/api/*` (issue 12; DESIGN "rate limits: flask-limiter on Redis").

flask-limiter counts each client's requests under its name (the principal `webhook.auth` has
authenticated, so the API's client check must run before the limiter's) in the broker's Redis,
shared by every webhook process. Over the limit: 429 in CONTRACT's error JSON with
`Retry-After`. If Redis cannot be reached, each process counts in memory instead: the API keeps
answering (a stored request is redriven when the broker is back), still limited per process.
The Stripe webhook and the health checks are not limited: Stripe's retries must always land.
"""

from __future__ import annotations

from flask import Blueprint, Flask, g, request
from flask_limiter import Limiter

from shared.config import Settings


def client_name() -> str:
    principal = getattr(g, "principal", None)
    # Only reached unauthenticated if the client check did not run first (a wiring mistake):
    # counted by address rather than not at all.
    return f"client:{principal.name}" if principal is not None else f"address:{request.remote_addr}"


def install(app: Flask, api: Blueprint, settings: Settings) -> Limiter | None:
    """Limit every route of `api` (its nested blueprints too) per client; None when
    PAYMENTS_RATE_LIMIT is `off`."""
    if settings.rate_limit is None:
        return None
    limiter = Limiter(
        key_func=client_name,
        storage_uri=settings.rate_limit_storage_url,
        strategy="moving-window",  # no burst of twice the limit across a window's edge
        headers_enabled=True,  # Retry-After (and X-RateLimit-*) on the answers
        in_memory_fallback_enabled=True,
        key_prefix="payments-rate",
    )
    limiter.limit(settings.rate_limit, key_func=client_name)(api)
    # Every other route is exempt before the limiter does any work: measured, its bookkeeping
    # cost 0.3 ms a request on routes it does not limit (the Stripe webhook's included).
    limiter.request_filter(lambda: api.name not in request.blueprints)
    limiter.init_app(app)
    return limiter
