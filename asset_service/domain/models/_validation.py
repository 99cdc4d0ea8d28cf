"""Validation shared by every entry point: ids, labels, tags, keys, paths, JSON."""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Sequence
from typing import Any

from asset_service.domain.errors import InvalidArgument, shown

MAX_LABEL_CHARS = 255
MAX_TAGS = 64
MAX_TAG_CHARS = 128
_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;.*)?")
MAX_MEDIA_TYPE_CHARS = 255
# Linux limits (PATH_MAX counts the final NUL): checked before any file system call.
MAX_PATH_BYTES = 4095
MAX_PATH_COMPONENT_BYTES = 255
# What a name refuses, as one character class (a regex scans in C; tests/unit/test_messages.py
# checks it against this definition by Unicode category, over every code point):
# - C0 controls, DEL and the C1 controls;
# - U+2028 and U+2029, the only characters of categories Zl and Zp;
# - bidi embeddings, overrides and isolates, which can make a label read as another name
#   ("invoice\u202egpj.exe" shows as "invoiceexe.jpg");
# - surrogates (category Cs), which no UTF-8 text holds.
# They break log lines and terminals or disguise a name; other unicode (letters, marks,
# emoji joiners, the RTL mark) is a legitimate part of a name and is kept.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _unprintable(text: str) -> bool:
    return _UNPRINTABLE.search(text) is not None


# The form every id is stored and sent in: taken as it is, without building a UUID.
_CANONICAL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def parse_asset_id(raw: str, what: str = "asset_id") -> str:
    if _CANONICAL_ID.fullmatch(raw):
        return raw
    if not raw:
        raise InvalidArgument(f"{what} is required")
    try:
        parsed = uuid.UUID(raw)
    except ValueError:
        raise InvalidArgument(f"{what} {shown(raw)} is not a UUID") from None
    return str(parsed)


def new_asset_id() -> str:
    return str(uuid.uuid4())


def validate_label(label: str) -> str:
    if not label or not label.strip():
        raise InvalidArgument("label is required (a human name such as 'Input_Video.mp4')")
    if len(label) > MAX_LABEL_CHARS:
        raise InvalidArgument(f"label is {len(label)} characters; the limit is {MAX_LABEL_CHARS}")
    if _unprintable(label):
        raise InvalidArgument(
            f"label {shown(label)} contains control, line-separator or bidi-override characters"
        )
    if "/" in label or "\\" in label or label in {".", ".."}:
        raise InvalidArgument(
            f"label {shown(label)} looks like a path; a label is a file name without '/' or '\\'"
        )
    return label


def check_pattern(pattern: re.Pattern[str], name: str, value: str, rule: str) -> str:
    """`value` if `pattern` matches all of it, else InvalidArgument: "`name` ... is invalid:
    `rule`"."""
    if not pattern.fullmatch(value or ""):
        raise InvalidArgument(f"{name} {shown(value)} is invalid: {rule}")
    return value


def validate_task_id(task_id: str) -> str:
    return check_pattern(
        _TASK_ID,
        "task_id",
        task_id,
        "use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
    )


def validate_tags(tags: Sequence[str]) -> tuple[str, ...]:
    if len(tags) > MAX_TAGS:
        raise InvalidArgument(f"{len(tags)} tags given; the limit is {MAX_TAGS}")
    for tag in tags:
        if not tag or len(tag) > MAX_TAG_CHARS or _unprintable(tag):
            raise InvalidArgument(
                f"tag {shown(tag)} is invalid: use 1-{MAX_TAG_CHARS} printable characters"
            )
    return tuple(dict.fromkeys(tags))


# Get-or-create keys: long enough for a namespaced hash ("build:v2:" + 128 hex digits or a
# base64url SHA-512), short enough to index cheaply in every store.
MAX_KEY_CHARS = 256
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=@-]*")


def validate_key(key: str) -> str:
    if not key:
        raise InvalidArgument(
            "key is required: the orchestrator's name for what is produced (e.g. a hash of "
            "the task's code and inputs)"
        )
    if len(key) > MAX_KEY_CHARS:
        raise InvalidArgument(f"key is {len(key)} characters; the limit is {MAX_KEY_CHARS}")
    return check_pattern(
        _KEY,
        "key",
        key,
        "use letters, digits and '.', '_', ':', '/', '+', '=', '@' or '-', starting with a "
        "letter or digit",
    )


