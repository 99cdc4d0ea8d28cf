"""Authentication: a call's bearer token or client certificate -> the Principal."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from asset_service.security.errors import Unauthenticated
from asset_service.security.principal import ANONYMOUS, Principal
from asset_service.security.task_tokens import TaskTokens
from asset_service.security.tokens import TokenTable


class Authenticator:
    """Turns a call's metadata and peer certificate into a Principal (or Unauthenticated).

    `tokens` and `task_tokens` are replaced whole on reload (SIGHUP), never mutated.
    """

    def __init__(
        self, tokens: TokenTable | None, task_tokens: TaskTokens, client_certificates: bool
    ) -> None:
        self.tokens = tokens
        self.task_tokens = task_tokens
        self.client_certificates = client_certificates

    @property
    def required(self) -> bool:
        """Credentials are required once a tokens file or a client CA is configured."""
        return self.tokens is not None or self.client_certificates

    def authenticate(
        self, metadata: Iterable[Any], auth_context: Mapping[str, Iterable[bytes]]
    ) -> Principal:
        headers = [v for k, v in metadata if k == "authorization"]
        if len(headers) > 1:
            raise Unauthenticated("send one authorization header, not several")
        if headers:
            return self._bearer(headers[0])
        name = next(iter(auth_context.get("x509_common_name") or ()), None)
        if self.client_certificates and name is not None:
            common_name = bytes(name).decode("utf-8", "replace")
            grant = self.tokens.by_common_name(common_name) if self.tokens else None
            if grant is not None:
                return grant.as_principal("certificate")
            # Verified but not mapped: known, with no rights (conservative).
            return Principal(f"cn:{common_name}", frozenset(), "certificate")
        if not self.required:
            return ANONYMOUS
        raise Unauthenticated(
            "credentials required: send `authorization: Bearer <token>` metadata"
            + (" or a mapped client certificate" if self.client_certificates else "")
        )

    def _bearer(self, header: Any) -> Principal:
        value = header.decode("latin-1") if isinstance(header, bytes) else str(header)
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated('the authorization metadata must be "Bearer <token>"')
        if "." in token:  # a JWT: header.claims.signature; static tokens have no dot
            return self.task_tokens.verify(token)
        grant = self.tokens.by_token(token) if self.tokens else None
        if grant is None:
            raise Unauthenticated("the bearer token is not valid (unknown or revoked)")
        return grant.as_principal("token")
