"""The internal operations listener: `/metrics` (with `/healthz` and `/readyz`) in an app of
its own, served only on `PAYMENTS_METRICS_ADDRESS` (ISSUE 12, item 5).

The public app has no `/metrics` route at all, so nothing on the public port can reach it,
whatever the path, host header or proxy in front. Both apps run in the same gunicorn workers
(one server, two binds); `ByListener` hands each request to the app of the socket it arrived
on, read from the accepted socket itself (not from anything the client sent).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flask import Blueprint, Flask, Response
from flask.typing import ResponseReturnValue

from shared.config import Settings, parse_address
from shared.metrics import render
from webhook import context
from webhook.health import queue_depths

blueprint = Blueprint("metrics", __name__)


@blueprint.get("/metrics")
def metrics() -> ResponseReturnValue:
    text_body = context.recent("metrics").get(_render)
    return Response(text_body, mimetype="text/plain; version=0.0.4")


def _render() -> str:
    depths = queue_depths()  # Redis first: no network call inside the transaction
    rejected = context.rejections().totals()
    with context.transaction() as session:
        return render(session, depths, context.settings(), rejected=rejected)


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
