"""Every JSON answer of a `GET /api/*` route, built from real rows, matches the OpenAPI
description (`webhook.openapi`, models in `webhook.schemas`). schemathesis checks the answers too,
but its seed has no settlement, card payment or report rows, so the row models of those answers
were never held against a real one.

A small history is booked through the service's own paths (the API stores each request; the
decision is the worker's function, called here as the worker calls it), then every GET operation
the served description lists as answering JSON is called, with the seeded ids for its path and
queries that make each list hold rows, and the body is validated against the operation's
response schema, `$ref`s resolved in the served document. A new route is called too (with the
seeded id of each path parameter and no query) without an entry in `CALLS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from flask.testing import FlaskClient
from freezegun import freeze_time
from jsonschema_rs import Draft202012Validator, Registry
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared import payments, refunds, requests, settlements, topups, transfers
from shared.config import Settings
from shared.models import CardPayment
from shared.stripe_balance import LiveBalance
from shared.stripe_gateway import CardDetails

JSON = "application/json"
# Sydney (AEDT, UTC+11): the history is in February 2026 and the settlement on 3 March.
FEBRUARY = {"from": "2026-02-01", "to": "2026-02-28"}
BOTH_MONTHS = {"from": "2026-02-01", "to": "2026-03-31"}
NOW = "2026-03-10T01:00:00Z"  # 10 March, 12:00 local


@dataclass(frozen=True)
class Call:
    """One GET: path ids besides the seeded defaults, the query, and the JSON pointers of the
    lists that must hold rows (so the schema was checked against real rows)."""

    query: dict[str, str] = field(default_factory=dict)
    rows: tuple[str, ...] = ()
    ids: dict[str, str] = field(default_factory=dict)


# The id each path parameter gets unless a call names another; `<...>` is an id the history
# only knows once booked (`book_history` returns them).
IDS = {"member_id": "ann", "org_id": "club", "request_id": "pay-event", "iou_id": "<iou-paid>"}

# Calls by operationId. An operation not named here is still called once, with no query.
CALLS: dict[str, list[Call]] = {
    "api.member_statement": [Call({"period": "all"}, ("/rows",)), Call({**FEBRUARY, "limit": "2"}, ("/rows",))],
    "api.member_balance": [Call(), Call({"date": "2026-02-28"})],
    "api.organisation_balance": [Call(), Call({"date": "2026-02-28"})],
    "api.organisation_statement": [
        Call({"period": "all"}, ("/rows",)),
        Call({"period": "all", "event_id": "EV-1"}, ("/rows",)),
        Call({"period": "all", "session_id": "S-1"}, ("/rows",)),
        Call({"period": "all", "type": "Settlement"}, ("/rows",)),
        Call({"period": "all", "search": "Table"}, ("/rows",)),
    ],
    "api.organisation_summary": [Call({"days": "all"}, ("/by_type",)), Call({"days": "365"}, ("/by_type",)), Call()],
    "api.ious.member_ious": [Call({}, ("/ious",)), Call({"status": "open"}, ("/ious",))],
    "api.ious.organisation_ious": [Call({}, ("/ious",)), Call({"status": "paid"}, ("/ious",))],
    "api.movements.get_request": [
        Call(ids={"request_id": request_id}) for request_id in
        ("pay-event", "pay-session", "pay-membership", "pay-other", "topup-ann", "xfer-1", "set-feb", "refund-1",
         "<iou-payment>")
    ],
    "api.club_reports.organisation_report": [
        Call({"view": "movement", **FEBRUARY}),
        *(Call({"view": view, **FEBRUARY}, ("/rows",)) for view in ("sessions", "events")),
        *(Call({"view": view, **BOTH_MONTHS}, ("/rows",)) for view in ("membership", "other", "transactions")),
        Call({"view": "transactions", "period": "all", "search": "Table", "limit": "1"}, ("/rows",)),
        Call({"view": "transactions", "period": "all", "type": "Settlement"}, ("/rows",)),
    ],
    "api.club_reports.movement_report": [Call(BOTH_MONTHS, ("/rows",))],
    "api.settlement_reads.get_settlement_candidates": [Call({"reference_date": "2026-02-28"}, ("/organisations",))],
    "api.settlement_reads.get_settlements": [Call({"period": "all"}, ("/rows",)),
                                             Call({"organisation_id": "club", "period": "all"}, ("/rows",))],
    "api.settlement_reads.get_card_payments": [Call({"member_id": "ann"}, ("/rows",)),
                                               Call({"period": "all", "refundable": "true"}, ("/rows",))],
    "api.reports.balances": [Call({"kind": kind, "date": "2026-03-09"}, ("/rows",))
                             for kind in ("member", "organisation")],
    "api.reports.reconciliation_report": [Call({"date": "2026-02-28"}, ("/movements",)),
                                          Call({"date": "2026-03-09"}, ("/movements",))],
    "api.reports.specific_transactions_report": [
        Call({"type": "adjustments", **BOTH_MONTHS}, ("/members", "/organisations")),
        Call({"type": "settlements", **BOTH_MONTHS}, ("/organisations",)),
    ],
}


# The history -------------------------------------------------------------------------------


DECIDE: dict[str, tuple[Callable[[dict[str, Any]], Any], Callable[[Session, Any, Settings], Any]]] = {
    "payment": (payments.PaymentOrder.from_payload, payments.pay),
    "transfer": (transfers.TransferOrder.from_payload, transfers.transfer),
    "settlement": (settlements.SettlementOrder.from_payload, settlements.settle),
    "topup": (topups.TopupOrder.from_payload, topups.topup),
    "refund": (refunds.RefundOrder.from_payload, refunds.book),
}


class History:
    def __init__(self, client: FlaskClient, auth: dict[str, str], sessions: sessionmaker[Session]) -> None:
        self.client, self.auth, self.sessions = client, auth, sessions

    def send(self, method: str, path: str, body: dict[str, Any], status: int) -> dict[str, Any]:
        answer = self.client.open(path, method=method, json=body, headers=self.auth)
        assert answer.status_code == status, (path, answer.get_data(as_text=True))
        return answer.get_json()  # type: ignore[no-any-return]

    def decide(self, request_id: str) -> str:
        """What the worker does with the stored request."""
        with self.sessions.begin() as session:
            stored = requests.get(session, request_id)
            from_payload, act = DECIDE[stored.kind]
            return str(act(session, from_payload(stored.payload), Settings()).status)

    def ask(self, path: str, body: dict[str, Any], *, paid: str = "paid") -> None:
        self.send("POST", path, body, 202)
        assert self.decide(body["request_id"]) == paid, body["request_id"]


def book_history(frozen: Any, history: History, sessions: sessionmaker[Session]) -> dict[str, str]:
    """ann and bob; club (2.50 %, bank details) and other. ann tops up 200.00 by card (30.00
    refunded later); bob gets a 60.00 adjustment, club a -1.25 one. ann pays club for an event,
    a session and membership; bob pays other; club refunds bob part of the event; an IOU is paid
    and another left open. club is settled to 28 February on 3 March; other stays a candidate."""
    send, ask = history.send, history.ask
    frozen.move_to("2026-02-02T01:00:00Z")
    for member_id, first, last in (("ann", "Ann", "Lee"), ("bob", "Bob", "Ray")):
        send("PUT", f"/api/members/{member_id}",
             {"email": f"{member_id}@example.org", "first_name": first, "last_name": last}, 201)
    send("PUT", "/api/organisations/club", {"name": "North Shore Bridge Club", "settlement_fee_percent": "2.50",
                                            "bank_bsb": "062-000", "bank_account": "00123456"}, 201)
    send("PUT", "/api/organisations/other", {"name": "Harbour Club"}, 201)

    # A top-up by card, as the checkout's success books it.
    send("POST", "/api/members/ann/topups", {"request_id": "topup-ann", "amount": "200.00"}, 202)
    assert history.decide("topup-ann") == "queued"  # the card is asked after commit
    with sessions.begin() as session:
        attempt = session.scalars(select(CardPayment).where(CardPayment.request_id == "topup-ann")).one()
        topups.book_card_money(session, attempt, payment_intent_id="pi_ann_1",
                               card=CardDetails("visa", "4242", 12, 2030, "https://pay.example/receipt"))
        payments.card_money_arrived(session, attempt, Settings())

    frozen.move_to("2026-02-03T02:00:00Z")
    send("POST", "/api/adjustments", {"request_id": "adj-bob", "member_id": "bob", "amount": "60.00",
                                      "description": "Goodwill credit", "admin_id": "admin-7"}, 201)

    frozen.move_to("2026-02-05T08:00:00Z")
    ask("/api/payments", {"request_id": "pay-event", "member_id": "ann", "organisation_id": "club",
                          "amount": "25.00", "description": "Congress entry", "payment_type": "Entry to an event",
                          "event_id": "EV-1", "session_id": "S-1"})
    ask("/api/payments", {"request_id": "pay-session", "member_id": "ann", "organisation_id": "club",
                          "amount": "12.00", "description": "Table money 5 Feb", "payment_type": "Club Payment",
                          "session_id": "S-1"})
    ask("/api/payments", {"request_id": "pay-membership", "member_id": "ann", "organisation_id": "club",
                          "amount": "40.00", "description": "Membership 2026", "payment_type": "Club Membership"})
    ask("/api/payments", {"request_id": "pay-other", "member_id": "bob", "organisation_id": "other",
                          "amount": "15.00", "description": "Raffle", "payment_type": "Miscellaneous"})
    send("POST", "/api/adjustments", {"request_id": "adj-club", "organisation_id": "club", "amount": "-1.25",
                                      "description": "Scorer fee correction", "admin_id": "admin-7"}, 201)

    frozen.move_to("2026-02-10T03:00:00Z")
    ask("/api/transfers", {"request_id": "xfer-1", "from_organisation_id": "club", "to_member_id": "bob",
                           "amount": "5.00", "description": "Part refund of entry", "payment_type": "Refund",
                           "event_id": "EV-1"})
    paid = send("POST", "/api/ious", {"request_id": "iou-1", "organisation_id": "club", "member_id": "ann",
                                      "amount": "12.50", "description": "Table money 10 Feb", "session_id": "S-2",
                                      "route_code": "UPP", "route_payload": {"entry": 5}}, 201)
    send("POST", "/api/ious", {"request_id": "iou-2", "organisation_id": "club", "member_id": "ann",
                               "amount": "7.00", "description": "Bar tab"}, 201)
    ask(f"/api/ious/{paid['iou_id']}/pay", {"request_id": "iou-1-pay"})

    frozen.move_to("2026-03-03T04:00:00Z")
    ask("/api/settlements", {"request_id": "set-feb", "reference_date": "2026-02-28",
                             "organisations": [{"organisation_id": "club"}]}, paid="completed")
    ask("/api/refunds", {"request_id": "refund-1", "by": "admin", "admin_id": "admin-7",
                         "payment_intent_id": "pi_ann_1", "amount": "30.00"}, paid="queued")  # Stripe is asked after commit
    return {"<iou-paid>": str(paid["iou_id"]), "<iou-payment>": "iou-1-pay"}


# Validation --------------------------------------------------------------------------------


def closed(described: dict[str, Any]) -> dict[str, Any]:
    """The document with every object schema that names its properties closed to others: the
    models allow more (answers may grow), but a field the service sends should be described."""
    def close(node: Any) -> Any:
        if isinstance(node, list):
            return [close(item) for item in node]
        if not isinstance(node, dict):
            return node
        tightened = {key: close(value) for key, value in node.items()}
        if isinstance(node.get("properties"), dict):
            tightened["additionalProperties"] = False
        return tightened

    return {**described, "components": close(described["components"])}


def validator(registry: Registry, schema: dict[str, Any]) -> Draft202012Validator:
    """The operation's schema, its `$ref`s (`#/components/...`) resolved in the served document
    (registered as `urn:api`); formats are checked too."""
    ref = schema["$ref"]
    assert ref.startswith("#/"), f"an inline answer schema: {schema}"
    return Draft202012Validator({"$ref": f"urn:api{ref}"}, registry=registry, validate_formats=True)


def branch_of(described: dict[str, Any], schema: dict[str, Any], body: Any) -> dict[str, Any] | None:
    """The `oneOf` branch an answer's discriminator names (a club report's `view`), so that a
    mismatch is reported inside it and not as "valid under none of the branches"."""
    union = described["components"]["schemas"][schema["$ref"].rpartition("/")[2]]
    discriminator = union.get("discriminator")
    if discriminator is None or not isinstance(body, dict):
        return None
    ref = discriminator.get("mapping", {}).get(body.get(discriminator["propertyName"]))
    return None if ref is None else {"$ref": ref}


def problems(registry: Registry, described: dict[str, Any], schema: dict[str, Any], body: Any) -> list[str]:
    """Where and why the body breaks the schema; [] when it matches."""
    branch = branch_of(described, schema, body)
    for checked in ([branch] if branch else []) + [schema]:
        found = validator(registry, checked).iter_errors(body)
        listed = sorted(f"at /{'/'.join(map(str, error.instance_path))}: {error.message}" for error in found)
        if listed:
            return listed
    return []


def at(body: Any, pointer: str) -> Any:
    for part in pointer.strip("/").split("/"):
        body = body[int(part)] if isinstance(body, list) else body[part]
    return body


def json_gets(described: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(path, operationId, the 200's JSON schema) of every GET answering JSON on 200."""
    for path, methods in described["paths"].items():
        op = methods.get("get")
        if op is not None and JSON in op["responses"]["200"].get("content", {}):
            yield path, op["operationId"], op["responses"]["200"]["content"][JSON]["schema"]


