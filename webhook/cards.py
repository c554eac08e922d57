"""Saved cards and auto top-up over HTTP (CONTRACT; SPEC 4.1): set up (a SetupIntent for the
browser), change the amount, cancel. Stripe is called with no transaction open."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from shared import access, card_pages, charges, fields, page_links, topups
from shared.money import format_cents
from webhook import context
from webhook.auth import action

blueprint = Blueprint("cards", __name__)


@blueprint.post("/members/<member_id>/auto-topup/setup")
@action(access.AUTO_TOPUP_SETUP)
def setup(member_id: str) -> ResponseReturnValue:
    member_id = fields.identifier(member_id, "member_id")
    info = charges.setup_auto_topup(context.sessions(), context.gateway(), context.settings(), member_id)
    url = page_links.url(context.settings(), page_links.SETUP, card_pages.setup_subject(member_id, info.setup_intent_id))
    return jsonify({"setup_intent_id": info.setup_intent_id, "client_secret": info.client_secret,
                    "publishable_key": info.publishable_key, **({"url": url} if url else {})})


@blueprint.put("/members/<member_id>/auto-topup")
@action(access.AUTO_TOPUP_CHANGE)
def change_amount(member_id: str) -> ResponseReturnValue:
    member_id = fields.identifier(member_id, "member_id")
    body = context.json_body()
    with context.transaction() as session:
        member = topups.set_auto_amount(session, member_id, body, context.settings())
        auto_topup = {"status": member.auto_topup_status, "amount": format_cents(member.auto_topup_amount)}
    return jsonify({"member_id": member_id, "auto_topup": auto_topup})


@blueprint.delete("/members/<member_id>/auto-topup")
@action(access.AUTO_TOPUP_CANCEL)
def cancel(member_id: str) -> ResponseReturnValue:
    member_id = fields.identifier(member_id, "member_id")
    charges.cancel_auto_topup(context.sessions(), context.gateway(), member_id)
    return jsonify({"member_id": member_id, "auto_topup": {"status": "off"}})
