"""Kinds of setting values: how text becomes a value, which forms are accepted, how it shows."""

from __future__ import annotations

import grp
import re
from argparse import ArgumentTypeError
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Generic, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

# Hand-written rather than a library: humanfriendly and pytimeparse read "10G" as 10**9 and
# know no "1.5" seconds, while these settings were documented with binary units from the
# start; the two grammars are a dozen lines each, and every accepted form is tested.
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_DURATION_PART = re.compile(rf"({_NUMBER.pattern})(ms|s|m|h|d)")
_DURATION_UNITS = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
    "d": Decimal(86400),
}
_SIZE = re.compile(r"(?i)(\d+(?:\.\d*)?|\.\d+)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib|t|tb|tib)?")
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n", ""}
MASK = "****"
LONGEST_SECONDS = 100 * 366 * 86400  # any duration setting: about 100 years at most
LARGEST_COUNT = 2**31 - 1  # any count: HTTP/2's largest stream limit, a C int
# Query parameters of a URL that may carry a credential (e.g. MongoDB's
# authMechanismProperties=AWS_SESSION_TOKEN:..., a presigned X-Amz-Signature).
_SECRET_WORDS = re.compile(r"(?i)pass|secret|token|key|credential|signature")


@dataclass(frozen=True)
class Kind(Generic[T]):
    """A value's type as a setting sees it. `parse` raises ArgumentTypeError with what is
    wrong (naming the text); `forms` says what would be right, for the same message."""

    name: str
    parse: Callable[[str], T]
    forms: str
    show: Callable[[T], str] = str
    metavar: str = "TEXT"

    def where(self, test: Callable[[T], bool], rule: str, why: str = "") -> Kind[T]:
        """The same kind, refusing values that fail `test` ("above 0"); a refusal says
        "<text> is not <rule>", or "<text> <why>" where that helps more."""
        inner = self.parse

        def parse(text: str) -> T:
            value = inner(text)
            if not test(value):
                raise ArgumentTypeError(f"{text!r} {why or 'is not ' + rule}")
            return value

        return replace(
            self, name=f"{self.name}, {rule}", parse=parse, forms=f"{self.forms}, {rule}"
        )


def parse_bool(text: str) -> bool:
    """'1', 'true', 'yes', 'on' (any case) -> True; '0', 'false', 'no', 'off', '' -> False."""
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ArgumentTypeError(f"{text!r} is not a boolean")


def parse_duration(text: str) -> float:
    """'10s', '5m', '1h', '250ms', '1h30m', '7d', '1.5' (seconds) -> seconds."""
    seconds = _duration(text)
    if seconds > LONGEST_SECONDS:
        # Longer would overflow a thread's wait (the stop's hard deadline) or a date.
        raise ArgumentTypeError(f"{text!r} is longer than 100 years")
    return seconds


def _duration(text: str) -> float:
    stripped = text.strip()
    if stripped.startswith("-"):
        raise ArgumentTypeError(f"{text!r} is negative")
    if _NUMBER.fullmatch(stripped):
        return float(Decimal(stripped))
    total, at = Decimal(0), 0
    for part in _DURATION_PART.finditer(stripped):
        if part.start() != at:
            break
        total += Decimal(part.group(1)) * _DURATION_UNITS[part.group(2)]
        at = part.end()
    if at == 0 or at != len(stripped):
        raise ArgumentTypeError(f"{text!r} is not a duration")
    return float(total)


def show_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    if 0 < seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def parse_whole_seconds(text: str) -> int:
    seconds = parse_duration(text)
    if seconds != int(seconds):
        raise ArgumentTypeError(f"{text!r} is not a whole number of seconds")
    return int(seconds)


