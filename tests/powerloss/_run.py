"""The crash loop on lazyfs: SIGKILL at a random moment, power cut, remount, restart, audit."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.crashloop import CrashLoop, CrashLoopConfig, Report
from tests.powerloss._lazyfs import REPO, LazyFS, LazyFSError, detach


async def power_loss_loop(
    work: Path,
    seed: int,
    cuts: int,
    *,
    env: dict[str, str] | None = None,
    keep_going: bool = False,
    minutes: float = 0.0,
    clients: int = 4,
    progress: Callable[[str], None] | None = print,
) -> tuple[Report, list[dict[str, Any]]]:
    """`cuts` power cuts under the crash loop's mixed load; the report and lazyfs' reports.

    Storage root, SQLite database and the worker's import root all live on one lazyfs (so
    moves are hard links, as on a real single disk). They are made before the first mount,
    as an operator would: they are on the disk already. The worker fsyncs its own files.
    Raises Violation at the first broken invariant unless keep_going.
    """
    backing, mountpoint = work / "disk", work / "mnt"
    for folder in ("data", "db", "worker"):
        (backing / folder).mkdir(parents=True)
    with LazyFS(backing, mountpoint) as disk:
        disk.mount()

        def power_cut() -> None:
            report = disk.cut()
            if progress is not None:
                progress(f"power cut: {report}")
            with other_device(work / "placeholder"):
                disk.mount()

        loop = CrashLoop(
            CrashLoopConfig(
                root=mountpoint / "data",
                database_url=f"sqlite:///{mountpoint / 'db' / 'assets.db'}",
                import_root=mountpoint / "worker",
                seed=seed,
                kills=cuts,
                minutes=minutes,
                clients=clients,
                keep_going=keep_going,
                progress=progress,
                env=env or {},
                after_kill=power_cut,
                durable_worker_files=True,
            )
        )
        try:
            report = await loop.run()
        finally:
            loop.server.stop()  # before the unmount, whatever happened (run() stops it too)
            (work / "server.log").write_text("".join(loop.server.log))
        disk.unmount()
    return report, disk.cuts


@contextlib.contextmanager
def other_device(mountpoint: Path) -> Iterator[None]:
    """Holds the device number the last mount freed, so that the remount gets another one,
    as a reboot may renumber devices: nothing may trust a device number journaled before."""
    mountpoint.mkdir(exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "placeholder", str(mountpoint)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise LazyFSError(
            f"could not mount a placeholder tmpfs at {mountpoint} (needs root): "
            f"{done.stderr.strip()}"
        )
    try:
        yield
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False, capture_output=True, timeout=30)
        detach(mountpoint)


def patched_server(work: Path, file: str, old: str, new: str) -> dict[str, str]:
    """A copy of asset_service/ with `old` replaced by `new` (exactly once) in `file`, and
    the environment that makes a server process import that copy instead of the real one.

    Test-only: the production code has no switch that could turn a durability step off.
    """
    copy = work / "patched"
    shutil.copytree(
        REPO / "asset_service",
        copy / "asset_service",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    target = copy / "asset_service" / file
    text = target.read_text()
    if text.count(old) != 1:
        raise AssertionError(
            f"the negative check cannot patch {file}: {old!r} occurs {text.count(old)} times "
            "(the code moved: update the patch in the test to remove the same step)"
        )
    target.write_text(text.replace(old, new))
    # PYTHONSAFEPATH: `python -m` must not put the working directory (the repository, with
    # the real package) ahead of PYTHONPATH.
    return {"PYTHONPATH": str(copy), "PYTHONSAFEPATH": "1"}
