"""Read a grpc.health.v1 servicer's answer in-process, as a client's Check would see it."""

from __future__ import annotations

from typing import Any

from grpc_health.v1 import health_pb2

NOT_SET = -1


class _Abort(Exception):
    pass


class _Context:
    async def abort(self, *args: object) -> None:
        raise _Abort(args)  # Check aborts NOT_FOUND for a name with no status yet


async def health_status(servicer: Any, name: str) -> int:
    try:
        response = await servicer.Check(health_pb2.HealthCheckRequest(service=name), _Context())
    except _Abort:
        return NOT_SET
    return int(response.status)
