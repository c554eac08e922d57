"""Clients, scopes and bindings: who may call the service and what each may do (CONTRACT
"Clients and scopes"; DESIGN invariant 10). One module for both doors: `webhook/` calls it for
every `/api/*` request, and the worker (through `shared.messages`) for every money task sent
by name.

- A *client* is stored in `clients` with its scopes, optional bindings (route codes, a
  request-id prefix, organisations) and a callback key; its tokens are kept only as SHA-256
  hashes in `client_tokens` (several during a rotation, the old ones with an expiry) and are
  looked up by that hash. `PAYMENTS_API_TOKEN` is the bootstrap client `admin`: every scope,
  no bindings, not stored.
- `authenticate` turns a token into a `Principal` or raises `Unauthenticated` (401).
- `authorise(principal, action, fields)` raises `Forbidden` (403) unless one of the
  principal's scopes allows the action on these fields and every binding holds. `fields` are
  the request's fields as received (JSON body and path ids, or a task's kwargs): values are
  compared as they are, so anything not exactly a listed string is refused.
- `add`, `rotate`, `revoke` and `listing` are the `payments clients` commands' side; they take
  a session and never commit.

Identity comes from the token, never from a body field (`admin_id` is only a note).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared import fields as checks
from shared.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthenticated
from shared.models import Client, ClientToken, utcnow

# CONTRACT scopes.
PAYMENTS, PROFILES, CLUBS, REPORTS, ADMIN, OPS = "payments", "profiles", "clubs", "reports", "admin", "ops"
SCOPES = (PAYMENTS, PROFILES, CLUBS, REPORTS, ADMIN, OPS)
BOOTSTRAP_NAME = "admin"
DEFAULT_GRACE = timedelta(days=1)

# Actions: what a route or a task does. Each maps to the scopes that allow it (`admin` allows
# everything) in `_scopes_allowing`, and to the organisations it acts on in `_organisations_of`.
MEMBERS_WRITE = "members.write"
MEMBERS_READ = "members.read"
MEMBERS_BALANCE = "members.balance"
MEMBERS_STATEMENT = "members.statement"
ORGANISATIONS_WRITE = "organisations.write"
ORGANISATIONS_PROFILE = "organisations.profile"
ORGANISATIONS_READ = "organisations.read"
ADJUSTMENTS_CREATE = "adjustments.create"
ADMIN_SUMMARY = "admin.summary"
REPORTS_FEDERATION = "reports.federation"
PAYMENTS_CREATE = "payments.create"
TRANSFERS_CREATE = "transfers.create"
SETTLEMENTS_CREATE = "settlements.create"
REFUNDS_CREATE = "refunds.create"
TOPUPS_CREATE = "topups.create"
AUTO_TOPUP_SETUP = "auto_topup.setup"
AUTO_TOPUP_CHANGE = "auto_topup.change"
AUTO_TOPUP_CANCEL = "auto_topup.cancel"
REQUESTS_READ = "requests.read"
IOUS_CREATE = "ious.create"
IOUS_CANCEL = "ious.cancel"
IOUS_PAY = "ious.pay"
IOUS_MEMBER_READ = "ious.member_read"
IOUS_ORGANISATION_READ = "ious.organisation_read"
METRICS_READ = "metrics.read"
ORGANISATIONS_REPORT = "organisations.report"
REPORTS_MOVEMENT = "reports.movement"
# Settlement run and card payments lists (issue 14). Both read query arguments, so their views
# authorise in the view with them (`organisation_id`, `member_id`).
SETTLEMENTS_READ = "settlements.read"
CARD_PAYMENTS_READ = "card_payments.read"

# What each action is called in a 403's message.
ACTIONS: dict[str, str] = {
    MEMBERS_WRITE: "changing a member's profile",
    MEMBERS_READ: "reading a member's profile",
    MEMBERS_BALANCE: "reading a member's balance",
    MEMBERS_STATEMENT: "reading a member's statement",
    ORGANISATIONS_WRITE: "changing an organisation's profile",
    ORGANISATIONS_PROFILE: "reading an organisation's profile",
    ORGANISATIONS_READ: "reading an organisation's balance, statement or summary",
    ADJUSTMENTS_CREATE: "an adjustment",
    ADMIN_SUMMARY: "the admin summary",
    REPORTS_FEDERATION: "the federation's reports (balances, reconciliation, specific transactions)",
    PAYMENTS_CREATE: "a payment",
    TRANSFERS_CREATE: "a transfer",
    SETTLEMENTS_CREATE: "a settlement",
    REFUNDS_CREATE: "a refund",
    TOPUPS_CREATE: "a top-up",
    AUTO_TOPUP_SETUP: "setting up auto top-up",
    AUTO_TOPUP_CHANGE: "changing the auto top-up amount",
    AUTO_TOPUP_CANCEL: "cancelling auto top-up",
    REQUESTS_READ: "reading a request's status",
    IOUS_CREATE: "raising an IOU",
    IOUS_CANCEL: "cancelling an IOU",
    IOUS_PAY: "paying an IOU",
    IOUS_MEMBER_READ: "reading a member's IOUs",
    IOUS_ORGANISATION_READ: "reading an organisation's IOUs",
    METRICS_READ: "reading metrics",
    ORGANISATIONS_REPORT: "reading an organisation's finance report",
    REPORTS_MOVEMENT: "the organisation movement report",
    SETTLEMENTS_READ: "reading settlements, their candidates or a bank file",
    CARD_PAYMENTS_READ: "reading card payments",
}
# Actions that create a request under a caller-chosen `request_id` (the prefix binding).
CREATES = frozenset({ADJUSTMENTS_CREATE, PAYMENTS_CREATE, TRANSFERS_CREATE, SETTLEMENTS_CREATE, REFUNDS_CREATE,
                     TOPUPS_CREATE, IOUS_CREATE, IOUS_PAY})
# Organisation fields only `admin` may set (fees and minimums; bank details when they come).
ADMIN_ORGANISATION_FIELDS = ("settlement_fee_percent", "minimum_balance_after_settlement", "bank_bsb",
                             "bank_account")

_UNKNOWN = object()  # an organisation named in a shape that cannot be checked: refused unless admin
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}")


@dataclass(frozen=True)
class Principal:
    """An authenticated client: its name (recorded on what it makes), scopes and bindings.
    A binding left as None does not bind."""

    name: str
    scopes: frozenset[str]
    route_codes: frozenset[str] | None = None
    request_prefix: str | None = None
    organisations: frozenset[str] | None = None
    callback_key: str | None = field(default=None, repr=False)


BOOTSTRAP = Principal(BOOTSTRAP_NAME, frozenset(SCOPES))


@dataclass(frozen=True)
class Issued:
    """What `add` and `rotate` hand out once: the token is never stored, only its hash."""

    name: str
    token: str = field(repr=False)
    callback_key: str = field(repr=False)

    def as_json(self) -> dict[str, str]:
        return {"name": self.name, "token": self.token, "callback_key": self.callback_key}


def token_hash(token: str) -> str:
    """The hex SHA-256 a token is stored and looked up by (tokens have 256 bits of entropy, so a
    plain hash suffices, and a lookup by hash needs no constant-time comparison)."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


