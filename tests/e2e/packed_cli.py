"""The client's wheel with its [cli] extra in a clean venv, runnable by another uid."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# nobody: shares nothing with the server's uid (root in CI), so no file of the server's
# storage root can reach a worker except through the API.
WORKER_UID = 65534
INSTALL_TIMEOUT = 600


def _run(argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False, **kwargs
    )  # type: ignore[call-overload]
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed:\n{result.stdout}{result.stderr}")
    return result  # type: ignore[no-any-return]


@dataclass
class PackedCli:
    """A venv holding only the wheel and its dependencies, in a folder every uid can enter."""

    root: Path
    venv: Path
    wheel: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def worker_dir(self, name: str) -> Path:
        """A fresh folder owned by the worker uid (its home, cache and work files)."""
        folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root))
        os.chown(folder, WORKER_UID, WORKER_UID)
        folder.chmod(0o755)
        return folder

    def env(self, home: Path, extra: Mapping[str, str] = {}) -> dict[str, str]:
        env = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        env.update(extra)
        return env

    def as_worker(
        self,
        argv: Sequence[str],
        home: Path,
        extra_env: Mapping[str, str] = {},
        *,
        timeout: float = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv as the worker uid, in `home`, with only the venv on PATH."""
        command = [
            "setpriv",
            f"--reuid={WORKER_UID}",
            f"--regid={WORKER_UID}",
            "--clear-groups",
            "--",
            *argv,
        ]
        return subprocess.run(
            command,
            cwd=home,
            env=self.env(home, extra_env),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            check=False,
        )


def _python_for_worker() -> str:
    """An interpreter the worker uid can run (pyenv's may live under /root)."""
    for candidate in (sys.executable, shutil.which("python3") or "", "/usr/bin/python3"):
        if not candidate:
            continue
        # Through a shell, as the worker's scripts will run it: setpriv's own exec can
        # reach a binary that the uid cannot (it resolves the path before switching).
        probe = subprocess.run(
            [
                "setpriv",
                f"--reuid={WORKER_UID}",
                f"--regid={WORKER_UID}",
                "--clear-groups",
                "--",
                "sh",
                "-c",
                '"$0" -c "$1"',
                candidate,
                "import sys; assert sys.version_info >= (3, 11)",
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if probe.returncode == 0:
            return candidate
    raise RuntimeError("no Python >= 3.11 that uid 65534 can run")


def build(root: Path) -> PackedCli:
    """Build the wheel and install it with [cli] into a new venv under `root` (0755)."""
    root.chmod(0o755)
    dist = root / "dist"
    # From a copy: setuptools leaves build/ beside the sources, whose stale modules a later
    # build of the tree itself could pack.
    source = root / "src"
    shutil.copytree(
        REPO / "clients" / "python",
        source,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(source),
        ]
    )
    (wheel,) = dist.glob("asset_service_client-*.whl")
    venv = root / "venv"
    _run([_python_for_worker(), "-m", "venv", str(venv)])
    _run([str(venv / "bin" / "pip"), "install", "--quiet", f"{wheel}[cli]"])
    for path in (root, *root.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o755)
    return PackedCli(root, venv, wheel)
