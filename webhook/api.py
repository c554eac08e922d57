"""The `/api/*` endpoints of CONTRACT: profiles, balances, statements, summaries and
adjustments. Every request needs `Authorization: Bearer <a client's token>` (401 without one)
and a client allowed the route's declared action (403): `webhook.auth` asks `shared.access`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from pydantic import BaseModel

from shared import access, fields, ledger, periods, profiles, statements
from shared.adjustments import Adjustment, book_adjustment
from shared.errors import InvalidInput
from shared.models import Member, Organisation, utcnow
from shared.money import format_cents
from shared.profiles import KEEP, MemberDetails, OrganisationDetails
from webhook import auth, context, schemas
from webhook.auth import action
from webhook.downloads import csv_download, xlsx_download

blueprint = Blueprint("api", __name__, url_prefix="/api")
T = TypeVar("T")

# Every view here (and in the blueprints nested below) is checked by `webhook.auth`, which
# create_app runs for the whole `api` blueprint before the rate limiter.


# Members ----------------------------------------------------------------------------------


@blueprint.put("/members/<member_id>")
@action(access.MEMBERS_WRITE)
def put_member(member_id: str) -> ResponseReturnValue:
    member_id = fields.identifier(member_id, "member_id")
    given = schemas.validated(schemas.MemberIn, context.json_body())
    details = MemberDetails(
        email=given.email,
        first_name=given.first_name,
        last_name=given.last_name,
        low_balance_emails=given.low_balance_emails if "low_balance_emails" in given.model_fields_set else KEEP,
    )
    with context.transaction() as session:
        member, created = profiles.put_member(
            session,
            member_id,
            details,
            default_topup_amount=context.settings().auto_topup_default_amount,
        )
        body = _member_json(member)
    return jsonify(body), 201 if created else 200


@blueprint.get("/members/<member_id>")
@action(access.MEMBERS_READ)
def get_member(member_id: str) -> ResponseReturnValue:
    with context.transaction() as session:
        return jsonify(_member_json(profiles.get_member(session, fields.identifier(member_id, "member_id"))))


@blueprint.get("/members/<member_id>/balance")
@action(access.MEMBERS_BALANCE)
def member_balance(member_id: str) -> ResponseReturnValue:
    member_id = fields.identifier(member_id, "member_id")
    day = request.args.get("date")
    with context.transaction() as session:
        member = profiles.get_member(session, member_id)
        if day is not None:
            return jsonify(_balance_on(session, member.account_id, day, member_id=member_id))
        last = statements.last_top_up(session, member.account_id)
        return jsonify(
            {
                "member_id": member_id,
                "balance": format_cents(ledger.balance(session, member.account_id)),
                "last_top_up": _local_time(last),
                "auto_topup": {
                    "status": member.auto_topup_status,
                    "amount": format_cents(member.auto_topup_amount),
                },
            }
        )


@blueprint.get("/members/<member_id>/statement")
@action(access.MEMBERS_STATEMENT)
def member_statement(member_id: str) -> ResponseReturnValue:
    member_id = fields.identifier(member_id, "member_id")
    for narrowing in _NARROWING:  # a member's statement is short: dates only (CONTRACT)
        if narrowing in request.args:
            raise InvalidInput(f"{narrowing}: only an organisation's statement takes it", field=narrowing)
    with context.transaction() as session:
        account_id = profiles.get_member(session, member_id).account_id
    return _statement_response(account_id, {"member_id": member_id}, f"statement-member-{member_id}")


# Organisations ----------------------------------------------------------------------------


@blueprint.put("/organisations/<org_id>")
@action(access.ORGANISATIONS_WRITE)
def put_organisation(org_id: str) -> ResponseReturnValue:
    org_id = fields.identifier(org_id, "organisation_id")
    given = schemas.validated(schemas.OrganisationIn, context.json_body(), max_amount=context.settings().max_amount)
    details = OrganisationDetails(
        name=given.name,
        settlement_fee_percent=_given(given, "settlement_fee_percent"),
        minimum_balance_after_settlement=_given(given, "minimum_balance_after_settlement"),
        bank_bsb=_given(given, "bank_bsb"),
        bank_account=_given(given, "bank_account"),
    )
    with context.transaction() as session:
        org, created = profiles.put_organisation(session, org_id, details)
        body = _organisation_json(org)
    return jsonify(body), 201 if created else 200


@blueprint.get("/organisations/<org_id>")
@action(access.ORGANISATIONS_PROFILE)
def get_organisation(org_id: str) -> ResponseReturnValue:
    org_id = fields.identifier(org_id, "organisation_id")
    with context.transaction() as session:
        return jsonify(_organisation_json(profiles.get_organisation(session, org_id)))


@blueprint.get("/organisations/<org_id>/balance")
@action(access.ORGANISATIONS_READ)
def organisation_balance(org_id: str) -> ResponseReturnValue:
    org_id = fields.identifier(org_id, "organisation_id")
    day = request.args.get("date")
    with context.transaction() as session:
        org = profiles.get_organisation(session, org_id)
        if day is not None:
            return jsonify(_balance_on(session, org.account_id, day, organisation_id=org_id))
        return jsonify(
            {"organisation_id": org_id, "balance": format_cents(ledger.balance(session, org.account_id))}
        )


@blueprint.get("/organisations/<org_id>/statement")
@action(access.ORGANISATIONS_READ)
def organisation_statement(org_id: str) -> ResponseReturnValue:
    org_id = fields.identifier(org_id, "organisation_id")
    with context.transaction() as session:
        account_id = profiles.get_organisation(session, org_id).account_id
    return _statement_response(account_id, {"organisation_id": org_id}, f"statement-organisation-{org_id}")


@blueprint.get("/organisations/<org_id>/summary")
@action(access.ORGANISATIONS_READ)
def organisation_summary(org_id: str) -> ResponseReturnValue:
    org_id = fields.identifier(org_id, "organisation_id")
    days = statements.summary_days(request.args.get("days"))
    with context.transaction() as session:
        org = profiles.get_organisation(session, org_id)
        summary = statements.summary_by_type(session, org.account_id, days)
    return jsonify({"organisation_id": org_id, **summary})


# Money movements and admin ----------------------------------------------------------------


@blueprint.post("/adjustments")
@action(access.ADJUSTMENTS_CREATE)
def post_adjustment() -> ResponseReturnValue:
    given = schemas.validated(schemas.AdjustmentIn, context.json_body(), max_amount=context.settings().max_amount)
    adjustment = Adjustment(
        request_id=given.request_id,
        amount=given.amount,
        description=given.description,
        admin_id=given.admin_id,
        allow_negative=given.allow_negative,
        member_id=given.member_id,
        organisation_id=given.organisation_id,
    )
    with context.transaction() as session:
        booking = book_adjustment(session, adjustment, client=auth.principal().name)
    result = {
        "request_id": adjustment.request_id,
        "status": "booked",
        "entry_id": booking.entry_id,
        "amount": format_cents(adjustment.amount),
        "created_at": booking.created_at.isoformat(),
        "replayed": booking.replayed,
    }
    return jsonify(result), 200 if booking.replayed else 201


@blueprint.get("/admin/summary")
@action(access.ADMIN_SUMMARY)
def admin_summary() -> ResponseReturnValue:
    with context.transaction() as session:
        summary = statements.admin_summary(session)
    # Read after the transaction ends: Stripe may take its (short) timeout.
    return jsonify({**summary, "stripe_balance": reports.stripe_balance()})


# Shaping ----------------------------------------------------------------------------------


def _given(given: BaseModel, field: str) -> Any:
    """An optional profile field: absent keeps the stored value, null means the default."""
    return getattr(given, field) if field in given.model_fields_set else KEEP


def _member_json(member: Member) -> dict[str, Any]:
    return {
        "member_id": member.member_id,
        "email": member.email,
        "first_name": member.first_name,
        "last_name": member.last_name,
        "low_balance_emails": member.low_balance_emails,
        "auto_topup": {"status": member.auto_topup_status, "amount": format_cents(member.auto_topup_amount)},
    }


def _organisation_json(org: Organisation) -> dict[str, Any]:
    fee = org.settlement_fee_percent
    return {
        "organisation_id": org.org_id,
        "name": org.name,
        "settlement_fee_percent": None if fee is None else f"{fee:.2f}",
        "minimum_balance_after_settlement": format_cents(org.minimum_balance_after_settlement),
        "bank_bsb": profiles.show_bsb(org.bank_bsb),  # stored as 6 digits, shown as 123-456
        "bank_account": org.bank_account,
    }


def _local_time(moment: Any) -> str | None:
    """A time in the statements' time zone, to the second (as statements show it)."""
    if moment is None:
        return None
    return moment.astimezone(context.settings().time_zone).isoformat(timespec="seconds")


