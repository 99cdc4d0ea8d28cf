"""Drive lazyfs (tests/powerloss/lazyfs): mount a folder, cut the power, remount, clean up."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SOURCE = Path(__file__).resolve().parent / "lazyfs"


class LazyFSError(AssertionError):
    """lazyfs could not be built, mounted, cut or unmounted; the message says why."""


def binary() -> Path:
    """Where scripts/install_lazyfs.sh puts the build of the current source."""
    files = sorted(["go.mod", "go.sum", *(p.name for p in SOURCE.glob("*.go"))])
    digest = hashlib.sha256(b"".join((SOURCE / f).read_bytes() for f in files)).hexdigest()
    return Path(os.environ.get("LAZYFS_BIN", REPO / ".tools" / f"lazyfs-{digest[:16]}" / "lazyfs"))


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as fh:
        # Field 5 is the mount point (spaces escaped as \040; ours have none).
        return any(line.split()[4] == target for line in fh)


def detach(path: Path) -> None:
    """Lazy unmount (MNT_DETACH): the last resort when a mount will not go normally."""
    if is_mounted(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False, timeout=30)


class LazyFS:
    """One mount of `backing` at `mountpoint` at a time; `cut()` is a power cut.

    Use as a context manager (or call close()): the process is killed even if it ignores
    SIGTERM, and the mount point is unmounted whatever happened.
    """

    def __init__(self, backing: Path, mountpoint: Path) -> None:
        self.backing = backing
        self.mountpoint = mountpoint
        self.state = backing.with_name(backing.name + ".lazyfs-state")
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self.log: list[str] = []
        self.cuts: list[dict[str, Any]] = []

    def __enter__(self) -> LazyFS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def mount(self, timeout: float = 30.0) -> None:
        exe = binary()
        if not exe.is_file():
            raise LazyFSError(
                f"the power-loss harness needs {exe}, which is not built: run `make lazyfs` "
                "(scripts/install_lazyfs.sh; needs Go and the Go module proxy)"
            )
        if not os.access("/dev/fuse", os.R_OK | os.W_OK):
            raise LazyFSError("the power-loss harness needs /dev/fuse (root, or CAP_SYS_ADMIN)")
        assert self.proc is None or self.proc.poll() is not None, "already mounted"
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(exe), "-state", str(self.state), str(self.backing), str(self.mountpoint)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        ready = threading.Event()
        proc = self.proc

        def drain() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.log.append(line)
                if line.startswith("lazyfs: serving"):
                    ready.set()

        self._reader = threading.Thread(target=drain, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise LazyFSError(
                    f"lazyfs did not mount {self.backing} at {self.mountpoint} (needs root and "
                    "/dev/fuse):\n" + "".join(self.log[-20:])
                )

    def cut(self, timeout: float = 60.0) -> dict[str, Any]:
        """Power cut: lazyfs keeps only what was fsynced, writes it to the backing folder
        and unmounts. Kill every process using the mount first. Returns its report."""
        before = len(self.log)
        self._signal_and_wait(signal.SIGUSR1, timeout)
        said = [line for line in self.log[before:] if line.startswith("lazyfs: power cut ")]
        if not said:
            raise LazyFSError("lazyfs did not report its power cut:\n" + "".join(self.log[-20:]))
        report: dict[str, Any] = json.loads(said[-1].removeprefix("lazyfs: power cut "))
        self.cuts.append(report)
        return report

    def unmount(self, timeout: float = 60.0) -> None:
        """Clean shutdown: everything written is kept, as after sync(1) and umount(8)."""
        self._signal_and_wait(signal.SIGTERM, timeout)

    def _signal_and_wait(self, sig: signal.Signals, timeout: float) -> None:
        proc = self.proc
        assert proc is not None and proc.poll() is None, "not mounted"
        proc.send_signal(sig)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise LazyFSError(
                f"lazyfs did not finish within {timeout:.0f}s of {sig.name}:\n"
                + "".join(self.log[-20:])
            ) from None
        if self._reader is not None:
            self._reader.join(5)  # the last lines (the pipe closed when lazyfs exited)
        if code != 0 or is_mounted(self.mountpoint):
            self.close()
            raise LazyFSError(
                f"lazyfs exited {code} after {sig.name} (mounted still: "
                f"{is_mounted(self.mountpoint)}):\n" + "".join(self.log[-20:])
            )

    def close(self) -> None:
        """Kill lazyfs if it runs (SIGKILL: no cleanup of its own) and unmount in any case."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        detach(self.mountpoint)


@contextlib.contextmanager
def mounted(backing: Path, mountpoint: Path) -> Iterator[LazyFS]:
    """A LazyFS, mounted; unmounted (and killed if need be) on the way out."""
    with LazyFS(backing, mountpoint) as fs:
        fs.mount()
        yield fs
