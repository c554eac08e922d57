"""Links to the pages for people (CONTRACT "Pages for people"): an unguessable, expiring token
in the `url` of a checkout, a set-up answer or an e-mail.

A token is signed, not stored: `KIND.SUBJECT.EXPIRES.SIGNATURE`, where SUBJECT is the request
id (a checkout), member id (a card set-up) or attempt key (an authentication), base64url;
EXPIRES is a Unix time; SIGNATURE is an HMAC-SHA256 (256 bits, base64url) of the rest with a
key derived from PAYMENTS_API_TOKEN, as statement cursors are (`statements.cursor_key`). So it
needs no table, cannot be guessed or altered (a changed subject or expiry breaks the
signature), and dies at EXPIRES. A link that was used (the checkout paid) is refused by the
page from the request's own state, not from the token. Without PAYMENTS_API_TOKEN there is no
key, and no links are made.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from shared.config import Settings

CHECKOUT = "pay"
SETUP = "card"
AUTHENTICATE = "auth"
KINDS = (CHECKOUT, SETUP, AUTHENTICATE)

# A checkout is given up 24 h after it opened (shared.charges.CHECKOUT_LIFETIME): its link lives
# as long from when it is handed out. A set-up link is for a member at the screen: 1 h.
LIFETIME = {CHECKOUT: timedelta(hours=24), SETUP: timedelta(hours=1), AUTHENTICATE: timedelta(hours=24)}


class BadLink(Exception):
    """Not a link we made (404)."""


class ExpiredLink(Exception):
    """A link we made, past its expiry (410)."""


@dataclass(frozen=True)
class Link:
    kind: str
    subject: str
    expires_at: int  # Unix time


def _key(settings: Settings) -> bytes | None:
    if not settings.api_token:
        return None
    return hmac.new(settings.api_token.encode(), b"payments page link", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def token(settings: Settings, kind: str, subject: str, *, now: float | None = None) -> str | None:
    """A new token for `subject`, valid for its kind's lifetime; None without a key."""
    key = _key(settings)
    if key is None:
        return None
    expires = int((time.time() if now is None else now) + LIFETIME[kind].total_seconds())
    body = f"{kind}.{_b64(subject.encode())}.{expires}"
    return f"{body}.{_b64(hmac.new(key, body.encode(), hashlib.sha256).digest())}"


def url(settings: Settings, kind: str, subject: str) -> str | None:
    """The page's address for people (PAYMENTS_PUBLIC_URL), or None without a key."""
    made = token(settings, kind, subject)
    return f"{settings.public_url.rstrip('/')}/{kind}/{made}" if made else None


def read(settings: Settings, kind: str, text: str, *, now: float | None = None) -> Link:
    """The link `text` stands for; `BadLink` if we did not make it (for this kind of page),
    `ExpiredLink` if it is past its time."""
    key = _key(settings)
    parts = text.split(".")
    if key is None or len(parts) != 4 or parts[0] != kind or not parts[2].isdigit() or len(parts[2]) > 12:
        raise BadLink("not a link")
    body = ".".join(parts[:3])
    expected = _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(expected.encode(), parts[3].encode("ascii", "replace")):
        raise BadLink("not a link")
    try:
        subject = _unb64(parts[1]).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadLink("not a link") from None
    expires = int(parts[2])
    if expires < (time.time() if now is None else now):
        raise ExpiredLink("this link has expired")
    return Link(kind, subject, expires)


def with_checkout_url(settings: Settings, document: dict[str, Any]) -> dict[str, Any]:
    """A status document (`requests.status_document`) with `checkout.url` added while the
    request waits for a card: a fresh link on each read, each valid for LIFETIME."""
    checkout = document.get("checkout")
    if document.get("status") == "awaiting_card" and isinstance(checkout, dict):
        link = url(settings, CHECKOUT, str(document["request_id"]))
        if link:
            document = {**document, "checkout": {**checkout, "url": link}}
    return document
