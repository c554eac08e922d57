"""The federation's reports over HTTP (CONTRACT "Statements, reports and lists"; ORIGINAL 6.5 to
6.7): balances at a date, reconciliation at a reference date, and the specific transactions
(adjustments or settlements) of a period. Reads for the `reports` scope; the rules and queries
are in shared/ (balances_report, reconciliation, specific_transactions). Arguments are checked
before a download starts, so a bad one is still a JSON 400."""

from __future__ import annotations

from datetime import date

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from shared import access, balances_report, periods, reconciliation, specific_transactions
from shared.balances_report import Kind
from shared.errors import InvalidInput
from shared.models import utcnow
from shared.stripe_balance import LiveBalance
from webhook import context
from webhook.auth import action
from webhook.downloads import csv_download, xlsx_download

blueprint = Blueprint("reports", __name__, url_prefix="/reports")

RECONCILIATION_FILES = ("reconciliation", "member_balances", "organisation_balances")


@blueprint.get("/balances")
@action(access.REPORTS_FEDERATION)
def balances() -> ResponseReturnValue:
    zone = context.settings().time_zone
    kind = balances_report.parse_kind(request.args.get("kind"))
    day = balances_report.report_date(request.args, "date", _today())
    wanted = _format(("json", "csv", "xlsx"))
    filename = f"{kind.value}-balances-{day.isoformat()}"
    if wanted == "csv":
        return csv_download(f"{filename}.csv",
                            lambda session: balances_report.export_rows(session, kind, day, zone, money="text"))
    if wanted == "xlsx":
        title = balances_report.TITLES[kind]
        return xlsx_download(f"{filename}.xlsx", lambda session: [
            (title, balances_report.export_rows(session, kind, day, zone, money="decimal"))])
    size = balances_report.limit(request.args)
    after = balances_report.cursor_id(request.args)
    with context.transaction() as session:
        return jsonify(balances_report.page(session, kind, day, zone, size=size, after=after).as_json())


@blueprint.get("/reconciliation")
@action(access.REPORTS_FEDERATION)
def reconciliation_report() -> ResponseReturnValue:
    zone = context.settings().time_zone
    day = balances_report.report_date(request.args, "date", reconciliation.default_date(_today()))
    wanted = _format(("json", "csv"))
    if wanted == "csv":
        chosen = request.args.get("file", "reconciliation")
        if chosen not in RECONCILIATION_FILES:
            raise InvalidInput(f"file: {chosen!r} is not one of {', '.join(RECONCILIATION_FILES)}", field="file")
        if chosen == "reconciliation":
            now = utcnow()
            return csv_download("reconciliation.csv",
                                lambda session: reconciliation.csv_rows(session, day, zone, now))
        kind = Kind.MEMBER if chosen == "member_balances" else Kind.ORGANISATION
        return csv_download(f"{chosen}.csv",
                            lambda session: reconciliation.balances_csv_rows(session, kind, day, zone))
    if "file" in request.args:
        raise InvalidInput("file: only with format=csv", field="file")
    with context.transaction() as session:
        return jsonify(reconciliation.report(session, day, zone))


@blueprint.get("/transactions")
@action(access.REPORTS_FEDERATION)
def specific_transactions_report() -> ResponseReturnValue:
    zone = context.settings().time_zone
    type_ = specific_transactions.parse_type(request.args.get("type"))
    period = periods.from_args(request.args, _today(), default="last_month")
    wanted = _format(("json", "csv"))
    if wanted == "csv":
        return csv_download(f"{type_.capitalize()}.csv",
                            lambda session: specific_transactions.csv_rows(session, type_, period, zone))
    size = balances_report.limit(request.args)
    after = specific_transactions.parse_cursor(request.args.get("cursor"))
    with context.transaction() as session:
        return jsonify(specific_transactions.page(session, type_, period, zone, size=size, after=after))


def stripe_balance() -> dict[str, object] | None:
    """The admin summary's live Stripe balance (shared.stripe_balance), one cache per process."""
    resources = current_app.extensions["payments"]
    live = resources.get("stripe_balance")
    if live is None:
        live = resources.setdefault("stripe_balance", LiveBalance(context.gateway().available_balance))
    return live.answer(context.settings().time_zone)


def _today() -> date:
    return utcnow().astimezone(context.settings().time_zone).date()


def _format(allowed: tuple[str, ...]) -> str:
    wanted = request.args.get("format", "json")
    if wanted not in allowed:
        raise InvalidInput(f"format: {wanted!r} is not one of {', '.join(allowed)}", field="format")
    return wanted
