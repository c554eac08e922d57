"""Keyset pages of lists ordered newest first by (time, id): a `limit` and an opaque `cursor`
naming the last row given, so a page costs an index range scan wherever it starts, and rows
added meanwhile never shift a page (no OFFSET)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shared.errors import InvalidInput

_CURSOR = re.compile(r"(\d{1,18})\.(\d{1,18})")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Cursor:
    """The last row of a page: its time and id; the next page starts below it."""

    moment: datetime
    row_id: int

    def encode(self) -> str:
        micros = (self.moment - _EPOCH) // timedelta(microseconds=1)
        return f"{micros}.{self.row_id}"

    @classmethod
    def decode(cls, value: str | None) -> Cursor | None:
        if value is None:
            return None
        found = _CURSOR.fullmatch(value)
        if found is None:
            raise InvalidInput("cursor: not a cursor this list gave (use next_cursor as it is)", field="cursor")
        try:
            moment = _EPOCH + timedelta(microseconds=int(found.group(1)))
        except OverflowError:
            raise InvalidInput("cursor: not a cursor this list gave (use next_cursor as it is)", field="cursor") from None
        return cls(moment, int(found.group(2)))
