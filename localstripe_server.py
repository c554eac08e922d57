"""localstripe (the Stripe stand-in, DESIGN "Stripe stand-in") on loopback only, with its state in
memory: `python -m localstripe_server PORT`.

Its own CLI binds every interface and keeps its state in /tmp/localstripe.pickle, shared by
every run on the machine and reloaded at start. Here the store's disk methods are replaced by
no-ops before the app starts, so each process starts empty and runs side by side do not see
each other's customers.

One gap is filled, as Stripe behaves: a PaymentIntent whose card was declined
(`requires_payment_method`) can be given another card and confirmed again (Stripe.js does this
when the member retries on the same checkout page); localstripe kept the failed charge and
refused the second confirm.

And `GET /v1/balance` answers in Stripe's shape (`available` is a list of amounts by currency;
localstripe gave one fixed 20.00 EUR object): the available balance is the sum of the succeeded
charges less their refunds, per currency, as if every charge were already paid out to the
balance (Stripe holds it "pending" for a few days first).
"""

from __future__ import annotations

import sys

from aiohttp import web
from localstripe import resources  # type: ignore[import-untyped]
from localstripe.server import app  # type: ignore[import-untyped]


def _no_disk(self: resources.Store) -> None:
    return None


_update_intent = resources.PaymentIntent._update


def _retry_with_new_card(self: resources.PaymentIntent, **data: object) -> None:
    """A new card on a declined PaymentIntent forgets the failed charge, so `status` reads
    `requires_confirmation` and the intent can be confirmed again."""
    _update_intent(self, **data)
    charge = self.latest_charge
    if data.get("payment_method") and charge is not None and charge.status == "failed":
        self.latest_charge = None


def _balance_export(self: resources.Balance, expand: object = None) -> dict[str, object]:
    """What GET /v1/balance answers: the store's succeeded charges less their refunds."""
    totals: dict[str, int] = {}
    for key, value in list(resources.store.items()):
        if key.startswith("charge:") and value.status == "succeeded":
            totals[value.currency] = totals.get(value.currency, 0) + value.amount
        elif key.startswith("refund:") and value.status == "succeeded":
            totals[value.currency] = totals.get(value.currency, 0) - value.amount
    funds = [{"amount": amount, "currency": currency, "source_types": {"card": amount}}
             for currency, amount in sorted(totals.items())]
    return {"object": "balance", "livemode": False, "available": funds,
            "pending": [{**f, "amount": 0, "source_types": {"card": 0}} for f in funds]}


def main(argv: list[str]) -> None:
    if len(argv) not in (1, 2) or not argv[0].isdigit():
        sys.exit("usage: python -m localstripe_server PORT [HOST]  (HOST defaults to 127.0.0.1)")
    resources.Store.try_load_from_disk = _no_disk
    resources.Store.dump_to_disk = _no_disk
    resources.PaymentIntent._update = _retry_with_new_card
    resources.store.clear()
    resources.Balance._export = _balance_export
    host = argv[1] if len(argv) == 2 else "127.0.0.1"  # a container publishes it on loopback
    web.run_app(app, host=host, port=int(argv[0]), print=None)


if __name__ == "__main__":
    main(sys.argv[1:])
