"""Hostile input at both edges (fault suite, first scenarios).

1. 10,000 bad Stripe webhook deliveries (bad or missing signatures, replayed and future
   timestamps, malformed headers, signed garbage, wrong shapes, huge bodies) mixed with 50 good
   ones: every bad one is a 400 (413 when over 1 MiB) with CONTRACT's error shape, and exactly the
   good ones are stored.
2. Hypothesis-generated bodies and path ids for every `/api/*` endpoint that takes a JSON body,
   and hostile path ids and query strings for the rest: never a 500, every 4xx in CONTRACT's
   error shape, and nothing stored by a rejected request.
3. The wrong client: every `/api/*` endpoint with no token, a revoked token, a token with the
   wrong scope, and (where a binding applies) one with the right scope but a broken binding:
   never a 2xx, and no table changes.

Deterministic: the webhook deliveries come from a seeded `random.Random`, hypothesis runs
derandomized. Run with `make test-faults` (`pytest tests/faults`); `-s` shows the summaries.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import hmac
import json
import random
import string
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st
from sqlalchemy import Engine, text
from werkzeug.test import TestResponse

from shared.stripe_gateway import sign_webhook
from tests.conftest import API_TOKEN
from tests.faults.scale import scaled
from webhook import openapi

SECRET = "whsec_fault_suite_not_a_secret"
OTHER_SECRET = "whsec_someone_else"
TOLERANCE = 300
MIB = 1024 * 1024
SEED = 20260601

BAD_DELIVERIES = scaled(10_000, 1_000)
HUGE_DELIVERIES = 10
GOOD_DELIVERIES = 50

# 405: a path id with "%2F" can land on another route (Flask's 405, in the error shape).
ALLOWED_STATUSES = {200, 201, 202, 400, 401, 404, 405, 409, 413, 422, 503}
STORED_TABLES = ("payment_requests", "journal_entries", "postings", "members", "organisations", "accounts",
                 "card_payments", "outbox", "stripe_events", "clients", "client_tokens")
COUNT_ROWS = text("SELECT " + ", ".join(f"(SELECT count(*) FROM {t}) AS {t}" for t in STORED_TABLES))

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}

# Per-scenario tallies, printed by each test (pytest -s) and copied into README.md.
TALLY: dict[str, collections.Counter[Any]] = collections.defaultdict(collections.Counter)


# Helpers ----------------------------------------------------------------------------------


def assert_error_shape(response: TestResponse) -> dict[str, Any]:
    """CONTRACT: {"error": {"code", "message", "field"?}}, all strings, nothing else."""
    assert response.mimetype == "application/json", (response.status_code, response.get_data()[:200])
    body = response.get_json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and {"code", "message"} <= set(error) <= {"code", "message", "field"}, error
    assert isinstance(error["code"], str) and error["code"], error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error.get("field", ""), str), error
    return error


def row_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(COUNT_ROWS).one()._mapping)


# 1. Bad webhooks ---------------------------------------------------------------------------


def _event(rng: random.Random, event_id: str | None = None) -> dict[str, Any]:
    return {
        "id": event_id or f"evt_{rng.getrandbits(64):016x}",
        "object": "event",
        "type": rng.choice(["payment_intent.succeeded", "payment_intent.payment_failed", "setup_intent.succeeded",
                            "charge.refunded", "customer.updated"]),
        "created": int(time.time()),
        "data": {"object": {"id": f"pi_{rng.getrandbits(48):012x}", "object": "payment_intent",
                            "amount": rng.randint(1, 10**6), "metadata": {"attempt_key": "k"}}},
    }


def _raw_signature(body: bytes, secret: str, timestamp: int) -> str:
    """Stripe's scheme over raw bytes (sign_webhook needs UTF-8)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def _garbage_text(rng: random.Random, size: int) -> str:
    alphabet = string.printable + "{}[]\":,\\ÿé漢🙂\u2028\ufeff"
    return "".join(rng.choice(alphabet) for _ in range(size))


def _bad_shape(rng: random.Random) -> Any:
    """A JSON object that is not a Stripe event: a field missing or of the wrong type."""
    event = _event(rng)
    kind = rng.randrange(14)
    if kind == 0:
        del event["id"]
    elif kind == 1:
        del event["type"]
    elif kind == 2:
        del event["data"]
    elif kind == 3:
        del event["data"]["object"]
    elif kind == 4:
        event["id"] = rng.choice([None, 12345, 1.5, True, [], {}, ["evt_1"], ""])
    elif kind == 5:
        event["type"] = rng.choice([None, 7, False, [], {"a": 1}, ""])
    elif kind == 6:
        event["data"] = rng.choice([None, [], "object", 3, {"object": None}, {"object": []}, {"object": "pi_1"}])
    elif kind == 7:
        event["object"] = rng.choice(["charge", "list", 1, []])
    elif kind == 8:
        event["id"] = "evt_" + "x" * rng.randint(252, 5000)  # longer than the 255 the column holds
    elif kind == 9:
        return {}
    elif kind == 10:
        event["id"] = rng.choice(["evt_\x00", "evt_\ud800", "\udfff", "a\x00b"])  # unstorable text
    elif kind == 11:
        event["type"] = rng.choice(["t\x00", "\ud83d", "payment_intent.\udc00"])
    elif kind == 12:
        event["data"]["object"]["amount"] = rng.choice([float("nan"), float("inf"), float("-inf")])
    else:
        return {"id": "evt_1", "type": "x"}
    return event


