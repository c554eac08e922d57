"""Celery tasks: thin, named `payments.*`, taking ids and calling one `shared` function each.

The payment, Stripe and outbox tasks arrive with their issues; `payments.ping` lets an operator
or a test check a worker end to end."""

from __future__ import annotations

from worker.app import app


@app.task(name="payments.ping", soft_time_limit=5, time_limit=10)
def ping() -> str:
    return "pong"
