"""`db.read_ahead`: a streamed result's parts read by a thread of their own, in order; an error
reaches the caller; a caller that stops early leaves no reader behind."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from shared.db import read_ahead


def test_the_parts_come_in_order() -> None:
    assert list(read_ahead(iter([[1, 2], [3], [4, 5]]))) == [[1, 2], [3], [4, 5]]


def test_an_error_while_reading_reaches_the_caller_after_the_parts_before_it() -> None:
    def parts() -> Iterator[int]:
        yield 1
        raise RuntimeError("the database went away")

    got = []
    with pytest.raises(RuntimeError, match="went away"):
        for part in read_ahead(parts()):
            got.append(part)
    assert got == [1]


def test_a_caller_that_stops_early_stops_the_reader() -> None:
    read: list[int] = []

    def parts() -> Iterator[int]:
        for n in range(1000):
            read.append(n)
            yield n

    stream = read_ahead(parts(), depth=2)
    assert next(stream) == 0
    stream.close()  # a client that disconnects mid-download
    assert not [t for t in threading.enumerate() if t.name == "read-ahead"]
    assert len(read) < 10, "the reader stopped instead of reading everything"