def _delivery(rng: random.Random, category: str) -> tuple[bytes, dict[str, str]]:
    """One bad delivery of `category`: (body, headers)."""
    now = int(time.time())
    event = _event(rng)
    body = json.dumps(event).encode()
    headers = {"Content-Type": "application/json"}
    signature: str | None
    if category == "no signature header":
        signature = None
    elif category == "empty signature header":
        signature = ""
    elif category == "forged v1":
        signature = f"t={now},v1={rng.getrandbits(256):064x}"
    elif category == "signed with another secret":
        signature = sign_webhook(body, OTHER_SECRET, timestamp=now)
    elif category == "replayed (older than 300 s)":
        signature = sign_webhook(body, SECRET, timestamp=now - rng.choice([TOLERANCE + 30, 3600, 86400 * 30,
                                                                          now - 1, now]))
    elif category == "timestamp in the far future":
        signature = sign_webhook(body, SECRET, timestamp=now + rng.choice([TOLERANCE + 3600, 86400, 10**9,
                                                                          10**12]))
    elif category == "tampered body":
        signature = sign_webhook(body, SECRET, timestamp=now)
        position = rng.randrange(len(body))
        body = body[:position] + bytes([body[position] ^ 0x01]) + body[position + 1:]
    elif category == "malformed header":
        good = sign_webhook(body, SECRET, timestamp=now)
        mac = good.partition(",v1=")[2]
        signature = rng.choice([
            "garbage", ",,,,", "=", "t=", "v1=", f"t={now}", f"v1={mac}", f"t=,v1={mac}", f"t=abc,v1={mac}",
            f"t={now}.0,v1={mac}", f"t=1e9,v1={mac}", f"t={now},v0={mac}", f"t={now},V1={mac}",
            f"t={now},v1={mac[:-1]}", f"t={now},v1={mac.upper()}", f"t={now},v1= {mac}",
            f"t={now},v1={mac}é", f"t={now},v1=é{mac[1:]}", f"t={now};v1={mac}", f"t={now} v1={mac}",
            f"t={'9' * 5000},v1={mac}", f"t={now},v1={'a' * 8000}", "t=-1,v1=00", f"t={now},v1=\x7f",
            f"t={now},v1={mac}x", f"v1={mac},t={now + 1}", "Bearer " + mac, "t=" + "\u00ff" * 10 + ",v1=" + mac,
        ])
    elif category == "signed truncated JSON":
        body = body[: rng.randrange(1, len(body))]
        signature = sign_webhook(body, SECRET, timestamp=now)
    elif category == "signed garbage text":
        body = _garbage_text(rng, rng.randint(1, 400)).encode()
        signature = sign_webhook(body, SECRET, timestamp=now)
    elif category == "signed non-UTF-8 bytes":
        body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))) + rng.choice(
            [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])
        signature = _raw_signature(body, SECRET, now)
    elif category == "signed JSON that is not an object":
        value = rng.choice([[], [event], "event", 42, -1.5, None, True, False, [[[]]], "", 10**30])
        body = json.dumps(value).encode()
        signature = sign_webhook(body, SECRET, timestamp=now)
    elif category == "signed object of the wrong shape":
        body = json.dumps(_bad_shape(rng)).encode()  # NaN/Infinity dumped as Python does
        signature = sign_webhook(body, SECRET, timestamp=now)
    elif category == "signed empty body":
        body = b""
        signature = sign_webhook(body, SECRET, timestamp=now)
    elif category == "body over 1 MiB":
        padding = "a" * (MIB + rng.randint(1, 4096))
        body = json.dumps({**event, "data": {"object": {"id": "pi_huge", "padding": padding}}}).encode()
        signature = sign_webhook(body, SECRET, timestamp=now)
    else:  # pragma: no cover
        raise AssertionError(category)
    if signature is not None:
        headers["Stripe-Signature"] = signature
    return body, headers


BAD_CATEGORIES = [
    "no signature header", "empty signature header", "forged v1", "signed with another secret",
    "replayed (older than 300 s)", "timestamp in the far future", "tampered body", "malformed header",
    "signed truncated JSON", "signed garbage text", "signed non-UTF-8 bytes", "signed JSON that is not an object",
    "signed object of the wrong shape", "signed empty body",
]


