"""The grpc.aio server: AssetService, health, reflection, graceful shutdown."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import threading
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from asset_service import allocator, loops
from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service.api import reflection, wire
from asset_service.api.inflight import InFlight
from asset_service.api.interceptor import security_interceptor
from asset_service.api.registration import SERVICE_NAME, GenericOnly, add_asset_service
from asset_service.api.servicer import AssetServicer
from asset_service.config import Settings
from asset_service.domain.errors import AssetError, InvalidArgument
from asset_service.domain.manager import AssetManager, Limits
from asset_service.domain.ports import BlobStorage, MetadataStore
from asset_service.modes import Modes
from asset_service.options import mask_url
from asset_service.probes import Probes
from asset_service.security.setup import Security
from asset_service.storage.file_cache import FileCache
from asset_service.storage.imports import ImportRoots
from asset_service.storage.local import LocalStorage
from asset_service.storage.manifests import LocalManifests
from asset_service.storage.own_files import OwnFiles
from asset_service.store import open_store, sqlite_path
from asset_service.store.sqlite._shared import Sharing
from asset_service.telemetry import Telemetry
from asset_service.worker import WorkerRole

log = logging.getLogger(__name__)

SERVER_OPTIONS = [
    *wire.MESSAGE_LIMITS,
    # Long WatchAsset streams cross proxies and NATs: ping idle connections.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # grpc sets SO_REUSEPORT by default, so a second server on a busy port would start and
    # silently take half the connections; without it, binding fails and start-up says so.
    ("grpc.so_reuseport", 0),
    # grpc's server counts streams it has not freed yet (calls already ended) against
    # --max-streams-per-connection and refuses new ones with REFUSED_STREAM, which clients
    # see as UNAVAILABLE: 150 quick calls at once on one connection had ~15% refused. Off,
    # the limit is HTTP/2's own and further calls wait for a free stream, as --help says.
    ("grpc.http.overload_protection", 0),
]


# What a stop gives each step after the drain (background tasks, closing the listener,
# the manager's own close), so that a stop ends within its grace plus a few seconds
# whatever does not cooperate; past them it logs what it gave up on and goes on.
STOP_STEP_SECONDS = 2.0


async def _bounded(what: str, awaitable: Awaitable[object], seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await awaitable
    except TimeoutError:
        log.warning("stop: gave up waiting for %s after %.1fs", what, seconds)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    manager: AssetManager
    probes: Probes
    port: int
    background: list[asyncio.Task[None]]
    security: Security
    in_flight: InFlight = field(default_factory=InFlight)
    telemetry: Telemetry = field(default_factory=Telemetry)

    async def stop(self, grace: float) -> None:
        """Readiness NOT_SERVING first; calls in flight get `grace` to end while the server
        still listens (probes get answers, not "connection refused"; liveness stays SERVING,
        probes.py says why); then every name NOT_SERVING, and it closes.

        Every await is bounded: a task that ignores cancellation, a call that never ends
        or a store that does not close delays the stop by at most STOP_STEP_SECONDS each.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        # Readiness answers NOT_SERVING from now on, whatever the checks find later.
        await self.probes.drain()
        for task in self.background:
            task.cancel()
        if self.background:
            await _bounded("background tasks", asyncio.wait(self.background), STOP_STEP_SECONDS)
        if not self.in_flight.is_idle():
            log.info(
                "stop: %d call(s) in flight get up to %.1fs to finish",
                self.in_flight.count,
                grace,
            )
            try:
                async with asyncio.timeout_at(deadline):
                    await self.in_flight.wait_idle()
            except TimeoutError:
                log.info(
                    "stop: grace over; ending %d call(s) still in flight", self.in_flight.count
                )
        # Calls still running now are cancelled at once (watches resume elsewhere);
        # ones that came in since the drain ended get what is left of a short grace.
        close_grace = min(max(0.0, deadline - loop.time()), STOP_STEP_SECONDS / 2)
        self.telemetry.stopping.now = True  # what is cut now ends UNAVAILABLE for its client
        await self.probes.close()
        await _bounded("the listener to close", self.server.stop(close_grace), STOP_STEP_SECONDS)
        await _bounded("the store and storage to close", self.manager.stop(), STOP_STEP_SECONDS)
        await _bounded("metrics and traces to close", self.telemetry.close(), STOP_STEP_SECONDS)


