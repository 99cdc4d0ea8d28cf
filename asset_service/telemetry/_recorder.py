"""What the service reports as it works, to a recorder that does nothing unless metrics are on."""

from __future__ import annotations

from collections.abc import Mapping

from asset_service.domain.models import Change, WatchEvent


class Recorder:
    """The service's events that metrics count: every method does nothing here, so that a
    server without --metrics-listen pays one empty call per event (no lock, no clock).

    telemetry/_metrics.MetricsRecorder overrides each of them.
    """

    enabled = False

    def change_published(self, change: Change) -> None:
        """The change feed delivered `change` to this server (ChangeHub.on_publish)."""

    def watch_opened(self, selector: bool) -> None:
        """A WatchAsset stream started (by ids, or by `selector`)."""

    def watch_closed(self, selector: bool) -> None: ...

    def watch_sent(self, event: WatchEvent) -> None:
        """`event` was written to a WatchAsset stream (the client's window took it)."""

    def upload_received(self, size: int) -> None:
        """UploadAsset took in `size` bytes of content (one chunk)."""

    def read_sent(self, size: int) -> None:
        """ReadAsset sent `size` bytes of content (one chunk)."""

    def leases_expired(self, count: int) -> None:
        """The lease sweep failed `count` promises whose lease ran out."""

    def upload_sessions_expired(self, count: int) -> None:
        """The session sweep removed `count` unfinished resumable uploads past their TTL."""

    def assets_expired(self, by_reason: Mapping[str, int]) -> None:
        """The retention sweep removed expired assets: how many, by deletion reason."""

    def reclaimed(self, kind: str, count: int) -> None:
        """A collection removed `count` items of `kind` ("orphan_files")."""

    def group_commit(self, store: str, writes: int) -> None:
        """`store`'s writer ran one transaction of `writes` grouped writes (any thread)."""


NO_RECORDER = Recorder()
