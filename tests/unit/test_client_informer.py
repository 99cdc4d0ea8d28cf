"""follow()'s bookkeeping (asset_client._selectors.Informer) over scripted listings and events."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from asset_client import (
    Asset,
    AssetStatus,
    AssetType,
    HistoryGoneError,
    OutOfRangeError,
    Value,
    WatchEvent,
    WatchEventType,
)
from asset_client._selectors import Informer, SelectorCursor
from asset_client.errors import from_rpc_error

PENDING, AVAILABLE = AssetStatus.PENDING, AssetStatus.AVAILABLE
CHANGED, DELETED, SNAPSHOT = WatchEventType.CHANGED, WatchEventType.DELETED, WatchEventType.SNAPSHOT


NOW = datetime(2025, 1, 1, tzinfo=UTC)


def rec(asset_id: str, revision: int, status: AssetStatus = PENDING, value: str = "") -> Asset:
    return Asset(
        id=asset_id,
        label=asset_id,
        status=status,
        type=AssetType.VALUE,
        media_type="",
        storage_path="",
        value=Value.of_text(value) if value else None,
        created_by_task="job",
        tags=(),
        size_bytes=0,
        sha256="",
        create_time=NOW,
        update_time=NOW,
        failure_reason="",
        revision=revision,
    )


def ev(kind: WatchEventType, asset: Asset) -> WatchEvent:
    return WatchEvent(kind, asset, asset.revision)


def listing(informer: Informer, *pages: tuple[int, list[Asset]]) -> list[WatchEvent]:
    informer.start_listing()
    out = []
    for revision, assets in pages:
        informer.page_read(revision)
        out += [e for a in assets if (e := informer.listed(a)) is not None]
    return out


def test_the_watch_starts_after_the_first_page_and_skips_what_later_pages_showed() -> None:
    informer = Informer(None)
    shown = listing(informer, (10, [rec("a", 3), rec("b", 4)]), (12, [rec("c", 12)]))
    assert [(e.type, e.asset.id) for e in shown] == [
        (SNAPSHOT, "a"),
        (SNAPSHOT, "b"),
        (SNAPSHOT, "c"),
    ]
    assert informer.revision == 10 and informer.unlisted() == []
    replayed = [ev(CHANGED, rec("a", 11)), ev(CHANGED, rec("c", 12)), ev(CHANGED, rec("c", 13))]
    assert [informer.watched(e) for e in replayed] == [replayed[0], None, replayed[2]]


def test_a_deletion_goes_out_once_and_only_for_an_asset_yielded() -> None:
    informer = Informer(None)
    listing(informer, (5, [rec("a", 2)]))
    gone = ev(DELETED, rec("a", 6))
    assert informer.watched(gone) is gone
    assert informer.watched(ev(DELETED, rec("a", 6))) is None
    assert informer.watched(ev(DELETED, rec("never-seen", 7))) is None
    assert informer.known == {}


def test_a_relisting_reports_deleted_and_departed_assets_and_then_drops_older_replays() -> None:
    informer = Informer(PENDING)
    listing(informer, (5, [rec("a", 2), rec("b", 3), rec("c", 4)]))
    # The history is gone; the relisting (pages at 20 and 22) no longer shows a or b.
    again = listing(informer, (20, [rec("c", 4)]), (22, [rec("d", 21)]))
    assert [(e.type, e.asset.id) for e in again] == [(SNAPSHOT, "d")]
    assert informer.revision == 20 and informer.unlisted() == ["a", "b"]
    deleted = informer.recheck("a", None)
    assert deleted == WatchEvent(DELETED, rec("a", 2), 2)  # the last state yielded
    left = informer.recheck("b", rec("b", 15, AVAILABLE))
    assert left is not None and (left.type, left.asset.status) == (CHANGED, AVAILABLE)
    assert set(informer.known) == {"c", "d"}  # b left the PENDING selection: forgotten
    # The watch from 20 replays what happened up to the last page (22): not news, although
    # neither a nor b is known any more; later events are.
    assert informer.watched(ev(CHANGED, rec("a", 21))) is None
    assert informer.watched(ev(CHANGED, rec("b", 21, AVAILABLE))) is None
    assert informer.watched(ev(CHANGED, rec("d", 21))) is None
    later = ev(CHANGED, rec("c", 23, AVAILABLE))
    assert informer.watched(later) is later
    assert set(informer.known) == {"d"}


def test_values_from_the_listing_are_yielded_but_not_kept() -> None:
    informer = Informer(None)
    (shown,) = listing(informer, (3, [rec("a", 2, AVAILABLE, value="big")]))
    assert shown.asset.value == Value.of_text("big")
    assert informer.known["a"].value is None


def test_selector_cursor_pins_from_now_once_and_resumes_from_the_last_revision() -> None:
    cursor = SelectorCursor(PENDING, None, ["red"], "job", None, 0, None)
    pin = cursor.pin_request()
    assert pin is not None and (pin.created_by_task, list(pin.tags), pin.page_size) == (
        "job",
        ["red"],
        1,
    )
    cursor.pin(40)
    assert cursor.pin_request() is None
    request = cursor.request()
    assert (request.after_revision, request.selector.task_id, list(request.selector.tags)) == (
        40,
        "job",
        ["red"],
    )
    assert not request.asset_ids and request.selector.status == pin.status
    assert SelectorCursor(None, None, (), None, None, 7, None).pin_request() is None


def test_out_of_range_is_history_gone() -> None:
    class Refused(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.OUT_OF_RANGE

        def details(self) -> str:
            return "revision 3 is older than this server's change history: list again"

    err = from_rpc_error(Refused())
    assert type(err) is HistoryGoneError and OutOfRangeError is HistoryGoneError
    assert err.code is grpc.StatusCode.OUT_OF_RANGE and "list again" in err.details
