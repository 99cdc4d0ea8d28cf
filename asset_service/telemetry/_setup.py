"""What the server reports, as its settings and the OTEL_* variables ask: the pieces it wires in."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, TypeVar, cast

from asset_service.config import Settings
from asset_service.domain.errors import AssetError
from asset_service.telemetry._calls import CallObserver, Stopping
from asset_service.telemetry._recorder import NO_RECORDER, Recorder

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Telemetry:
    """Metrics (prometheus_client), traces (OpenTelemetry) and the access log, each
    loaded only when asked for: with none of them, no interceptor runs, no proxy wraps the
    store, the recorder does nothing and neither library is imported."""

    recorder: Recorder = NO_RECORDER
    metrics: Any = None  # telemetry._metrics.Metrics
    tracing: Any = None  # telemetry._tracing.Tracing
    access_log: bool = False
    metrics_listen: str = ""
    count_interval: float = 30.0
    metrics_port: int | None = None
    observer: CallObserver | None = None
    stopping: Stopping = field(default_factory=Stopping)
    _http: Any = field(default=None, repr=False)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        env: Mapping[str, str] | None = None,
        *,
        tracer_provider: Any = None,
    ) -> Telemetry:
        """`tracer_provider` replaces the one OTEL_* would make (tests: in-memory spans)."""
        env = os.environ if env is None else env
        telemetry = cls(
            access_log=settings.access_log,
            metrics_listen=settings.metrics_listen,
            count_interval=settings.metrics_count_interval_seconds,
        )
        if settings.metrics_listen:
            from asset_service.telemetry._metrics import Metrics, MetricsRecorder

            telemetry.metrics = Metrics()
            telemetry.recorder = MetricsRecorder(telemetry.metrics)
        if tracer_provider is not None or _tracing_wanted(env):
            from asset_service import __version__
            from asset_service.telemetry import _tracing

            provider = tracer_provider or _tracing.provider_from_env(env, __version__)
            telemetry.tracing = _tracing.Tracing(provider)
            telemetry.tracing.interceptor.stopping = telemetry.stopping
        if telemetry.metrics is not None or telemetry.access_log:
            telemetry.observer = CallObserver(
                telemetry.metrics, telemetry.access_log, telemetry.stopping
            )
        return telemetry

    @property
    def interceptors(self) -> list[Any]:
        """First in the server's chain: a span around everything, then the call observer
        (so that calls the security interceptor refuses are counted and logged too)."""
        chain: list[Any] = []
        if self.tracing is not None:
            chain.append(self.tracing.interceptor)
        if self.observer is not None:
            chain.append(self.observer)
        return chain

    def chain(self, more: bool) -> tuple[list[Any], CallObserver | None]:
        """The server's interceptors, and the call observer if it is to be applied where
        handlers are registered instead (CallObserver.registering). With no other
        interceptor (`more`: the security interceptor follows) and no tracing, the observer
        would be the only one: wrapping each handler once then spares every call grpc's
        interceptor chain, and what is observed is the same."""
        if more or self.tracing is not None or self.observer is None:
            return self.interceptors, None
        return [], self.observer

    @property
    def group_commits(self) -> Any:
        """What the store's writer tells each group transaction's size (None: nothing)."""
        return self.recorder.group_commit if self.recorder.enabled else None

    def observe(self, port: T, component: str) -> T:
        """`port` (the store or the storage) timed and traced, or itself when neither is on."""
        if self.metrics is None and self.tracing is None:
            return port
        from asset_service.telemetry._ports import Observed

        seconds = None
        if self.metrics is not None:
            seconds = (
                self.metrics.store_seconds if component == "store" else self.metrics.storage_seconds
            )
        return cast(T, Observed(port, component, seconds, self.tracing))

    def prepare(self, service: Any) -> None:
        """Series for every method of `service` (a ServiceDescriptor) at zero from the start,
        so that rate() sees a method's first calls."""
        if self.observer is not None:
            self.observer.prepare(service)

    def serve_metrics(self, calls: Any, probes: Any, manager: Any) -> list[asyncio.Task[None]]:
        """Start the /metrics listener (a thread of prometheus_client's) and the count of
        assets by status; the tasks to cancel at the stop."""
        if self.metrics is None:
            return []
        from prometheus_client import start_http_server

        from asset_service.telemetry._state import (
            AssetCounts,
            StateCollector,
            count_assets_forever,
        )

        self.metrics.build.info(build_info())
        counts = AssetCounts()
        self.metrics.registry.register(StateCollector(calls, probes, manager.scrubber, counts))
        host, _, port = self.metrics_listen.rpartition(":")
        try:
            self._http, _ = start_http_server(int(port), host.strip("[]"), self.metrics.registry)
        except OSError as exc:
            raise AssetError(
                f"cannot serve metrics on {self.metrics_listen}: {exc.strerror or exc}; choose "
                "another --metrics-listen (or ASSET_SERVICE_METRICS_LISTEN)"
            ) from exc
        self.metrics_port = int(self._http.server_port)
        log.info("metrics at http://%s:%d/metrics", host or "0.0.0.0", self.metrics_port)
        counting = count_assets_forever(manager.store, counts, self.count_interval)
        return [asyncio.create_task(counting)]

    async def close(self) -> None:
        """Stop the listener; export the spans still buffered. Both block, so each runs in
        a daemon thread: a collector that does not answer (the exporter waits up to
        OTEL_EXPORTER_OTLP_TIMEOUT) delays the stop only as long as the caller waits, and
        never the process's exit."""
        http, self._http = self._http, None
        if http is not None:
            await _in_daemon_thread(lambda: _stop_http(http))
        tracing, self.tracing = self.tracing, None
        if tracing is not None:
            await _in_daemon_thread(tracing.shutdown)


def build_info() -> dict[str, str]:
    """The versions of what serves the calls (asset_service_build_info's labels)."""
    from asset_service import __version__

    info = {"version": __version__}
    with contextlib.suppress(metadata.PackageNotFoundError):
        info["version"] = metadata.version("asset-service")
    for package in ("grpcio", "protobuf"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info[package] = metadata.version(package)
    info["python"] = platform.python_version()
    return info


async def _in_daemon_thread(work: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def run() -> None:
        try:
            work()
        except Exception:
            log.exception("closing metrics or traces failed")
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(_settle, done)

    threading.Thread(target=run, name="telemetry-close", daemon=True).start()
    await done


def _settle(done: asyncio.Future[None]) -> None:
    if not done.done():  # cancelled: the caller stopped waiting
        done.set_result(None)


def _stop_http(http: Any) -> None:
    http.shutdown()
    http.server_close()


def _tracing_wanted(env: Mapping[str, str]) -> bool:
    names = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    return bool(names) and names != "none" and not disabled
