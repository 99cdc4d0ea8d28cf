"""Every setting of the server, declared once: its flag, variable, help, default and README row.

A setting is one field of `Settings` made by `setting()`; `asset_service.options` turns the
fields into argparse flags (--no-X for booleans), ASSET_SERVICE_* variables, --help text,
--print-config and README.md's table (`make generate`; a test checks it is current).

Why a table of dataclass fields rather than pydantic-settings: pydantic-settings would add
pydantic (and its compiled core) to the server for what argparse already does, its errors
are multi-line reports naming fields rather than flags, it does not record where a value
came from, and the README table and --help would still be written by hand. Here the field
keeps its static type for mypy, and each value is read by one parser whether it came from
a flag or a variable, so both fail the same way.
"""

from __future__ import annotations

import argparse
import os
from argparse import ArgumentTypeError
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asset_service.domain.retention import RULE_SYNTAX, ExpiryRule, parse_rule
from asset_service.options import (
    ADDRESS,
    BOOL,
    COUNT,
    DIRECTORY,
    DURATION,
    FILE,
    GROUP,
    NUMBER,
    REGION,
    SIZE,
    WHOLE_SECONDS,
    Kind,
    Loaded,
    Many,
    OneLineParser,
    Table,
    choice,
    parse_bool,
    parse_group,
    parse_size,
    setting,
    show_duration,
    url,
)

__all__ = [
    "ENV_PREFIX",
    "Settings",
    "build_parser",
    "load_settings",
    "parse_bool",
    "parse_group",
    "parse_size",
    "read_command_line",
]

ENV_PREFIX = "ASSET_SERVICE_"

# A delete on a full disk writes ~40 KiB of WAL, and giving the pages of a deleted VALUE
# back to the disk a few hundred KiB more (store/sqlite/_room.py): a smaller disk-full
# reserve would not see it through. 0 turns it off.
MIN_DISK_RESERVE = 1024**2

GROUPS = {
    "service": "where it listens, what it logs, how it stops, leases",
    "storage": "where records and bytes live, and which server-side files it may adopt",
    "limits": "what clients may hold; over a limit a call gets RESOURCE_EXHAUSTED (or "
    "DEADLINE_EXCEEDED / UNAVAILABLE for a silent peer) naming the setting",
    "telemetry": "what the server reports about itself: metrics, logs and traces "
    "(docs/operations.md). Traces are off unless the standard OTEL_TRACES_EXPORTER variable "
    "names an exporter (otlp or console; OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME and "
    "the other OTEL_* variables apply)",
    "security": "TLS, mTLS and bearer tokens with roles (docs/security.md); files are re-read "
    "on SIGHUP, certificates also when they change. Without any, the server is "
    "unauthenticated and refuses to listen beyond loopback unless --insecure is given",
}

# Intervals and timeouts: zero would spin a loop (the health check at 90-99 % CPU, and a
# stop that never ended) or end every call at once.
INTERVAL = DURATION.where(lambda seconds: seconds > 0, "above 0")
POSITIVE = COUNT.where(lambda n: n > 0, "above 0")
POSITIVE_SIZE = SIZE.where(lambda n: n > 0, "above 0")


def _expiry_rule(text: str) -> ExpiryRule:
    try:
        return parse_rule(text)
    except ValueError as exc:
        raise ArgumentTypeError(f"{text!r}: {exc}") from None


EXPIRY_RULE = Kind(
    "expiry rule",
    _expiry_rule,
    RULE_SYNTAX,
    lambda r: ",".join(
        [r.name]
        + [
            f"{k}={v}"
            for k, v in (
                ("status", r.status.value if r.status else ""),
                ("type", r.type.value if r.type else ""),
                ("tag", r.tag),
                ("task", r.task),
            )
            if v
        ]
        + [show_duration(r.after)]
    ),
    "RULE",
)
RESERVE = SIZE.where(
    lambda n: n == 0 or n >= MIN_DISK_RESERVE,
    "0 or at least 1MiB",
    "is too small to hold what a delete on a full disk writes: give at least 1MiB, or 0 for no "
    "reserve",
)


