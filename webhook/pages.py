"""Pages for people (CONTRACT): HTML, no bearer token; each reached by a signed, expiring link
(`shared.page_links`). No JavaScript framework: a Flask template and one small script,
webhook/static/card.js, which uses Stripe.js (PAYMENTS_STRIPE_JS_URL).

- `GET /pay/<token>`: a checkout (a payment's, or a manual top-up with a new card): who pays
  what, a card form (button `id="pay"`). The browser tokenises the card with Stripe.js and
  POSTs the token to `/pay/<token>/card`, which puts it on the PaymentIntent and confirms it
  (`shared.card_pages.pay_checkout`); only when the bank asks for 3-D Secure does the page
  call Stripe.js `confirmCardPayment`. Then it polls `/pay/<token>/status`, the request's
  status as the service has it (booked from Stripe's own event), never the browser's word.

- `GET /card/<token>`: an auto top-up set-up: the member, the amount auto top-up will charge
  when the balance falls below the low limit, a card form (button `id="save"`). Stripe.js
  `confirmCardSetup` saves the card on the SetupIntent; the page then POSTs to
  `/card/<token>/saved`, which reads the SetupIntent back from Stripe and, if it succeeded,
  hands it to the worker as Stripe's `setup_intent.succeeded` would be
  (`shared.card_pages.report_card_saved`); the page polls `/card/<token>/status`, the member's
  auto top-up status, until it is `on`.

- `GET /auth/<token>` (the link in the "confirm an auto top up" e-mail): an auto top-up the
  bank asked the member to authenticate; the button (`id="pay"`) runs Stripe.js
  `confirmCardPayment` on it, and the page polls `/auth/<token>/status`, the top-up's state as
  the service has it (booked from Stripe's `payment_intent.succeeded`).

A link that is not ours is a 404; one past its expiry, or whose checkout is no longer open
(paid, failed, expired), a 410 with its own message. Every page is sent with a
Content-Security-Policy that allows scripts, frames and connections only from this origin and
Stripe.js's, forbids framing (`frame-ancestors 'none'`, X-Frame-Options DENY) and sends no
Referer (the link is a secret).
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from flask import Blueprint, Response, jsonify, render_template, request, url_for
from flask.typing import ResponseReturnValue

from shared import card_pages, inbox, page_links
from shared.config import Settings
from shared.errors import CardDeclined, NotFound, PaymentsError
from webhook import context

log = logging.getLogger(__name__)

blueprint = Blueprint("pages", __name__, template_folder="templates", static_folder="static",
                      static_url_path="/pages-static")

# What a page says about a request's status; the status itself is the CONTRACT's.
OUTCOMES = {
    "awaiting_card": "Waiting for your card.",
    "queued": "Your payment is being processed.",
    "paid": "Paid. Thank you.",
    "declined": "Declined.",
    "failed": "This payment could not be completed.",
}


def stripe_origins(settings: Settings) -> tuple[str, ...]:
    """The origins a page may load scripts and frames from and connect to, besides its own:
    Stripe.js's, and for Stripe's own Stripe.js the API and 3-D Secure hosts it uses (Stripe's
    documented policy)."""
    parts = urlsplit(settings.stripe_js_url)
    origin = f"{parts.scheme}://{parts.netloc}"
    if parts.netloc == "js.stripe.com":
        return origin, "https://api.stripe.com", "https://hooks.stripe.com"
    return (origin,)


@blueprint.after_request
def _headers(response: Response) -> Response:
    others = " ".join(stripe_origins(context.settings()))
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src 'self' {others}; frame-src {others}; connect-src 'self' {others}; "
        "style-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


def _gone(message: str, status: int = 410) -> ResponseReturnValue:
    return render_template("gone.html", message=message), status


def _link(kind: str, token: str) -> page_links.Link:
    return page_links.read(context.settings(), kind, token)


# A link that is not ours (or names nothing) is a 404, an expired one a 410, on every page and
# its JSON endpoints alike: a page says so in HTML, the script's endpoints in CONTRACT's shape.
_JSON_ENDPOINTS = frozenset({"pages.checkout_card", "pages.checkout_status", "pages.setup_saved",
                             "pages.setup_status", "pages.authenticate_status"})


@blueprint.errorhandler(page_links.BadLink)
@blueprint.errorhandler(NotFound)
def _no_such_page(_: Exception) -> ResponseReturnValue:
    if request.endpoint in _JSON_ENDPOINTS:
        return _json_error(404, "not_found", "there is no such page")
    return _gone("There is no such page.", 404)


@blueprint.errorhandler(page_links.ExpiredLink)
def _expired(_: Exception) -> ResponseReturnValue:
    if request.endpoint in _JSON_ENDPOINTS:
        return _json_error(410, "gone", "this link has expired")
    return _gone("This link has expired. Ask for a new one.")


@blueprint.get(f"/{page_links.CHECKOUT}/<token>")
def checkout_page(token: str) -> ResponseReturnValue:
    link = _link(page_links.CHECKOUT, token)
    with context.transaction() as session:
        found = card_pages.checkout(session, link.subject)
    if not found.open:
        return _gone(f"This checkout is closed: {OUTCOMES.get(found.status, found.status)}")
    settings = context.settings()
    return render_template(
        "checkout.html", checkout=found, stripe_js_url=settings.stripe_js_url,
        publishable_key=settings.stripe_publishable_key or "",
        card_url=url_for("pages.checkout_card", token=token),
        status_url=url_for("pages.checkout_status", token=token),
    )


@blueprint.post(f"/{page_links.CHECKOUT}/<token>/card")
def checkout_card(token: str) -> ResponseReturnValue:
    """The browser's card token: pay the checkout with it; say what the page does next."""
    link = _link(page_links.CHECKOUT, token)
    body = request.get_json(silent=True)
    card_token = body.get("card_token") if isinstance(body, dict) else None
    if not isinstance(card_token, str) or not card_token.startswith("tok_") or len(card_token) > 255:
        return _json_error(400, "bad_request", "card_token: expected a Stripe.js card token", "card_token")
    try:
        intent, secret = card_pages.pay_checkout(context.sessions(), context.gateway(), link.subject, card_token)
    except CardDeclined as exc:
        return jsonify({"status": "declined", "message": _member_message(exc.message)})
    except NotFound:
        return _json_error(410, "gone", "this checkout is closed")
    except PaymentsError as exc:
        log.warning("checkout %s: card not taken: %s", link.subject, exc.message)
        return _json_error(exc.status if exc.status < 500 else 503, exc.code, "the card could not be taken; try again")
    if intent.status == "requires_action":
        return jsonify({"status": "requires_action", "client_secret": secret})
    return jsonify({"status": intent.status})


