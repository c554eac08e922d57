"""Which attempt a PaymentIntent event pays (shared.topups.by_payment_intent).

An attempt whose PaymentIntent id was never recorded (a crash right after Stripe made it) is
found by the attempt key in the intent's metadata. The key alone must not be enough: an
intent made under the same key by another life of the database (rebuilt, restored, or an
earlier test run against the same Stripe) once paid a new attempt with old card money."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from shared import topups
from shared.models import CardPaymentKind
from tests.integration.helpers import add_member


def checkout_attempt(sessions: sessionmaker[Session]) -> int:
    with sessions.begin() as session:
        add_member(session, "ann")
        attempt = topups.open_attempt(session, key="checkout:r1", kind=CardPaymentKind.CHECKOUT, member_id="ann",
                                      amount=20_00, request_id="r1")
        assert attempt is not None
        return attempt.id


def found(sessions: sessionmaker[Session], intent_id: str, metadata: dict[str, str]) -> int | None:
    with sessions.begin() as session:
        attempt = topups.by_payment_intent(session, intent_id, metadata)
        return None if attempt is None else attempt.id


def test_an_intent_made_for_the_attempt_is_found_by_its_key(sessions) -> None:
    attempt_id = checkout_attempt(sessions)
    ours = topups.intent_metadata("checkout:r1", attempt_id, "ann", "checkout")
    assert found(sessions, "pi_new", ours) == attempt_id


def test_an_intent_made_under_the_same_key_for_another_attempt_is_not_ours(sessions) -> None:
    attempt_id = checkout_attempt(sessions)
    earlier_life = topups.intent_metadata("checkout:r1", attempt_id - 1, "ann", "checkout")
    assert found(sessions, "pi_old", earlier_life) is None


def test_an_intent_naming_another_member_is_not_ours(sessions) -> None:
    attempt_id = checkout_attempt(sessions)
    assert found(sessions, "pi_x", topups.intent_metadata("checkout:r1", attempt_id, "bob", "checkout")) is None
    assert found(sessions, "pi_y", {"attempt_key": "checkout:r1"}) is None


def test_an_intent_made_before_attempt_ids_were_in_the_metadata_is_matched_by_key_and_member(sessions) -> None:
    attempt_id = checkout_attempt(sessions)
    assert found(sessions, "pi_legacy", {"attempt_key": "checkout:r1", "member_id": "ann"}) == attempt_id
