"""Who is calling `/api/*`, and may they: the bearer token is authenticated and the route's
declared action authorised by `shared.access`, before the view runs. The rules live there;
this module only reads the request.

Every `/api/*` view declares its action with `@action(...)`; a view without one is refused
(fail closed). A view whose decision needs a stored row (a request's maker) declares
`in_view=True` and calls `access.authorise` itself once it has the row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app, g, request

from shared import access
from shared.access import Principal
from shared.errors import Forbidden, Unauthenticated
from webhook import context

F = TypeVar("F", bound=Callable[..., Any])
# Path variables under the names the fields carry in bodies and tasks.
_PATH_FIELDS = {"org_id": "organisation_id"}


def action(name: str, *, in_view: bool = False) -> Callable[[F], F]:
    """Declare the `shared.access` action a view performs."""
    if name not in access.ACTIONS:
        raise ValueError(f"{name}: not an action of shared.access")

    def declare(view: F) -> F:
        view.access_action = name  # type: ignore[attr-defined]
        view.access_in_view = in_view  # type: ignore[attr-defined]
        return view

    return declare


def principal() -> Principal:
    """The client of this request (set by `authorise_request`)."""
    return g.principal  # type: ignore[no-any-return]


def authorise_api_request() -> None:
    """An app-level `before_request`: `authorise_request` for every view of the `api` blueprint
    (nested ones included). App-level so that it runs before the rate limiter's check."""
    if "api" in request.blueprints:
        authorise_request()


def authorise_request() -> None:
    """The `before_request` of the API blueprint: 401 without a valid client token, 403 when the
    client may not take the route's action on what it sends."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthenticated("a valid Authorization: Bearer token is required")
    with context.transaction() as session:
        g.principal = access.authenticate(session, given.strip(), context.settings().api_token)
    view = current_app.view_functions.get(request.endpoint or "")
    declared = getattr(view, "access_action", None)
    if declared is None:
        raise Forbidden(f"{request.method} {request.path}: this route declares no action, so nobody may call it")
    if not getattr(view, "access_in_view", False):
        access.authorise(g.principal, declared, request_fields())


def request_fields() -> dict[str, Any]:
    """The body's fields (when it is a JSON object) and the path ids, as received: the path wins,
    as the views use it. An unreadable body gives no fields; the view refuses it with a 400."""
    body: Any = None
    if request.method in ("POST", "PUT", "PATCH", "DELETE"):
        try:
            body = request.get_json(silent=True)
        except RecursionError:
            body = None
    fields: dict[str, Any] = dict(body) if isinstance(body, dict) else {}
    for name, value in (request.view_args or {}).items():
        fields[_PATH_FIELDS.get(name, name)] = value
    return fields
