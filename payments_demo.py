"""`payments demo`: a scripted end-to-end story against a running stack (`payments run`).

It reads var/run.json (in the current directory), which `payments run` writes: the API address,
the API token made up for the run (else PAYMENTS_API_TOKEN), localstripe's address and the
webhook secret. It talks to the API over HTTP only (urllib, JSON), plays the member's browser
against localstripe with the stripe SDK, and signs the events localstripe does not send
(`setup_intent.succeeded`) with the webhook secret, as Stripe would.

The `stripe` import here is a client's, like a browser's Stripe.js: the demo is not the service.
shared/stripe_gateway.py remains the service's only module that imports `stripe`; the demo
borrows only its `sign_webhook`.

Every id carries a suffix made for the run, so the demo can run again against the same stack.
Every wait polls with a deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

T = TypeVar("T")

RUN_FILE = Path("var/run.json")
LOCAL_STRIPE_KEY = "sk_test_localstripe"  # localstripe takes any sk_ key; not a secret
VISA = "4242424242424242"
STEPS = 11
# Generous: the embedded default runs Celery on its SQLAlchemy transport on SQLite, which polls.
DEADLINE = float(os.environ.get("PAYMENTS_DEMO_TIMEOUT", "60"))


class DemoFailed(Exception):
    """A step did not turn out as the story says; the message says how."""


# Talking to the API and to localstripe ------------------------------------------------------


class Api:
    def __init__(self, base: str, token: str) -> None:
        self.base = base.rstrip("/")
        self.token = token

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.base}{path}", data=data, method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
                     "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            raise DemoFailed(f"{method} {path} answered {error.code}: {_error_text(error)}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise DemoFailed(f"cannot reach the API at {self.base} ({reason}); is `payments run` running?") from None

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.call("POST", path, body)

    def put(self, path: str, body: dict[str, Any]) -> Any:
        return self.call("PUT", path, body)

    def balance(self, path: str) -> str:
        return str(self.get(f"{path}/balance")["balance"])

    def outcome(self, request_id: str, wanted: str, *, done: Sequence[str] = ()) -> dict[str, Any]:
        """Poll the request until it is `wanted`; any other terminal status is a failure."""
        terminal = {"paid", "declined", "failed", "completed", *done} - {wanted}

        def check() -> dict[str, Any] | None:
            body = self.get(f"/api/payments/{request_id}")
            if body.get("status") in terminal:
                raise DemoFailed(f"request {request_id} ended {body['status']}: {body.get('reason', 'no reason given')}")
            return body if body.get("status") == wanted else None

        return wait_for(check, f"request {request_id} to be {wanted}")


def _error_text(error: urllib.error.HTTPError) -> str:
    raw = error.read()
    try:
        found = json.loads(raw)["error"]
        return f"{found.get('code')}: {found.get('message')}"
    except Exception:
        return raw[:300].decode("utf-8", "replace")


def wait_for(check: Callable[[], T | None], what: str, timeout: float | None = None) -> T:
    """Poll `check` until it returns something truthy, or fail naming `what`. A DemoFailed
    raised by `check` ends the wait at once."""
    limit = DEADLINE if timeout is None else timeout
    deadline = time.monotonic() + limit
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out after {limit:.0f}s waiting for {what}")
        time.sleep(0.25)


class Browser:
    """What Stripe.js does in the member's browser, against localstripe."""

    def __init__(self, stripe_url: str) -> None:
        import stripe  # a client of Stripe, like a browser; see the module docstring

        self.stripe_url = stripe_url
        self.errors = stripe.StripeError
        self.client = stripe.StripeClient(LOCAL_STRIPE_KEY, base_addresses={"api": stripe_url},
                                          max_network_retries=0)

    def _do(self, what: str, action: Callable[[], T]) -> T:
        try:
            return action()
        except self.errors as exc:
            raise DemoFailed(f"localstripe at {self.stripe_url} refused to {what}: {exc}") from None

    def new_card(self, number: str = VISA) -> str:
        params: Any = {"type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"}}
        return str(self._do("make a card", lambda: self.client.v1.payment_methods.create(params)).id)

    def pay(self, payment_intent_id: str) -> Any:
        """confirmCardPayment: the card goes onto the PaymentIntent, which is then confirmed."""
        card = self.new_card()
        self._do("set the card", lambda: self.client.v1.payment_intents.update(payment_intent_id, {"payment_method": card}))
        return self._do("confirm the PaymentIntent", lambda: self.client.v1.payment_intents.confirm(payment_intent_id))

    def save_card(self, setup_intent_id: str) -> Any:
        """confirmCardSetup: the card is saved with the SetupIntent."""
        card = self.new_card()
        return self._do("confirm the SetupIntent",
                        lambda: self.client.v1.setup_intents.confirm(setup_intent_id, {"payment_method": card}))


