"""The statement's text for card money (ORIGINAL 2.6; issue 13 item 5)."""

from __future__ import annotations

import pytest

from shared.stripe_gateway import CardDetails
from shared.topups import card_description


@pytest.mark.parametrize(("card", "text"), [
    (CardDetails("visa", "4242", 12, 2028), "Payment from card **** 4242 Exp 12/28"),
    (CardDetails("mastercard", "4444", 3, 2030), "Payment from card **** 4444 Exp 3/30"),
    (CardDetails("visa", "4242", None, None), "Payment from card **** 4242"),
    (CardDetails("visa", None, 12, 2028), "Top up by card"),
    (None, "Top up by card"),
])
def test_card_money_is_described_by_its_card_when_stripe_named_it(card, text) -> None:
    assert card_description(card, "Top up by card") == text