def _event_id(body: bytes) -> set[str]:
    try:
        event = json.loads(body)
    except (ValueError, RecursionError):
        return set()
    event_id = event.get("id") if isinstance(event, dict) else None
    return {event_id} if isinstance(event_id, str) else set()


def test_ten_thousand_bad_webhooks_are_refused_with_nothing_stored(app_with, engine, capsys) -> None:
    rng = random.Random(SEED)
    client = app_with(stripe_webhook_secret=SECRET).test_client()
    plan = [rng.choice(BAD_CATEGORIES) for _ in range(BAD_DELIVERIES - HUGE_DELIVERIES)]
    plan += ["body over 1 MiB"] * HUGE_DELIVERIES + ["good"] * GOOD_DELIVERIES
    rng.shuffle(plan)

    tally: collections.Counter[str] = collections.Counter()
    statuses: collections.Counter[int] = collections.Counter()
    good_ids: list[str] = []
    bad_ids: set[str] = set()  # the ids of bad deliveries whose body parses at all
    started = time.monotonic()
    for number, category in enumerate(plan):
        if category == "good":
            event = _event(rng, event_id=f"evt_good_{number:05d}")
            body = json.dumps(event).encode()
            headers = {"Content-Type": "application/json", "Stripe-Signature": sign_webhook(body, SECRET)}
        else:
            body, headers = _delivery(rng, category)
            bad_ids.update(_event_id(body))
        response = client.post("/stripe/webhook", data=body, headers=headers)
        tally[category] += 1
        statuses[response.status_code] += 1
        where = (f"delivery {number} ({category}, {headers.get('Stripe-Signature', '')[:100]!r}): "
                 f"{response.status_code} {response.get_data()[:300]!r}")
        if category == "good":
            assert response.status_code == 200, where
            assert response.get_json() == {"received": True, "duplicate": False}, where
            good_ids.append(event["id"])
            continue
        assert response.status_code == (413 if category == "body over 1 MiB" else 400), where
        error = assert_error_shape(response)
        if category == "body over 1 MiB":
            assert error["code"] == "payload_too_large", where
    elapsed = time.monotonic() - started

    with engine.connect() as conn:
        everything = set(conn.execute(text("SELECT event_id FROM stripe_events")).scalars())
    # The e2e suite's webhook server shares this database, and localstripe may still deliver to
    # it: count only the events this test sent.
    stored = sorted(everything & (set(good_ids) | bad_ids))
    assert stored == sorted(good_ids), "exactly the good deliveries are stored"
    assert len(stored) == GOOD_DELIVERIES
    assert not any(event_id.startswith("evt_good_") for event_id in everything - set(good_ids))
    assert sum(tally.values()) - GOOD_DELIVERIES == BAD_DELIVERIES

    TALLY["webhooks"].update(tally)
    with capsys.disabled():
        bad = sum(n for c, n in tally.items() if c != "good")
        print(f"\nbad webhooks: {bad} bad deliveries in {len(tally) - 1} categories + {tally['good']} good "
              f"in {elapsed:.1f} s; statuses {dict(sorted(statuses.items()))}; "
              f"stored {len(stored)} (= the good ones), 500s: {statuses[500]}")
        for category, n in sorted(tally.items()):
            print(f"  {category}: {n}")


# 2. Hostile API bodies ---------------------------------------------------------------------

MEMBERS = ("ann", "bob")
ORGANISATIONS = ("club", "other-club")

INJECTIONS = [
    "'; DROP TABLE postings; --", "' OR '1'='1", "Robert'); DROP TABLE members;--", "1; SELECT pg_sleep(10)",
    "<script>alert(1)</script>", "\"><img src=x onerror=alert(1)>", "javascript:alert(1)",
    "../../etc/passwd", "..\\..\\windows\\win.ini", "/dev/zero", "${jndi:ldap://x/a}", "{{7*7}}", "%s%s%n",
    "%00", "\x00", "ann\x00", "\r\nX-Injected: 1", "ann; rm -rf /",
]
ODDITIES = [
    "\ud800", "a\udfffb", "\ud83d", "\u202eevil", "\ufeff", "\u2028", "🙂", "Ω≈ç√∫", "٣٤", "１２", "ǅ",
    "e\u0301", "\t", " ", "", "null", "None", "true", "undefined", "[]", "{}",
]
AMOUNT_TEXTS = [
    "1e3", "1E3", "NaN", "nan", "Infinity", "-Infinity", "inf", "12.345", "0.001", "12.", ".5", "-0", "0", "0.00",
    "-0.01", "-5.00", "-1000000.00", "+5.00", " 12.34 ", "1,000.00", "1 000", "0x10", "1_000", "١٢٣", "１２",
    "12.34.56", "--1", "9" * 40, "9" * 5000, "1000000.01", "1000000.00", "2000.01", "49.99", "50.00", "20.00",
]
NUMBERS = [0, -1, 1, -100, 10**13, 10**15, 10**30, -(10**30), 2**63, 2**64, 0.0, -0.0, 1.5, 12.34, 1e308,
           float("nan"), float("inf"), float("-inf"), True, False]

