"""Starting the real `payments` command in a child process, a `redis-server` of a test's own,
and polling with a deadline."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import redis

T = TypeVar("T")
PAYMENTS = str(Path(sys.executable).with_name("payments"))
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(args: list[str], env: dict[str, str], log: Path, cwd: Path | None = None, *, append: bool = False
          ) -> subprocess.Popen:
    """Start `payments ARGS` with `env` added, its output going to `log` (after what it holds,
    with `append`)."""
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    with open(log, "ab" if append else "wb") as out:
        return subprocess.Popen([PAYMENTS, *args], env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Poll `check` until it returns something truthy, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except Exception:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def readies(log: Path) -> int:
    """How many times a `payments worker` logging to `log` has said it is ready to consume (its
    remote control is off, so a test cannot ping it): note it before a start, wait for one more."""
    try:
        return log.read_text(errors="replace").count(' ready."')
    except FileNotFoundError:
        return 0


def idle(broker: redis.Redis, queues: tuple[str, ...] = ("payments",)) -> bool:
    """No task waiting in these queues and none delivered and unacknowledged (late acks: a task
    running or reserved stays in Redis's `unacked` until it is done)."""
    return sum(broker.llen(queue) for queue in queues) == 0 and broker.hlen("unacked") == 0


def stop(process: subprocess.Popen, timeout: float = 20.0) -> int:
    if process.poll() is None:
        process.terminate()
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


class PrivateRedis:
    """A redis-server of the test's own. No persistence: stopping it loses every queued task,
    the harshest broker outage (only the inbox and the scheduler can bring the work back)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.directory / "redis.log", "ab")
        with log:
            self._process = subprocess.Popen(
                [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory),
                 "--save", "", "--appendonly", "no"],
                stdout=log, stderr=subprocess.STDOUT,
            )
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        try:
            wait_for(lambda: self._process is not None and self._process.poll() is None and client.ping(),
                     f"redis-server on port {self.port}", 20)
        finally:
            client.close()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None


@contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    """A started redis-server of the caller's own, removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="payments-redis-"))
    server = PrivateRedis(directory)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