@blueprint.get(f"/{page_links.CHECKOUT}/<token>/status")
def checkout_status(token: str) -> ResponseReturnValue:
    """The request's status as the service has it, and what the page says about it."""
    link = _link(page_links.CHECKOUT, token)
    with context.transaction() as session:
        found = card_pages.checkout(session, link.subject)
    return jsonify({"status": found.status, "final": found.status in card_pages.FINAL,
                    "message": OUTCOMES.get(found.status, found.status)})


def _member_message(message: str) -> str:
    """Stripe's words for the member ("Your card was declined."), without our ids."""
    return message.rsplit(": ", 1)[-1] if ": " in message else message


def _json_error(status: int, code: str, message: str, field: str | None = None) -> ResponseReturnValue:
    body = {"code": code, "message": message, **({"field": field} if field else {})}
    return jsonify({"error": body}), status


# Auto top-up set-up ----------------------------------------------------------------------------


def _setup(token: str) -> card_pages.CardSetup:
    link = _link(page_links.SETUP, token)
    return card_pages.card_setup(context.sessions(), context.gateway(), context.settings(), link.subject)


@blueprint.get(f"/{page_links.SETUP}/<token>")
def setup_page(token: str) -> ResponseReturnValue:
    try:
        setup = _setup(token)
    except NotFound:
        raise  # the blueprint's 404
    except PaymentsError as exc:  # Stripe unreachable or refusing: the member may try again
        log.warning("set-up page: %s", exc.message)
        return _gone("Card payments are not available just now. Please try again shortly.", 503)
    if not setup.open:
        return _gone("This card has been saved already.")
    settings = context.settings()
    return render_template(
        "setup.html", setup=setup, stripe_js_url=settings.stripe_js_url,
        publishable_key=settings.stripe_publishable_key or "",
        saved_url=url_for("pages.setup_saved", token=token), status_url=url_for("pages.setup_status", token=token),
    )


