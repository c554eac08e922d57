"""shared.access.authorise, the one decision for HTTP requests and task messages: each scope
rule and binding of CONTRACT ("Clients and scopes") as a table of cases, on the fields a
request sends (or a task's kwargs), with no services."""

from __future__ import annotations

from typing import Any

import pytest

from shared import access
from shared.access import Principal
from shared.errors import Forbidden


def client(name: str, *scopes: str, **bindings: Any) -> Principal:
    frozen = {key: frozenset(value) if isinstance(value, list) else value for key, value in bindings.items()}
    return Principal(name, frozenset(scopes), **frozen)


PORTAL = client("portal", "payments", route_codes=["EVT"], request_prefix="portal-")
PROFILES = client("people", "profiles")
CLUB = client("club-tool", "clubs", organisations=["club"])
REPORTS = client("reporter", "reports")
OPS = client("monitor", "ops")
STAFF = client("staff", "admin", organisations=["club"])
ADMIN = access.BOOTSTRAP

PAYMENT = {"request_id": "portal-1", "member_id": "ann", "amount": "5.00", "organisation_id": "other-club",
           "route_code": "EVT"}
MEMBER_TRANSFER = {"request_id": "portal-2", "from_member_id": "ann", "to_member_id": "bob", "amount": "1.00"}
CLUB_TRANSFER = {"request_id": "c-1", "from_organisation_id": "club", "to_member_id": "ann", "amount": "1.00"}
SETTLEMENT = {"request_id": "s-1", "organisations": [{"organisation_id": "club"}]}
IOU = {"request_id": "iou-1", "organisation_id": "club", "member_id": "ann", "amount": "5.00", "description": "Table"}

ALLOWED = [
    (PORTAL, access.PAYMENTS_CREATE, PAYMENT),  # paying into any organisation is fine
    (PORTAL, access.TRANSFERS_CREATE, MEMBER_TRANSFER),
    (PORTAL, access.TRANSFERS_CREATE, {**MEMBER_TRANSFER, "from_organisation_id": None}),
    (PORTAL, access.TOPUPS_CREATE, {"request_id": "portal-3", "member_id": "ann", "amount": "50.00"}),
    (PORTAL, access.REFUNDS_CREATE, {"request_id": "portal-4", "payment_intent_id": "pi_1", "by": "member"}),
    (PORTAL, access.MEMBERS_BALANCE, {"member_id": "ann"}),
    (PORTAL, access.AUTO_TOPUP_SETUP, {"member_id": "ann"}),
    (PORTAL, access.AUTO_TOPUP_CHANGE, {"member_id": "ann", "amount": "50.00"}),
    (PORTAL, access.AUTO_TOPUP_CANCEL, {"member_id": "ann"}),
    (PORTAL, access.REQUESTS_READ, {"request_id": "portal-1", "client": "portal"}),
    (PROFILES, access.MEMBERS_WRITE, {"member_id": "ann", "email": "a@example.org"}),
    (PROFILES, access.ORGANISATIONS_WRITE, {"organisation_id": "club", "name": "Club"}),
    (CLUB, access.TRANSFERS_CREATE, CLUB_TRANSFER),
    (CLUB, access.SETTLEMENTS_CREATE, SETTLEMENT),
    (CLUB, access.ORGANISATIONS_READ, {"organisation_id": "club"}),
    (REPORTS, access.MEMBERS_STATEMENT, {"member_id": "ann"}),
    (REPORTS, access.ORGANISATIONS_READ, {"organisation_id": "other-club"}),
    (REPORTS, access.ADMIN_SUMMARY, {}),
    (REPORTS, access.REQUESTS_READ, {"request_id": "portal-1", "client": "portal"}),
    (OPS, access.METRICS_READ, {}),
    (STAFF, access.ADJUSTMENTS_CREATE, {"request_id": "a-1", "organisation_id": "club", "amount": "-1.00"}),
    (ADMIN, access.ADJUSTMENTS_CREATE, {"request_id": "a-1", "member_id": "ann", "amount": "1.00"}),
    (ADMIN, access.SETTLEMENTS_CREATE, {"request_id": "s-2", "organisations": "all"}),
    (ADMIN, access.ORGANISATIONS_WRITE, {"organisation_id": "club", "settlement_fee_percent": "1.00"}),
    (ADMIN, access.ORGANISATIONS_WRITE, {"organisation_id": "club", "bank_bsb": "123456"}),
    # Settlement reads and card payments (issue 14).
    (REPORTS, access.SETTLEMENTS_READ, {"organisation_id": None}),
    (CLUB, access.SETTLEMENTS_READ, {"organisation_id": "club"}),
    (REPORTS, access.CARD_PAYMENTS_READ, {"member_id": None}),
    (PORTAL, access.CARD_PAYMENTS_READ, {"member_id": "ann"}),
    (ADMIN, access.METRICS_READ, {}),
    # IOUs: a club raises, cancels and lists its own; a portal lists and pays a member's.
    (CLUB, access.IOUS_CREATE, IOU),
    (CLUB, access.IOUS_CANCEL, {"iou_id": "7", "organisation_id": "club"}),
    (CLUB, access.IOUS_ORGANISATION_READ, {"organisation_id": "club"}),
    (REPORTS, access.IOUS_ORGANISATION_READ, {"organisation_id": "other-club"}),
    (PORTAL, access.IOUS_MEMBER_READ, {"member_id": "ann"}),
    (REPORTS, access.IOUS_MEMBER_READ, {"member_id": "ann"}),
    (PORTAL, access.IOUS_PAY, {"iou_id": "7", "request_id": "portal-5"}),
    (STAFF, access.IOUS_CREATE, IOU),
]

