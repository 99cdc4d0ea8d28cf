"""An access line goes to logs.configure's handler without a LogRecord when nothing else
would see the record, and is then the same text as the record would have made; anything
added on the way (a handler, a filter, another format) gets records again."""

from __future__ import annotations

import io
import json
import logging
import time
from typing import Any

import grpc
import pytest

from asset_service import logs
from asset_service.telemetry import _calls

METHOD = _calls.Method(
    "/asset.v1.AssetService/GetAsset", "asset.v1.AssetService", "GetAsset", "unary", None, 20
)


class Context:
    def __init__(self, details: str = "") -> None:
        self._details = details

    def details(self) -> str:
        return self._details


def _call(**fields: Any) -> _calls.Call:
    call = _calls.Call(0.0, bytes_in=38, bytes_out=204, peer="ipv4:127.0.0.1:4242")
    call.principal = "anonymous"
    for key, value in fields.items():
        setattr(call, key, value)
    return call


CASES = [
    (grpc.StatusCode.OK, _call(), Context()),
    (grpc.StatusCode.NOT_FOUND, _call(), Context("asset 'x' not found: 100% gone")),
    (grpc.StatusCode.INTERNAL, _call(ref="0123456789ab"), Context("internal error")),
]


class PassAll(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return True


def _lines(stream: io.StringIO) -> list[str]:
    for handler in logging.getLogger().handlers:
        handler.flush()
    return stream.getvalue().splitlines()


@pytest.mark.parametrize(("fmt", "worker"), [("text", ""), ("text", "worker 2/4"), ("json", "")])
def test_the_direct_line_is_the_records_line(
    fmt: str, worker: str, restore_root: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Logged off the loop (each line written at once); time.time is the same for both."""
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.987654)
    stream = io.StringIO()
    logs.configure("INFO", fmt, stream, worker=worker)
    assert logs.direct_handler(_calls.access_log, logging.INFO) is not None
    for code, call, context in CASES:
        _calls._log_access(METHOD, call, code, 0.000123, context)
    direct = _lines(stream)
    stream.seek(0)
    stream.truncate()
    _calls.access_log.addFilter(flt := PassAll())
    try:
        assert logs.direct_handler(_calls.access_log, logging.INFO) is None
        for code, call, context in CASES:
            _calls._log_access(METHOD, call, code, 0.000123, context)
    finally:
        _calls.access_log.removeFilter(flt)
    assert direct == _lines(stream)
    assert len(direct) == 3
    if fmt == "json":
        entries = [json.loads(line) for line in direct]
        assert entries[1]["error"] == "asset 'x' not found: 100% gone"
        assert entries[2]["ref"] == "0123456789ab"
        assert entries[0]["ts"] == "2023-11-14T22:13:20.987+00:00"
    else:
        assert direct[0].endswith(
            ",987 INFO " + (f"[{worker}] " if worker else "") + "asset_service.access: "
            "/asset.v1.AssetService/GetAsset OK 0.1ms peer=ipv4:127.0.0.1:4242 "
            "principal=anonymous in=38B out=204B"
        )


def _added_handler() -> None:
    logging.getLogger().addHandler(logging.NullHandler())


def _handler_on_the_way() -> None:
    logging.getLogger("asset_service").addHandler(logging.NullHandler())


def _not_propagating() -> None:
    logging.getLogger("asset_service").propagate = False


def _another_format() -> None:
    logging.getLogger().handlers[0].setFormatter(logs.TextFormatter("%(process)d %(message)s"))


def _foreign_handler_filter() -> None:
    logging.getLogger().handlers[0].addFilter(PassAll())


def _handler_above_the_level() -> None:
    logging.getLogger().handlers[0].setLevel(logging.WARNING)


def _logger_disabled() -> None:
    _calls.access_log.disabled = True


@pytest.mark.parametrize(
    "change",
    [
        _added_handler,
        _handler_on_the_way,
        _not_propagating,
        _another_format,
        _foreign_handler_filter,
        _handler_above_the_level,
        _logger_disabled,
    ],
)
def test_anything_added_on_the_way_gets_records_again(change: Any, restore_root: None) -> None:
    logs.configure("INFO", "text", io.StringIO())
    assert logs.direct_handler(_calls.access_log, logging.INFO) is not None
    parent = logging.getLogger("asset_service")
    saved = (list(parent.handlers), parent.propagate, _calls.access_log.disabled)
    try:
        change()
        assert logs.direct_handler(_calls.access_log, logging.INFO) is None
    finally:
        parent.handlers[:], parent.propagate, _calls.access_log.disabled = saved


def test_a_test_capturing_the_log_sees_the_access_records(
    restore_root: None, caplog: pytest.LogCaptureFixture
) -> None:
    logs.configure("INFO", "text", io.StringIO())
    logging.getLogger().addHandler(caplog.handler)
    _calls._log_access(METHOD, _call(), grpc.StatusCode.OK, 0.001, Context())
    [record] = [r for r in caplog.records if r.name == _calls.ACCESS_LOGGER]
    assert record.getMessage().startswith("/asset.v1.AssetService/GetAsset OK 1.0ms")
    assert record.bytes_out == 204  # type: ignore[attr-defined]