def post_signed_event(api_base: str, secret: str, type_: str, obj: dict[str, Any]) -> str:
    """POST an event to /stripe/webhook signed as Stripe signs it; returns its id."""
    from shared.stripe_gateway import sign_webhook

    event = {"id": f"evt_demo_{uuid.uuid4().hex[:16]}", "object": "event", "type": type_,
             "api_version": "2020-08-27", "created": int(time.time()), "livemode": False, "data": {"object": obj}}
    body = json.dumps(event).encode()
    request = urllib.request.Request(
        f"{api_base.rstrip('/')}/stripe/webhook", data=body, method="POST",
        headers={"Content-Type": "application/json", "Stripe-Signature": sign_webhook(body, secret)},
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise DemoFailed(f"the webhook refused {type_}: {error.code} {_error_text(error)}") from None
    if answer.get("received") is not True:
        raise DemoFailed(f"the webhook did not take {type_}: {answer}")
    return str(event["id"])


# The story ----------------------------------------------------------------------------------


class Story:
    def __init__(self, api: Api, browser: Browser, webhook_secret: str, suffix: str) -> None:
        self.api, self.browser, self.secret, self.suffix = api, browser, webhook_secret, suffix
        self.ann, self.bob, self.club = f"ann-{suffix}", f"bob-{suffix}", f"club-{suffix}"
        self.step = 0

    def rid(self, name: str) -> str:
        return f"demo-{self.suffix}-{name}"

    def run(self) -> int:
        print(f"payments demo against {self.api.base} (run {self.suffix})", flush=True)
        self.do("members ann and bob, and a club", self.members)
        self.do("ann tops up 60.00 by card checkout with a new card", self.ann_tops_up)
        self.do("bob saves a card for auto top-up (and is topped up 100.00)", self.bob_auto_topup)
        self.do("bob pays the club 150.00 (auto top-up covers it)", self.bob_pays_club)
        self.do("ann transfers 25.00 to bob", self.ann_transfers)
        self.do("the club is settled to yesterday (its money came today: nothing to settle)", self.settle_club)
        self.do("the club tops ann up 20.00 at the table", self.club_tops_up_ann)
        self.do("the club refunds ann's event entry of 15.00", self.club_refunds_entry)
        self.do("the club raises an IOU of 12.00 for ann, and ann pays it", self.iou)
        self.do("statements", self.statements, tables=True)
        return self.check_balances()

    def do(self, label: str, action: Callable[[], str], *, tables: bool = False) -> None:
        self.step += 1
        print(f"[{self.step}/{STEPS}] {label} ...", end="", flush=True)
        try:
            detail = action()
        except DemoFailed:
            print(" FAILED", flush=True)
            raise
        if tables:
            print(" ok", flush=True)
            print(detail, flush=True)
        else:
            print(f" ok ({detail})" if detail else " ok", flush=True)

    # (1)
    def members(self) -> str:
        for member_id, first, last in ((self.ann, "Ann", "Lee"), (self.bob, "Bob", "Marsh")):
            self.api.put(f"/api/members/{member_id}", {
                "email": f"{first.lower()}.{self.suffix}@example.org", "first_name": first, "last_name": last})
        self.api.put(f"/api/organisations/{self.club}", {"name": f"Demo Bridge Club {self.suffix}"})
        return f"{self.ann}, {self.bob}, {self.club}"

    # (2)
    def ann_tops_up(self) -> str:
        request_id = self.rid("topup-ann")
        self.api.post(f"/api/members/{self.ann}/topups",
                      {"request_id": request_id, "amount": "60.00", "use_saved_card": False})
        waiting = self.api.outcome(request_id, "awaiting_card")
        checkout = waiting.get("checkout") or {}
        if checkout.get("amount") != "60.00" or not checkout.get("payment_intent_id"):
            raise DemoFailed(f"expected a checkout for 60.00, got {waiting}")
        intent = self.browser.pay(checkout["payment_intent_id"])
        if intent.status != "succeeded":
            raise DemoFailed(f"localstripe left the PaymentIntent {intent.status}")
        # localstripe delivers payment_intent.succeeded to the webhook; the worker books it.
        self.api.outcome(request_id, "paid")
        return f"balance {self.api.balance(f'/api/members/{self.ann}')}"

    # (3)
    def bob_auto_topup(self) -> str:
        setup = self.api.post(f"/api/members/{self.bob}/auto-topup/setup")
        saved = self.browser.save_card(setup["setup_intent_id"])
        if saved.status != "succeeded":
            raise DemoFailed(f"localstripe left the SetupIntent {saved.status}")
        # localstripe does not send setup_intent.succeeded: post it, signed, as Stripe would.
        post_signed_event(self.api.base, self.secret, "setup_intent.succeeded", {
            "id": saved.id, "object": "setup_intent", "customer": saved.customer, "status": "succeeded"})
        member = f"/api/members/{self.bob}"
        wait_for(lambda: self.api.get(f"{member}/balance")["auto_topup"]["status"] == "on", "auto top-up to be on")
        wait_for(lambda: self.api.balance(member) == "100.00", "bob's auto top-up of 100.00 to be booked")
        return "auto top-up on, balance 100.00"

    # (4)
    def bob_pays_club(self) -> str:
        request_id = self.rid("pay-club")
        self.api.post("/api/payments", {
            "request_id": request_id, "member_id": self.bob, "amount": "150.00", "description": "Club membership",
            "organisation_id": self.club, "payment_type": "Club Membership"})
        self.api.outcome(request_id, "paid")
        return (f"paid; bob {self.api.balance(f'/api/members/{self.bob}')}, "
                f"club {self.api.balance(f'/api/organisations/{self.club}')}")

    # (5)
    def ann_transfers(self) -> str:
        request_id = self.rid("transfer")
        self.api.post("/api/transfers", {
            "request_id": request_id, "from_member_id": self.ann, "to_member_id": self.bob, "amount": "25.00",
            "description": "Share of the taxi"})
        self.api.outcome(request_id, "paid")
        return (f"paid; ann {self.api.balance(f'/api/members/{self.ann}')}, "
                f"bob {self.api.balance(f'/api/members/{self.bob}')}")

    # (6)
    def settle_club(self) -> str:
        """Settlements settle the balance at the end of a past date (SPEC 5): the club's money
        arrived today, so settling to yesterday (local time) finds nothing to settle, and an
        override amount, which may not exceed the net, cannot take today's money either."""
        zone = ZoneInfo(os.environ.get("PAYMENTS_TIME_ZONE", "Australia/Sydney"))
        reference = datetime.now(zone).date() - timedelta(days=1)
        request_id = self.rid("settle")
        body = {"request_id": request_id, "reference_date": reference.isoformat(),
                "organisations": [{"organisation_id": self.club}]}
        try:
            self.api.post("/api/settlements", body)
        except DemoFailed as exc:
            if "reference_date" not in str(exc):
                raise
            # The stack's time zone is behind ours: its yesterday is our day before.
            body["request_id"] = request_id = self.rid("settle-earlier")
            body["reference_date"] = (reference - timedelta(days=1)).isoformat()
            self.api.post("/api/settlements", body)
        done = self.api.outcome(request_id, "completed")
        result = (done.get("organisations") or [{}])[0]
        if result.get("status") != "nothing_to_settle":
            raise DemoFailed(f"the club's money of today was settled to yesterday: {result}")
        return f"{result['status']} for {done.get('reference_date')}: gross {result['gross']}, net {result['net']}"

    # (7)
    def club_tops_up_ann(self) -> str:
        """ORIGINAL 2.7 "Club top-up at table": the club pays the member from its balance."""
        return self.club_pays_ann("club-top-up", "20.00", "Cash at the table", "Club Top Up",
                                  session_id=f"session-{self.suffix}")

    # (8)
    def club_refunds_entry(self) -> str:
        return self.club_pays_ann("event-refund", "15.00", "Congress entry withdrawn", "Refund",
                                  event_id=f"congress-{self.suffix}")

    def club_pays_ann(self, name: str, amount: str, description: str, payment_type: str, **ids: str) -> str:
        request_id = self.rid(name)
        self.api.post("/api/transfers", {
            "request_id": request_id, "from_organisation_id": self.club, "to_member_id": self.ann,
            "amount": amount, "description": description, "payment_type": payment_type, **ids})
        self.api.outcome(request_id, "paid")
        return (f"paid; ann {self.api.balance(f'/api/members/{self.ann}')}, "
                f"club {self.api.balance(f'/api/organisations/{self.club}')}")

    # (9)
    def iou(self) -> str:
        """ORIGINAL 2.11: a director marks ann's table money as owed; she pays it later."""
        raised = self.api.post("/api/ious", {
            "request_id": self.rid("iou"), "organisation_id": self.club, "member_id": self.ann, "amount": "12.00",
            "description": "Table money, Tuesday pairs"})
        request_id = self.rid("iou-paid")
        self.api.post(f"/api/ious/{raised['iou_id']}/pay", {"request_id": request_id})
        self.api.outcome(request_id, "paid")
        owed = [i for i in self.api.get(f"/api/members/{self.ann}/ious")["ious"] if i["iou_id"] == raised["iou_id"]]
        if [i["status"] for i in owed] != ["paid"]:
            raise DemoFailed(f"the IOU is not paid after its payment: {owed}")
        return (f"IOU paid; ann {self.api.balance(f'/api/members/{self.ann}')}, "
                f"club {self.api.balance(f'/api/organisations/{self.club}')}")

    # (10)
    def statements(self) -> str:
        parts = []
        for title, path in ((self.ann, f"/api/members/{self.ann}"), (self.bob, f"/api/members/{self.bob}"),
                            (self.club, f"/api/organisations/{self.club}")):
            rows = self.api.get(f"{path}/statement")["rows"]
            parts.append(format_statement(title, rows))
        return "\n".join(parts)

    # (11)
    def check_balances(self) -> int:
        expected = {
            # ann: 60.00 card top-up, 25.00 to bob, 20.00 from the club's table, 15.00 refunded,
            # 12.00 IOU paid.
            f"/api/members/{self.ann}": ("ann", "58.00"),
            # bob: 100.00 auto top-up on saving the card; paying 150.00 with 100.00 and U = 100:
            # SPEC 4.2, B >= L, T = max(U, A) = 150.00, so 100 + 150 - 150; then + 25.00 from ann.
            f"/api/members/{self.bob}": ("bob", "125.00"),
            # club: 150.00 from bob (kept until a settlement to a date after today), less 20.00
            # topped up and 15.00 refunded, plus the 12.00 IOU.
            f"/api/organisations/{self.club}": ("club", "127.00"),
        }
        self.step += 1
        print(f"[{self.step}/{STEPS}] final balances ...", end="", flush=True)
        differ, seen = [], []
        for path, (name, wanted) in expected.items():
            actual = self.api.balance(path)
            seen.append(f"{name} {actual}")
            if actual != wanted:
                differ.append(f"{name} is {actual}, expected {wanted}")
        if differ:
            print(" FAILED", flush=True)
            print(f"balances differ from the story: {'; '.join(differ)}", file=sys.stderr, flush=True)
            return 1
        print(" ok", flush=True)
        print(f"balances as expected: {', '.join(seen)}", flush=True)
        return 0


def format_statement(title: str, rows: list[dict[str, Any]]) -> str:
    """A statement as a text table, oldest line first (the API gives newest first)."""
    columns = ("date", "counterparty", "type", "description", "amount", "balance")
    table = [[str(row.get(c) or "")[:19].replace("T", " ") if c == "date" else str(row.get(c) or "")
              for c in columns] for row in reversed(rows)]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    right = {"amount", "balance"}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.rjust(w) if col in right else cell.ljust(w)
                         for cell, w, col in zip(cells, widths, columns))

    out = [f"  statement of {title}", "    " + line([c.capitalize() for c in columns]),
           "    " + "  ".join("-" * w for w in widths)]
    out += ["    " + line(r) for r in table] or ["    (no lines)"]
    return "\n".join(out)