hostile_text = st.one_of(
    st.sampled_from(INJECTIONS + ODDITIES),
    st.text(max_size=30),  # any code point, lone surrogates included
    st.text(alphabet=string.ascii_letters + string.digits + "_.:-", min_size=60, max_size=70),
    st.builds(lambda n, c: c * n, st.integers(80, 20_000), st.sampled_from(["x", "é", "9", " "])),
)
hostile_value = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(NUMBERS),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(),
    st.sampled_from(AMOUNT_TEXTS),
    hostile_text,
    st.lists(st.one_of(st.integers(), st.text(max_size=5), st.none()), max_size=4),
    st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=5)), max_size=3),
)
amounts = st.sampled_from(["0.01", "1.00", "5", "10.00", "12.34", "50.00", "100.00", "1999.99", 5, 100])
member_ids = st.sampled_from([*MEMBERS, "nobody"])
organisation_ids = st.sampled_from([*ORGANISATIONS, "nowhere"])
request_ids = st.one_of(st.sampled_from(["req-1", "req-2", "req-3"]),  # reused: replays and 409s
                        st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=12))
descriptions = st.sampled_from(["Congress entry", "Table money", "Goodwill credit", " padded "])


@dataclasses.dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # with {id} for a path id
    fields: dict[str, st.SearchStrategy[Any]]  # a valid value for each field, optional ones included
    optional: frozenset[str] = frozenset()
    path_ids: st.SearchStrategy[str] | None = None
    alternatives: tuple[tuple[str, str], ...] = ()  # (field, other): send one or the other


JSON_ENDPOINTS = [
    Endpoint("PUT", "/api/members/{id}", {
        "email": st.sampled_from(["ann@example.org", "a.b+c@example.co.uk"]),
        "first_name": st.sampled_from(["Ann", " Zoë "]), "last_name": st.sampled_from(["Lee", "O'Brien"]),
        "low_balance_emails": st.booleans(),
    }, optional=frozenset({"low_balance_emails"}), path_ids=member_ids),
    Endpoint("PUT", "/api/organisations/{id}", {
        "name": st.sampled_from(["North Shore Bridge Club", "Club"]),
        "settlement_fee_percent": st.sampled_from(["2.5", "0", "100", 3, "2.50"]),
        "minimum_balance_after_settlement": st.sampled_from(["0.00", "100.00", 50]),
    }, optional=frozenset({"settlement_fee_percent", "minimum_balance_after_settlement"}), path_ids=organisation_ids),
    Endpoint("POST", "/api/adjustments", {
        "request_id": request_ids, "member_id": member_ids, "organisation_id": organisation_ids,
        "amount": st.one_of(amounts, st.sampled_from(["-1.00", "-0.01"])), "description": descriptions,
        "admin_id": st.sampled_from(["admin-7", "42"]), "allow_negative": st.booleans(),
    }, optional=frozenset({"allow_negative"}), alternatives=(("member_id", "organisation_id"),)),
    Endpoint("POST", "/api/payments", {
        "request_id": request_ids, "member_id": member_ids, "amount": amounts, "description": descriptions,
        "payment_type": st.sampled_from(["Miscellaneous", "Club Payment", "Entry to an event"]),
        "organisation_id": organisation_ids, "other_member_id": member_ids,
        "route_code": st.sampled_from(["EVT", "CLUB"]), "route_payload": st.sampled_from([{"entry": 1}, "x", None]),
        "book_internals": st.booleans(), "allow_checkout": st.booleans(),
        "event_id": st.sampled_from(["ev-1"]), "session_id": st.sampled_from(["s-1"]),
    }, optional=frozenset({"payment_type", "organisation_id", "other_member_id", "route_code", "route_payload",
                           "book_internals", "allow_checkout", "event_id", "session_id"}),
        alternatives=(("organisation_id", "other_member_id"),)),
    Endpoint("POST", "/api/transfers", {
        "request_id": request_ids, "from_member_id": member_ids, "from_organisation_id": organisation_ids,
        "to_member_id": member_ids, "to_organisation_id": organisation_ids, "amount": amounts,
        "description": descriptions,
        "payment_type": st.sampled_from(["Org Transfer", "Refund", "Club Top Up", "Member Transfer", "Settlement"]),
        "event_id": st.sampled_from(["ev-1"]), "session_id": st.sampled_from(["s-1"]),
        "allow_checkout": st.booleans(), "allow_negative": st.booleans(),
    }, optional=frozenset({"payment_type", "event_id", "session_id", "allow_checkout", "allow_negative"}),
        alternatives=(("from_member_id", "from_organisation_id"), ("to_member_id", "to_organisation_id"))),
    Endpoint("POST", "/api/settlements", {
        "request_id": request_ids,
        "reference_date": st.sampled_from(["2026-01-31", "2025-12-31", "2024-02-29"]),
        "organisations": st.lists(st.fixed_dictionaries(
            {"organisation_id": organisation_ids}, optional={"override_amount": amounts}), min_size=1, max_size=3,
            unique_by=lambda item: item["organisation_id"]),
    }, optional=frozenset({"reference_date"})),
    Endpoint("POST", "/api/refunds", {
        "request_id": request_ids, "payment_intent_id": st.sampled_from(["pi_123", "pi_unknown"]),
        "by": st.sampled_from(["member", "admin"]), "amount": amounts, "admin_id": st.sampled_from(["admin-7"]),
    }, optional=frozenset({"amount", "admin_id"})),
    Endpoint("POST", "/api/ious", {
        "request_id": request_ids, "organisation_id": organisation_ids, "member_id": member_ids, "amount": amounts,
        "description": descriptions, "route_code": st.sampled_from(["EVT"]), "route_payload": st.sampled_from([{"s": 1}]),
        "session_id": st.sampled_from(["s-1"]), "event_id": st.sampled_from(["ev-1"]),
    }, optional=frozenset({"route_code", "route_payload", "session_id", "event_id"})),
    Endpoint("POST", "/api/members/{id}/topups", {
        "request_id": request_ids, "amount": st.sampled_from(["50.00", "100.00", "2000.00"]),
        "use_saved_card": st.booleans(),
    }, optional=frozenset({"use_saved_card"}), path_ids=member_ids),
    Endpoint("PUT", "/api/members/{id}/auto-topup", {
        "amount": st.sampled_from(["50.00", "100.00", "2000.00", 75]),
    }, path_ids=member_ids),
]

