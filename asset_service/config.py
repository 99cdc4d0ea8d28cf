"""One frozen settings object, from command-line flags and ASSET_SERVICE_* variables."""

from __future__ import annotations

import argparse
import grp
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

ENV_PREFIX = "ASSET_SERVICE_"
DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_STORAGE_ROOT = "./data"
DEFAULT_MAX_UPLOAD = "10GiB"

_SIZE = re.compile(r"(?i)\s*(\d+)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib|t|tb|tib)?\s*")
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_bool(text: str) -> bool:
    """'1', 'true', 'yes', 'on' (any case) -> True; '0', 'false', 'no', 'off', '' -> False."""
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean like 1/0, true/false, yes/no")


class FromEnv(str):
    """A default read from an ASSET_SERVICE_* variable: a complaint about it names it."""

    variable = ""


def _source(text: str) -> str:
    return f" (from {text.variable})" if isinstance(text, FromEnv) else ""


def _number(kind: type[int] | type[float], text: str, *, allow_zero: bool) -> int | float:
    source = _source(text)
    try:
        number = kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r}{source} is not {what}") from None
    if number != number or number in (float("inf"), float("-inf")):  # nan, inf
        raise argparse.ArgumentTypeError(f"{text!r}{source} is not a finite number")
    if number < 0 or (number == 0 and not allow_zero):
        bound = "0 or more" if allow_zero else "greater than 0"
        raise argparse.ArgumentTypeError(f"{text!r}{source} must be {bound}")
    return number


def positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """An argparse type: a number of `kind` greater than zero (every interval and
    timeout: zero would spin a loop or end every call at once)."""

    def parse(text: str) -> int | float:
        return _number(kind, text, allow_zero=False)

    return parse


def non_negative(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """An argparse type: a number of `kind`, zero or more (where 0 has a documented meaning)."""

    def parse(text: str) -> int | float:
        return _number(kind, text, allow_zero=True)

    return parse


def parse_size(text: str) -> int:
    """'1048576', '512MiB', '10G' -> bytes (binary units)."""
    match = _SIZE.fullmatch(text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"{text!r}{_source(text)} is not a size like 1048576, 512MiB or 10G"
        )
    unit = (match.group(2) or "").lower()[:1]
    return int(match.group(1)) * _UNITS[unit]


# A delete on a full disk writes ~40 KiB of WAL, and giving the pages of a deleted VALUE
# back to the disk a few hundred KiB more (store/sqlite/_room.py): a smaller disk-full
# reserve would not see it through. 0 turns it off.
MIN_DISK_RESERVE = 1024**2


def parse_group(text: str) -> int | None:
    """--share-group: a group name or number (empty: none) -> its gid."""
    text = text.strip()
    if not text:
        return None
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        pass
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"there is no group named {text!r} on this host")


def parse_reserve(text: str) -> int:
    """--disk-reserve-bytes: 0, or a size of at least MIN_DISK_RESERVE."""
    size = parse_size(text)
    if 0 < size < MIN_DISK_RESERVE:
        raise argparse.ArgumentTypeError(
            f"{text!r} is too small to hold what a delete on a full disk writes: give at least "
            "1MiB, or 0 for no reserve"
        )
    return size


