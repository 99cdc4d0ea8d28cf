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
from typing import IO, Any, Protocol, cast

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
    line logged in it: time.localtime and strftime per line were a fifth of an access line.

    `line` makes what `format` makes of a record that has only a message, without the record:
    the access line's path (`direct_handler`).
    """

    _second: tuple[int, str] = (-1, "")

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        # What `line` fills in; a format asking for more needs the record.
        self.plain = set(re.findall(r"%\((\w+)\)", fmt)) <= {
            "asctime",
            "levelname",
            "name",
            "message",
        }

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return self._stamp(record.created, record.msecs)

    def _stamp(self, created: float, msecs: float) -> str:
        second = int(created)
        cached = self._second  # one tuple: a thread formatting meanwhile sees a whole one
        if cached[0] != second:
            stamp = time.strftime(self.default_time_format, self.converter(created))
            cached = self._second = (second, stamp)
        msec = self.default_msec_format
        return msec % (cached[1], msecs) if msec else cached[1]

    def line(
        self, created: float, level: int, name: str, message: str, fields: dict[str, Any]
    ) -> str:
        """The text `format` gives a record of `name` at `level`, made at `created` (time.time()),
        whose message is `message` (the `fields` are not shown in text)."""
        # As LogRecord computes its milliseconds (gh-89047).
        msecs = int((created - int(created)) * 1000) + 0.0
        return self._fmt % {  # type: ignore[operator]
            "asctime": self._stamp(created, msecs),
            "levelname": logging.getLevelName(level),
            "name": name,
            "message": message,
        }


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the record's `extra` fields
    (e.g. an access line's method, code, duration_ms), and the traceback as `exception`.

    Hand-written rather than python-json-logger: the whole job is this method, and the
    fields (and their names) are the server's own contract with log shippers.
    """

    def __init__(self, worker: str = "") -> None:
        super().__init__()
        self.worker = worker  # "worker 1/4" in a --workers server: a field of each line

    plain = True  # `line` makes the line of any record with only a message and `extra=`

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in vars(record).items() if k not in _STANDARD and k[0] != "_"}
        entry = self._entry(record.created, record.levelname, record.name, record.getMessage())
        entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return _ENCODER.encode(entry)

    def line(
        self, created: float, level: int, name: str, message: str, fields: dict[str, Any]
    ) -> str:
        """What `format` gives a record made with these and `extra=fields`, without the record."""
        entry = self._entry(created, logging.getLevelName(level), name, message)
        entry.update(fields)
        return _ENCODER.encode(entry)

    def _entry(self, created: float, level: str, name: str, message: str) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
            "level": level,
            "logger": name,
            "message": message,
        }
        if self.worker:
            entry["worker"] = self.worker
        return entry


# One encoder for every line (json.dumps with options builds a new one each call).
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)


class _LineFormatter(Protocol):
    def line(
        self, created: float, level: int, name: str, message: str, fields: dict[str, Any]
    ) -> str: ...


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
            line = self.format(record)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
            return
        self._hold(line, record.levelno, record)

    def hold(self, level: int, name: str, message: str, fields: dict[str, Any]) -> None:
        """What `emit` does with a record of logger `name` at `level` whose message is
        `message` and whose `extra=` was `fields`, without making the record (only for a
        handler `direct_handler` returned: its formatter makes such lines)."""
        formatter = cast(_LineFormatter, self.formatter)
        line = formatter.line(time.time(), level, name, message, fields)
        with self.lock or contextlib.nullcontext():
            self._hold(line, level, None)

    def _hold(self, line: str, level: int, record: logging.LogRecord | None) -> None:
        self._held.append(line + self.terminator)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or level >= logging.WARNING:
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


def direct_handler(logger: logging.Logger, level: int) -> TurnHandler | None:
    """configure()'s handler when it alone would write `logger`'s records at `level`, and
    formats them from their message alone: a caller may then hand it the line (`hold`) and
    make no LogRecord (making one and passing it through logging's handling measured ~22 µs
    of a GetAsset's ~290 µs of server CPU; docs/operations.md).

    None once anything else is on the way (a handler or filter added by a test's caplog or
    by a program embedding the server, a format showing more): records are then made as
    usual, and whatever was added sees them.
    """
    if logger.disabled or logger.filters:  # a logger's filters see only its own records
        return None
    current = logger
    while current.parent is not None:  # up to the root, which holds configure()'s handler
        if current.handlers or not current.propagate:
            return None
        current = current.parent
    handlers = current.handlers
    if len(handlers) != 1:
        return None
    handler = handlers[0]
    if (
        type(handler) is not TurnHandler
        or level < handler.level
        or not getattr(handler.formatter, "plain", False)
        or any(type(f) is not RateLimitFilter for f in handler.filters)
    ):
        return None
    return handler


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