RAW_BODIES = [
    b"", b"not json", b"{", b'{"amount": ', b"[]", b"[1, 2]", b'"text"', b"null", b"42", b"true",
    b"\xff\xfe\x00{}", b'{"amount": "\xff"}', b'{"a": NaN}', b'{"amount": Infinity}', b'{"a": -Infinity}',
    b'{"amount": 1e400}', b'{"a": "\\ud800"}', b'{"a": "\\u0000"}', b'{"request_id": "a", "request_id": "b"}',
    b"[" * 50_000 + b"]" * 50_000, b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
    b'{"a": "' + b"x" * (MIB + 10) + b'"}',  # over MAX_CONTENT_LENGTH: 413
]
CONTENT_TYPES = ["application/json", "text/plain", "application/x-www-form-urlencoded",
                 "application/json; charset=latin-1", "multipart/form-data; boundary=x", ""]

HOSTILE_PATH_IDS = [
    "%00", "a%00b", "%2e%2e", "..%2F..%2Fetc%2Fpasswd", "%2F", "%ff%fe", "%ED%A0%80", "%F0%9F%99%82", "%u0041",
    "a%20b", "%20ann", "-ann", "ann%3B", "%25", "%27%3B%20DROP%20TABLE%20members%3B--", "%3Cscript%3E",
    "a" * 65, "9" * 70, "ann%0D%0AX-Injected:%201", "%E2%80%AE", "nobody", "..", ".", "NaN",
]
hostile_path_ids = st.one_of(
    st.sampled_from(HOSTILE_PATH_IDS),
    st.text(min_size=1, max_size=20).map(lambda s: quote(s, safe="", errors="surrogatepass")),
)


@st.composite
def requests_for(draw: st.DrawFn, endpoint: Endpoint) -> dict[str, Any]:
    """One request: a valid body, a mutated one (fields dropped, replaced or added), or a raw one."""
    path = endpoint.path
    if endpoint.path_ids is not None:
        path_id = draw(st.one_of(endpoint.path_ids, hostile_path_ids))
        path = path.replace("{id}", path_id)
    headers = dict(AUTH)
    if draw(st.integers(0, 19)) == 7:  # now and then a wrong or missing token (401)
        headers = draw(st.sampled_from([{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_TOKEN}]))
    mode = draw(st.sampled_from(["valid", "mutated", "mutated", "mutated", "mutated", "raw", "not an object"]))
    if mode == "raw":
        return {"path": path, "headers": headers, "kind": mode, "data": draw(st.sampled_from(RAW_BODIES)),
                "content_type": draw(st.sampled_from(CONTENT_TYPES))}
    if mode == "not an object":
        return {"path": path, "headers": headers, "kind": mode, "json": draw(hostile_value.filter(
            lambda v: not isinstance(v, dict)))}
    skip = {draw(st.sampled_from(pair)) for pair in endpoint.alternatives}
    body: dict[str, Any] = {}
    for name, strategy in endpoint.fields.items():
        if name in skip or (name in endpoint.optional and draw(st.booleans())):
            continue
        body[name] = draw(strategy)
    if mode == "mutated":
        names = sorted(endpoint.fields)
        for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True)):
            if draw(st.integers(0, 3)) == 0:
                body.pop(name, None)
            else:
                body[name] = draw(hostile_value)
        if draw(st.integers(0, 4)) == 0:
            body[draw(hostile_text)] = draw(hostile_value)  # an unknown field
        if "organisations" in body and isinstance(body["organisations"], list) and draw(st.booleans()):
            body["organisations"] = [draw(st.one_of(hostile_value, st.fixed_dictionaries(
                {"organisation_id": st.one_of(organisation_ids, hostile_value)},
                optional={"override_amount": hostile_value})))]
    return {"path": path, "headers": headers, "kind": mode, "json": body}


