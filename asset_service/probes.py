"""Liveness ("") and readiness (asset.v1.AssetService) over grpc.health.v1, and what moves them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service.domain.errors import AssetError

log = logging.getLogger(__name__)

# The names a probe asks for (grpc_health_probe -service, Kubernetes' grpc probe `service`).
LIVENESS = ""
READINESS = pb.DESCRIPTOR.services_by_name["AssetService"].full_name

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# A readiness check: raises (AssetError, OSError or TimeoutError, saying why) while what it
# checks cannot serve calls.
Check = Callable[[], Awaitable[None]]


class HealthServicer(health_aio.HealthServicer):  # type: ignore[misc]
    """grpcio's servicer, plus what it leaves out: List (in grpc.health.v1 and listed by
    reflection, UNIMPLEMENTED there) and a NOT_FOUND that says which names to ask."""

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        status = self._server_status.get(request.service)
        if status is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no health status for service {request.service!r}: ask '{LIVENESS}' (liveness)"
                f" or '{READINESS}' (readiness)",
            )
        return health_pb2.HealthCheckResponse(status=status)

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._server_status.items()
            }
        )


class Probes:
    """The health servicer and the loop that keeps its answers true.

    Liveness answers SERVING while the process serves calls: through a database or storage
    outage and through the drain after SIGTERM, since a failed liveness probe restarts the
    pod (Kubernetes), which cures neither and cuts the drain short. A process too wedged to
    answer fails it by timing out. Readiness answers SERVING only while every check passes
    and no drain has begun: load balancers then send calls elsewhere.
    """

    def __init__(self, checks: Iterable[tuple[str, Check]], interval: float) -> None:
        self.servicer = HealthServicer()
        self.interval = interval
        self._checks = dict(checks)
        # Why each failing check fails now (none: ready). What a detail endpoint, a metric
        # or a log would report; add_check() is the hook for more (e.g. a scrub's verdict).
        self.failures: dict[str, str] = {}
        self.draining = False
        self._ready: bool | None = None

    @property
    def ready(self) -> bool:
        """What readiness answers now."""
        return bool(self._ready) and not self.draining

    def add_check(self, name: str, check: Check) -> None:
        """One more condition of readiness, run every interval from the next round on."""
        self._checks[name] = check

    async def start(self) -> None:
        """Both names SERVING: called once the store and storage have just opened, so a
        probe's first answer is never NOT_FOUND."""
        await self.servicer.set(LIVENESS, SERVING)
        await self._publish(True)

    async def check_once(self) -> bool:
        """Run every check (each bounded by the interval, at least 1 s); True if all pass."""
        for name, check in list(self._checks.items()):
            try:
                # Not asyncio.wait_for: on Python 3.11 it drops a cancellation that arrives
                # as the check completes, and the loop then outlived every stop.
                async with asyncio.timeout(max(self.interval, 1.0)):
                    await check()
            except (AssetError, TimeoutError, OSError) as exc:
                why = str(exc) or f"no answer within {max(self.interval, 1.0):g}s"
                if name not in self.failures:
                    log.warning("not ready: the %s check fails: %s", name, why)
                self.failures[name] = why
            else:
                if self.failures.pop(name, None) is not None:
                    log.info("the %s check passes again", name)
        return not self.failures

    async def run(self) -> None:
        """Check, publish, sleep: until cancelled (the server's stop)."""
        while True:
            await self._publish(await self.check_once())
            await asyncio.sleep(self.interval)

    async def drain(self) -> None:
        """Readiness NOT_SERVING for good (SIGTERM): new calls go elsewhere while those in
        flight finish. Liveness stays SERVING: the process is healthy, only leaving."""
        self.draining = True
        await self.servicer.set(READINESS, NOT_SERVING)

    async def close(self) -> None:
        """Every name NOT_SERVING, told to Watch streams too, just before the listener closes."""
        await self.servicer.enter_graceful_shutdown()

    async def _publish(self, ready: bool) -> None:
        if self.draining or ready == self._ready:
            return
        self._ready = ready
        await self.servicer.set(READINESS, SERVING if ready else NOT_SERVING)
