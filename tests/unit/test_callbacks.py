"""The callback signature's form (CONTRACT "Celery"; shared/callbacks.py), worked by hand so a
consumer in another language can check its own code against it."""

from __future__ import annotations

import hashlib
import hmac

from shared import callbacks, client

KEY = "0123456789abcdef" * 4


def test_the_signature_is_the_hmac_of_sorted_compact_ascii_json_of_the_other_kwargs() -> None:
    kwargs = {"status": "success", "amount": "5.00", "reason": None, "route_payload": {"b": 1, "a": "Zoë"}}
    canonical = b'{"amount":"5.00","reason":null,"route_payload":{"a":"Zo\\u00eb","b":1},"status":"success"}'
    assert callbacks.canonical(kwargs) == canonical
    signature = hmac.new(KEY.encode(), canonical, hashlib.sha256).hexdigest()
    assert callbacks.signed(kwargs, KEY) == {**kwargs, "signature": signature}
    assert client.verify_callback({**kwargs, "signature": signature}, KEY)


def test_verification_refuses_what_cannot_be_a_callback_of_ours() -> None:
    signed = callbacks.signed({"amount": "5.00"}, KEY)
    assert not client.verify_callback(signed, "")
    assert not client.verify_callback({**signed, "amount": object()}, KEY)  # not JSON
    assert not client.verify_callback(["not", "a", "mapping"], KEY)  # type: ignore[arg-type]


def test_the_admin_callback_key_is_derived_from_the_api_token() -> None:
    token = "t" * 40
    assert client.admin_callback_key(token) == hmac.new(token.encode(), b"payments callback key",
                                                        hashlib.sha256).hexdigest()
    assert client.admin_callback_key(token) != client.admin_callback_key(token + "x")
