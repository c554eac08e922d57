"""Every kind of order is rebuilt from its stored normal form exactly, without today's limits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from shared import payments, refunds, settlements, topups, transfers
from shared.config import Settings
from shared.errors import InvalidInput

LOWERED = Settings(max_amount=1_00, transfer_max=1_00, manual_topup_min=10_00, manual_topup_max_balance=20_00)

ORDERS: dict[str, tuple[Callable[[Any, Settings], Any], dict[str, Any]]] = {
    "payment": (payments.parse, {"request_id": "r1", "member_id": "ann", "amount": "50.00", "description": "Entry",
                                 "organisation_id": "club", "route_code": "EVT", "route_payload": {"n": [1, 2]},
                                 "payment_type": "Club Top Up Rev", "event_id": "e1"}),
    "transfer": (transfers.parse, {"request_id": "t1", "from_member_id": "ann", "to_member_id": "bob",
                                   "amount": "40.00", "description": "Half"}),
    "settlement": (settlements.parse, {"request_id": "s1", "reference_date": "2025-10-31",
                                       "organisations": [{"organisation_id": "club", "override_amount": "30.00"},
                                                         {"organisation_id": "other"}]}),
    "topup": (topups.parse_topup, {"request_id": "u1", "member_id": "ann", "amount": "60.00", "use_saved_card": True}),
    "refund": (refunds.parse, {"request_id": "f1", "payment_intent_id": "pi_1", "by": "admin", "amount": "5.00",
                               "admin_id": "admin-7"}),
}


@pytest.mark.parametrize(("parse", "body"), ORDERS.values(), ids=ORDERS.keys())
def test_an_order_is_rebuilt_from_its_stored_payload_after_a_limit_was_lowered(parse, body) -> None:
    order = parse(body, Settings())
    with pytest.raises(InvalidInput):  # new input is checked against the lowered limit
        parse(order.payload(), LOWERED)
    rebuilt = type(order).from_payload(order.payload())
    assert rebuilt == order
    assert rebuilt.payload() == order.payload()
