"""Limits: what clients may hold at once, and how long a silent peer is waited for."""

from __future__ import annotations

from dataclasses import dataclass

from asset_service.config._kinds import INTERVAL, POSITIVE, POSITIVE_SIZE
from asset_service.options import SIZE, setting


@dataclass(frozen=True)
class LimitSettings:
    """The "limits" group: what clients may hold, how long a silent peer is waited for."""

    max_upload_bytes: int = setting(
        POSITIVE_SIZE, "10GiB", "largest accepted upload, e.g. 512MiB or 10G", group="limits"
    )
    max_concurrent_uploads: int = setting(
        POSITIVE,
        "64",
        "UploadAsset streams in progress at once, over all clients; one more is refused",
        group="limits",
    )
    mongo_write_queue: int = setting(
        POSITIVE,
        "2048",
        "with MongoDB: record writes one server process queues for its group writer; one "
        "more (or more than 64MiB of queued values) is refused at once with UNAVAILABLE, "
        "nothing sent, and so is a queued write not sent within the 15s every write gets "
        "from its submission (clients retry with backoff); docs/mongodb.md",
        group="limits",
    )
    max_streams_per_connection: int = setting(
        POSITIVE,
        "100",
        "concurrent calls on one HTTP/2 connection (SETTINGS_MAX_CONCURRENT_STREAMS); further "
        "calls wait for a free stream",
        group="limits",
    )
    upload_idle_timeout_seconds: float = setting(
        INTERVAL,
        "1m",
        "how long an upload may wait for its next message before it is cancelled "
        "(DEADLINE_EXCEEDED) and its staging file removed",
        group="limits",
        flag="--upload-idle-timeout",
    )
    upload_session_ttl_seconds: float = setting(
        INTERVAL,
        "24h",
        "how long an unfinished resumable upload (UploadHeader.upload_id) is kept after its "
        "last stream ended; then every server removes it with everything it staged (files, "
        "multipart uploads; swept every --collect-interval and at start-up), "
        "and resuming or QueryUpload answers NOT_FOUND",
        group="limits",
        flag="--upload-session-ttl",
    )
    watch_buffer_bytes: int = setting(
        POSITIVE_SIZE,
        "4MiB",
        "changes buffered for one slow WatchAsset stream; past it the buffer is dropped and the "
        "stream catches up from the store",
        group="limits",
    )
    watch_history_bytes: int = setting(
        SIZE,
        "32MiB",
        "latest changes kept in memory (records without values, ~1 KiB each) from which "
        "selector watches are served; a watch from an older revision is replayed from the "
        "store (see --watch-tombstone-ttl)",
        group="limits",
    )
    watch_tombstone_ttl_seconds: float = setting(
        INTERVAL,
        "1h",
        "how long the store keeps a deleted asset's tombstone (its id, revision, deleter and "
        "selector fields): a selector watch that resumes from a revision the in-memory "
        "history no longer holds is replayed from the store as far back as this (swept every "
        "tenth of it, at most every 10 min); an older revision gets OUT_OF_RANGE and the "
        "client lists again",
        group="limits",
        flag="--watch-tombstone-ttl",
    )
    watch_stall_timeout_seconds: float = setting(
        INTERVAL,
        "5m",
        "how long a WatchAsset stream may stay blocked on a client that does not read (its "
        "flow-control window full, a few MiB of events in flight) before the stream ends with "
        "UNAVAILABLE (checked every quarter of it, at most every 5 s); clients resume from "
        "their last revision",
        group="limits",
        flag="--watch-stall-timeout",
    )
    max_concurrent_reads: int = setting(
        POSITIVE,
        "128",
        "ReadAsset streams in progress at once, over all clients (each holds an open file and "
        "up to a few MiB while its client is slow); one more is refused",
        group="limits",
    )
    read_stall_timeout_seconds: float = setting(
        INTERVAL,
        "2m",
        "how long a ReadAsset stream may stay blocked on a client that does not read (its "
        "flow-control window full) before the stream ends with UNAVAILABLE naming the offset "
        "to resume from (checked every quarter of it, at most every 5 s)",
        group="limits",
        flag="--read-stall-timeout",
    )
