"""Starting the real `payments` command in a child process, and polling with a deadline."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
PAYMENTS = str(Path(sys.executable).with_name("payments"))


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


def stop(process: subprocess.Popen, timeout: float = 20.0) -> int:
    if process.poll() is None:
        process.terminate()
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