def _workers(text: str) -> int:
    """'auto' -> 0 (one per core, worked out at start-up), else a count above 0."""
    if text.strip().lower() == "auto":
        return 0
    count = COUNT.parse(text)
    if count < 1:
        raise ArgumentTypeError(f"{text!r} is not auto or a count above 0")
    return count


WORKERS = Kind(
    "workers", _workers, "auto, or a whole number above 0", lambda n: str(n or "auto"), "N"
)


def _metrics_address(text: str) -> str:
    if not text.strip():
        return ""
    if text.strip().startswith(("unix:", "unix-abstract:")):
        raise ArgumentTypeError(f"{text!r} is a unix socket; metrics are served over TCP")
    return ADDRESS.parse(text)


METRICS_ADDRESS = Kind(
    "address or empty",
    _metrics_address,
    "HOST:PORT (port 0 picks one), [::1]:PORT, or empty for no metrics",
    str,
    "HOST:PORT",
)


def _default_database(values: Mapping[str, Any]) -> str:
    return f"sqlite:///{values['storage_root'] / 'assets.db'}"


@dataclass(frozen=True)
class Settings:
    # -- service
    listen: str = setting(
        ADDRESS,
        "127.0.0.1:50051",
        "host:port to serve on; port 0 picks a free port (logged at start-up)",
        group="service",
    )
    log_level: str = setting(
        choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO", "logging threshold", group="service"
    )
    shutdown_grace_seconds: float = setting(
        INTERVAL,
        "10s",
        "on SIGTERM/SIGINT readiness (health of asset.v1.AssetService) answers NOT_SERVING "
        'at once while liveness ("") stays SERVING, and calls in flight get this long to '
        "finish while the server still listens (new calls too, until load balancers notice); "
        "then it closes, ending what is left. The process exits within this plus a few "
        "seconds, whatever is stuck",
        group="service",
        flag="--shutdown-grace",
    )
    health_interval_seconds: float = setting(
        INTERVAL,
        "2s",
        "time between the database and storage checks behind readiness (health of "
        "asset.v1.AssetService; each check gets this long, at least 1s)",
        group="service",
        flag="--health-interval",
    )
    workers: int = setting(
        WORKERS,
        "1",
        "serving processes behind the one --listen port, sharing the database and storage "
        "(the kernel spreads connections over them, SO_REUSEPORT); 'auto' starts one per core "
        "(CPU affinity and cgroup quota). A supervisor restarts a worker that dies and passes "
        "SIGTERM/SIGHUP on. 1 serves in this process alone: what a container scaled by "
        "replicas, or a small machine, wants; a second server on the same port or SQLite "
        "file is refused either way. Not with memory:// or a unix: address",
        group="service",
    )
    max_lease_seconds: int = setting(
        WHOLE_SECONDS.where(lambda seconds: seconds > 0, "above 0"),
        "86400",
        "longest lease a promise may be created or renewed with (CreatePendingAsset / "
        "RenewLease lease_seconds); a task that runs longer renews a shorter lease",
        group="service",
    )
    lease_check_interval_seconds: float = setting(
        INTERVAL,
        "1s",
        "time between sweeps that fail PENDING assets whose lease ran out: such an asset "
        "becomes FAILED at most this long after its lease_expire_time (one server sweeps at "
        "a time; if it dies, another takes over within three intervals)",
        group="service",
        flag="--lease-check-interval",
    )
    # -- storage
    storage_root: Path = setting(
        DIRECTORY,
        "./data",
        "folder holding every stored file (created if missing): uploads/YYYY-MM-DD/<id>/, "
        "generated/<task-id>/<id>/, tmp/ (staging and manifests; keep it on one file system)",
        group="storage",
    )
    database_url: str = setting(
        url("sqlite", "mongodb", "mongodb+srv", "memory", example="sqlite:////srv/assets.db"),
        "",
        "metadata store: sqlite:///abs/path.db (embedded), mongodb://host/db?replicaSet=rs "
        "(production) or memory:// (in this process only, lost on exit: tests and demos)",
        group="storage",
        default_doc="sqlite:///<storage-root>/assets.db",
        derive=_default_database,
    )
    storage_url: str = setting(
        url("s3", example="s3://bucket/prefix"),
        "",
        "where FILE bytes live: empty for the local disk under --storage-root, or "
        "s3://bucket/prefix for an S3-compatible object store (credentials from the standard "
        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY variables; --storage-root then keeps only "
        "local state: move journals, manifests and their input cache)",
        group="storage",
    )
    s3_endpoint_url: str = setting(
        url("http", "https", example="http://127.0.0.1:9000"),
        "",
        "object store endpoint, e.g. http://127.0.0.1:9000 for MinIO (empty: AWS_ENDPOINT_URL, "
        "else AWS S3)",
        group="storage",
    )
    s3_region: str = setting(
        REGION, "", "object store region (empty: AWS_REGION, else us-east-1)", group="storage"
    )
    manifest_cache_bytes: int = setting(
        SIZE,
        "10GiB",
        "with an object store: local copies of manifest inputs kept (least recently used go first)",
        group="storage",
    )
    # 8 MiB/s: a store of ~650 GiB is scrubbed once a day, at a few percent of a disk's
    # bandwidth (an HDD reads 150+ MiB/s) and of one core (crc32c runs at GB/s); an
    # operator with more data or idle disks raises it, one sharing a bucket with other
    # servers leaves it on in one of them only.
    scrub_rate_mib: float = setting(
        NUMBER,
        "8",
        "MiB per second the background scrub re-reads stored FILE bytes at most, checking "
        "each block's checksum; corrupt assets are logged, marked (corrupt_reason) and "
        "refused with DATA_LOSS; 0 turns it off (the admin RPC ScrubAssets still checks on "
        "demand)",
        group="storage",
        flag="--scrub-rate",
    )
    scrub_interval_seconds: float = setting(
        INTERVAL,
        "1d",
        "time from the start of one background scrub pass to the next (a pass that takes "
        "longer is followed at once); the first starts this long after start-up, at most 5m",
        group="storage",
        flag="--scrub-interval",
    )
    disk_reserve_bytes: int = setting(
        RESERVE,
        "4MiB",
        "with SQLite: space kept in a file beside the database (<database>.reserve) and given "
        "back when its disk is full, so that DeleteAsset still works; until it can be "
        "re-created, every write but DeleteAsset is refused (RESOURCE_EXHAUSTED). At least 1MiB "
        "and at most half the disk (a smaller disk refuses to start); 0 turns it off "
        "(DeleteAsset may then fail on a full disk)",
        group="storage",
    )
    share_group: int | None = setting(
        GROUP,
        "",
        "let this group (name or number) read stored files, manifests and the VALUE files they "
        "name by path (workers on this host): those become group-readable (files 0640, folders "
        "0750) and owned by the group; the database, staging and journals stay owner-only. "
        "Without it everything the server creates is owner-only (0600/0700); "
        "docs/security.md",
        group="storage",
    )
    orphan_grace_seconds: float = setting(
        DURATION,
        "10m",
        "stored files no record points at are removed (at start-up, and by --collect-interval) "
        "once older than this: younger ones may be another server's commit in flight; while "
        "serving, a dead process's journaled moves wait as long (its record write may land)",
        group="storage",
        flag="--orphan-grace",
    )
    expiry_rules: tuple[ExpiryRule, ...] = setting(
        Many.of(EXPIRY_RULE),
        "",
        "an operator's expiry default: assets matching every condition are removed (record and "
        "bytes) this long after they reach their state (created AVAILABLE, fulfilled or "
        "failed), once nothing holds them (a task with a PENDING promise naming them as input, "
        "a manifest within --manifest-ttl, a hold); repeat for several, the first that matches "
        f"wins; a client's TTL or SetExpiry is never replaced. Form: {RULE_SYNTAX}",
        group="storage",
        flag="--expiry-rule",
        env="EXPIRY_RULES",
    )
    retention_check_interval_seconds: float = setting(
        INTERVAL,
        "10s",
        "time between retention sweeps, which remove expired assets nothing holds (one server "
        "sweeps at a time; each removal is one conditional delete, so an asset goes once) and "
        "log a warning past --storage-warn-bytes",
        group="storage",
        flag="--retention-check-interval",
    )
    collect_interval_seconds: float = setting(
        INTERVAL,
        "10m",
        "time between collections of what nothing needs: manifest folders past "
        "--manifest-ttl, local copies of object-store inputs unused that long (or past "
        "--manifest-cache-bytes), resumable uploads past --upload-session-ttl, staging of "
        "server processes that died, and stored files no record points at (a crash between "
        "bytes and record) once older than --orphan-grace (by one server at a time); at "
        "most --retention-sweep-limit of each kind per run, the rest at the next",
        group="storage",
        flag="--collect-interval",
    )
    retention_sweep_limit: int = setting(
        POSITIVE,
        "1000",
        "expired assets one retention sweep removes at most, and what one collection removes "
        "at most of each kind (the rest wait for the next): bounds the work",
        group="storage",
    )
    storage_warn_bytes: int = setting(
        SIZE,
        "0",
        "warn (a log line each retention sweep, GetUsage over_threshold) when the assets hold "
        "more than this many bytes, e.g. 800GiB; 0: never",
        group="storage",
    )
    manifest_ttl_seconds: float = setting(
        DURATION,
        "7d",
        "how long a GetManifest folder (input_data.json under tmp/manifests) is kept, and a "
        "VALUE input's shared file (tmp/values) once no manifest uses it; swept at start-up "
        "and every --collect-interval; 0 keeps them forever",
        group="storage",
        flag="--manifest-ttl",
    )
    import_roots: tuple[Path, ...] = setting(
        Many.of(DIRECTORY),
        "",
        "folder whose files RegisterFile and FulfillAsset(source_path) may adopt; repeat for "
        "several; none means server-side paths are refused. It may not be, contain or lie "
        "inside the storage root, the database, the tokens, secret or TLS files (start-up "
        "stops, exit 2); a task token's files must lie in <import root>/<task id>/",
        group="storage",
        flag="--import-root",
        env="IMPORT_ROOTS",
    )
    allow_hardlinked_imports: bool = setting(
        BOOL,
        "false",
        "let RegisterFile/FulfillAsset adopt files with more than one hard link (a link to a "
        "file outside the import roots would otherwise be a way out)",
        group="storage",
    )
    direct_io: bool = setting(
        BOOL,
        "false",
        "write uploads to the local disk with O_DIRECT where the file system allows it (no "
        "page cache: a file read right after its upload comes from the disk); by default "
        "uploads go through the page cache with early writeback (each 8 MiB is sent to the "
        "disk as soon as it is written, the fsync before the record finds little left) and "
        "stay cached, as clean pages, for the reads that follow",
        group="storage",
    )
    # -- limits
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
    # -- telemetry
    metrics_listen: str = setting(
        METRICS_ADDRESS,
        "",
        "serve Prometheus metrics (text format) at http://HOST:PORT/metrics, e.g. "
        "0.0.0.0:9464; the port is logged at start-up. Empty: no metrics, no listener, no "
        "cost. Unauthenticated and plain HTTP: keep it on a private network. With --workers N, "
        "worker i (from 0) serves its own at PORT+i",
        group="telemetry",
    )
    # Counting is an index scan of every record (~0.1 s per million on SQLite, a COUNT_SCAN
    # per status on MongoDB): every 30 s costs well under 1% of a core and is as fresh as a
    # dashboard needs. Counting on each transition instead would need every change's
    # previous status, which the change feed does not carry.
    metrics_count_interval_seconds: float = setting(
        INTERVAL,
        "30s",
        "with --metrics-listen: time between counts of the records by status "
        "(asset_service_assets, an index scan of every record: all servers' writes)",
        group="telemetry",
        flag="--metrics-count-interval",
    )
    log_format: str = setting(
        choice("text", "json"),
        "text",
        "every log line as text, or as one JSON object (ts, level, logger, message and the "
        "line's fields) for log shippers",
        group="telemetry",
    )
    access_log: bool = setting(
        BOOL,
        "true",
        "one INFO line per call on logger asset_service.access: method, status code, "
        "duration, peer, principal, bytes in and out, and the ref of an INTERNAL error "
        "(health checks at DEBUG); --no-access-log turns them off",
        group="telemetry",
    )
    # -- security
    tls_cert: Path | None = setting(
        FILE,
        "",
        "PEM certificate chain of the server; with --tls-key serves TLS only",
        group="security",
    )
    tls_key: Path | None = setting(
        FILE, "", "PEM private key (unencrypted) of --tls-cert", group="security"
    )
    tls_client_ca: Path | None = setting(
        FILE,
        "",
        "PEM CA certificate(s): clients must present a certificate it signed (mTLS); "
        "certificate CNs map to roles in --tokens-file",
        group="security",
    )
    tokens_file: Path | None = setting(
        FILE,
        "",
        "TOML file of [[tokens]] (principal, roles, sha256 of the token) and [[certificates]] "
        "(common_name, principal, roles); makes credentials required (`asset-service token "
        "new` makes an entry). Without it (and --tls-client-ca) there is no authentication",
        group="security",
    )
    token_secret_file: Path | None = setting(
        FILE,
        "",
        "secret(s) signing task-scoped tokens (MintTaskToken), one per line, at least 32 bytes "
        "each; the first signs, all verify. Without it MintTaskToken answers "
        "FAILED_PRECONDITION",
        group="security",
    )
    reflection: str = setting(
        choice("authenticated", "open", "off"),
        "authenticated",
        "server reflection, grpc.reflection.v1 and v1alpha (grpcurl, buf curl and grpcui "
        "without .proto files, comments included): 'authenticated' needs the reader role once "
        "credentials are required, 'open' needs nothing, 'off' removes both",
        group="security",
    )
    insecure: bool = setting(
        BOOL,
        "false",
        "allow listening on a non-loopback address without TLS and authentication (e.g. "
        "behind a TLS-terminating proxy on a private network)",
        group="security",
    )


