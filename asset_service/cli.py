"""The `asset-service` command: parse settings, configure logging, serve."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from asset_service import logs
from asset_service.config import load_settings
from asset_service.domain.errors import AssetError


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_settings(argv)
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logs.install()
    from asset_service.server import serve  # after logging: importing grpc may log

    try:
        asyncio.run(serve(settings))
    except AssetError as exc:
        logging.getLogger("asset_service").error("cannot start: %s", exc.message)
        return 2
    return 0