def _refuse_a_busy_port(listen: str) -> None:
    """Before anything is opened or created, a port another process listens on stops
    start-up: an accidental second server given a new --storage-root left that folder
    behind, a database and its reserve in it. grpc's own bind still decides later."""
    host, _, port = listen.rpartition(":")
    if listen.startswith(("unix:", "unix-abstract:")) or not port.isdigit() or port == "0":
        return
    try:
        with socket.create_server((host.strip("[]") or "0.0.0.0", int(port))):
            pass
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise AssetError(_listen_error(listen, RuntimeError(str(exc)))) from None


def _listen_error(listen: str, exc: RuntimeError) -> str:
    """Why grpc could not bind `listen` (it only says "Failed to bind"), and what to do."""
    host, _, port = listen.rpartition(":")
    try:
        with socket.create_server((host.strip("[]") or "0.0.0.0", int(port))):
            pass
    except OSError as probe:
        if probe.errno == errno.EADDRINUSE:
            return (
                f"address {listen} is in use: is another asset-service running? "
                "choose another --listen (or ASSET_SERVICE_LISTEN)"
            )
        return f"cannot listen on {listen}: {probe.strerror}; choose another --listen"
    except ValueError:
        return f"cannot listen on {listen}: expected HOST:PORT, e.g. 127.0.0.1:50051"
    return f"cannot listen on {listen}: {exc}"


# The files SQLite keeps beside its database (journals, shared memory) and ours (the
# single-server lock, the disk-full reserve).
DATABASE_SIBLINGS = ("-wal", "-shm", "-journal", ".lock", ".reserve", ".writer", ".sweep")


def own_files(settings: Settings) -> OwnFiles:
    """The server's own files, which no import root may hold and no server-side path reach."""
    files: list[tuple[str, Path]] = []
    database = sqlite_path(settings.database_url)
    if database is not None:
        database = database.expanduser().resolve()
        files.append(("database", database))
        files += [
            ("database file", database.with_name(database.name + s)) for s in DATABASE_SIBLINGS
        ]
    named = (
        ("tokens file", settings.tokens_file),
        ("token secret file", settings.token_secret_file),
        ("TLS certificate", settings.tls_cert),
        ("TLS key", settings.tls_key),
        ("TLS client CA", settings.tls_client_ca),
    )
    files += [(what, path) for what, path in named if path is not None]
    return OwnFiles(settings.storage_root, tuple(files))


def open_storage(settings: Settings) -> tuple[BlobStorage, LocalManifests]:
    """The blob storage --storage-url names (local disk by default) and its manifests."""
    imports = ImportRoots(
        settings.import_roots, settings.allow_hardlinked_imports, own_files(settings)
    )
    root = settings.storage_root
    modes = Modes(settings.share_group)
    if not settings.storage_url:
        return (
            LocalStorage(root, settings.orphan_grace_seconds, imports, settings.direct_io, modes),
            LocalManifests(root, modes=modes),
        )
    if not settings.storage_url.startswith("s3://"):
        raise InvalidArgument(
            f"--storage-url {settings.storage_url!r} is not supported: leave it empty for the "
            "local disk, or give s3://bucket/prefix"
        )
    from asset_service.storage.s3 import S3Storage  # the object-store client loads only here

    storage = S3Storage(
        settings.storage_url,
        root / "tmp" / "s3-state",
        settings.orphan_grace_seconds,
        imports,
        endpoint_url=settings.s3_endpoint_url or None,
        region=settings.s3_region or None,
        modes=modes,
    )
    cache = FileCache(root / "tmp" / "cache", storage, settings.manifest_cache_bytes, modes)
    return storage, LocalManifests(root, cache, modes)


