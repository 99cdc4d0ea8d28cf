"""What an operator gets when start-up cannot go on: one line naming what and why, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSET_SERVICE_")}
    return subprocess.run(
        [sys.executable, "-m", "asset_service", "--listen", "127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_database_where_no_file_can_be_made_is_one_line_naming_it(
    tmp_path: Path, workers: str
) -> None:
    """A --database-url in a folder the server cannot write (here: a file where the folder
    should be, which stops root too) ended in a PermissionError/NotADirectoryError
    traceback with exit status 1."""
    not_a_folder = tmp_path / "not-a-folder"
    not_a_folder.write_text("")
    database = not_a_folder / "assets.db"
    done = _serve(
        "--storage-root",
        str(tmp_path / "data"),
        "--database-url",
        f"sqlite:///{database}",
        "--workers",
        workers,
    )
    assert done.returncode == 2, done.stderr
    line = _one_error_line(done.stderr)
    assert f"cannot start: cannot use the sqlite database {database}: Not a directory" in line
    assert "--database-url (or ASSET_SERVICE_DATABASE_URL)" in line