@dataclass(frozen=True)
class Settings:
    listen: str
    storage_root: Path
    database_url: str
    import_roots: tuple[Path, ...]
    max_upload_bytes: int
    log_level: str
    shutdown_grace_seconds: float
    health_interval_seconds: float
    orphan_grace_seconds: float
    manifest_ttl_seconds: float
    max_concurrent_uploads: int = 64
    max_streams_per_connection: int = 100
    upload_idle_timeout_seconds: float = 60.0
    watch_buffer_bytes: int = 4 * 1024**2
    watch_history_bytes: int = 32 * 1024**2
    watch_stall_timeout_seconds: float = 300.0
    max_concurrent_reads: int = 128
    read_stall_timeout_seconds: float = 120.0
    allow_hardlinked_imports: bool = False
    direct_io: bool = True
    max_lease_seconds: int = 86400
    lease_check_interval_seconds: float = 1.0
    storage_url: str = ""
    s3_endpoint_url: str = ""
    s3_region: str = ""
    manifest_cache_bytes: int = 10 * 1024**3
    disk_reserve_bytes: int = 4 * 1024**2
    share_group: int | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    tokens_file: Path | None = None
    token_secret_file: Path | None = None
    reflection: str = "authenticated"
    insecure: bool = False


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line and exit 2 (argparse would print the whole usage first)."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    def default(name: str, fallback: str) -> str:
        # A string default goes through the option's `type` like a typed value, so a
        # variable is checked as the flag is, and only when the flag is not given.
        raw = env.get(ENV_PREFIX + name)
        if raw is None:
            return fallback
        value = FromEnv(raw)
        value.variable = ENV_PREFIX + name
        return value

    def boolean(name: str, fallback: str) -> bool:
        try:
            return parse_bool(env.get(ENV_PREFIX + name, fallback))
        except argparse.ArgumentTypeError as exc:
            parser.error(f"{ENV_PREFIX}{name}: {exc}")

    parser = _Parser(
        prog="asset-service",
        description=(
            "Serve the Asset Service (gRPC package asset.v1): FILE assets on disk, VALUE "
            "assets inline, a PENDING -> AVAILABLE | FAILED state machine, WatchAsset "
            "streams, chunked uploads and input manifests. Health (grpc.health.v1) is always "
            "open; server reflection lets grpcurl work without .proto files. "
            "`asset-service token new --help` makes a bearer token."
        ),
        epilog=(
            "Every option can also be set by an environment variable, named in brackets; "
            "a flag wins over the variable. Storage layout under --storage-root: "
            "uploads/YYYY-MM-DD/<id>/<name>, generated/<task-id>/<id>/<name>, tmp/ "
            "(staging and manifests; keep it on the same filesystem)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--listen",
        default=default("LISTEN", DEFAULT_LISTEN),
        help="host:port to serve on; port 0 picks a free port (logged at start-up) "
        "[ASSET_SERVICE_LISTEN]",
    )
    parser.add_argument(
        "--storage-root",
        default=default("STORAGE_ROOT", DEFAULT_STORAGE_ROOT),
        help="folder holding every stored file (created if missing) [ASSET_SERVICE_STORAGE_ROOT]",
    )
    parser.add_argument(
        "--database-url",
        default=env.get(ENV_PREFIX + "DATABASE_URL"),
        help="metadata store: sqlite:///abs/path.db (embedded), mongodb://host/db?replicaSet=rs "
        "(production) or memory:// (in this process only, lost on exit: tests and demos) "
        "(default: sqlite:///<storage-root>/assets.db) [ASSET_SERVICE_DATABASE_URL]",
    )
    parser.add_argument(
        "--import-root",
        action="append",
        dest="import_roots",
        metavar="DIR",
        help="folder whose files RegisterFile and FulfillAsset(source_path) may adopt; "
        "repeat for several; none means server-side paths are refused. It may not be, "
        "contain or lie inside the storage root, the database, the tokens, secret or TLS "
        "files (start-up stops, exit 2); a task token's files must lie in "
        "<import root>/<task id>/ "
        f"[ASSET_SERVICE_IMPORT_ROOTS, separated by '{os.pathsep}']",
    )
    parser.add_argument(
        "--max-upload-bytes",
        type=parse_size,
        default=default("MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD),
        help="largest accepted upload, e.g. 512MiB or 10G [ASSET_SERVICE_MAX_UPLOAD_BYTES]",
    )
    parser.add_argument(
        "--log-level",
        default=default("LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="logging threshold [ASSET_SERVICE_LOG_LEVEL]",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=positive(float),
        default=default("SHUTDOWN_GRACE", "10"),
        help="on SIGTERM/SIGINT health answers NOT_SERVING at once, and calls in flight get "
        "this many seconds to finish while the server still listens (new calls too, until "
        "load balancers notice); then it closes, ending what is left. The process exits "
        "within this plus a few seconds, whatever is stuck [ASSET_SERVICE_SHUTDOWN_GRACE]",
    )
    parser.add_argument(
        "--health-interval",
        type=positive(float),
        default=default("HEALTH_INTERVAL", "2"),
        help="seconds between database reachability checks behind grpc.health.v1 "
        "[ASSET_SERVICE_HEALTH_INTERVAL]",
    )
    parser.add_argument(
        "--orphan-grace",
        type=non_negative(float),
        default=default("ORPHAN_GRACE", "600"),
        help="at start-up, stored files no record points at are removed once older than this "
        "many seconds (younger ones may be another server's commit in flight) "
        "[ASSET_SERVICE_ORPHAN_GRACE]",
    )
    parser.add_argument(
        "--manifest-ttl",
        type=non_negative(float),
        default=default("MANIFEST_TTL", str(7 * 24 * 3600)),
        help="seconds a GetManifest folder (input_data.json under tmp/manifests) is kept, and a "
        "VALUE input's shared file (tmp/values) once no manifest uses it; swept at start-up "
        "and hourly; 0 keeps them forever [ASSET_SERVICE_MANIFEST_TTL]",
    )
    parser.add_argument(
        "--max-lease-seconds",
        type=positive(int),
        default=default("MAX_LEASE_SECONDS", "86400"),
        help="longest lease a promise may be created or renewed with (CreatePendingAsset / "
        "RenewLease lease_seconds); a task that runs longer renews a shorter lease "
        "[ASSET_SERVICE_MAX_LEASE_SECONDS]",
    )
    parser.add_argument(
        "--lease-check-interval",
        type=positive(float),
        default=default("LEASE_CHECK_INTERVAL", "1"),
        help="seconds between sweeps that fail PENDING assets whose lease ran out: such an "
        "asset becomes FAILED at most this long after its lease_expire_time "
        "[ASSET_SERVICE_LEASE_CHECK_INTERVAL]",
    )
    limits = parser.add_argument_group(
        "limits",
        "what one client may hold; over a limit a call gets RESOURCE_EXHAUSTED "
        "(or DEADLINE_EXCEEDED / UNAVAILABLE for a silent peer) naming the setting",
    )
    limits.add_argument(
        "--max-concurrent-uploads",
        type=positive(int),
        default=default("MAX_CONCURRENT_UPLOADS", "64"),
        help="UploadAsset streams in progress at once, over all clients; one more is refused "
        "[ASSET_SERVICE_MAX_CONCURRENT_UPLOADS]",
    )
    limits.add_argument(
        "--max-streams-per-connection",
        type=positive(int),
        default=default("MAX_STREAMS_PER_CONNECTION", "100"),
        help="concurrent calls on one HTTP/2 connection (SETTINGS_MAX_CONCURRENT_STREAMS); "
        "further calls wait for a free stream [ASSET_SERVICE_MAX_STREAMS_PER_CONNECTION]",
    )
    limits.add_argument(
        "--upload-idle-timeout",
        type=positive(float),
        default=default("UPLOAD_IDLE_TIMEOUT", "60"),
        help="seconds an upload may wait for its next message before it is cancelled and its "
        "staging file removed [ASSET_SERVICE_UPLOAD_IDLE_TIMEOUT]",
    )
    limits.add_argument(
        "--watch-buffer-bytes",
        type=parse_size,
        default=default("WATCH_BUFFER_BYTES", "4MiB"),
        help="changes buffered for one slow WatchAsset stream; past it the buffer is dropped "
        "and the stream catches up from the store [ASSET_SERVICE_WATCH_BUFFER_BYTES]",
    )
    limits.add_argument(
        "--watch-history-bytes",
        type=parse_size,
        default=default("WATCH_HISTORY_BYTES", "32MiB"),
        help="latest changes kept (records without values, ~1 KiB each) so that selector "
        "watches can resume from a revision; an older one is refused with OUT_OF_RANGE and "
        "the client lists again [ASSET_SERVICE_WATCH_HISTORY_BYTES]",
    )
    limits.add_argument(
        "--watch-stall-timeout",
        type=positive(float),
        default=default("WATCH_STALL_TIMEOUT", "300"),
        help="seconds a WatchAsset stream may stay blocked on a client that does not read "
        "(its flow-control window full, a few MiB of events in flight) before the stream ends "
        "with UNAVAILABLE (checked every quarter of it, at most every 5 s); clients resume "
        "from their last revision [ASSET_SERVICE_WATCH_STALL_TIMEOUT]",
    )
    limits.add_argument(
        "--max-concurrent-reads",
        type=positive(int),
        default=default("MAX_CONCURRENT_READS", "128"),
        help="ReadAsset streams in progress at once, over all clients (each holds an open "
        "file and up to a few MiB while its client is slow); one more is refused "
        "[ASSET_SERVICE_MAX_CONCURRENT_READS]",
    )
    limits.add_argument(
        "--read-stall-timeout",
        type=positive(float),
        default=default("READ_STALL_TIMEOUT", "120"),
        help="seconds a ReadAsset stream may stay blocked on a client that does not read (its "
        "flow-control window full) before the stream ends with UNAVAILABLE naming the offset "
        "to resume from (checked every quarter of it, at most every 5 s) "
        "[ASSET_SERVICE_READ_STALL_TIMEOUT]",
    )
    parser.add_argument(
        "--direct-io",
        action=argparse.BooleanOptionalAction,
        default=boolean("DIRECT_IO", "1"),
        help="write uploads to the local disk with O_DIRECT where the file system allows it "
        "(less CPU per byte, no page-cache churn; a file read right after its upload comes "
        "from the disk once); --no-direct-io writes through the page cache "
        "[ASSET_SERVICE_DIRECT_IO]",
    )
    parser.add_argument(
        "--storage-url",
        default=default("STORAGE_URL", ""),
        help="where FILE bytes live: empty for the local disk under --storage-root, or "
        "s3://bucket/prefix for an S3-compatible object store (credentials from the standard "
        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY variables; --storage-root then keeps only "
        "local state: move journals, manifests and their input cache) "
        "[ASSET_SERVICE_STORAGE_URL]",
    )
    parser.add_argument(
        "--s3-endpoint-url",
        default=default("S3_ENDPOINT_URL", ""),
        help="object store endpoint, e.g. http://127.0.0.1:9000 for MinIO (default: "
        "AWS_ENDPOINT_URL, else AWS S3) [ASSET_SERVICE_S3_ENDPOINT_URL]",
    )
    parser.add_argument(
        "--s3-region",
        default=default("S3_REGION", ""),
        help="object store region (default: AWS_REGION, else us-east-1) [ASSET_SERVICE_S3_REGION]",
    )
    parser.add_argument(
        "--manifest-cache-bytes",
        type=parse_size,
        default=default("MANIFEST_CACHE_BYTES", "10GiB"),
        help="with an object store: local copies of manifest inputs kept (least recently "
        "used go first) [ASSET_SERVICE_MANIFEST_CACHE_BYTES]",
    )
    parser.add_argument(
        "--disk-reserve-bytes",
        type=parse_reserve,
        default=parse_reserve(default("DISK_RESERVE_BYTES", "4MiB")),
        help="with SQLite: space kept in a file beside the database (<database>.reserve) and "
        "given back when its disk is full, so that DeleteAsset still works; until it can be "
        "re-created, every write but DeleteAsset is refused (RESOURCE_EXHAUSTED). At least "
        "1MiB and at most half the disk (a smaller disk refuses to start); 0 turns it off "
        "(DeleteAsset may then fail on a full disk) [ASSET_SERVICE_DISK_RESERVE_BYTES]",
    )
    parser.add_argument(
        "--share-group",
        type=parse_group,
        default=parse_group(default("SHARE_GROUP", "")),
        metavar="GROUP",
        help="let this group (name or number) read stored files, manifests and the VALUE "
        "files they name by path (workers on this host): those become group-readable (files "
        "0640, folders 0750) and owned by the group; the database, staging and journals stay "
        "owner-only. Without it everything the server creates is owner-only (0600/0700) "
        "[ASSET_SERVICE_SHARE_GROUP]",
    )
    parser.add_argument(
        "--allow-hardlinked-imports",
        action=argparse.BooleanOptionalAction,
        default=boolean("ALLOW_HARDLINKED_IMPORTS", "0"),
        help="let RegisterFile/FulfillAsset adopt files with more than one hard link (a link "
        "to a file outside the import roots would otherwise be a way out) "
        "[ASSET_SERVICE_ALLOW_HARDLINKED_IMPORTS]",
    )
    security = parser.add_argument_group(
        "security",
        "TLS, mTLS and bearer tokens with roles (docs/security.md); files are re-read on "
        "SIGHUP, certificates also when they change. Without any, the server is "
        "unauthenticated and refuses to listen beyond loopback unless --insecure is given",
    )
    security.add_argument(
        "--tls-cert",
        default=default("TLS_CERT", ""),
        metavar="FILE",
        help="PEM certificate chain of the server; with --tls-key serves TLS only "
        "[ASSET_SERVICE_TLS_CERT]",
    )
    security.add_argument(
        "--tls-key",
        default=default("TLS_KEY", ""),
        metavar="FILE",
        help="PEM private key (unencrypted) of --tls-cert [ASSET_SERVICE_TLS_KEY]",
    )
    security.add_argument(
        "--tls-client-ca",
        default=default("TLS_CLIENT_CA", ""),
        metavar="FILE",
        help="PEM CA certificate(s): clients must present a certificate it signed (mTLS); "
        "certificate CNs map to roles in --tokens-file [ASSET_SERVICE_TLS_CLIENT_CA]",
    )
    security.add_argument(
        "--tokens-file",
        default=default("TOKENS_FILE", ""),
        metavar="FILE",
        help="TOML file of [[tokens]] (principal, roles, sha256 of the token) and "
        "[[certificates]] (common_name, principal, roles); makes credentials required "
        "(`asset-service token new` makes an entry) [ASSET_SERVICE_TOKENS_FILE]",
    )
    security.add_argument(
        "--token-secret-file",
        default=default("TOKEN_SECRET_FILE", ""),
        metavar="FILE",
        help="secret(s) signing task-scoped tokens (MintTaskToken), one per line, at least "
        "32 bytes each; the first signs, all verify [ASSET_SERVICE_TOKEN_SECRET_FILE]",
    )
    security.add_argument(
        "--reflection",
        default=default("REFLECTION", "authenticated"),
        choices=["authenticated", "open", "off"],
        help="server reflection (grpcurl without .proto files): 'authenticated' needs the "
        "reader role once credentials are required, 'open' needs nothing, 'off' removes it "
        "[ASSET_SERVICE_REFLECTION]",
    )
    security.add_argument(
        "--insecure",
        action=argparse.BooleanOptionalAction,
        default=boolean("INSECURE", "0"),
        help="allow listening on a non-loopback address without TLS and authentication "
        "(e.g. behind a TLS-terminating proxy on a private network) [ASSET_SERVICE_INSECURE]",
    )
    return parser


def _path(raw: str) -> Path | None:
    return Path(raw).expanduser().resolve() if raw else None


def load_settings(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    env = os.environ if env is None else env
    args = build_parser(env).parse_args(argv)
    root = Path(args.storage_root).expanduser().resolve()
    roots_raw = args.import_roots
    if roots_raw is None:
        roots_raw = [p for p in env.get(ENV_PREFIX + "IMPORT_ROOTS", "").split(os.pathsep) if p]
    return Settings(
        listen=args.listen,
        storage_root=root,
        database_url=args.database_url or f"sqlite:///{root / 'assets.db'}",
        import_roots=tuple(Path(p).expanduser().resolve() for p in roots_raw),
        max_upload_bytes=args.max_upload_bytes,
        log_level=args.log_level,
        shutdown_grace_seconds=args.shutdown_grace,
        health_interval_seconds=args.health_interval,
        orphan_grace_seconds=args.orphan_grace,
        manifest_ttl_seconds=args.manifest_ttl,
        max_concurrent_uploads=args.max_concurrent_uploads,
        max_streams_per_connection=args.max_streams_per_connection,
        upload_idle_timeout_seconds=args.upload_idle_timeout,
        watch_buffer_bytes=args.watch_buffer_bytes,
        watch_history_bytes=args.watch_history_bytes,
        watch_stall_timeout_seconds=args.watch_stall_timeout,
        max_concurrent_reads=args.max_concurrent_reads,
        read_stall_timeout_seconds=args.read_stall_timeout,
        allow_hardlinked_imports=args.allow_hardlinked_imports,
        direct_io=args.direct_io,
        max_lease_seconds=args.max_lease_seconds,
        lease_check_interval_seconds=args.lease_check_interval,
        storage_url=args.storage_url,
        s3_endpoint_url=args.s3_endpoint_url,
        s3_region=args.s3_region,
        manifest_cache_bytes=args.manifest_cache_bytes,
        disk_reserve_bytes=args.disk_reserve_bytes,
        share_group=args.share_group,
        tls_cert=_path(args.tls_cert),
        tls_key=_path(args.tls_key),
        tls_client_ca=_path(args.tls_client_ca),
        tokens_file=_path(args.tokens_file),
        token_secret_file=_path(args.token_secret_file),
        reflection=args.reflection,
        insecure=args.insecure,
    )
