"""shared.healing: each row on its own, within a time budget (DESIGN invariant 12)."""

from __future__ import annotations

from freezegun import freeze_time

from shared import healing


def test_a_row_that_raises_is_handed_to_failed_and_the_rows_behind_it_are_still_healed() -> None:
    healed: list[int] = []
    failed: list[tuple[int, str]] = []

    def heal(row: int) -> None:
        if row == 1:
            raise RuntimeError("poison")
        healed.append(row)

    assert healing.each([1, 2, 3], heal, lambda row, exc: failed.append((row, str(exc))), what="test") == 3
    assert healed == [2, 3] and failed == [(1, "poison")]


def test_no_row_is_started_once_the_time_budget_is_spent() -> None:
    started: list[int] = []
    with freeze_time("2026-11-26 10:00:00", tick=False) as clock:
        def heal(row: int) -> None:
            started.append(row)
            clock.tick(30)

        assert healing.each(range(10), heal, lambda row, exc: None, what="test", budget_seconds=45) == 2
    assert started == [0, 1]
