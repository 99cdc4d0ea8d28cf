"""What an operator gets when start-up cannot go on: one line naming what and why, exit 2."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serverproc import ServerProcess


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ASSET_SERVICE_", "AWS_"))}
    return subprocess.run(
        [sys.executable, "-m", "asset_service", "--listen", "127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **(env or {})},
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


def _device(path: Path) -> Path:
    """A character device like /dev/null (1, 3), mode 0666: what an operator may give by
    mistake, and what the server must never chmod (it made /dev/null 0700 here once)."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.fail("this test makes a device node: run it as root (or with CAP_MKNOD)")
    os.chmod(path, 0o666)
    return path


@pytest.mark.parametrize("kind", ["file", "device"])
def test_a_storage_root_that_is_no_folder_is_refused_and_left_untouched(
    tmp_path: Path, kind: str
) -> None:
    """--storage-root naming a file or a device (/dev/null) made it mode 0700 (a folder's)
    before start-up failed on it: with /dev/null, every other user of the machine lost it."""
    root = tmp_path / "root"
    if kind == "file":
        root.write_text("an operator's file")
        root.chmod(0o644)
    else:
        _device(root)
    before = root.stat().st_mode
    done = _serve("--storage-root", str(root), "--database-url", f"sqlite:///{tmp_path}/a.db")
    assert done.returncode == 2, done.stderr
    line = _one_error_line(done.stderr)
    assert f"storage root {root} is not usable" in line and "Not a directory" in line
    assert root.stat().st_mode == before, "the server changed the mode of what it was given"


@pytest.mark.parametrize("kind", ["device", "folder", "fifo"])
def test_a_database_that_is_no_regular_file_is_refused_and_left_untouched(
    tmp_path: Path, kind: str
) -> None:
    """--database-url naming a device was made mode 0600 (the database's) before SQLite
    failed on it, with a traceback; a folder gave a traceback too."""
    database = tmp_path / "assets.db"
    if kind == "device":
        _device(database)
    elif kind == "fifo":  # opening it to read waited for a writer: start-up hung
        os.mkfifo(database, 0o644)
        database.chmod(0o644)
    else:
        database.mkdir(mode=0o755)
        database.chmod(0o755)
    before = database.stat().st_mode
    done = _serve(
        "--storage-root", str(tmp_path / "data"), "--database-url", f"sqlite:///{database}"
    )
    assert done.returncode == 2, done.stderr
    line = _one_error_line(done.stderr)
    assert f"cannot use the sqlite database {database}" in line, line
    assert "a regular file" in line
    assert database.stat().st_mode == before, "the server changed the mode of what it was given"


def test_an_object_store_nobody_answers_at_names_the_settings_to_check(tmp_path: Path) -> None:
    """The refusal said 'check AWS_ENDPOINT_URL' while the endpoint came from
    --s3-endpoint-url: the operator was sent to a variable they had not set."""
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    done = _serve(
        "--storage-root",
        str(tmp_path / "data"),
        "--storage-url",
        "s3://bucket/prefix",
        "--s3-endpoint-url",
        endpoint,
        env={"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"},
    )
    assert done.returncode == 2, done.stderr
    line = _one_error_line(done.stderr)
    assert f"bucket 'bucket' at {endpoint} is not usable" in line
    assert "check --s3-endpoint-url (or AWS_ENDPOINT_URL), --s3-region and the credentials" in line


def test_a_busy_port_is_refused_before_anything_is_created(
    server: ServerProcess, tmp_path: Path
) -> None:
    """An accidental second server on a busy port, given a storage root of its own, was
    refused only after it had created that folder, its database and a 4 MiB reserve."""
    other = tmp_path / "other-root"
    done = _serve("--listen", server.address, "--storage-root", str(other))
    assert done.returncode == 2, done.stderr
    line = _one_error_line(done.stderr)
    assert f"address {server.address} is in use: is another asset-service running?" in line
    assert not other.exists(), sorted(p.name for p in other.iterdir())