@pytest.fixture
def api(app_with, engine) -> Iterator[FlaskClient]:
    client = app_with().test_client()
    for member in MEMBERS:
        body = {"email": f"{member}@example.org", "first_name": member.title(), "last_name": "Lee"}
        assert client.put(f"/api/members/{member}", json=body, headers=AUTH).status_code == 201
    for org in ORGANISATIONS:
        assert client.put(f"/api/organisations/{org}", json={"name": org}, headers=AUTH).status_code == 201
    credit = {"request_id": "seed-ann", "member_id": "ann", "amount": "500.00", "description": "Seed",
              "admin_id": "admin-1"}
    assert client.post("/api/adjustments", json=credit, headers=AUTH).status_code == 201
    yield client


EXAMPLES_PER_ENDPOINT = scaled(500, 100)
FAST_AND_FIXED = hypothesis_settings(
    max_examples=EXAMPLES_PER_ENDPOINT,
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)


def check_request(client: FlaskClient, engine: Engine, method: str, request: dict[str, Any], tally_key: str) -> None:
    before = row_counts(engine)
    if "data" in request:
        response = client.open(request["path"], method=method, data=request["data"],
                               content_type=request["content_type"], headers=request["headers"])
    else:
        response = client.open(request["path"], method=method, json=request["json"], headers=request["headers"])
    status = response.status_code
    TALLY[tally_key][status] += 1
    where = f"{method} {request['path'][:120]} ({request['kind']}): {status} {response.get_data()[:300]!r}"
    assert status != 500, where
    assert status in ALLOWED_STATUSES, where
    if status >= 400:
        error = assert_error_shape(response)
        if status == 401:
            assert error["code"] == "unauthenticated", where
        assert row_counts(engine) == before, f"a rejected request stored something: {where}"
    else:
        assert response.is_json, where


