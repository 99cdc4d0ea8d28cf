"""A stand-in server that keeps the handler AssetService's generic handlers give each method."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service.api.registration import SERVICE_NAME

METHODS = sorted(pb.DESCRIPTOR.services_by_name["AssetService"].methods_by_name)


class Served:
    """Pass it to add_asset_service; `handlers` then maps each method name to its handler."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, generic: Any) -> None:
        for name in METHODS:
            details = SimpleNamespace(method=f"/{SERVICE_NAME}/{name}", invocation_metadata=())
            found = [h for h in (g.service(details) for g in generic) if h is not None]
            if found:
                self.handlers[name] = found[0]
