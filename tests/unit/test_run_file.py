"""`var/run.json` holds the run's API token and webhook secret: always 0600 in a 0700 `var/`,
even when the file or the directory were there before with looser modes (ISSUE 12, item 8)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from payments_cli import write_private


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_existing_readable_run_file_is_made_owner_only(tmp_path: Path) -> None:
    var = tmp_path / "var"
    var.mkdir(mode=0o755)
    var.chmod(0o755)
    run_file = var / "run.json"
    run_file.write_text("{}")
    run_file.chmod(0o644)
    write_private(run_file, json.dumps({"api_token": "t0ken"}))
    assert json.loads(run_file.read_text()) == {"api_token": "t0ken"}
    assert mode(run_file) == 0o600
    assert mode(var) == 0o700
    assert sorted(p.name for p in var.iterdir()) == ["run.json"]  # no temporary file left behind


def test_a_new_run_file_and_its_directory_are_owner_only(tmp_path: Path) -> None:
    run_file = tmp_path / "var" / "run.json"
    write_private(run_file, "{}")
    assert (mode(run_file), mode(run_file.parent)) == (0o600, 0o700)