# Authentication ---------------------------------------------------------------------------


def authenticate(session: Session, token: str | None, bootstrap_token: str | None) -> Principal:
    """The client this token belongs to; `Unauthenticated` for no token, or an unknown, revoked or
    expired one. The bootstrap token (`PAYMENTS_API_TOKEN`) is the client `admin`."""
    if not token:
        raise Unauthenticated("a valid Authorization: Bearer token is required")
    if bootstrap_token and secrets.compare_digest(token.encode(), bootstrap_token.encode()):
        return BOOTSTRAP
    found = session.execute(
        select(Client, ClientToken.expires_at)
        .join(ClientToken, ClientToken.client_id == Client.id)
        .where(ClientToken.token_hash == token_hash(token))
    ).one_or_none()
    if found is None:
        raise Unauthenticated("a valid Authorization: Bearer token is required")
    client, expires_at = found
    now = utcnow()
    if client.revoked_at is not None:
        raise Unauthenticated(f"client {client.name}: revoked")
    if expires_at is not None and expires_at <= now:
        raise Unauthenticated(f"client {client.name}: this token has expired (it was rotated)")
    return principal_of(client)


def principal_of(client: Client) -> Principal:
    return Principal(
        name=client.name,
        scopes=frozenset(client.scopes),
        route_codes=None if client.route_codes is None else frozenset(client.route_codes),
        request_prefix=client.request_prefix,
        organisations=None if client.organisations is None else frozenset(client.organisations),
        callback_key=client.callback_key,
    )


