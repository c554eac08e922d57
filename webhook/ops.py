"""The internal operations listener: `/metrics` (with `/healthz` and `/readyz`) in an app of
its own, served only on `PAYMENTS_METRICS_ADDRESS` (ISSUE 12, item 5); and the timing of the
public app's requests that it reports.

The public app has no `/metrics` route at all, so nothing on the public port can reach it,
whatever the path, host header or proxy in front. Both apps run in the same gunicorn workers
(one server, two binds); `ByListener` hands each request to the app of the socket it arrived
on, read from the accepted socket itself (not from anything the client sent).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from flask import Blueprint, Flask, Response, g, request
from flask.typing import ResponseReturnValue
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric

from shared.config import Settings, parse_address
from shared.metrics import HTTP_SECONDS, Families, exposition, figures, histograms
from webhook import context
from webhook.health import queue_depths

blueprint = Blueprint("metrics", __name__)


@blueprint.get("/metrics")
def metrics() -> ResponseReturnValue:
    # The figures cost queries, so they are reused for a few seconds; the histograms are read
    # fresh (from this process, or from every gunicorn worker's file in multiprocess mode).
    money = context.recent("metrics").get(_figures)
    return Response(exposition(Families(money), histograms()), content_type=CONTENT_TYPE_LATEST)


def _figures() -> list[Metric]:
    depths = queue_depths()  # Redis first: no network call inside the transaction
    rejected = context.rejections().totals()
    with context.transaction() as session:
        return figures(session, depths, context.settings(), rejected=rejected)


class ByListener:
    """WSGI: requests accepted on the metrics port go to `ops`, every other one to `public`."""

    def __init__(self, public: Flask, ops: Flask, metrics_port: int) -> None:
        self.public, self.ops, self.metrics_port = public, ops, metrics_port

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        sock = environ.get("gunicorn.socket")
        try:
            port = sock.getsockname()[1] if sock is not None else None
        except (OSError, IndexError, TypeError):  # a Unix socket has no port
            port = None
        app = self.ops if port == self.metrics_port else self.public
        return app(environ, start_response)


def metrics_port(settings: Settings) -> int | None:
    if not settings.metrics_address:
        return None
    return parse_address("PAYMENTS_METRICS_ADDRESS", settings.metrics_address)[1]


def time_requests(app: Flask) -> None:
    """Observe each public request's duration in `payments_http_request_duration_seconds`, by
    method, route pattern (never the path itself: one series per route, whatever the ids) and
    status. Installed first, so the client check and the rate limiter are timed too."""

    @app.before_request
    def _start() -> None:
        g.payments_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        started = g.pop("payments_started", None)
        if started is not None:
            route = request.url_rule.rule if request.url_rule is not None else "unmatched"
            HTTP_SECONDS.labels(request.method, route, str(response.status_code)).observe(
                time.perf_counter() - started)
        return response