@blueprint.post(f"/{page_links.SETUP}/<token>/saved")
def setup_saved(token: str) -> ResponseReturnValue:
    """The browser says Stripe saved the card: checked at Stripe, then handed to the worker."""
    setup = _setup(token)
    if setup.intent_status != "succeeded":
        return _json_error(409, "not_saved", f"the card is not saved (Stripe says {setup.intent_status})")
    with context.transaction() as session:
        accepted = card_pages.report_card_saved(session, setup)
    if accepted is not None:
        inbox.hand_to_workers(accepted, context.settings())
    return jsonify({"status": "saved"})


SETUP_OUTCOMES = {
    "on": "Your card is saved and auto top-up is on.",
    "pending": "Saving your card…",
    "off": "Auto top-up is off.",
    "failed": "Auto top-up is off: the card was declined.",
    "action_required": "Your bank asks you to confirm a top-up.",
}


@blueprint.get(f"/{page_links.SETUP}/<token>/status")
def setup_status(token: str) -> ResponseReturnValue:
    """The member's auto top-up status as the service has it."""
    link = _link(page_links.SETUP, token)
    _, _, member_id = link.subject.partition(":")
    with context.transaction() as session:
        status = card_pages.auto_topup_status(session, member_id)
    return jsonify({"status": status, "final": status != "pending", "message": SETUP_OUTCOMES.get(status, status)})


# Card authentication of an auto top-up ---------------------------------------------------------

AUTH_OUTCOMES = {
    "action_required": "Waiting for your bank's confirmation.",
    "succeeded": "Confirmed: your Bridge Credits were topped up.",
    "failed": "This top-up could not be completed.",
    "held": "This top-up is being checked by the federation.",
}


@blueprint.get(f"/{page_links.AUTHENTICATE}/<token>")
def authenticate_page(token: str) -> ResponseReturnValue:
    try:
        link = _link(page_links.AUTHENTICATE, token)
        found = card_pages.authentication(context.sessions(), context.gateway(), link.subject)
    except NotFound:
        raise  # the blueprint's 404
    except PaymentsError as exc:
        log.warning("authentication page: %s", exc.message)
        return _gone("Card payments are not available just now. Please try again shortly.", 503)
    if not found.open:
        return _gone(f"This top-up is closed: {AUTH_OUTCOMES.get(found.status, found.status)}")
    settings = context.settings()
    return render_template(
        "authenticate.html", found=found, stripe_js_url=settings.stripe_js_url,
        publishable_key=settings.stripe_publishable_key or "",
        status_url=url_for("pages.authenticate_status", token=token),
    )


@blueprint.get(f"/{page_links.AUTHENTICATE}/<token>/status")
def authenticate_status(token: str) -> ResponseReturnValue:
    link = _link(page_links.AUTHENTICATE, token)
    found = card_pages.authentication(context.sessions(), context.gateway(), link.subject, with_stripe=False)
    return jsonify({"status": found.status, "final": found.status != "action_required",
                    "message": AUTH_OUTCOMES.get(found.status, found.status)})