def _balance_on(session: Any, account_id: int, day: str, **who: str) -> dict[str, Any]:
    zone = context.settings().time_zone
    local = fields.local_date(day, "date")
    try:
        cents = statements.balance_at_end_of(session, account_id, local, zone)
    except OverflowError:  # 9999-12-31: its end is past datetime.max
        raise InvalidInput(f"date: {day!r} is out of range", field="date") from None
    return {**who, "date": local.isoformat(), "balance": format_cents(cents)}


_NARROWING = ("event_id", "session_id", "type", "search")
_STATEMENT_FORMATS = ("json", "csv", "xlsx")


def _statement_response(account_id: int, owner: dict[str, str], filename: str) -> ResponseReturnValue:
    """A statement page (JSON), or the whole range as a streamed CSV or XLSX (no limit or
    cursor there). Every argument is checked before a download starts, so errors stay JSON."""
    zone = context.settings().time_zone
    wanted = request.args.get("format", "json")
    if wanted not in _STATEMENT_FORMATS:
        raise InvalidInput(f"format: {wanted!r} is not one of {', '.join(_STATEMENT_FORMATS)}", field="format")
    period = periods.from_args(request.args, utcnow().astimezone(zone).date())
    chosen = {"from", "to", "period"} & set(request.args)
    filters = statements.Filters(
        first=period.first if chosen - {"to"} else None,
        last=period.last if chosen - {"from"} else None,
        event_id=_optional_arg("event_id", fields.identifier),
        session_id=_optional_arg("session_id", fields.identifier),
        type=_optional_arg("type", fields.entry_type),
        search=_optional_arg("search", lambda value, field: fields.text(value, field, max_length=100) or None),
    )
    if wanted == "csv":
        return csv_download(f"{filename}.csv", lambda session: statements.csv_rows(session, account_id, zone, filters))
    if wanted == "xlsx":
        return xlsx_download(f"{filename}.xlsx", lambda session: [("Transactions", statements.sheet_rows(
            statements.lines(session, account_id, zone, filters)))])
    limit = fields.page_limit(request.args.get("limit"))
    cursor = request.args.get("cursor")
    with context.transaction() as session:
        page = statements.page(session, account_id, zone, filters, limit=limit, cursor=cursor,
                               key=statements.cursor_key(context.settings().api_token))
    return jsonify({
        **owner,
        "rows": [row.as_json() for row in page.rows],
        "next_cursor": page.next_cursor,
        "opening_balance": format_cents(page.opening_balance),
        "closing_balance": format_cents(page.closing_balance),
        **period.as_json(),
    })


def _optional_arg(name: str, check: Callable[[str, str], T]) -> T | None:
    """A query argument checked by `check`, or None when it is absent or blank."""
    value = request.args.get(name)
    return None if value is None or not value.strip() else check(value, name)


# Money movements (webhook/movements.py) and saved cards (webhook/cards.py) are nested under
# /api, so the client check above guards them too. Nested here, once per process: Flask
# refuses to change a blueprint after it has been registered, so doing it in create_app broke
# every app after the first.
from webhook import cards, club_reports, ious, movements, reports, settlement_reads  # noqa: E402

for nested in (movements, cards, ious, club_reports, settlement_reads, reports):
    blueprint.register_blueprint(nested.blueprint)
