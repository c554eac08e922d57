"""Signed callbacks (CONTRACT "Celery"; issue 12 item 4): a consumer can tell a callback this
service sent from one forged by anyone else who can reach the broker.

`signature` is the hex HMAC-SHA256 of the callback's other kwargs as canonical JSON, keyed with
the requesting client's `callback_key` (its text, UTF-8 encoded). Canonical JSON is
`json.dumps(kwargs, sort_keys=True, separators=(",", ":"), ensure_ascii=True)`: sorted keys, no
spaces, every non-ASCII character escaped as `\\uXXXX`, so the signed bytes are plain ASCII and
the same in any language that can reproduce those three rules. `route_payload` is echoed as it
was stored, so a consumer should verify the kwargs exactly as received, before changing them.

The bootstrap client `admin` (PAYMENTS_API_TOKEN) is not stored, so it has no stored key: its
key is derived from the token, `bootstrap_key(token)`. Requests with no recorded client (sent
by task name before tokens were carried) are signed with that key too. The outbox signs at send
time (`shared.outbox`), so every path that sends a callback signs it the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from typing import Any

SIGNATURE = "signature"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def canonical(kwargs: Mapping[str, Any]) -> bytes:
    """The bytes a callback's signature covers: every kwarg but `signature`."""
    unsigned = {key: value for key, value in kwargs.items() if key != SIGNATURE}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sign(kwargs: Mapping[str, Any], callback_key: str) -> str:
    return hmac.new(callback_key.encode(), canonical(kwargs), hashlib.sha256).hexdigest()


def signed(kwargs: Mapping[str, Any], callback_key: str) -> dict[str, Any]:
    """The kwargs with their `signature` (one already there is replaced, never trusted)."""
    unsigned = {key: value for key, value in kwargs.items() if key != SIGNATURE}
    return {**unsigned, SIGNATURE: sign(unsigned, callback_key)}


def verify(kwargs: Mapping[str, Any], callback_key: str) -> bool:
    """Whether `kwargs` carry a valid signature under `callback_key`; False for a missing or
    malformed signature, or kwargs that are not JSON. Compared in constant time."""
    given = kwargs.get(SIGNATURE) if isinstance(kwargs, Mapping) else None
    if not isinstance(given, str) or not _HEX64.fullmatch(given) or not callback_key:
        return False
    try:
        expected = sign(kwargs, callback_key)
    except (TypeError, ValueError):  # not JSON: nothing this service sent
        return False
    return hmac.compare_digest(expected, given)


def bootstrap_key(api_token: str) -> str:
    """The callback key of the bootstrap client `admin`: hex HMAC-SHA256(PAYMENTS_API_TOKEN,
    "payments callback key"). A consumer that knows the token derives it; the token itself is
    never sent, and rotating the token changes the key."""
    return hmac.new(api_token.encode(), b"payments callback key", hashlib.sha256).hexdigest()
