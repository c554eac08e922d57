"""How large the fault scenarios run.

`make test` (and so CI) runs each scenario at PAYMENTS_FAULTS_SCALE, default 0.3 of the sizes
tests/faults/README.md reports: the same kinds of fault, shuffles, kills and invariant checks
on fewer events, so the whole suite stays within its time budget. `make test-faults` runs them
at full size (PAYMENTS_FAULTS_SCALE=1), as the README's figures were measured."""

from __future__ import annotations

import os

SCALE = float(os.environ.get("PAYMENTS_FAULTS_SCALE", "0.3"))


def scaled(full: int, least: int = 1) -> int:
    """`full` at this run's scale, never below `least`."""
    return max(least, round(full * SCALE))
