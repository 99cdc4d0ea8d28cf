"""End to end: list_page, watch_selector and follow through both Python clients, real server."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import grpc
import pytest
from asset_client import (
    Asset,
    AssetClient,
    AssetPage,
    AssetServiceError,
    AssetStatus,
    AssetType,
    DeadlineExceededError,
    HistoryGoneError,
    WatchEvent,
    WatchEventType,
)

from tests.conftest import StartServer
from tests.e2e.helpers import RecordingStub
from tests.serverproc import ServerProcess

CHANGED, DELETED, SNAPSHOT = WatchEventType.CHANGED, WatchEventType.DELETED, WatchEventType.SNAPSHOT
PENDING, AVAILABLE, FAILED = AssetStatus.PENDING, AssetStatus.AVAILABLE, AssetStatus.FAILED


@pytest.fixture
def small_history_server(start_server: StartServer) -> ServerProcess:
    """A server that forgets fast: ~16 changes in memory, deletions kept for a second."""
    return start_server("--watch-history-bytes", "16KiB", "--watch-tombstone-ttl", "1s")


def promise(c: AssetClient, task: str, label: str, tags: tuple[str, ...] = ()) -> Asset:
    return c.create_pending(task, label, type=AssetType.VALUE, tags=tags)


def push_out_of_history(c: AssetClient, count: int = 60) -> None:
    """~60 KiB of changes of another task: a 16 KiB history no longer holds what came before."""
    for i in range(count):
        promise(c, "filler", f"f{i}")


def wait_until_forgotten(c: AssetClient, revision: int) -> None:
    """Until the server refuses a watch from `revision`: its history has moved past it and
    the tombstones of deletions since are swept (at most a few seconds here)."""
    deadline = time.monotonic() + 15
    while True:
        events = c.watch_selector(created_by_task="no-such", after_revision=revision, timeout=0.5)
        with watching(events):
            try:
                next(events)
            except HistoryGoneError:
                return
            except DeadlineExceededError:
                pass
        assert time.monotonic() < deadline, f"revision {revision} is still replayed"
        time.sleep(0.2)


def brief(events: list[WatchEvent]) -> list[tuple[WatchEventType, str, AssetStatus]]:
    return [(e.type, e.asset.id, e.asset.status) for e in events]


def take(events: Iterator[WatchEvent], n: int) -> list[WatchEvent]:
    return [next(events) for _ in range(n)]


@contextlib.contextmanager
def watching(events: Iterator[WatchEvent]) -> Iterator[None]:
    """Closes the events (cancels their stream) on leaving, however the block ends."""
    try:
        yield
    finally:
        cast(Any, events).close()


# -- list_page ------------------------------------------------------------------------------


def test_list_page_gives_each_page_with_the_revision_it_was_read_at(
    client: AssetClient, helper: AssetClient
) -> None:
    a, b, c = (promise(helper, "render", f"{x}.png", ("job-7",)) for x in "abc")
    other = promise(helper, "encode", "x.mp4", ("job-7",))

    first = client.list_page(created_by_task="render", page_size=2)
    assert isinstance(first, AssetPage)
    assert [x.id for x in first.assets] == [a.id, b.id] and first.next_page_token
    # The store's revision when read, not the newest on the page: `other` came later.
    assert first.revision == other.revision

    helper.fulfill(a.id, value="A")  # a change between the pages
    second = client.list_page(
        created_by_task="render", page_size=2, page_token=first.next_page_token
    )
    assert [x.id for x in second.assets] == [c.id] and second.next_page_token == ""
    assert second.revision == helper.get(a.id).revision > first.revision

    # The same filters as list().
    assert [x.id for x in client.list_page(status=PENDING, tags=["job-7"]).assets] == [
        b.id,
        c.id,
        other.id,
    ]
    assert client.list_page(label="b.png").assets == (helper.get(b.id),)
    assert client.list_page(type=AssetType.FILE).assets == ()


# -- watch_selector ---------------------------------------------------------------------------


def test_list_then_watch_selector_sees_each_later_change_once_in_order(
    client: AssetClient, helper: AssetClient
) -> None:
    a = promise(helper, "render", "a.png")
    promise(helper, "encode", "b.mp4")
    page = client.list_page(created_by_task="render")
    assert [x.id for x in page.assets] == [a.id]
    helper.fulfill(a.id, value="A")  # between the listing and the watch: replayed

    events = client.watch_selector(
        created_by_task="render", after_revision=page.revision, timeout=30
    )
    with watching(events):
        first = next(events)
        assert brief([first]) == [(CHANGED, a.id, AVAILABLE)]
        assert first.asset.value is None, "selector events carry no inline value"
        assert first.revision == first.asset.revision > page.revision

        promise(helper, "encode", "c.mp4")  # another task: not sent
        c = promise(helper, "render", "c.png")
        d = promise(helper, "render", "d.png")
        helper.fail(d.id, "no d")
        helper.delete(c.id)
        last = promise(helper, "render", "last.png")
        rest = take(events, 5)

    assert brief(rest) == [
        (CHANGED, c.id, PENDING),
        (CHANGED, d.id, PENDING),
        (CHANGED, d.id, FAILED),
        (DELETED, c.id, PENDING),
        (CHANGED, last.id, PENDING),  # nothing repeated or left out before it
    ]
    assert rest[2].asset.failure_reason == "no d"
    revisions = [e.revision for e in [first, *rest]]
    assert revisions == sorted(set(revisions))


def test_a_selector_picks_by_task_tags_and_status(client: AssetClient, helper: AssetClient) -> None:
    helper.create_value("before", text="-")  # revision 0 would mean "from now"
    start = client.list_page(page_size=1).revision
    both = promise(helper, "t1", "both", ("red", "big"))
    red = promise(helper, "t1", "red", ("red",))
    elsewhere = promise(helper, "t2", "both2", ("red", "big"))
    value = helper.create_value("v", text="v", tags=["red", "big"])
    helper.fulfill(both.id, value="done")
    helper.fail(red.id, "no")
    helper.fail(elsewhere.id, "no")
    end = promise(helper, "t1", "end", ("red", "big"))
    end_value = helper.create_value("end-v", text="e", tags=["red", "big"])

    def seen(last: Asset, **selector: Any) -> list[tuple[WatchEventType, str, AssetStatus]]:
        events = client.watch_selector(after_revision=start, timeout=30, **selector)
        with watching(events):
            found = [next(events)]
            while found[-1].asset.id != last.id:
                found.append(next(events))
            return brief(found)

    assert seen(end_value, tags=["red", "big"]) == [
        (CHANGED, both.id, PENDING),
        (CHANGED, elsewhere.id, PENDING),
        (CHANGED, value.id, AVAILABLE),
        (CHANGED, both.id, AVAILABLE),
        (CHANGED, elsewhere.id, FAILED),
        (CHANGED, end.id, PENDING),
        (CHANGED, end_value.id, AVAILABLE),
    ]
    assert seen(end, created_by_task="t1") == [
        (CHANGED, both.id, PENDING),
        (CHANGED, red.id, PENDING),
        (CHANGED, both.id, AVAILABLE),
        (CHANGED, red.id, FAILED),
        (CHANGED, end.id, PENDING),
    ]
    # PENDING: promises, and each one's fulfilment or failure (it leaves the selection).
    assert seen(end, status=PENDING, tags=["red"]) == [
        (CHANGED, both.id, PENDING),
        (CHANGED, red.id, PENDING),
        (CHANGED, elsewhere.id, PENDING),
        (CHANGED, both.id, AVAILABLE),
        (CHANGED, red.id, FAILED),
        (CHANGED, elsewhere.id, FAILED),
        (CHANGED, end.id, PENDING),
    ]
    assert seen(end_value, status=AVAILABLE, type=AssetType.VALUE) == [
        (CHANGED, value.id, AVAILABLE),
        (CHANGED, both.id, AVAILABLE),
        (CHANGED, end_value.id, AVAILABLE),
    ]
    assert seen(end, label="end") == [(CHANGED, end.id, PENDING)]


def test_a_revision_older_than_the_history_raises_history_gone(
    client_of: Callable[[ServerProcess], AssetClient], small_history_server: ServerProcess
) -> None:
    client = client_of(small_history_server)
    first = promise(client, "t", "first")
    client.delete(promise(client, "t", "gone").id)
    push_out_of_history(client)
    with AssetClient(small_history_server.address, timeout=15) as helper:
        wait_until_forgotten(helper, first.revision)

    with pytest.raises(HistoryGoneError) as info:
        next(client.watch_selector(after_revision=first.revision, timeout=30))
    err = info.value
    assert isinstance(err, AssetServiceError) and err.code is grpc.StatusCode.OUT_OF_RANGE
    assert f"revision {first.revision} is older" in err.details and "list again" in err.details

    # What the error says to do works: list again, watch from the page's revision.
    page = client.list_page(page_size=1)
    events = client.watch_selector(created_by_task="t", after_revision=page.revision, timeout=30)
    with watching(events):
        late = promise(client, "t", "late")
        assert brief([next(events)]) == [(CHANGED, late.id, PENDING)]


# -- resuming after UNAVAILABLE ------------------------------------------------------------------


def test_watch_selector_resumes_after_unavailable_from_the_last_revision_yielded(
    client: AssetClient, helper: AssetClient
) -> None:
    """From now (pinned by a listing first), cut after one event, resumed after it."""
    a = promise(helper, "t", "a")
    b = promise(helper, "t", "b")
    stub = RecordingStub(
        client._stub,
        [(1, lambda: helper.fail(b.id, "no"))],
        listed=lambda: helper.fulfill(a.id, value="A"),  # after the pin: seen
    )
    client._stub = stub  # type: ignore[assignment]
    events = client.watch_selector(created_by_task="t", timeout=30)  # after_revision 0: now
    with watching(events):
        got = take(events, 2)

    assert brief(got) == [(CHANGED, a.id, AVAILABLE), (CHANGED, b.id, FAILED)]
    # "From now" was pinned by one listing with the same filter; the change made while
    # the stream was down is not skipped by the second one.
    assert len(stub.lists) == 1 and stub.lists[0].created_by_task == "t"
    assert [w.after_revision for w in stub.watches] == [b.revision, got[0].revision]
    assert all(w.selector.task_id == "t" and not w.asset_ids for w in stub.watches)


def test_a_watch_cut_before_its_first_event_is_not_reopened_by_hand(
    client: AssetClient, helper: AssetClient
) -> None:
    """Until its first event gRPC's retry policy repeats the call (the channel's service
    config); UNAVAILABLE that gets through it ends the watch instead of a loop by hand."""
    a = promise(helper, "t", "a")
    stub = RecordingStub(client._stub, [(0, lambda: None)])
    client._stub = stub  # type: ignore[assignment]
    events = client.watch_selector(created_by_task="t", after_revision=a.revision, timeout=30)
    with watching(events), pytest.raises(AssetServiceError) as info:
        take(events, 1)
    assert info.value.code is grpc.StatusCode.UNAVAILABLE
    assert len(stub.watches) == 1


def test_a_stalled_selector_watch_is_resumed_by_itself(
    client_of: Callable[[ServerProcess], AssetClient], start_server: StartServer
) -> None:
    """The server ends a stream its client stopped reading with UNAVAILABLE; the client
    re-opens it from the last revision it yielded, and nothing is lost or repeated."""
    server = start_server("--watch-stall-timeout", "1")
    client = client_of(server)
    # Events of 8-12 KiB (64 tags of 128 characters; a failure adds a 4 KiB reason): 600
    # promises made and failed are ~12 MiB, twice what the HTTP/2 windows took here before
    # the server's writes had to wait on the reader (~300 for asyncio, fewer for sync).
    tags = tuple(f"{i:02d}" + "x" * 126 for i in range(64))
    count = 600
    with AssetClient(server.address, timeout=15) as helper:
        helper.create_value("before", text="-")  # revision 0 would mean "from now"
        start = client.list_page(page_size=1).revision
        first = promise(helper, "big", "first", tags)
        events = client.watch_selector(created_by_task="big", after_revision=start, timeout=120)
        with watching(events):
            assert next(events).asset.id == first.id  # then the reader pauses
            # Written by 8 callers at once (the writer commits them in groups): the order
            # to expect is the revisions the server gave them.
            with ThreadPoolExecutor(8) as pool:
                made = list(pool.map(lambda i: promise(helper, "big", f"p{i}", tags), range(count)))
                failed = list(pool.map(lambda a: helper.fail(a.id, "r" * 4096), made))
            _until(
                lambda: any("did not read for 1s" in line for line in server.log),
                timeout=30,
                what="the server to end the stalled stream",
            )
            rest = take(events, 2 * count)
            end = promise(helper, "big", "end")
            after = next(events)
    by_revision = functools.partial(sorted, key=lambda a: a.revision)
    assert [(e.asset.id, e.asset.status) for e in rest] == [
        *((a.id, PENDING) for a in by_revision(made)),
        *((a.id, FAILED) for a in by_revision(failed)),
    ]
    assert after.asset.id == end.id  # nothing repeated after the resumption
    revisions = [e.revision for e in rest]
    assert revisions == sorted(set(revisions))
    assert not [line for line in server.log if " ERROR " in line or "Traceback" in line]


def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- follow -------------------------------------------------------------------------------------


def test_follow_lists_then_watches_without_missing_or_repeating_a_change(
    client: AssetClient, helper: AssetClient
) -> None:
    p = [promise(helper, "job", f"p{i}") for i in range(4)]
    promise(helper, "other", "x")
    events = client.follow(created_by_task="job", page_size=2, timeout=60)
    with watching(events):
        got = take(events, 2)  # the first page, read at revision R
        # Before the next pages are read: p3 changes on a later page, p0 on the page read.
        helper.fulfill(p[0].id, value="zero")
        helper.fulfill(p[3].id, value="three")
        p4 = promise(helper, "job", "p4")
        got += take(events, 4)  # the rest of the listing, then the watch from R
        helper.fail(p[2].id, "no")  # the watch's replay of p3 and p4 was left out before this
        got += take(events, 1)
        helper.delete(p[1].id)
        got += take(events, 1)

    assert brief(got) == [
        (SNAPSHOT, p[0].id, PENDING),
        (SNAPSHOT, p[1].id, PENDING),
        (SNAPSHOT, p[2].id, PENDING),
        (SNAPSHOT, p[3].id, AVAILABLE),
        (SNAPSHOT, p4.id, PENDING),
        (CHANGED, p[0].id, AVAILABLE),
        (CHANGED, p[2].id, FAILED),
        (DELETED, p[1].id, PENDING),
    ]
    assert got[3].asset.value is not None and got[3].asset.value.content == "three"
    assert got[5].asset.value is None  # a watch event: no inline value
    for e in got:
        assert e.revision == e.asset.revision


def test_follow_lists_again_when_the_history_is_gone(
    client_of: Callable[[ServerProcess], AssetClient],
    small_history_server: ServerProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="asset_client")
    client = client_of(small_history_server)
    with AssetClient(small_history_server.address, timeout=15) as helper:
        p = [promise(helper, "job", f"p{i}") for i in range(4)]
        events = client.follow(created_by_task="job", status=PENDING, page_size=2, timeout=60)
        with watching(events):
            got = take(events, 2)  # the first page, read at revision R
            helper.fulfill(p[0].id, value="zero")  # leaves the selection
            helper.delete(p[1].id)
            p4 = promise(helper, "job", "p4")
            push_out_of_history(helper)  # R is no longer in the server's history
            wait_until_forgotten(helper, p[3].revision)  # nor p1's tombstone in the store
            # The rest of the listing; then watching from R is refused, and it lists again.
            got += take(events, 5)
            helper.fulfill(p[2].id, value="two")
            p5 = promise(helper, "job", "p5")
            got += take(events, 2)

    assert brief(got) == [
        (SNAPSHOT, p[0].id, PENDING),
        (SNAPSHOT, p[1].id, PENDING),
        (SNAPSHOT, p[2].id, PENDING),
        (SNAPSHOT, p[3].id, PENDING),
        (SNAPSHOT, p4.id, PENDING),
        # What the second listing no longer shows: left the selection, or deleted (with
        # the last state yielded). p2, p3 and p4 are unchanged: not repeated.
        (CHANGED, p[0].id, AVAILABLE),
        (DELETED, p[1].id, PENDING),
        (CHANGED, p[2].id, AVAILABLE),
        (CHANGED, p5.id, PENDING),
    ]
    assert got[6].revision == p[1].revision
    assert any("listing again" in r.getMessage() for r in caplog.records)