# Entry point --------------------------------------------------------------------------------


def load_run_info(path: Path = RUN_FILE) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise DemoFailed(f"{path} not found: start `payments run` in this directory first") from None
    except (OSError, ValueError) as exc:
        raise DemoFailed(f"cannot read {path}: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="payments demo", description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="the API address (default: var/run.json's, else http://127.0.0.1:8000)")
    args = parser.parse_args(argv)
    try:
        info = load_run_info()
        base = args.url or info.get("api") or "http://127.0.0.1:8000"
        token = info.get("api_token") or os.environ.get("PAYMENTS_API_TOKEN")
        if not token:
            raise DemoFailed(f"no API token: none in {RUN_FILE} and PAYMENTS_API_TOKEN is not set")
        if not info.get("stripe") or not info.get("stripe_webhook_secret"):
            raise DemoFailed(f"{RUN_FILE} names no localstripe: the demo needs `payments run` without "
                             "PAYMENTS_STRIPE_API_KEY (it plays the browser against localstripe)")
        story = Story(Api(base, token), Browser(info["stripe"]), info["stripe_webhook_secret"],
                      f"{time.strftime('%H%M%S')}{uuid.uuid4().hex[:4]}")
        return story.run()
    except DemoFailed as exc:
        print(f"demo failed: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("demo interrupted", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
