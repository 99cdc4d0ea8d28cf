"""The log handler writes the lines of one event-loop turn in one write, as the turn ends;
lines off the loop and warnings at once, in the order they were logged."""

from __future__ import annotations

import asyncio
import io
import logging
import time

import pytest

from asset_service import logs


class Writes(io.StringIO):
    """A stream that remembers each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


@pytest.fixture
def out(restore_root: None) -> Writes:
    stream = Writes()
    logs.configure("INFO", "text", stream)
    return stream


log = logging.getLogger("asset_service.access")


async def test_the_lines_of_one_turn_are_one_write_at_its_end(out: Writes) -> None:
    log.info("call %d", 1)
    log.info("call %d", 2)
    assert out.writes == [], "held until the turn ends"
    await asyncio.sleep(0)
    assert len(out.writes) == 1
    assert [line.rsplit(": ", 1)[1] for line in out.writes[0].splitlines()] == ["call 1", "call 2"]
    log.info("call %d", 3)
    await asyncio.sleep(0)
    assert len(out.writes) == 2 and out.writes[1].endswith("call 3\n")


async def test_a_warning_is_written_at_once_after_what_is_held(out: Writes) -> None:
    log.info("held")
    logging.getLogger("asset_service.x").warning("now")
    assert len(out.writes) == 1
    assert [line.rsplit(": ", 1)[1] for line in out.writes[0].splitlines()] == ["held", "now"]
    await asyncio.sleep(0)
    assert len(out.writes) == 1, "nothing left for the turn's end"


async def test_lines_of_other_threads_are_written_at_once_in_order(out: Writes) -> None:
    log.info("on the loop")
    await asyncio.to_thread(log.info, "on a thread")
    assert "".join(out.writes).splitlines()[-2:][0].endswith("on the loop")
    assert "".join(out.writes).endswith("on a thread\n")


def test_off_the_loop_each_line_is_written_at_once(out: Writes) -> None:
    log.info("one")
    assert out.getvalue().endswith("one\n")


async def test_a_flush_writes_what_is_held(out: Writes) -> None:
    log.info("before exit")
    logging.getLogger().handlers[0].flush()  # what logging.shutdown and the hard stop do
    assert out.getvalue().endswith("before exit\n")


def test_a_seconds_time_is_formatted_once_and_as_logging_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The text format's time of day: the same text as logging.Formatter's, strftime once
    per second however many lines are logged in it (it was a fifth of an access line)."""
    calls: list[str] = []
    strftime = time.strftime

    def counted(fmt: str, *args: object) -> str:
        calls.append(fmt)
        return strftime(fmt, *args)  # type: ignore[arg-type]

    ours, theirs = logs.TextFormatter(logs.TEXT_FORMAT), logging.Formatter(logs.TEXT_FORMAT)
    records = []
    for created in (1_700_000_000.001, 1_700_000_000.5, 1_700_000_000.999, 1_700_000_001.25):
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "line %d", (1,), None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        records.append(record)
    expected = [theirs.format(r) for r in records]
    monkeypatch.setattr(time, "strftime", counted)
    assert [ours.format(r) for r in records] == expected
    assert len(calls) == 2, "one second, then the next"