async def start(
    settings: Settings,
    store: MetadataStore | None = None,
    *,
    telemetry: Telemetry | None = None,
    role: WorkerRole | None = None,
) -> RunningServer:
    """Open storage and store, recover, and serve; `store` overrides the database URL,
    `telemetry` what the settings and OTEL_* variables ask for.

    As one `role` of several workers (supervisor.py) it listens with SO_REUSEPORT on the
    port its supervisor reserved, and shares a SQLite database with the others."""
    # Security files first: a mistake there stops start-up before anything is opened.
    security = Security(settings)
    security.check_listen()
    if role is None:  # workers share the port their supervisor reserved
        _refuse_a_busy_port(settings.listen)
    own_files(settings).check_import_roots(settings.import_roots)
    telemetry = telemetry or Telemetry.from_settings(settings)
    if store is None:
        sharing = Sharing(role.index, role.wakeups) if role and role.wakeups else None
        store = open_store(
            settings.database_url,
            settings.disk_reserve_bytes,
            telemetry.group_commits,
            mongo_write_queue=settings.mongo_write_queue,
            orphan_grace_seconds=settings.orphan_grace_seconds,
            sharing=sharing,
        )
    storage, manifests = open_storage(settings)
    store = telemetry.observe(store, "store")
    storage = telemetry.observe(storage, "storage")
    limits = Limits(
        max_upload_bytes=settings.max_upload_bytes,
        manifest_ttl_seconds=settings.manifest_ttl_seconds,
        watch_buffer_bytes=settings.watch_buffer_bytes,
        watch_history_bytes=settings.watch_history_bytes,
        watch_tombstone_ttl_seconds=settings.watch_tombstone_ttl_seconds,
        max_lease_seconds=settings.max_lease_seconds,
        upload_session_ttl_seconds=settings.upload_session_ttl_seconds,
        expiry_rules=settings.expiry_rules,
        retention_sweep_limit=settings.retention_sweep_limit,
        storage_warn_bytes=settings.storage_warn_bytes,
    )
    manager = AssetManager(store, storage, limits, manifests)
    if telemetry.recorder.enabled:
        manager.hub.on_publish = telemetry.recorder.change_published
    await manager.start()

    # Over the limit, HTTP/2 makes a client's further calls on that connection wait for a
    # free stream: one connection cannot open calls without bound.
    options = [
        *SERVER_OPTIONS,
        ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
    ]
    if role is not None:  # the supervisor holds the port for its workers only
        options = [o for o in options if o[0] != "grpc.so_reuseport"]
        options.append(("grpc.so_reuseport", 1))
    interceptor = security_interceptor(security, manager)
    # Without security the interceptor does the same for every call of a method: that is
    # done once at registration instead, and calls skip grpc's interceptor chain (health
    # and reflection, open on such a server, never needed it).
    anonymous = interceptor if interceptor.anonymous else None
    # Telemetry's interceptors come first: the span and the access line of a call cover
    # what the security interceptor does, refusals included. Alone, the call observer is
    # applied at registration too (`registry`), and calls skip the chain altogether.
    chain, observer = telemetry.chain(more=anonymous is None)
    server = grpc.aio.server(
        options=options,
        interceptors=[*chain, *([] if anonymous is not None else [interceptor])],
    )
    # Services are added as generic handlers only (GenericOnly says why).
    registry: Any = GenericOnly(server)
    if observer is not None:
        registry = observer.registering(registry)
    servicer = AssetServicer(
        manager,
        max_concurrent_uploads=settings.max_concurrent_uploads,
        upload_idle_timeout_seconds=settings.upload_idle_timeout_seconds,
        watch_stall_timeout_seconds=settings.watch_stall_timeout_seconds,
        max_concurrent_reads=settings.max_concurrent_reads,
        read_stall_timeout_seconds=settings.read_stall_timeout_seconds,
        task_tokens=security.task_tokens,
        recorder=telemetry.recorder,
    )
    add_asset_service(servicer, registry, anonymous)
    telemetry.prepare(pb.DESCRIPTOR.services_by_name["AssetService"])
    probes = Probes(
        [("database", manager.store.ping), ("storage", manager.storage.ping)],
        settings.health_interval_seconds,
    )
    health_pb2_grpc.add_HealthServicer_to_server(probes.servicer, registry)
    if settings.reflection != "off":
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME), registry)
    await probes.start()
    try:
        port = security.add_port(server)
    except RuntimeError as exc:
        await manager.stop()
        raise AssetError(_listen_error(settings.listen, exc)) from exc
    try:
        metrics_tasks = telemetry.serve_metrics(servicer, probes, manager)
    except AssetError:
        await manager.stop()
        raise
    await server.start()
    background = [
        asyncio.create_task(probes.run()),
        *loops.start(manager, settings, telemetry.recorder, scrubs=role is None or role.index == 0),
        *metrics_tasks,
    ]
    return RunningServer(
        server, manager, probes, port, background, security, servicer.in_flight, telemetry
    )


