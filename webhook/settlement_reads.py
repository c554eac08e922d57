"""Reads of the settlement run and of card money (issue 14 items 4 and 5; CONTRACT
"Statements, reports and lists"); the rules live in shared/settlements.py,
shared/settlement_history.py and shared/card_payments_report.py.

- `GET /api/settlements/candidates?reference_date=[&format=csv]` (default: the last day of
  last month; CSV: ORIGINAL 2.9's export columns).
- `GET /api/settlements?from&to|period[&organisation_id]&limit&cursor`: booked settlements,
  newest first (default period: all, paged).
- `GET /api/settlements/{request_id}/bank-file`: the bank file CSV of one settlement request.
- `GET /api/card-payments?member_id|from&to|period[&refundable=true]&limit&cursor`.

The lists read query arguments that decide who may read them (`organisation_id`,
`member_id`), so they authorise in the view, first, before any argument is checked or row read.
"""

from __future__ import annotations

from datetime import date

from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue

from shared import access, card_payments_report, exports, fields, periods, settlement_history, settlements
from shared.errors import InvalidInput
from shared.keyset import Cursor
from shared.models import utcnow
from shared.money import format_cents
from webhook import auth, context
from webhook.auth import action

blueprint = Blueprint("settlement_reads", __name__)


@blueprint.get("/settlements/candidates")
@action(access.SETTLEMENTS_READ)
def get_settlement_candidates() -> ResponseReturnValue:
    settings = context.settings()
    reference = settlements.reference_date(request.args.get("reference_date"), _today())
    wanted = request.args.get("format", "json")
    if wanted not in ("json", "csv"):
        raise InvalidInput(f"format: {wanted[:20]!r} is not json or csv", field="format")
    with context.transaction() as session:
        found = settlements.candidates(session, reference, settings)
    if wanted == "csv":  # at most one row per organisation
        rows = [settlements.CANDIDATES_CSV_HEADER, *(c.as_csv_row() for c in found)]
        return Response("".join(exports.csv_lines(rows)), mimetype="text/csv", headers={
            "Content-Disposition": f'attachment; filename="settlements-{reference.isoformat()}.csv"'})
    totals = {name: sum(getattr(c.assessment, name) for c in found) for name in ("gross", "net", "fee", "bank")}
    return jsonify({
        "reference_date": reference.isoformat(),
        "organisations": [c.as_json() for c in found],
        "count": len(found),
        "total_gross": format_cents(totals["gross"]),
        "total_net": format_cents(totals["net"]),
        "total_fee": format_cents(totals["fee"]),
        "total_bank": format_cents(totals["bank"]),
    })


@blueprint.get("/settlements")
@action(access.SETTLEMENTS_READ, in_view=True)
def get_settlements() -> ResponseReturnValue:
    raw_org = request.args.get("organisation_id")
    access.authorise(auth.principal(), access.SETTLEMENTS_READ, {"organisation_id": raw_org})
    org = None if raw_org is None else fields.identifier(raw_org, "organisation_id")
    settings = context.settings()
    period = periods.from_args(request.args, _today(), default="all")
    limit, cursor = fields.page_limit(request.args.get("limit")), Cursor.decode(request.args.get("cursor"))
    with context.transaction() as session:
        rows, following = settlement_history.history(
            session, period, settings.time_zone, organisation_id=org, limit=limit, cursor=cursor)
    return jsonify({**period.as_json(), "rows": [row.as_json(settings.time_zone) for row in rows],
                    "next_cursor": None if following is None else following.encode()})


@blueprint.get("/settlements/<request_id>/bank-file")
@action(access.SETTLEMENTS_READ)
def get_settlement_bank_file(request_id: str) -> ResponseReturnValue:
    request_id = fields.identifier(request_id, "request_id")
    with context.transaction() as session:
        reference_date, lines = settlement_history.bank_file_lines(session, request_id)
    # At most one row per organisation: small, so built here, after every check.
    return Response(
        "".join(settlement_history.bank_file_csv(reference_date, lines)),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="bank-file-{request_id}.csv"'},
    )


@blueprint.get("/card-payments")
@action(access.CARD_PAYMENTS_READ, in_view=True)
def get_card_payments() -> ResponseReturnValue:
    raw_member = request.args.get("member_id")
    access.authorise(auth.principal(), access.CARD_PAYMENTS_READ, {"member_id": raw_member})
    settings = context.settings()
    asked_period = any(name in request.args for name in ("period", "from", "to"))
    query = card_payments_report.CardPaymentsQuery(
        member_id=None if raw_member is None else fields.identifier(raw_member, "member_id"),
        period=periods.from_args(request.args, _today(), default="all") if asked_period else None,
        refundable_only=_flag(request.args.get("refundable"), "refundable"),
        limit=fields.page_limit(request.args.get("limit")),
        cursor=Cursor.decode(request.args.get("cursor")),
    )
    with context.transaction() as session:
        found, following = card_payments_report.listing(session, query, settings.time_zone)
        rows = [card_payments_report.as_json(card, settings) for card in found]
    return jsonify({"rows": rows, "next_cursor": None if following is None else following.encode()})


def _today() -> date:
    return utcnow().astimezone(context.settings().time_zone).date()


def _flag(value: str | None, field: str) -> bool:
    if value is None or value == "false":
        return False
    if value == "true":
        return True
    raise InvalidInput(f"{field}: true or false, not {value[:20]!r}", field=field)
