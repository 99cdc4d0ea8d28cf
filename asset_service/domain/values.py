"""VALUE assets' content: what is accepted inline, and its digest."""

from __future__ import annotations

import hashlib

from asset_service.domain.errors import InvalidArgument
from asset_service.domain.models import Value, ValueKind, check_json

MAX_VALUE_BYTES = 4 * 1024 * 1024


def parse_value(kind: ValueKind, data: bytes) -> Value:
    if len(data) > MAX_VALUE_BYTES:
        raise InvalidArgument(
            f"value is {len(data)} bytes; the limit is {MAX_VALUE_BYTES} (upload a FILE instead)"
        )
    if kind is not ValueKind.BYTES:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument(f"{kind.value.lower()} value is not valid UTF-8") from None
        if kind is ValueKind.JSON:
            check_json(text, "json value")
    return Value(kind, data)


def value_sha256(value: Value) -> str:
    return hashlib.sha256(value.data).hexdigest()