# Authorisation ----------------------------------------------------------------------------


def authorise(principal: Principal, action: str, fields: Mapping[str, Any]) -> None:
    """Allow `action` on `fields` for `principal`, or raise `Forbidden` naming the missing scope
    or the binding that refuses it.

    A scope allows an action (`_scopes_allowing`); `clubs` only for the organisations listed on
    the client; `reports` reads any request, any other client only the requests it made
    (`fields["client"]` is a stored request's maker). Then the bindings: a `route_code` outside
    the client's list, a created `request_id` without its prefix, or an organisation acted on
    outside its list is refused, whatever the scope."""
    if action not in ACTIONS:
        raise Forbidden(f"{action}: not an action any client may take")
    what = ACTIONS[action]
    organisations = _organisations_of(action, fields)
    allowing = _scopes_allowing(action, fields)
    if not _granted(principal, action, fields, allowing, organisations):
        if CLUBS in allowing and CLUBS in principal.scopes:
            listed = ", ".join(sorted(principal.organisations or ())) or "none"
            raise Forbidden(
                f"{what}: the clubs scope of client {principal.name} covers only its organisations ({listed}); "
                f"not {_names(organisations)}"
            )
        if action == REQUESTS_READ:
            raise Forbidden(f"{what}: request {_show(fields.get('request_id'))} was made by another client; "
                            f"reading it needs the reports scope")
        needed = " or ".join([*allowing, ADMIN])
        held = ", ".join(sorted(principal.scopes)) or "none"
        raise Forbidden(f"{what} needs the {needed} scope; client {principal.name} has {held}")
    _check_bindings(principal, action, fields, organisations)


def _granted(
    principal: Principal, action: str, fields: Mapping[str, Any], allowing: Sequence[str], organisations: list[Any]
) -> bool:
    if ADMIN in principal.scopes:
        return True
    if action == REQUESTS_READ and fields.get("client") is not None and fields.get("client") == principal.name:
        return True
    for scope in allowing:
        if scope not in principal.scopes:
            continue
        if scope != CLUBS:
            return True
        if organisations and all(_listed(org, principal.organisations) for org in organisations):
            return True
    return False


def _scopes_allowing(action: str, fields: Mapping[str, Any]) -> tuple[str, ...]:
    """The scopes besides `admin` that allow `action` on these fields (CONTRACT)."""
    if action == MEMBERS_WRITE:
        return (PROFILES,)
    if action == MEMBERS_READ:
        return (PROFILES, REPORTS)
    if action in (MEMBERS_BALANCE, IOUS_MEMBER_READ):
        return (PAYMENTS, REPORTS)
    if action in (MEMBERS_STATEMENT, ADMIN_SUMMARY, REPORTS_FEDERATION, REPORTS_MOVEMENT, REQUESTS_READ):
        return (REPORTS,)
    if action == ORGANISATIONS_WRITE:
        return () if any(name in fields for name in ADMIN_ORGANISATION_FIELDS) else (PROFILES,)
    if action == ORGANISATIONS_PROFILE:
        return (PROFILES, REPORTS, CLUBS)
    if action in (ORGANISATIONS_READ, IOUS_ORGANISATION_READ, ORGANISATIONS_REPORT):
        return (REPORTS, CLUBS)
    if action in (IOUS_CREATE, IOUS_CANCEL):
        return (CLUBS,)
    if action in (PAYMENTS_CREATE, TOPUPS_CREATE, IOUS_PAY, AUTO_TOPUP_SETUP, AUTO_TOPUP_CHANGE, AUTO_TOPUP_CANCEL):
        return (PAYMENTS,)
    if action == TRANSFERS_CREATE:
        return (CLUBS,) if fields.get("from_organisation_id") is not None else (PAYMENTS,)
    if action == SETTLEMENTS_CREATE:
        return (CLUBS,)
    if action == REFUNDS_CREATE:
        return (PAYMENTS,) if fields.get("by") == "member" else ()
    if action == METRICS_READ:
        return (OPS,)
    if action == SETTLEMENTS_READ:  # an organisation's own settlements: its club too
        return (REPORTS, CLUBS) if fields.get("organisation_id") is not None else (REPORTS,)
    if action == CARD_PAYMENTS_READ:  # one member's: the portal that refunds them too
        return (PAYMENTS, REPORTS) if fields.get("member_id") is not None else (REPORTS,)
    return ()  # adjustments: admin only