TABLE = Table(Settings, env_prefix=ENV_PREFIX, groups=GROUPS)

DESCRIPTION = (
    "Serve the Asset Service (gRPC package asset.v1): FILE assets on disk, VALUE assets "
    "inline, a PENDING -> AVAILABLE | FAILED state machine, WatchAsset streams, chunked "
    "uploads and input manifests. Health (grpc.health.v1) is always open; server reflection "
    "lets grpcurl work without .proto files. `asset-service token new --help` makes a bearer "
    "token; `asset-service health --help` asks a running server whether it is ready "
    "(container probes)."
)
EPILOG = (
    "Every setting can also be given by the environment variable named in brackets; a flag "
    "wins over its variable. Durations: 10s, 5m, 1h, 250ms, 1h30m, 7d, or a number of "
    "seconds (1.5). Sizes: 1048576, 512MiB, 1.5GiB, 10G (binary units: G = GiB). Booleans: "
    "true/false, yes/no, on/off, 1/0. Choices: any case. A bad value, from a flag or a "
    "variable, stops the server with one line naming both, exit status 2."
)


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The settings' flags (`env` is read later, by `load_settings`; kept for callers)."""
    parser = OneLineParser(
        prog="asset-service",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    TABLE.add_arguments(parser)
    return parser


def read_command_line(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    parser: argparse.ArgumentParser | None = None,
) -> Loaded[Settings]:
    """The settings and where each came from. `parser` may carry more options (the
    command's --version, --print-config); a bad value exits 2 with one line."""
    return TABLE.load(parser or build_parser(), argv, os.environ if env is None else env)


def load_settings(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    return read_command_line(argv, env).settings