def parse_size(text: str) -> int:
    """'1048576', '512MiB', '1.5GiB', '10G' -> bytes (every unit binary: G = GiB)."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ArgumentTypeError(f"{text!r} is not a size")
    size = Decimal(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()[:1]]
    if size != size.to_integral_value():
        raise ArgumentTypeError(f"{text!r} is not a whole number of bytes")
    return int(size)


def show_size(size: int) -> str:
    for unit, scale in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


def parse_count(text: str) -> int:
    try:
        count = int(text.strip())
    except ValueError:
        raise ArgumentTypeError(f"{text!r} is not a whole number") from None
    if count > LARGEST_COUNT:
        # Larger ones overflowed grpc's channel arguments and SQLite's integers (a
        # traceback at start-up; a retention sweep that failed every time).
        raise ArgumentTypeError(f"{text!r} is more than {LARGEST_COUNT}")
    return count


def parse_number(text: str) -> float:
    """'8', '2.5' -> a finite number of 0 or more."""
    stripped = text.strip()
    if not _NUMBER.fullmatch(stripped):
        raise ArgumentTypeError(f"{text!r} is not a number of 0 or more")
    return float(stripped)


def parse_group(text: str) -> int | None:
    """A group name or number (empty: none) -> its gid."""
    text = text.strip()
    if not text:
        return None
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        pass
    if text.isdigit():
        return int(text)
    raise ArgumentTypeError(f"there is no group named {text!r} on this host")


def choice(*names: str) -> Kind[str]:
    """One of `names`, in any case; the value is spelled as in `names`."""
    canonical = {name.lower(): name for name in names}

    def parse(text: str) -> str:
        try:
            return canonical[text.strip().lower()]
        except KeyError:
            raise ArgumentTypeError(f"{text!r} is not a choice") from None

    listed = ", ".join(names)
    return Kind(
        f"choice of {listed}",
        parse,
        f"one of {listed} (any case)",
        metavar="{" + ",".join(names) + "}",
    )


def url(*schemes: str, example: str) -> Kind[str]:
    """A URL with one of `schemes`, or empty; shown with any credential in it masked."""

    def parse(text: str) -> str:
        text = text.strip()
        if text and urlsplit(text).scheme.lower() not in schemes:
            raise ArgumentTypeError(f"{text!r} is not a {_either(schemes)} URL")
        return text

    forms = f"a URL starting {_either([s + '://' for s in schemes])} (e.g. {example}), or empty"
    return Kind(f"url ({_either(schemes)})", parse, forms, mask_url, "URL")


def _either(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def mask_url(text: str) -> str:
    """`text` with the password of its user part and credential-like query values masked.
    Cut by hand: urlunsplit would turn sqlite:////abs/path into sqlite://abs/path."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    cut = min(
        [i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0] or [len(rest)]
    )
    netloc, tail = rest[:cut], rest[cut:]
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:{MASK}@{host}"
    path, question, query = tail.partition("?")
    if question:
        query, hash_, fragment = query.partition("#")
        tail = f"{path}?{'&'.join(map(_mask_parameter, query.split('&')))}{hash_}{fragment}"
    return f"{scheme}://{netloc}{tail}"


def _mask_parameter(pair: str) -> str:
    key, eq, _ = pair.partition("=")
    return f"{key}={MASK}" if eq and _SECRET_WORDS.search(pair) else pair


def _address(text: str) -> str:
    text = text.strip()
    if text.startswith(("unix:", "unix-abstract:")):
        return text
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return text


def _directory(text: str) -> Path:
    if not text.strip():
        raise ArgumentTypeError(f"{text!r} is an empty path")
    return Path(text).expanduser().resolve()


def _file(text: str) -> Path | None:
    # Whether the file exists and what it holds is for start-up to say (and SIGHUP's
    # reload); only a folder given for a file is plainly wrong here.
    if not text:
        return None
    path = Path(text).expanduser().resolve()
    if path.is_dir():
        raise ArgumentTypeError(f"{text!r} is a folder, not a file")
    return path


def _region(text: str) -> str:
    text = text.strip()
    if text and not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        raise ArgumentTypeError(f"{text!r} is not a region name")
    return text


def _show_optional(value: object) -> str:
    return "" if value is None else str(value)


TEXT: Kind[str] = Kind("text", str, "any text")
BOOL = Kind("boolean", parse_bool, "true/false, yes/no, on/off or 1/0", lambda b: str(b).lower())
DURATION = Kind(
    "duration",
    parse_duration,
    "a duration like 10s, 5m, 1h, 250ms, 1h30m or 1.5 (seconds)",
    show_duration,
    "DURATION",
)
WHOLE_SECONDS = Kind(
    "whole seconds", parse_whole_seconds, "whole seconds like 86400, 3600s or 24h", str, "DURATION"
)
SIZE = Kind(
    "size",
    parse_size,
    "a size like 1048576, 512MiB, 1.5GiB or 10G (binary units: G = GiB)",
    show_size,
    "SIZE",
)
COUNT = Kind("count", parse_count, "a whole number", metavar="N")
NUMBER = Kind(
    "number", parse_number, "a number of 0 or more like 8 or 2.5", lambda n: f"{n:g}", "N"
)
ADDRESS = Kind(
    "address", _address, "HOST:PORT (port 0 picks one), [::1]:PORT or unix:PATH", str, "HOST:PORT"
)
DIRECTORY = Kind("folder", _directory, "a folder path", metavar="DIR")
FILE: Kind[Path | None] = Kind(
    "file", _file, "the path of a file (not a folder), or empty", _show_optional, "FILE"
)
GROUP: Kind[int | None] = Kind(
    "group", parse_group, "a group name or number on this host, or empty", _show_optional, "GROUP"
)
REGION = Kind("region", _region, "a region name like us-east-1, or empty", metavar="REGION")
