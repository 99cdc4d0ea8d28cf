"""`make run` on a fresh clone installs the server as locked, and no dev or test tool."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def dry_run(venv: Path) -> list[str]:
    """What `make run` would execute with no venv yet (make -n runs nothing)."""
    done = subprocess.run(
        # --no-print-directory: under `make test` (MAKELEVEL set) make would add
        # "Entering/Leaving directory" lines around what it prints.
        ["make", "--no-print-directory", "-n", "run", f"VENV={venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_make_run_installs_only_the_locked_server(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    commands = dry_run(venv)
    installs = [c for c in commands if " pip install " in c]
    assert installs == [
        f"{venv}/bin/python -m pip install --require-hashes -r requirements.lock",
        f"{venv}/bin/python -m pip install --no-deps -e .",
    ]
    everything = "\n".join(commands)
    for dev_only in ("[dev]", "npm", "clients/python", "--upgrade pip"):
        assert dev_only not in everything, f"make run would install {dev_only}"
    assert any("first time only" in c for c in commands), "no word before a long install"
    assert commands[-1].startswith(f"{venv}/bin/asset-service --import-root")


def test_after_the_dev_install_make_run_installs_nothing(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for stamp in (".installed", ".runtime"):  # as the dev install leaves them
        (venv / stamp).touch()
    assert not [c for c in dry_run(venv) if " pip install " in c or " -m venv " in c]
