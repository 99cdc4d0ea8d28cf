"""asset run's command: its own process group, signals forwarded, stderr passed through."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, TypeVar

from asset_client.cli import _exit

log = logging.getLogger(__name__)

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
POLL_SECONDS = 0.05
# How long a step cancelled by a signal may take to end before asset run goes on.
CANCEL_SECONDS = 10.0
T = TypeVar("T")
# After the command ends, how long its stderr may stay open (a process it started in
# another session holding the pipe): then asset run stops reading it.
DRAIN_SECONDS = 5.0


class Interrupted(Exception):
    """asset run received a signal while no command was running."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"received {_exit.signal_name(signum)}")
        self.signum = signum


class Signals:
    """SIGINT, SIGTERM and SIGHUP for the whole of asset run.

    The handler only notes the signal and, while a command runs, sends it on to the
    command's process group (in a session of its own, so a terminal's Ctrl-C reaches asset
    run only and is passed on from here). It never raises: an exception raised from a
    handler lands in whatever code runs then, and code that catches everything (logging
    does) would swallow it. Blocking steps run through `interruptibly` instead.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._group: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Signals:
        if threading.current_thread() is threading.main_thread():
            for signum in FORWARDED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
        if self._group is not None:
            _kill_group(self._group, signum)

    def check(self) -> None:
        """Interrupted if a signal came."""
        if self.received is not None:
            raise Interrupted(self.received)

    @contextlib.contextmanager
    def forwarding_to(self, group: int) -> Iterator[None]:
        self._group = group
        try:
            if self.received is not None:  # arrived between the fork and now
                _kill_group(group, self.received)
            yield
        finally:
            self._group = None

    def interruptibly(self, step: Callable[[], T], cancel: Callable[[], None]) -> T:
        """step() in a thread of its own; a signal meanwhile calls cancel() (which must
        make step end, e.g. by closing the channel its calls use) and raises Interrupted."""
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["value"] = step()
            except BaseException as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=target, name="asset-run-step", daemon=True)
        worker.start()
        cancelled_at: float | None = None
        while worker.is_alive():
            worker.join(POLL_SECONDS)
            if self.received is not None and cancelled_at is None:
                cancelled_at = time.monotonic()
                cancel()
            if cancelled_at is not None and time.monotonic() - cancelled_at > CANCEL_SECONDS:
                log.warning("a cancelled step did not end within %gs", CANCEL_SECONDS)
                break
        self.check()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]  # type: ignore[no-any-return]


def _kill_group(group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signum)


@dataclass(frozen=True)
class Outcome:
    """How the command ended."""

    returncode: int  # Popen's: -N when killed by signal N
    received: int | None  # a signal asset run received meanwhile (and passed on)
    stopped_for: str | None  # why asset run stopped the command itself
    stderr_tail: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.received is None and self.stopped_for is None

    @property
    def exit_status(self) -> int:
        """The command's status as a shell reports it; if it exited 0 although asset run
        was told to stop, 128 + that signal: the task did not complete."""
        if self.returncode == 0 and self.received is not None:
            return _exit.for_signal(self.received)
        return _exit.for_returncode(self.returncode)

    def describe(self) -> str:
        if self.returncode < 0:
            how = f"was killed by {_exit.signal_name(-self.returncode)}"
        else:
            how = f"exited with status {self.returncode}"
        if self.received is not None:
            text = f"asset run received {_exit.signal_name(self.received)}; the command {how}"
        elif self.stopped_for is not None:
            text = f"{self.stopped_for}; the command {how}"
        else:
            text = f"the command {how}"
        return f"{text}; stderr: {self.stderr_tail}" if self.stderr_tail else text


class _StderrPump:
    """Copies the command's stderr to ours as it comes, keeping its last bytes."""

    def __init__(self, fd: int, keep: int) -> None:
        self._fd = fd
        self._keep = keep
        self._tail = bytearray()
        self._thread = threading.Thread(target=self._run, name="stderr-pump", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while chunk := os.read(self._fd, 65536):
                with contextlib.suppress(OSError):
                    os.write(2, chunk)
                self._tail += chunk
                if len(self._tail) > 2 * self._keep + 4096:
                    del self._tail[: -self._keep - 4]
        except OSError:
            pass
        finally:
            os.close(self._fd)

    def finish(self, timeout: float) -> str:
        self._thread.join(timeout)
        text = bytes(self._tail[-self._keep - 4 :]).decode("utf-8", "replace").strip()
        if self._keep == 0:
            return ""
        return text if len(text) <= self._keep else "…" + text[-self._keep :]


def run_command(
    argv: Sequence[str],
    env: Mapping[str, str],
    signals: Signals,
    *,
    grace: float,
    tail_chars: int,
    should_stop: Callable[[], str | None],
) -> Outcome:
    """Run argv to its end in a session of its own; OSError if it cannot be started.

    Signals are passed on as they come; SIGKILL follows `grace` seconds after the first
    if the command is still running; so it does when `should_stop` gives a reason (a
    promise lost), after a SIGTERM. Processes it leaves behind in its group are killed
    when it ends: nothing of the task outlives asset run.
    """
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen(list(argv), env=dict(env), stderr=write_end, start_new_session=True)
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    pump = _StderrPump(read_end, tail_chars)
    stopped_for: str | None = None
    kill_at: float | None = None
    with signals.forwarding_to(proc.pid):
        while True:
            try:
                proc.wait(POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if signals.received is not None and kill_at is None:
                kill_at = now + grace
            if stopped_for is None and (reason := should_stop()) is not None:
                stopped_for = reason
                log.warning("stopping the command: %s", reason)
                _kill_group(proc.pid, signal.SIGTERM)
                kill_at = min(kill_at or now + grace, now + grace)
            if kill_at is not None and now >= kill_at:
                log.warning("the command ignored the signal for %gs: sending SIGKILL", grace)
                _kill_group(proc.pid, signal.SIGKILL)
                kill_at = float("inf")
    _kill_group(proc.pid, signal.SIGKILL)  # what it left running in its group
    tail = pump.finish(DRAIN_SECONDS)
    return Outcome(proc.returncode, signals.received, stopped_for, tail)