REFUSED = [
    # A payments client cannot adjust, settle, admin-refund or change fees.
    (PORTAL, access.ADJUSTMENTS_CREATE, {"request_id": "portal-9", "member_id": "ann"}, "admin scope"),
    (PORTAL, access.SETTLEMENTS_CREATE, {**SETTLEMENT, "request_id": "portal-9"}, "clubs or admin scope"),
    (PORTAL, access.REFUNDS_CREATE, {"request_id": "portal-9", "by": "admin"}, "admin scope"),
    (PORTAL, access.REFUNDS_CREATE, {"request_id": "portal-9", "by": ["member"]}, "admin scope"),
    (PORTAL, access.ORGANISATIONS_WRITE, {"organisation_id": "club", "name": "C"}, "profiles or admin scope"),
    (PROFILES, access.ORGANISATIONS_WRITE, {"organisation_id": "club", "settlement_fee_percent": "0"}, "admin scope"),
    (PROFILES, access.ORGANISATIONS_WRITE, {"organisation_id": "club", "minimum_balance_after_settlement": None},
     "admin scope"),
    (PORTAL, access.TRANSFERS_CREATE, {**CLUB_TRANSFER, "request_id": "portal-9"}, "clubs or admin scope"),
    (PORTAL, access.MEMBERS_STATEMENT, {"member_id": "ann"}, "reports or admin scope"),
    (PORTAL, access.REQUESTS_READ, {"request_id": "x", "client": "someone-else"}, "another client"),
    (PORTAL, access.REQUESTS_READ, {"request_id": "x", "client": None}, "another client"),
    (REPORTS, access.PAYMENTS_CREATE, PAYMENT, "payments or admin scope"),
    (OPS, access.ADMIN_SUMMARY, {}, "reports or admin scope"),
    (PROFILES, access.MEMBERS_BALANCE, {"member_id": "ann"}, "payments or reports or admin scope"),
    (REPORTS, access.METRICS_READ, {}, "ops or admin scope"),
    (OPS, access.MEMBERS_READ, {"member_id": "a"}, "profiles or reports or admin scope"),
    # Route codes, request prefix.
    (PORTAL, access.PAYMENTS_CREATE, {**PAYMENT, "route_code": "CLUB"}, "route_code 'CLUB'"),
    (PORTAL, access.PAYMENTS_CREATE, {**PAYMENT, "route_code": ["EVT"]}, "route_code"),
    (PORTAL, access.PAYMENTS_CREATE, {**PAYMENT, "request_id": "other-1"}, "prefix 'portal-'"),
    (PORTAL, access.PAYMENTS_CREATE, {**PAYMENT, "request_id": 17}, "prefix"),
    (PORTAL, access.TOPUPS_CREATE, {"member_id": "ann"}, "prefix"),
    # Organisations: money out of, and reads of, only the listed ones.
    (CLUB, access.TRANSFERS_CREATE, {**CLUB_TRANSFER, "from_organisation_id": "other-club"}, "covers only"),
    (CLUB, access.TRANSFERS_CREATE, {**CLUB_TRANSFER, "from_organisation_id": {"club": 1}}, "covers only"),
    (CLUB, access.SETTLEMENTS_CREATE, {**SETTLEMENT, "organisations": [{"organisation_id": "club"},
                                                                       {"organisation_id": "other-club"}]},
     "covers only"),
    (CLUB, access.SETTLEMENTS_CREATE, {**SETTLEMENT, "organisations": "all"}, "covers only"),
    (CLUB, access.SETTLEMENTS_CREATE, {**SETTLEMENT, "organisations": ["club"]}, "covers only"),
    (CLUB, access.ORGANISATIONS_READ, {"organisation_id": "other-club"}, "covers only"),
    (CLUB, access.PAYMENTS_CREATE, PAYMENT, "payments or admin scope"),
    (STAFF, access.ADJUSTMENTS_CREATE, {"request_id": "a-2", "organisation_id": "other-club"}, "bound to"),
    (STAFF, access.TRANSFERS_CREATE, {**CLUB_TRANSFER, "from_organisation_id": "other-club"}, "bound to"),
    (STAFF, access.ORGANISATIONS_READ, {"organisation_id": "other-club"}, "bound to"),
    (PORTAL, "payments.mint", {}, "not an action"),
    # Bank details, settlement reads and card payments (issue 14).
    (PROFILES, access.ORGANISATIONS_WRITE, {"organisation_id": "club", "bank_account": "12345"}, "admin scope"),
    (CLUB, access.SETTLEMENTS_READ, {"organisation_id": None}, "reports or admin scope"),
    (CLUB, access.SETTLEMENTS_READ, {"organisation_id": "other-club"}, "covers only"),
    (STAFF, access.SETTLEMENTS_READ, {"organisation_id": None}, "bound to"),
    (PORTAL, access.SETTLEMENTS_READ, {}, "reports or admin scope"),
    (PORTAL, access.CARD_PAYMENTS_READ, {"member_id": None}, "reports or admin scope"),
    (PROFILES, access.CARD_PAYMENTS_READ, {"member_id": "ann"}, "payments or reports or admin scope"),
    # IOUs.
    (PORTAL, access.IOUS_CREATE, {**IOU, "request_id": "portal-9"}, "raising an IOU needs the clubs or admin scope"),
    (CLUB, access.IOUS_CREATE, {**IOU, "organisation_id": "other-club"}, "covers only its organisations (club)"),
    (CLUB, access.IOUS_CANCEL, {"iou_id": "7", "organisation_id": "other-club"}, "cancelling an IOU: the clubs"),
    (REPORTS, access.IOUS_CANCEL, {"iou_id": "7", "organisation_id": "club"}, "clubs or admin scope"),
    (CLUB, access.IOUS_ORGANISATION_READ, {"organisation_id": "other-club"}, "covers only"),
    (CLUB, access.IOUS_MEMBER_READ, {"member_id": "ann"}, "reading a member's IOUs needs the payments or reports"),
    (CLUB, access.IOUS_PAY, {"iou_id": "7", "request_id": "c-9"}, "paying an IOU needs the payments or admin scope"),
    (PORTAL, access.IOUS_PAY, {"iou_id": "7", "request_id": "other-1"}, "prefix 'portal-'"),
    (STAFF, access.IOUS_CREATE, {**IOU, "organisation_id": "other-club"}, "bound to"),
    (client("club-events", "clubs", route_codes=["EVT"], organisations=["club"]),
     access.IOUS_CREATE, {**IOU, "route_code": "UPP"}, "route_code 'UPP'"),
]