def _organisations_of(action: str, fields: Mapping[str, Any]) -> list[Any]:
    """The organisations whose money or record the action acts on. Paying into an organisation
    (a payment's `organisation_id`, a transfer's `to_organisation_id`, paying an IOU) is not
    acting on it; raising, cancelling or listing its IOUs is (a cancel's view passes the IOU's)."""
    if action in (ORGANISATIONS_WRITE, ORGANISATIONS_PROFILE, ORGANISATIONS_READ, IOUS_CREATE, IOUS_CANCEL,
                  IOUS_ORGANISATION_READ, ORGANISATIONS_REPORT):
        return [fields.get("organisation_id")]
    if action == TRANSFERS_CREATE:
        source = fields.get("from_organisation_id")
        return [] if source is None else [source]
    if action == ADJUSTMENTS_CREATE:
        target = fields.get("organisation_id")
        return [] if target is None else [target]
    if action == SETTLEMENTS_CREATE:
        items = fields.get("organisations")
        if not isinstance(items, list) or not items:
            return [_UNKNOWN]  # "all", or a shape parse will refuse
        return [item.get("organisation_id") if isinstance(item, dict) else _UNKNOWN for item in items]
    if action in (REPORTS_FEDERATION, REPORTS_MOVEMENT):
        return [_UNKNOWN]  # every organisation's figures: refused to a client bound to some
    if action == SETTLEMENTS_READ:
        # Without an organisation it reads every organisation's: refused to a client bound to some.
        org = fields.get("organisation_id")
        return [_UNKNOWN] if org is None else [org]
    return []


def _check_bindings(principal: Principal, action: str, fields: Mapping[str, Any], organisations: list[Any]) -> None:
    what = ACTIONS[action]
    if principal.organisations is not None:
        for org in organisations:
            if not _listed(org, principal.organisations):
                raise Forbidden(
                    f"{what}: client {principal.name} is bound to organisations "
                    f"{', '.join(sorted(principal.organisations)) or 'none'}; not {_names([org])}",
                    field="organisation_id",
                )
    route_code = fields.get("route_code")
    if principal.route_codes is not None and route_code is not None and not _listed(route_code, principal.route_codes):
        raise Forbidden(
            f"{what}: route_code {_show(route_code)} is not one of client {principal.name}'s route codes "
            f"({', '.join(sorted(principal.route_codes)) or 'none'})",
            field="route_code",
        )
    if principal.request_prefix is not None and action in CREATES:
        request_id = fields.get("request_id")
        if not isinstance(request_id, str) or not request_id.startswith(principal.request_prefix):
            raise Forbidden(
                f"{what}: request_id {_show(request_id)} does not start with client {principal.name}'s "
                f"prefix {principal.request_prefix!r}",
                field="request_id",
            )


def _listed(value: Any, allowed: Iterable[str] | None) -> bool:
    return isinstance(value, str) and allowed is not None and value in allowed


def _names(values: Iterable[Any]) -> str:
    return ", ".join("all organisations" if v is _UNKNOWN else _show(v) for v in values) or "none"


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


# Managing clients (`payments clients ...`) ------------------------------------------------


