"""Log output: text or JSON lines, malformed requests in one line each, floods rate-limited."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from google.protobuf.message import DecodeError

# grpc.aio logs a request that does not parse as "Unexpected [DecodeError] raised by
# servicer method [/pkg.Service/Method]" with a full traceback, at ERROR, for every call:
# a client (or a port scanner) sending garbage could fill the disk with tracebacks.
_GRPC_LOGGER = "grpc._cython.cygrpc"
_GRPC_UNEXPECTED = re.compile(r"Unexpected \[(\w+)\] raised by servicer method \[([^\]]*)\]")
MALFORMED = "malformed-request"
# Records logged with extra={RATE_KEY: "..."} are rate-limited per distinct key.
RATE_KEY = "rate_limit_key"

WINDOW_SECONDS = 10.0
LINES_PER_WINDOW = 5
_MAX_KEYS = 1000
_DECIDED = "_asset_service_rate_decision"


@dataclass
class _Window:
    start: float
    passed: int = 0
    suppressed: int = 0


class RateLimitFilter(logging.Filter):
    """Rewrites grpc's malformed-request records; lets N alike records per window through.

    Installed on handlers, so it sees records from every logger. A record belongs to a
    kind when it is grpc's deserialization failure or carries a `rate_limit_key`; other
    records pass untouched. Past the limit a kind is dropped until its window ends; the
    next line of that kind then says how many were suppressed.
    """

    def __init__(
        self,
        lines_per_window: int = LINES_PER_WINDOW,
        window_seconds: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.lines_per_window = lines_per_window
        self.window_seconds = window_seconds
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        # One decision per record, however many handlers share this filter.
        decided = getattr(record, _DECIDED, None)
        if isinstance(decided, bool):
            return decided
        kind = _rewrite_malformed(record) or getattr(record, RATE_KEY, None)
        if not isinstance(kind, str):
            return True
        passed = self._admit(kind, record)
        setattr(record, _DECIDED, passed)
        return passed

    def _admit(self, kind: str, record: logging.LogRecord) -> bool:
        now = self._clock()
        window = self._windows.get(kind)
        if window is None or now - window.start >= self.window_seconds:
            if window is None and len(self._windows) >= _MAX_KEYS:
                self._windows.clear()  # many distinct kinds: forget counts, never grow
            if window is not None and window.suppressed:
                _append(
                    record,
                    f"[{window.suppressed} similar message(s) suppressed in the "
                    f"{now - window.start:.0f}s before this one]",
                )
            window = self._windows[kind] = _Window(now)
        if window.passed >= self.lines_per_window:
            window.suppressed += 1
            return False
        window.passed += 1
        if window.passed == self.lines_per_window:
            _append(
                record,
                f"[more like this are suppressed for {self.window_seconds:.0f}s, then counted]",
            )
        return True


def _append(record: logging.LogRecord, note: str) -> None:
    # Merge the arguments in first: with no args left, logging does no further %-formatting.
    record.msg = record.getMessage() + " " + note
    record.args = ()


def _rewrite_malformed(record: logging.LogRecord) -> str | None:
    """grpc's traceback for an unparseable request, as one WARNING line without it."""
    if record.name != _GRPC_LOGGER or not record.exc_info:
        return None
    exc = record.exc_info[1]
    if not isinstance(exc, DecodeError):
        return None
    found = _GRPC_UNEXPECTED.search(record.getMessage())
    method = found.group(2) if found else "?"
    # grpc answers such a call UNKNOWN; the client sent bytes that are not the message.
    record.msg = "malformed request to %s from a client: %s"
    record.args = (method, str(exc)[:200])
    record.exc_info = None
    record.exc_text = None
    record.levelno = logging.WARNING
    record.levelname = logging.getLevelName(logging.WARNING)
    return MALFORMED


def install(root: logging.Logger | None = None) -> RateLimitFilter:
    """Add the filter to every handler of the root logger (call after basicConfig)."""
    target = root or logging.getLogger()
    flt = RateLimitFilter()
    for handler in target.handlers:
        handler.addFilter(flt)
    return flt


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What every LogRecord has: anything else on a record came from `extra=` and is a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    RATE_KEY,
    _DECIDED,
}


class TextFormatter(logging.Formatter):
    """logging.Formatter, but the date and time of one second are formatted once for every
    line logged in it: time.localtime and strftime per line were a fifth of an access line."""

    _second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        cached = self._second  # one tuple: a thread formatting meanwhile sees a whole one
        if cached[0] != second:
            stamp = time.strftime(self.default_time_format, self.converter(record.created))
            cached = self._second = (second, stamp)
        msec = self.default_msec_format
        return msec % (cached[1], record.msecs) if msec else cached[1]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the record's `extra` fields
    (e.g. an access line's method, code, duration_ms), and the traceback as `exception`.

    Hand-written rather than python-json-logger: the whole job is this method, and the
    fields (and their names) are the server's own contract with log shippers.
    """

    def __init__(self, worker: str = "") -> None:
        super().__init__()
        self.worker = worker  # "worker 1/4" in a --workers server: a field of each line

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker:
            entry["worker"] = self.worker
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return _ENCODER.encode(entry)


# One encoder for every line (json.dumps with options builds a new one each call).
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)


class TurnHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes the lines an event loop's thread logs in one turn of
    the loop together, as that turn ends: one write(2) for all the calls a turn finished
    rather than one per access line (the syscall was a fifth of what a line cost).

    Lines logged off the loop (other threads, start-up, shutdown), and any line at WARNING
    or above, are written at once, after the lines still held: the order is kept.
    logging.shutdown (at exit) and the stop's hard exit flush what is held; a SIGKILL loses
    at most the lines of the turn it interrupts.
    """

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        self._held: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
            return
        self._held.append(line)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or record.levelno >= logging.WARNING:
            self._write_held(record)
        elif len(self._held) == 1:  # the turn's first line: write them as the turn ends
            loop.call_soon(self._end_of_turn)

    def _end_of_turn(self) -> None:
        with self.lock or contextlib.nullcontext():
            self._write_held(None)

    def _write_held(self, record: logging.LogRecord | None) -> None:
        if not self._held:
            return
        text = "".join(self._held)
        self._held.clear()
        try:
            self.stream.write(text)
            self.stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record or logging.makeLogRecord({"msg": text}))

    def flush(self) -> None:
        with self.lock or contextlib.nullcontext():
            self._write_held(None)
            super().flush()


def configure(
    level: str, fmt: str = "text", stream: IO[str] | None = None, worker: str = ""
) -> RateLimitFilter:
    """The root logger as --log-level and --log-format say: one handler on stderr, every
    line (the server's, grpc's, the libraries') in the same format, floods rate-limited.
    A `worker` of a --workers server names itself in each line ([worker 1/4], or a field)."""
    # No line shows the process, its name or the thread: not finding them out for every
    # record saves a third of what an access line costs (logging's documented switches).
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.logThreads = False
    handler = TurnHandler(stream or sys.stderr)
    text = TEXT_FORMAT.replace(" %(name)s", f" [{worker}] %(name)s") if worker else TEXT_FORMAT
    handler.setFormatter(JsonFormatter(worker) if fmt == "json" else TextFormatter(text))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return install(root)