def url_of(path: str, call: Call, seeded: dict[str, str]) -> str:
    url = path
    for name in [part[1:-1] for part in path.split("/") if part.startswith("{")]:
        assert name in {**IDS, **call.ids}, f"{path}: no seeded id for the path parameter {name}; add one to IDS"
        value = {**IDS, **call.ids}[name]
        url = url.replace(f"{{{name}}}", seeded.get(value, value))
    return url


# The test -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    endpoint: str
    url: str
    schema: dict[str, Any]
    call: Call
    body: Any


def answers_to_every_json_get(client: FlaskClient, auth: dict[str, str], described: dict[str, Any],
                              seeded: dict[str, str]) -> list[Answer]:
    answers = []
    for path, endpoint, schema in json_gets(described):
        for call in CALLS.get(endpoint, [Call()]):
            url = url_of(path, call, seeded)
            response = client.get(url, query_string=call.query, headers=auth)
            shown = f"{endpoint} GET {url}?{'&'.join(f'{k}={v}' for k, v in call.query.items())}"
            assert response.status_code == 200, (shown, response.get_data(as_text=True))
            answers.append(Answer(endpoint, shown, schema, call, response.get_json()))
    return answers


def test_every_json_answer_built_from_real_rows_matches_its_description(app, client, auth, sessions) -> None:  # type: ignore[no-untyped-def]
    # Stripe's balance as last read, so the admin summary shows the object and not null.
    app.extensions["payments"]["stripe_balance"] = LiveBalance(lambda: 1234_56)
    described = client.get("/api/openapi.json").get_json()
    with freeze_time("2026-02-01T00:00:00Z") as frozen:
        seeded = book_history(frozen, History(client, auth, sessions), sessions)
        frozen.move_to(NOW)
        answers = answers_to_every_json_get(client, auth, described, seeded)

    operations = {endpoint for _, endpoint, _ in json_gets(described)}
    assert len(operations) >= 19
    assert {answer.endpoint for answer in answers} == operations
    assert set(CALLS) <= operations, f"stale entries in CALLS: {set(CALLS) - operations}"
    registry = Registry([("urn:api", closed(described))])
    failures = []
    for answer in answers:
        failures += [f"{answer.url} {problem}" for problem in problems(registry, described, answer.schema, answer.body)]
        failures += [f"{answer.url} at {pointer}: no rows, so the rows' model went unchecked"
                     for pointer in answer.call.rows if not at(answer.body, pointer)]
    assert not failures, "answers that do not match the description:\n" + "\n".join(failures)
