"""The OpenAPI 3.1 description of `/api/*`, generated from the code: the app's url_map gives
every route, its methods and path parameters; `OPERATIONS` (one entry per view, keyed by its
endpoint) gives its query parameters, body and answer models (`webhook.schemas`); pydantic
writes the models' JSON Schema into the components.

`GET /api/openapi.json` serves it and `GET /api/docs` renders it as plain HTML on the server
(no script, nothing from another origin). Both are public, like the pages for people
(CONTRACT): the description holds no data and no secret, and a reader needs it before they have
a token. They live in their own blueprint, outside `api`, so the client check and the rate
limiter (which run for the `api` blueprint only) do not apply to exactly these two routes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from flask import Blueprint, Flask, Response, current_app
from flask.typing import ResponseReturnValue
from markupsafe import escape
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from shared import bodies, specific_transactions, statements
from shared.balances_report import Kind
from shared.periods import PRESETS
from webhook import schemas as s

blueprint = Blueprint("openapi", __name__)

JSON, CSV, XLSX = "application/json", "text/csv", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
# CONTRACT's error statuses; 405 too, which Flask answers (in the error shape) for a path id
# that names another route.
ERROR_STATUSES = (400, 401, 403, 404, 405, 409, 413, 422, 429, 503)
PUBLIC_PATHS = ("/api/openapi.json", "/api/docs")


@dataclass(frozen=True)
class Operation:
    summary: str
    answer: type[BaseModel] | None  # None: no JSON answer, only `downloads`
    body: type[BaseModel] | None = None
    query: tuple[str, ...] = ()
    # The status of a new thing (201 created, 202 accepted); 200 is its replay.
    new: int | None = None
    downloads: tuple[str, ...] = ()  # media types besides JSON, chosen by ?format= (or ?file=)
    links: dict[str, dict[str, Any]] = field(default_factory=dict)
    required: dict[str, dict[str, Any]] = field(default_factory=dict)  # required query parameters


PERIOD = ("period", "from", "to")
PAGE = ("limit", "cursor")

# Each /api view, by endpoint. A route missing here is missing from the description, and
# tests/integration/test_openapi.py fails.
OPERATIONS: dict[str, Operation] = {
    "api.put_member": Operation(
        "Create or update a member", s.Member, s.MemberIn, new=201,
        links={"PayAsThisMember": {
            "operationId": "api.movements.post_payment",
            "requestBody": {"member_id": "$response.body#/member_id", "request_id": "$response.body#/member_id",
                            "amount": "1.00", "description": "openapi link"},
            "description": "the member just stored pays (then read the request)"}}),
    "api.get_member": Operation("A member's profile", s.Member),
    "api.member_balance": Operation("A member's balance, now or at the end of `date`", s.Balance, query=("date",)),
    "api.member_statement": Operation(
        "A member's statement: a page of JSON, or the whole range as CSV or XLSX", s.Statement,
        query=("format", *PERIOD, *PAGE), downloads=(CSV, XLSX)),
    "api.put_organisation": Operation("Create or update an organisation", s.Organisation, s.OrganisationIn, new=201),
    "api.get_organisation": Operation("An organisation's profile", s.Organisation),
    "api.organisation_balance": Operation("An organisation's balance, now or at the end of `date`", s.Balance,
                                          query=("date",)),
    "api.organisation_statement": Operation(
        "An organisation's statement", s.Statement,
        query=("format", *PERIOD, *PAGE, "event_id", "session_id", "type", "search"), downloads=(CSV, XLSX)),
    "api.organisation_summary": Operation("An organisation's totals by entry type", s.Summary, query=("days",)),
    "api.post_adjustment": Operation("Book an admin adjustment", s.Adjustment, s.AdjustmentIn, new=201),
    "api.admin_summary": Operation("Totals across the service, and Stripe's balance", s.AdminSummary),
    "api.movements.post_payment": Operation(
        "Pay from a member's balance (or by card)", s.RequestStatus, s.PaymentIn, new=202,
        links={"ReadThisRequest": {
            "operationId": "api.movements.get_request",
            "parameters": {"request_id": "$response.body#/request_id"},
            "description": "the request's outcome"}}),
    "api.movements.post_transfer": Operation("Move money between accounts", s.RequestStatus, s.TransferIn, new=202),
    "api.movements.post_settlement": Operation("Settle organisations", s.RequestStatus, s.SettlementIn, new=202),
    "api.movements.post_refund": Operation("Refund card money", s.RequestStatus, s.RefundIn, new=202),
    "api.movements.post_topup": Operation("Top up a member's balance by card", s.RequestStatus, s.TopupIn, new=202),
    "api.movements.get_request": Operation("Any request's status", s.RequestStatus),
    "api.cards.setup": Operation("Start saving a card for auto top-up (a SetupIntent)", s.AutoTopupSetup),
    "api.cards.change_amount": Operation("Change the auto top-up amount", s.AutoTopupState, s.AutoTopupAmountIn),
    "api.cards.cancel": Operation("Turn auto top-up off", s.AutoTopupState),
    "api.ious.post_iou": Operation("Raise an IOU", s.Iou, s.IouIn, new=201),
    "api.ious.member_ious": Operation("A member's IOUs", s.IouList, query=("status",)),
    "api.ious.organisation_ious": Operation("An organisation's IOUs", s.IouList, query=("status",)),
    "api.ious.pay_iou": Operation("Pay an IOU", s.RequestStatus, s.IouPayIn, new=202),
    "api.ious.cancel_iou": Operation("Cancel an IOU", s.Iou),
    "api.club_reports.organisation_report": Operation(
        "A club's report", s.ClubReport,
        query=("format", "view", *PERIOD, "search", "type", *PAGE), downloads=(XLSX,)),
    "api.club_reports.movement_report": Operation("The movement report", s.MovementReport, query=("format", *PERIOD),
                                                  downloads=(CSV, XLSX)),
    "api.settlement_reads.get_settlement_candidates": Operation(
        "What a settlement would pay", s.SettlementCandidates, query=("reference_date", "format"), downloads=(CSV,)),
    "api.settlement_reads.get_settlements": Operation(
        "Settlements made", s.Settlements, query=("organisation_id", *PERIOD, *PAGE)),
    "api.settlement_reads.get_settlement_bank_file": Operation(
        "A settlement's bank file (CSV only)", None, downloads=(CSV,)),
    "api.settlement_reads.get_card_payments": Operation(
        "Card money taken", s.CardPayments, query=("member_id", *PERIOD, "refundable", *PAGE)),
    "api.reports.balances": Operation(
        "Balances report", s.BalancesPage, query=("date", "format", *PAGE), downloads=(CSV, XLSX),
        required={"kind": {"type": "string", "enum": [k.value for k in Kind]}}),
    "api.reports.reconciliation_report": Operation("Reconciliation report", s.Reconciliation, query=("date", "file"),
                                                   downloads=(CSV,)),
    "api.reports.specific_transactions_report": Operation(
        "Transactions of one type", s.SpecificTransactions, query=(*PERIOD, "format", *PAGE), downloads=(CSV,),
        required={"type": {"type": "string", "enum": sorted(specific_transactions.TYPES)}}),
}

# Query parameters by name: all optional; the route's own checks answer 400 naming a bad one.
_DATE = {"type": "string", "format": "date", "description": "YYYY-MM-DD, local time"}
QUERY: dict[str, dict[str, Any]] = {
    "date": _DATE, "from": _DATE, "to": _DATE, "reference_date": _DATE,
    "period": {"type": "string", "enum": list(PRESETS), "description": "a named period (not with from/to)"},
    "format": {"type": "string", "enum": ["json", "csv", "xlsx"]},
    "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "description": "rows a page holds"},
    "cursor": {"type": "string", "description": "next_cursor of the page before"},
    "event_id": {"type": "string"}, "session_id": {"type": "string"}, "type": {"type": "string"},
    "search": {"type": "string"}, "status": {"type": "string"},
    # What statements.summary_days takes (30 when absent).
    "days": {"type": "string", "enum": list(statements.SUMMARY_PERIODS), "description": "the last 30, 90 or 365 days, or all"},
    "view": {"type": "string"}, "organisation_id": {"type": "string"}, "member_id": {"type": "string"},
    "refundable": {"type": "string", "enum": ["true", "false"]}, "kind": {"type": "string"},
    "file": {"type": "string"},
}
PATH: dict[str, dict[str, Any]] = {
    "iou_id": {"type": "string", "pattern": r"^[1-9][0-9]{0,17}$"},
}


def _path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def api_rules(app: Flask) -> list[tuple[str, str, str]]:
    """(method, rule, endpoint) of every route under /api/ but the two public ones here."""
    return sorted(
        (method, rule.rule, rule.endpoint)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/") and rule.rule not in PUBLIC_PATHS
        for method in rule.methods - {"HEAD", "OPTIONS"}
    )


def document(app: Flask) -> dict[str, Any]:
    models = {op.answer for op in OPERATIONS.values() if op.answer} | {op.body for op in OPERATIONS.values() if op.body}
    _, defs = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)] + [(s.Error, "validation")],
        ref_template="#/components/schemas/{model}",
    )
    paths: dict[str, dict[str, Any]] = {}
    for method, rule, endpoint in api_rules(app):
        op = OPERATIONS.get(endpoint)
        if op is None:
            continue  # the test names it
        paths.setdefault(_path(rule), {})[method.lower()] = _operation(app, rule, endpoint, op)
    return {
        "openapi": "3.1.0",
        "info": {"title": "cobalt-payments API", "version": "1",
                 "description": "Money as strings with two decimals; errors as {\"error\": {code, message, field}}."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "a client's token (`payments clients add`)"}},
        },
    }


def _operation(app: Flask, rule: str, endpoint: str, op: Operation) -> dict[str, Any]:
    arguments = next(r.arguments for r in app.url_map.iter_rules() if r.rule == rule and r.endpoint == endpoint)
    parameters = [
        {"name": name, "in": "path", "required": True,
         "schema": PATH.get(name, {"type": "string", "pattern": bodies.ID_PATTERN})}
        for name in sorted(arguments)
    ] + [{"name": name, "in": "query", "required": True, "schema": schema} for name, schema in op.required.items()
         ] + [{"name": name, "in": "query", "required": False, "schema": QUERY[name]} for name in op.query]
    answer: dict[str, Any] = {"description": "done", "content": {}}
    if op.answer is not None:
        answer["content"][JSON] = {"schema": {"$ref": f"#/components/schemas/{op.answer.__name__}"}}
    for media in op.downloads:
        answer["content"][media] = {"schema": {"type": "string", "format": "binary"}}
    if op.links:
        answer["links"] = op.links
    responses: dict[str, Any] = {"200": answer}
    if op.new is not None:
        responses["200"] = {**answer, "description": "the same request again: its stored answer"}
        responses[str(op.new)] = {**answer, "description": "created" if op.new == 201 else "accepted"}
    error = {"$ref": "#/components/schemas/Error"}
    for status in ERROR_STATUSES:
        responses[str(status)] = {"description": "refused", "content": {JSON: {"schema": error}}}
    described: dict[str, Any] = {"operationId": endpoint, "summary": op.summary, "parameters": parameters,
                                 "responses": responses}
    if op.body is not None:
        described["requestBody"] = {"required": True, "content": {JSON: {
            "schema": {"$ref": f"#/components/schemas/{op.body.__name__}"}}}}
    return described


@lru_cache(maxsize=8)
def _cached(app: Flask) -> str:
    return json.dumps(document(app), indent=1)


@blueprint.get("/api/openapi.json")
def openapi_json() -> ResponseReturnValue:
    return Response(_cached(current_app._get_current_object()), mimetype=JSON)  # type: ignore[attr-defined]


@blueprint.get("/api/docs")
def docs() -> ResponseReturnValue:
    described = json.loads(_cached(current_app._get_current_object()))  # type: ignore[attr-defined]
    response = Response(render(described), mimetype="text/html")
    response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
    return response


def render(described: dict[str, Any]) -> str:
    """The description as one HTML page: each operation with its parameters, body and answers."""
    out = ["<!doctype html><html lang=en><head><meta charset=utf-8><title>cobalt-payments API</title>",
           "<style>body{font-family:sans-serif;max-width:60em;margin:auto}pre{background:#f4f4f4;padding:.5em;"
           "overflow:auto}code{font-weight:bold}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
           "padding:.2em .5em;text-align:left;vertical-align:top}</style></head><body>",
           f"<h1>{escape(described['info']['title'])}</h1><p>{escape(described['info']['description'])}</p>",
           "<p>Every operation needs <code>Authorization: Bearer &lt;token&gt;</code>. "
           "The same description as JSON: <a href=\"/api/openapi.json\">/api/openapi.json</a>.</p><h2>Operations</h2><ul>"]
    for path, methods in described["paths"].items():
        for method, op in methods.items():
            out.append(f"<li><a href=\"#{escape(op['operationId'])}\">{method.upper()} {escape(path)}</a>"
                       f" {escape(op['summary'])}</li>")
    out.append("</ul>")
    for path, methods in described["paths"].items():
        for method, op in methods.items():
            out.append(f"<h3 id=\"{escape(op['operationId'])}\">{method.upper()} {escape(path)}</h3>"
                       f"<p>{escape(op['summary'])}</p>")
            if op["parameters"]:
                out.append("<p>Parameters: " + ", ".join(
                    f"<code>{escape(p['name'])}</code> ({p['in']}{', required' if p['required'] else ''}: "
                    f"{escape(_type(p['schema']))})" for p in op["parameters"]) + "</p>")
            if "requestBody" in op:
                out.append(f"<p>Body: {_link(op['requestBody']['content'][JSON]['schema'])}</p>")
            ok = {k: v for k, v in op["responses"].items() if k.startswith("2")}
            out.append("<p>Answers: " + ", ".join(
                f"{k} {_answer(v['content'])}" for k, v in ok.items())
                + ", " + ", ".join(k for k in op["responses"] if not k.startswith("2")) + " <a href=\"#Error\">Error</a></p>")
    out.append("<h2>Schemas</h2>")
    for name, schema in described["components"]["schemas"].items():
        out.append(f"<h3 id=\"{escape(name)}\">{escape(name)}</h3><p>{escape(schema.get('description', ''))}</p>")
        required = set(schema.get("required", ()))
        rows = "".join(
            f"<tr><td><code>{escape(field)}</code>{' (required)' if field in required else ''}</td>"
            f"<td>{escape(_type(spec))}</td><td>{escape(spec.get('description', ''))}</td></tr>"
            for field, spec in schema.get("properties", {}).items())
        if rows:
            out.append(f"<table><tr><th>field</th><th>type</th><th>notes</th></tr>{rows}</table>")
        out.append(f"<details><summary>JSON Schema</summary><pre>{escape(json.dumps(schema, indent=1))}</pre></details>")
    out.append("</body></html>")
    return "".join(out)


def _type(schema: dict[str, Any]) -> str:
    """A JSON Schema in a few words: `string`, `Money or null`, `one of a, b`."""
    if "$ref" in schema:
        return str(schema["$ref"].rpartition("/")[2])
    if "enum" in schema:
        return "one of " + ", ".join(map(str, schema["enum"]))
    if "const" in schema:
        return json.dumps(schema["const"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " or ".join(_type(branch) for branch in schema[key])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {_type(schema.get('items', {}))}"
    if isinstance(kind, list):
        return " or ".join(kind)
    pattern = f" matching {schema['pattern']}" if "pattern" in schema else ""
    return f"{kind}{pattern}"


def _answer(content: dict[str, Any]) -> str:
    return _link(content[JSON]["schema"]) if JSON in content else escape(", ".join(content))


def _link(schema: dict[str, Any]) -> str:
    name = schema["$ref"].rpartition("/")[2]
    return f"<a href=\"#{escape(name)}\">{escape(name)}</a>"