@pytest.mark.parametrize(("principal", "action", "fields"), ALLOWED,
                         ids=[f"{p.name} {a} {i}" for i, (p, a, _) in enumerate(ALLOWED)])
def test_a_client_may_take_what_its_scopes_and_bindings_allow(principal, action, fields) -> None:
    access.authorise(principal, action, fields)


@pytest.mark.parametrize(("principal", "action", "fields", "named"), REFUSED,
                         ids=[f"{p.name} {a} {i}" for i, (p, a, _, _) in enumerate(REFUSED)])
def test_a_missing_scope_or_a_broken_binding_is_forbidden_and_the_message_names_it(
    principal, action, fields, named
) -> None:
    with pytest.raises(Forbidden) as caught:
        access.authorise(principal, action, fields)
    assert caught.value.status == 403 and caught.value.code == "forbidden"
    assert named in caught.value.message


def test_the_bootstrap_client_is_admin_with_every_scope_and_no_binding() -> None:
    assert access.BOOTSTRAP.name == "admin"
    assert access.BOOTSTRAP.scopes == frozenset(access.SCOPES)
    assert (access.BOOTSTRAP.route_codes, access.BOOTSTRAP.request_prefix, access.BOOTSTRAP.organisations) == (
        None, None, None)


def test_a_task_order_in_its_stored_form_is_authorised_like_the_http_body() -> None:
    from shared.config import Settings
    from shared.payments import parse

    order = parse({**PAYMENT, "description": "Entry"}, Settings())
    access.authorise(PORTAL, access.PAYMENTS_CREATE, order.payload())
    with pytest.raises(Forbidden):
        access.authorise(PORTAL, access.PAYMENTS_CREATE, {**order.payload(), "route_code": "CLUB"})


def test_a_token_is_stored_as_the_sha256_of_it_and_new_ones_are_long() -> None:
    token = access.new_token()
    assert len(token) >= 43
    assert access.token_hash(token) != token and len(access.token_hash(token)) == 64
