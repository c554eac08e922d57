"""The beat schedule. Each job is also safe to send by hand, and to run twice at once.

Empty until the periodic jobs land (auto top-up sweep, inbox redrive, outbox relay,
reconciliation, checkout expiry); `payments beat` serves it as it stands."""

from __future__ import annotations

from typing import Any

beat_schedule: dict[str, dict[str, Any]] = {}
