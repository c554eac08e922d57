"""What the benchmarks share: their own PostgreSQL databases, and CPU time read from /proc."""

from __future__ import annotations

import os

import psycopg
from sqlalchemy.engine import make_url

ADMIN_URL = os.environ.get("PAYMENTS_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TICK = os.sysconf("SC_CLK_TCK")


def url_for(database: str) -> str:
    """ADMIN_URL pointed at another database, as a plain libpq URI."""
    url = make_url(ADMIN_URL).set(drivername="postgresql", database=database)
    return url.render_as_string(hide_password=False)


def recreate_database(name: str) -> None:
    with psycopg.connect(url_for(make_url(ADMIN_URL).database or "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the given processes, in seconds (a process gone since counts 0)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def backend_pids(database_url: str) -> list[int]:
    """The PostgreSQL backends connected to that database, but for this connection."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return [pid for (pid,) in rows]