@pytest.mark.parametrize("endpoint", JSON_ENDPOINTS, ids=[f"{e.method} {e.path}" for e in JSON_ENDPOINTS])
def test_hostile_bodies_are_refused_in_the_error_shape_and_store_nothing(api, engine, endpoint, capsys) -> None:
    key = f"{endpoint.method} {endpoint.path}"
    TALLY[key].clear()

    @FAST_AND_FIXED
    @given(request=requests_for(endpoint))
    def run(request: dict[str, Any]) -> None:
        check_request(api, engine, endpoint.method, request, key)

    run()
    statuses = TALLY[key]
    with capsys.disabled():
        print(f"\n{key}: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    assert statuses[500] == 0
    assert sum(n for s, n in statuses.items() if s >= 400) > 0


# Endpoints without a JSON body: hostile path ids and query strings.
PATH_ENDPOINTS = [
    ("GET", "/api/members/{id}", None), ("GET", "/api/members/{id}/balance", "date"),
    ("GET", "/api/members/{id}/statement", "format"), ("GET", "/api/organisations/{id}", None),
    ("GET", "/api/organisations/{id}/balance", "date"), ("GET", "/api/organisations/{id}/statement", "format"),
    ("GET", "/api/organisations/{id}/summary", "days"), ("GET", "/api/payments/{id}", None),
    ("DELETE", "/api/members/{id}/auto-topup", None), ("POST", "/api/members/{id}/auto-topup/setup", None),
    ("GET", "/api/organisations/{id}/report", "from"),
]
QUERY_VALUES = ["2026-03-10", "9999-12-31", "0001-01-01", "2026-02-30", "csv", "json", "xml", "30", "90", "all",
                "-1", "0", "1e9", "%00", "%ff", "%27%3B--", "", "a" * 500]


@st.composite
def path_requests(draw: st.DrawFn) -> tuple[str, str, str | None]:
    method, template, query = draw(st.sampled_from(PATH_ENDPOINTS))
    path_id = draw(st.one_of(st.sampled_from([*MEMBERS, *ORGANISATIONS, "req-1"]), hostile_path_ids))
    path = template.replace("{id}", path_id)
    if query is not None and draw(st.booleans()):
        path += f"?{query}=" + draw(st.one_of(st.sampled_from(QUERY_VALUES), hostile_path_ids))
    return method, path, template


def test_hostile_path_ids_and_queries_never_500(api, engine, capsys) -> None:
    key = "path ids and queries"
    TALLY[key].clear()

    @hypothesis_settings(FAST_AND_FIXED, max_examples=EXAMPLES_PER_ENDPOINT)
    @given(request=path_requests())
    def run(request: tuple[str, str, str | None]) -> None:
        method, path, _ = request
        before = row_counts(engine)
        response = api.open(path, method=method, headers=AUTH)
        status = response.status_code
        TALLY[key][status] += 1
        where = f"{method} {path[:120]}: {status} {response.get_data()[:300]!r}"
        assert status != 500, where
        assert status in ALLOWED_STATUSES, where
        if status >= 400:
            assert_error_shape(response)
            assert row_counts(engine) == before, where

    run()
    with capsys.disabled():
        print(f"\n{key}: {sum(TALLY[key].values())} requests, statuses {dict(sorted(TALLY[key].items()))}")


# 3. The wrong client -----------------------------------------------------------------------
# Every endpoint, with a request the bootstrap admin could make, tried with no token, a revoked
# token, a token with the wrong scope, and a token with the right scope but a broken binding:
# never a 2xx, always CONTRACT's error shape, and no table changes.

WRONG_CLIENTS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "revoked": (["admin"], {}),
    "monitor": (["ops"], {}),
    "people": (["profiles"], {}),
    "reporter": (["reports"], {}),
    "portal": (["payments"], {}),
    "portal-bound": (["payments"], {"route_codes": ["OTHER"], "request_prefix": "elsewhere-"}),
    "people-bound": (["profiles"], {"organisations": ["other-club"]}),
    "reporter-bound": (["reports"], {"organisations": ["other-club"]}),
    "club-bound": (["clubs"], {"organisations": ["other-club"]}),
    "staff-bound": (["admin"], {"organisations": ["other-club"], "request_prefix": "elsewhere-"}),
}
PAYMENT_BODY = {"request_id": "wc-pay", "member_id": "ann", "amount": "5.00", "description": "Entry",
                "organisation_id": "club", "route_code": "EVT"}
MEMBER_BODY = {"email": "ann@example.org", "first_name": "Ann", "last_name": "Lee"}

# (method, path, body, a client with the wrong scope, a client with the right scope but a
# broken binding; None where no binding applies to the endpoint)
WRONG_CLIENT_ENDPOINTS: list[tuple[str, str, dict[str, Any] | None, str, str | None]] = [
    ("PUT", "/api/members/ann", MEMBER_BODY, "portal", None),
    ("GET", "/api/members/ann", None, "portal", None),
    ("GET", "/api/members/ann/balance", None, "people", None),
    ("GET", "/api/members/ann/statement", None, "portal", None),
    ("PUT", "/api/organisations/club", {"name": "Club"}, "reporter", "people-bound"),
    ("PUT", "/api/organisations/club", {"name": "Club", "settlement_fee_percent": "1.00"}, "people", "staff-bound"),
    ("GET", "/api/organisations/club", None, "portal", "reporter-bound"),
    ("GET", "/api/organisations/club/balance", None, "people", "club-bound"),
    ("GET", "/api/organisations/club/statement", None, "portal", "club-bound"),
    ("GET", "/api/organisations/club/summary", None, "people", "club-bound"),
    ("POST", "/api/adjustments", {"request_id": "wc-adj", "member_id": "ann", "amount": "10.00",
                                  "description": "Gift", "admin_id": "admin"}, "portal", "staff-bound"),
    ("GET", "/api/admin/summary", None, "portal", None),
    ("POST", "/api/payments", PAYMENT_BODY, "reporter", "portal-bound"),
    ("POST", "/api/transfers", {"request_id": "wc-tr", "from_member_id": "ann", "to_member_id": "bob",
                                "amount": "1.00", "description": "Lunch"}, "club-bound", "portal-bound"),
    ("POST", "/api/transfers", {"request_id": "wc-ctr", "from_organisation_id": "club", "to_member_id": "ann",
                                "amount": "1.00", "description": "Prize"}, "portal", "club-bound"),
    ("POST", "/api/settlements", {"request_id": "wc-set", "reference_date": "2026-01-31",
                                  "organisations": [{"organisation_id": "club"}]}, "portal", "club-bound"),
    ("POST", "/api/refunds", {"request_id": "wc-ref", "payment_intent_id": "pi_1", "by": "member"},
     "reporter", "portal-bound"),
    ("POST", "/api/refunds", {"request_id": "wc-aref", "payment_intent_id": "pi_1", "by": "admin",
                              "admin_id": "admin"}, "portal", "staff-bound"),
    ("POST", "/api/members/ann/topups", {"request_id": "wc-top", "amount": "50.00"}, "people", "portal-bound"),
    ("POST", "/api/members/ann/auto-topup/setup", None, "reporter", None),
    ("PUT", "/api/members/ann/auto-topup", {"amount": "60.00"}, "people", None),
    ("DELETE", "/api/members/ann/auto-topup", None, "reporter", None),
    ("GET", "/api/payments/seed-pay", None, "club-bound", "portal-bound"),  # a request made by admin
    ("POST", "/api/ious", {"request_id": "wc-iou", "organisation_id": "club", "member_id": "ann", "amount": "5.00",
                           "description": "Table money"}, "portal", "club-bound"),
    ("GET", "/api/members/ann/ious", None, "people", None),
    ("GET", "/api/organisations/club/ious", None, "portal", "club-bound"),
    ("POST", "/api/ious/{iou}/pay", {"request_id": "wc-iou-pay"}, "reporter", "portal-bound"),  # the seeded IOU
    ("DELETE", "/api/ious/{iou}", None, "portal", "club-bound"),
    ("GET", "/api/organisations/club/report", None, "portal", "club-bound"),
    ("GET", "/api/reports/movement", None, "club-bound", None),
    # Federation-wide settlement reads: a client bound to organisations is refused them.
    ("GET", "/api/settlements/candidates", None, "portal", "reporter-bound"),
    ("GET", "/api/settlements", None, "club-bound", "reporter-bound"),
    ("GET", "/api/settlements/seed-pay/bank-file", None, "portal", "staff-bound"),
    ("GET", "/api/card-payments", None, "portal", None),  # no member_id: reports only
    ("GET", "/api/reports/balances", None, "portal", None),
    ("GET", "/api/reports/reconciliation", None, "club-bound", None),
    ("GET", "/api/reports/transactions", None, "people", None),
]


