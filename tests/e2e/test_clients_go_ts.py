"""The Go and TypeScript clients: their own test suites against a live server, stubs up to date."""

from __future__ import annotations

import fcntl
import filecmp
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serverproc import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
GO_DIR = ROOT / "clients" / "go"
TS_DIR = ROOT / "clients" / "typescript"
# Checked-in generated trees, relative to the repository root.
GENERATED = [Path("clients/go/gen"), Path("clients/typescript/src/gen")]


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is missing: the Go and TypeScript client tests need it on PATH"
    return found


def run(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


def client_env(server: ServerProcess, import_root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ASSET_SERVICE_ADDR": server.address,
        "ASSET_SERVICE_IMPORT_ROOT": str(import_root),
    }


@pytest.fixture
def ts_installed() -> Iterator[Path]:
    """clients/typescript/node_modules from package-lock.json (npm ci when missing or stale)."""
    tool("npm")
    stamp = TS_DIR / "node_modules" / ".installed"
    lock = TS_DIR / "package-lock.json"
    # One installer at a time, also across pytest processes.
    with (TS_DIR / "package.json").open() as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            if not stamp.exists() or stamp.stat().st_mtime <= lock.stat().st_mtime:
                done = run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], TS_DIR)
                assert done.returncode == 0, done.stdout
                stamp.touch()
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)
    yield TS_DIR


@pytest.mark.slow
def test_go_client_suite_against_live_server(server: ServerProcess, import_root: Path) -> None:
    done = run(
        [tool("go"), "test", "-count=1", "-v", "./..."], GO_DIR, client_env(server, import_root)
    )
    out = done.stdout
    assert done.returncode == 0, out
    for name in ("TestExampleFlow", "TestFailedOutputEndsWatchAndBlocksManifest", "TestErrorCodes"):
        assert f"--- PASS: {name}" in out, out
    assert "--- FAIL" not in out and "--- SKIP" not in out, out
    # The flow ran against *this* server: it fulfilled a FILE output from our import root.
    assert "promised report" in out, out
    assert not list(import_root.iterdir()), "the server should have moved the worker's file in"


@pytest.mark.slow
def test_typescript_client_suite_against_live_server(
    server: ServerProcess, import_root: Path, ts_installed: Path
) -> None:
    built = run([str(ts_installed / "node_modules" / ".bin" / "tsc"), "-p", "."], ts_installed)
    assert built.returncode == 0, built.stdout
    done = run(
        [tool("node"), "--test", "--test-reporter=tap", "dist/test/orchestrator.test.js"],
        ts_installed,
        client_env(server, import_root),
    )
    out = done.stdout
    assert done.returncode == 0, out
    counts = {k: int(v) for k, v in re.findall(r"^# (tests|pass|fail|skipped) (\d+)$", out, re.M)}
    assert counts.get("tests", 0) >= 3 and counts["pass"] == counts["tests"], out
    assert counts["fail"] == 0 and counts["skipped"] == 0, out
    assert not list(import_root.iterdir()), "the server should have moved the worker's file in"


@pytest.mark.slow
def test_generated_client_stubs_are_up_to_date(tmp_path: Path, ts_installed: Path) -> None:
    tool("go")
    done = run(["bash", str(ROOT / "scripts" / "gen_clients.sh"), str(tmp_path)], ROOT)
    assert done.returncode == 0, done.stdout
    for rel in GENERATED:
        fresh, checked_in = tmp_path / rel, ROOT / rel
        fresh_files = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
        ours = sorted(p.relative_to(checked_in) for p in checked_in.rglob("*") if p.is_file())
        assert fresh_files, f"generation wrote nothing under {rel}"
        assert fresh_files == ours, f"{rel}: files differ; run `make generate`"
        stale = [
            str(f) for f in fresh_files if not filecmp.cmp(fresh / f, checked_in / f, shallow=False)
        ]
        assert not stale, f"{rel}: stale generated files {stale}; run `make generate`"