async def serve(settings: Settings, role: WorkerRole | None = None) -> None:
    allocator.keep_chunk_buffers()  # ReadAsset/UploadAsset: no page faults per chunk
    running = await start(settings, role=role)
    allocator.settle_heap()  # a fan-out's writes in flight are not traversed again and again
    running.security.describe(running.port)
    # Before the line that says the server is up: a SIGTERM sent as soon as it is read
    # (an orchestrator, a test) then stops the server gracefully instead of killing it.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, running.security.reload)
    host = settings.listen.rsplit(":", 1)[0]
    log.info(
        "%s on %s:%d (storage %s, database %s)",
        f"{role.name} (pid {os.getpid()}) serving" if role else "asset-service listening",
        host,
        running.port,
        settings.storage_root,
        shown_database(settings.database_url),
    )
    if role is not None:
        role.ready()  # the supervisor says "listening" once every worker is
    await stop.wait()
    grace = settings.shutdown_grace_seconds
    log.info("shutting down (grace %.1fs)", grace)
    began = loop.time()
    ends = began + grace

    def again() -> None:
        # Not a harder stop: with --workers a worker may get each stop twice (from its
        # supervisor, and from the terminal's Ctrl-C or a service manager's SIGTERM to the
        # whole group; `timeout` sends its SIGTERM twice too). Such a copy comes within
        # moments of the first and says nothing; an operator's second signal is answered.
        if loop.time() - began < DUPLICATE_SIGNAL_SECONDS:
            return
        log.info(
            "already stopping: %d call(s) in flight get up to %.1fs more; SIGKILL ends them now",
            running.in_flight.count,
            max(0.0, ends - loop.time()),
        )

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, again)
    exit_if_stuck(grace + HARD_STOP_SLACK)
    await running.stop(grace)
    log.info("stopped")


def shown_database(url: str) -> str:
    """The database as start-up names it: SQLite's file as the absolute path it opens
    (sqlite:///data/assets.db is /data/assets.db, not ./data), other URLs masked."""
    path = sqlite_path(url)
    if path is not None:
        return f"{path.expanduser().resolve()} (SQLite)"
    return mask_url(url)


# A stop signal this soon after the first is the same stop delivered twice.
DUPLICATE_SIGNAL_SECONDS = 1.0

# Past its grace plus this, a stop ends the process whatever still runs: after serve()
# returns, asyncio.run waits without a bound for tasks that ignore cancellation and
# for threads stuck in I/O (a hung disk or network file system).
HARD_STOP_SLACK = 10.0


def exit_if_stuck(seconds: float) -> threading.Timer:
    """Start a timer that ends the process with status 1 if it still runs in `seconds`."""

    def stuck() -> None:
        log.error("the stop did not finish within %.1fs; exiting without waiting further", seconds)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(1)

    timer = threading.Timer(seconds, stuck)
    timer.daemon = True  # it never keeps a finished process alive
    timer.start()
    return timer
