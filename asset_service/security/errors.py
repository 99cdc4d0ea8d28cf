"""The one error the domain's tree lacks: a caller whose credentials are missing or wrong."""

from __future__ import annotations

from asset_service.domain.errors import AssetError


class Unauthenticated(AssetError):
    """No credentials, or credentials that are unknown, malformed or expired."""