@pytest.fixture
def wrong_clients(api, sessions) -> dict[str, str]:
    from shared import access

    tokens: dict[str, str] = {}
    with sessions.begin() as session:
        for name, (scopes, bindings) in WRONG_CLIENTS.items():
            tokens[name] = access.add(session, name, scopes, **bindings).token
        access.revoke(session, "revoked")
    seed = {**PAYMENT_BODY, "request_id": "seed-pay"}
    assert api.post("/api/payments", json=seed, headers=AUTH).status_code == 202
    iou = {"request_id": "seed-iou", "organisation_id": "club", "member_id": "ann", "amount": "5.00",
           "description": "Table money"}
    tokens["{iou}"] = str(api.post("/api/ious", json=iou, headers=AUTH).get_json()["iou_id"])
    return tokens


def test_every_endpoint_refuses_the_wrong_client_and_changes_nothing(api, engine, wrong_clients, capsys) -> None:
    # The API's description and its reading page are public (CONTRACT); every other route is tried.
    served = {(m, rule.rule) for rule in api.application.url_map.iter_rules() if rule.rule.startswith("/api/")
              and rule.rule not in openapi.PUBLIC_PATHS for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert set(openapi.PUBLIC_PATHS) == {"/api/openapi.json", "/api/docs"}
    tried = {(m, p.replace("/ann", "/<member_id>").replace("/club", "/<org_id>").replace("seed-pay", "<request_id>")
              .replace("{iou}", "<iou_id>")) for m, p, *_ in WRONG_CLIENT_ENDPOINTS}
    assert tried == served, "every /api route is tried"
    statuses: collections.Counter[tuple[str, int]] = collections.Counter()
    for method, path, body, wrong_scope, wrong_binding in WRONG_CLIENT_ENDPOINTS:
        callers = {"no token": {}, "revoked token": {"Authorization": f"Bearer {wrong_clients['revoked']}"},
                   "wrong scope": {"Authorization": f"Bearer {wrong_clients[wrong_scope]}"}}
        if wrong_binding is not None:
            callers["wrong binding"] = {"Authorization": f"Bearer {wrong_clients[wrong_binding]}"}
        path = path.replace("{iou}", wrong_clients["{iou}"])
        for case, headers in callers.items():
            before = row_counts(engine)
            response = api.open(path, method=method, json=body, headers=headers)
            where = f"{case}: {method} {path}: {response.status_code} {response.get_data()[:300]!r}"
            expected = (401, "unauthenticated") if case in ("no token", "revoked token") else (403, "forbidden")
            assert response.status_code == expected[0], where
            assert assert_error_shape(response)["code"] == expected[1], where
            assert row_counts(engine) == before, f"a refused request changed a table: {where}"
            statuses[(case, response.status_code)] += 1
    with capsys.disabled():
        print(f"\nwrong client: {sum(statuses.values())} requests, {dict(sorted(statuses.items()))}")