def add(
    session: Session,
    name: str,
    scopes: Sequence[str],
    *,
    route_codes: Sequence[str] | None = None,
    request_prefix: str | None = None,
    organisations: Sequence[str] | None = None,
) -> Issued:
    """Store a new client with a fresh token and callback key; returns them, shown once."""
    name = checks.identifier(name, "name")
    if name == BOOTSTRAP_NAME:
        raise InvalidInput(f"name: {BOOTSTRAP_NAME!r} is the bootstrap client (PAYMENTS_API_TOKEN)", field="name")
    wanted = _scopes(scopes)
    codes = None if route_codes is None else sorted({checks.identifier(c, "route_codes") for c in route_codes})
    orgs = None if organisations is None else sorted({checks.identifier(o, "organisations") for o in organisations})
    if request_prefix is not None and not _PREFIX.fullmatch(request_prefix):
        raise InvalidInput(f"request_prefix: {_show(request_prefix)} is not a request-id prefix "
                           "(letters, digits or _.:-, starting with a letter or digit)", field="request_prefix")
    if CLUBS in wanted and not orgs:
        raise InvalidInput("organisations: the clubs scope needs the organisations it covers", field="organisations")
    if session.scalar(select(Client.id).where(Client.name == name)) is not None:
        raise Conflict(f"client {name}: already exists (rotate its token, or revoke it)", field="name")
    client = Client(name=name, scopes=wanted, route_codes=codes, request_prefix=request_prefix, organisations=orgs,
                    callback_key=secrets.token_hex(32), created_at=utcnow())
    session.add(client)
    session.flush()
    token = new_token()
    session.add(ClientToken(client_id=client.id, token_hash=token_hash(token), created_at=client.created_at))
    session.flush()
    return Issued(name, token, client.callback_key)


def rotate(session: Session, name: str, grace: timedelta = DEFAULT_GRACE) -> Issued:
    """A new token for the client; its older tokens keep working for `grace`, then expire. The
    callback key stays (consumers verify with it)."""
    if grace < timedelta(0):
        raise InvalidInput("grace: must not be negative", field="grace")
    client = _live(session, name)
    now = utcnow()
    ends = now + grace
    session.execute(
        update(ClientToken)
        .where(ClientToken.client_id == client.id, (ClientToken.expires_at.is_(None)) | (ClientToken.expires_at > ends))
        .values(expires_at=ends)
    )
    token = new_token()
    session.add(ClientToken(client_id=client.id, token_hash=token_hash(token), created_at=now))
    session.flush()
    return Issued(client.name, token, client.callback_key)


def revoke(session: Session, name: str) -> None:
    """End the client: every token of it is refused from now on."""
    client = _live(session, name)
    client.revoked_at = utcnow()
    session.flush()


def listing(session: Session) -> list[dict[str, Any]]:
    """Every client with its scopes, bindings and token expiries; never a token, hash or key."""
    rows: list[dict[str, Any]] = []
    for client in session.scalars(select(Client).order_by(Client.name)):
        expiries = session.scalars(
            select(ClientToken.expires_at).where(ClientToken.client_id == client.id).order_by(ClientToken.id)
        ).all()
        rows.append({
            "name": client.name,
            "scopes": client.scopes,
            "route_codes": client.route_codes,
            "request_prefix": client.request_prefix,
            "organisations": client.organisations,
            "created_at": client.created_at.isoformat(),
            "revoked_at": _iso(client.revoked_at),
            "tokens": [{"expires_at": _iso(e)} for e in expiries],
        })
    return rows


def _live(session: Session, name: str) -> Client:
    client = session.scalars(select(Client).where(Client.name == name).with_for_update()).one_or_none()
    if client is None:
        raise NotFound(f"client {_show(name)}: not known", field="name")
    if client.revoked_at is not None:
        raise Conflict(f"client {client.name}: revoked at {client.revoked_at.isoformat()}", field="name")
    return client


def _scopes(scopes: Sequence[str]) -> list[str]:
    wanted = sorted({s.strip() for s in scopes if s.strip()})
    unknown = [s for s in wanted if s not in SCOPES]
    if unknown or not wanted:
        raise InvalidInput(
            f"scopes: {', '.join(unknown) or 'none given'}; choose from {', '.join(SCOPES)}", field="scopes"
        )
    return wanted


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
