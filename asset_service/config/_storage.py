"""Storage settings: where records and bytes live, what is kept how long, what may be adopted."""

from __future__ import annotations

from argparse import ArgumentTypeError
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asset_service.config._kinds import INTERVAL, POSITIVE
from asset_service.domain.retention import RULE_SYNTAX, ExpiryRule, parse_rule
from asset_service.options import (
    BOOL,
    DIRECTORY,
    DURATION,
    GROUP,
    NUMBER,
    REGION,
    SIZE,
    Kind,
    Many,
    setting,
    show_duration,
    url,
)

# A delete on a full disk writes ~40 KiB of WAL, and giving the pages of a deleted VALUE
# back to the disk a few hundred KiB more (store/sqlite/_room.py): a smaller disk-full
# reserve would not see it through. 0 turns it off.
MIN_DISK_RESERVE = 1024**2


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


def _default_database(values: Mapping[str, Any]) -> str:
    return f"sqlite:///{values['storage_root'] / 'assets.db'}"


@dataclass(frozen=True)
class StorageSettings:
    """The "storage" group: records, bytes, expiry, collection, server-side files."""

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
        "metadata store: sqlite:////abs/path.db (embedded; the path is absolute either way: "
        "sqlite:///srv/a.db is /srv/a.db), mongodb://host/db?replicaSet=rs "
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
