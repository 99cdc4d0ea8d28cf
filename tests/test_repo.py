"""The repository's own checks: stubs regenerate unchanged, buf lint, ruff, mypy --strict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_python_stubs_are_up_to_date() -> None:
    result = run(sys.executable, "scripts/gen_protos.py", "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout


def test_python_sync_client_is_up_to_date() -> None:
    """clients/python/asset_client/client.py and its parts (_producing.py, ...) are what
    unasync makes of aio.py and its parts (_aio_producing.py, ...) today."""
    result = run(sys.executable, "scripts/gen_sync_client.py", "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("client.py", "_producing.py", "_reads.py", "_watches.py", "_streams.py"):
        assert f"{name} up to date" in result.stdout


def test_buf_lint_is_clean() -> None:
    buf = ROOT / "tools" / "node_modules" / ".bin" / "buf"
    assert buf.exists(), "buf is missing: `make install` runs npm ci in tools/"
    result = run(str(buf), "lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_is_clean() -> None:
    paths = ["asset_service", "tests", "scripts", "bench", "clients/python"]
    check = run(str(BIN / "ruff"), "check", *paths)
    assert check.returncode == 0, check.stdout
    fmt = run(str(BIN / "ruff"), "format", "--check", *paths)
    assert fmt.returncode == 0, fmt.stdout


def test_mypy_strict_is_clean() -> None:
    result = run(str(BIN / "mypy"), "asset_service", "clients/python/asset_client")
    assert result.returncode == 0, result.stdout


def test_layering_contract_is_kept() -> None:
    """import-linter: the domain imports no adapter, protobuf, driver or file-system module."""
    result = run(str(BIN / "lint-imports"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