def validate_media_type(media_type: str, default: str) -> str:
    if not media_type:
        return default
    if len(media_type) > MAX_MEDIA_TYPE_CHARS or not _MEDIA_TYPE.fullmatch(media_type):
        raise InvalidArgument(
            f"media_type {shown(media_type)} is not a MIME type like 'video/mp4' "
            f"(at most {MAX_MEDIA_TYPE_CHARS} characters)"
        )
    return media_type


def validate_sha256(digest: str) -> str:
    digest = digest.lower()
    if digest and not _SHA256.fullmatch(digest):
        raise InvalidArgument(f"sha256 {shown(digest)} is not 64 hexadecimal characters")
    return digest


def validate_server_path(raw: str, what: str = "path") -> str:
    """A server-side path as a client gave it, checked lexically before any file system call.

    Absolute, no NUL, no '.' or '..' components, within Linux's PATH_MAX and NAME_MAX;
    whether it lies under an import root is the caller's check.
    """
    if not raw:
        raise InvalidArgument(f"{what} is required: an absolute path on the server")
    if "\x00" in raw:
        raise InvalidArgument(f"{what} {shown(raw)} contains a NUL character")
    if not raw.startswith("/"):
        raise InvalidArgument(f"{what} {shown(raw)} must be absolute (start with '/')")
    try:
        size = len(raw.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what} {shown(raw)} is not valid unicode") from None
    if size > MAX_PATH_BYTES:
        raise InvalidArgument(
            f"{what} {shown(raw)} is {size} bytes; the limit is {MAX_PATH_BYTES} (PATH_MAX)"
        )
    for part in raw.split("/"):
        if part in (".", ".."):
            raise InvalidArgument(
                f"{what} {shown(raw)} has a {part!r} component; give the path without it"
            )
        if len(part.encode("utf-8")) > MAX_PATH_COMPONENT_BYTES:
            raise InvalidArgument(
                f"{what} {shown(raw)} has a component {shown(part, 40)} of "
                f"{len(part.encode('utf-8'))} bytes; the limit is {MAX_PATH_COMPONENT_BYTES} "
                "(NAME_MAX)"
            )
    return raw


# JSON VALUEs and manifest config_params: deep enough for any real configuration, shallow
# enough that every reader (and Python's recursion limit) copes; protobuf's own parser
# stops at 100 nested messages (about 33 Struct levels), so a client can reach this one.
MAX_JSON_DEPTH = 32


class _NotJson(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _NotJson(name)


def check_json(text: str, what: str) -> None:
    """Refuse text that is not strict JSON (RFC 8259) or nests deeper than MAX_JSON_DEPTH.

    Python's json accepts NaN and Infinity, which other languages' parsers reject, and
    recurses once per nesting level (RecursionError): both must be a client's error.
    """
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except _NotJson as exc:
        raise InvalidArgument(
            f"{what} contains {exc.args[0]}, which is not JSON (RFC 8259 has no NaN or "
            "Infinity); use null or a string instead"
        ) from None
    except RecursionError:
        raise InvalidArgument(
            f"{what} nests deeper than {MAX_JSON_DEPTH} levels of arrays/objects"
        ) from None
    except ValueError as exc:
        raise InvalidArgument(f"{what} does not parse: {exc}") from None
    check_json_data(data, what)


def check_json_data(data: Any, what: str) -> None:
    """Refuse NaN/Infinity numbers and nesting deeper than MAX_JSON_DEPTH, naming where."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidArgument(
                f"{what}{_json_path(path)} is {value}: NaN, Infinity and numbers beyond a "
                "double's range are not portable JSON; use null or a string instead"
            )
        if isinstance(value, dict | list):
            if depth >= MAX_JSON_DEPTH:
                raise InvalidArgument(
                    f"{what}{_json_path(path)} nests deeper than {MAX_JSON_DEPTH} levels of "
                    "arrays/objects; flatten it"
                )
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                step = f"[{shown(key, 40)}]" if isinstance(key, str) else f"[{key}]"
                stack.append((item, path + step, depth + 1))


def _json_path(path: str) -> str:
    if not path:
        return ""
    if len(path) > 200:
        path = "…" + path[-200:]
    return f" at {path}"


def safe_file_name(label: str, fallback: str = "content") -> str:
    """A file name derived from a label that is safe on any filesystem."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._")
    cleaned = cleaned[:120]
    return cleaned or fallback  # no '/' survives the substitution: a name, never a path
