"""Club finance reports over HTTP (CONTRACT "Statements, reports and lists"; the rules are
`shared.club_reports` and `shared.org_movements`): a club's report by view, or its eight-sheet
workbook (`reports`, or `clubs` for its own organisation), and the federation's organisation
movement report (`reports`). Arguments are checked before any download starts, so errors stay
JSON 400s."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session

from shared import access, club_reports, fields, org_movements, periods, profiles
from shared.errors import InvalidInput
from shared.money import format_cents, to_decimal
from webhook import context, downloads
from webhook.auth import action

blueprint = Blueprint("club_reports", __name__)


@blueprint.get("/organisations/<org_id>/report")
@action(access.ORGANISATIONS_REPORT)
def organisation_report(org_id: str) -> ResponseReturnValue:
    org_id = fields.identifier(org_id, "organisation_id")
    zone = context.settings().time_zone
    query = club_reports.parse_query(request.args, datetime.now(zone).date())
    with context.transaction() as session:
        org = profiles.get_organisation(session, org_id)
        if query.format == "json":
            return jsonify(club_reports.report_json(session, org, query, zone))

    def sheets(session: Session) -> Iterator[tuple[str, Iterable[Any]]]:
        return club_reports.workbook(session, profiles.get_organisation(session, org_id), query.period, zone)

    return downloads.xlsx_download(f"statement-{org_id}.xlsx", sheets)


@blueprint.get("/reports/movement")
@action(access.REPORTS_MOVEMENT)
def movement_report() -> ResponseReturnValue:
    zone = context.settings().time_zone
    wanted = request.args.get("format", "json")
    if wanted not in ("json", "csv", "xlsx"):
        raise InvalidInput(f"format: {fields.fit(wanted, 20)!r} is not json, csv or xlsx", field="format")
    period = periods.from_args(request.args, datetime.now(zone).date(), default="last_month")
    name = f"organisation-movement-{period.first}-{period.last}"
    if wanted == "csv":
        return downloads.csv_download(f"{name}.csv", lambda session: org_movements.report_table(
            *org_movements.movement_report(session, period, zone), money=format_cents))
    if wanted == "xlsx":
        return downloads.xlsx_download(f"{name}.xlsx", lambda session: [("Movement Report", org_movements.report_table(
            *org_movements.movement_report(session, period, zone), money=to_decimal))])
    with context.transaction() as session:
        rows, totals = org_movements.movement_report(session, period, zone)
    return jsonify({**period.as_json(), "rows": [org_movements.report_row_json(row) for row in rows],
                    "totals": {key: format_cents(value) for key, value in totals.items()}})
