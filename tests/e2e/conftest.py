"""Fixtures of the end-to-end tests that several modules share."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import packed_cli


@pytest.fixture(scope="session")
def packed() -> Iterator[packed_cli.PackedCli]:
    """The client wheel with [cli] in a clean venv (built once per session), in a folder
    under /tmp that the worker uid can enter (pytest's own tmp folders are root-only)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the worker as another uid (setpriv)")
    root = Path(tempfile.mkdtemp(prefix="asset-packed-cli-"))
    try:
        yield packed_cli.build(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
