"""Engines and sessions. The edges own transactions (`with sessions.begin() as session:`);
`shared` functions take a session and never commit.

PostgreSQL runs at READ COMMITTED with row locks taken by the ledger. SQLite (the embedded
default) allows one writer at a time; every transaction starts with BEGIN IMMEDIATE so a read
made before a write can never be stale.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")


def normalise_url(url: str) -> str:
    """Use psycopg 3 for plain `postgresql://` URLs."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str, **kwargs: Any) -> Engine:
    url = normalise_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        return _sqlite_engine(url, **kwargs)
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def make_sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def one_statement(engine: Engine) -> Iterator[Connection]:
    """A connection for one statement that is its own transaction. On PostgreSQL it runs in
    autocommit: one round trip, where BEGIN, the statement and COMMIT take three. SQLite
    connections begin their own transactions (BEGIN IMMEDIATE), so there it is a plain one."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            yield connection
    else:
        with engine.begin() as connection:
            yield connection


@contextmanager
def exclusive(sessions: sessionmaker[Session], name: str) -> Iterator[bool]:
    """Whether this process holds `name` for the block, without a transaction open (for work
    around a Stripe call). On PostgreSQL: a session-level advisory lock on a connection of its
    own, tried once, so a second process gets False at once; it dies with its holder's
    connection, so a crashed worker never leaves it held. SQLite runs one process: True."""
    engine = sessions.kw["bind"]
    if engine.dialect.name != "postgresql":
        yield True
        return
    key = {"name": name}
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        held = bool(connection.execute(text("SELECT pg_try_advisory_lock(hashtextextended(:name, 0))"), key).scalar())
        try:
            yield held
        finally:
            if held:
                connection.execute(text("SELECT pg_advisory_unlock(hashtextextended(:name, 0))"), key)


def _sqlite_engine(url: str, **kwargs: Any) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let the "begin" hook issue BEGIN itself
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def dialect_name(session: Session) -> str:
    """"postgresql", or "sqlite" for the embedded default (the only two this service runs on)."""
    return "postgresql" if session.get_bind().dialect.name == "postgresql" else "sqlite"


def dialect_insert(session: Session) -> Any:
    """The INSERT construct of the session's database, which has ON CONFLICT on both."""
    return (postgresql if dialect_name(session) == "postgresql" else sqlite).insert


def read_ahead(parts: Iterable[T], depth: int = 2) -> Iterator[T]:
    """The parts of a streamed result (`result.partitions()`), fetched by a thread of their own
    while the caller works on the one before: the database computes the next batch while
    Python formats this one (a download's two halves run on two cores, not one after the other).

    Only the reading thread touches the connection until the parts run out or the caller stops
    (a closed download): then it is told to stop and joined before the caller goes on."""
    handoff: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def read() -> None:
        try:
            for part in parts:
                while not stop.is_set():
                    try:
                        handoff.put(("part", part), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            handoff.put(("end", None))
        except BaseException as error:  # handed to the caller, raised there
            handoff.put(("error", error))

    reader = threading.Thread(target=read, name="read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            kind, value = handoff.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while reader.is_alive():  # unblock a reader waiting to hand over a part
            try:
                handoff.get(timeout=0.1)
            except queue.Empty:
                pass
        reader.join()
