"""The tokens file: principals, their roles, and the sha256 of each bearer token (never tokens)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asset_service.domain.errors import InvalidArgument
from asset_service.security.principal import Principal, Role

# Principal names go into audit lines and messages as they are: no spaces, quotes or controls.
_PRINCIPAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:/+-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Grant:
    principal: str
    roles: frozenset[Role]

    def as_principal(self, via: str) -> Principal:
        return Principal(self.principal, self.roles, via)


@dataclass(frozen=True)
class TokenTable:
    """Who holds which token (by its sha256) and which certificate CN maps to whom."""

    tokens: tuple[tuple[bytes, Grant], ...] = ()
    certificates: Mapping[str, Grant] = field(default_factory=dict)

    def by_token(self, token: str) -> Grant | None:
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        found = None
        # Every entry is compared, each in constant time: neither the answer's timing nor
        # where a match sits in the file tells anything about the stored hashes.
        for stored, grant in self.tokens:
            if hmac.compare_digest(stored, digest):
                found = grant
        return found

    def by_common_name(self, common_name: str) -> Grant | None:
        return self.certificates.get(common_name)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _roles(raw: Any, where: str) -> frozenset[Role]:
    if not isinstance(raw, list) or not raw or not all(isinstance(r, str) for r in raw):
        raise InvalidArgument(f"{where}: roles must be a non-empty list of role names")
    try:
        return frozenset(Role.parse(r) for r in raw)
    except ValueError as exc:
        raise InvalidArgument(f"{where}: {exc}") from None


def _principal(raw: Any, where: str) -> str:
    if not isinstance(raw, str) or not _PRINCIPAL.fullmatch(raw):
        raise InvalidArgument(
            f"{where}: principal must be 1-128 letters, digits or . _ @ : / + - "
            "(it is written to the audit log as is)"
        )
    return raw


def _entries(data: Mapping[str, Any], key: str, path: Path) -> Iterable[tuple[str, Any]]:
    raw = data.get(key, [])
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raise InvalidArgument(f"{path}: [[{key}]] must be a list of tables")
    for number, entry in enumerate(raw, 1):
        yield f"{path}: [[{key}]] entry {number}", entry


def parse_tokens(data: Mapping[str, Any], path: Path) -> TokenTable:
    unknown = set(data) - {"tokens", "certificates"}
    if unknown:
        raise InvalidArgument(f"{path}: unknown keys {sorted(unknown)}; use [[tokens]] entries")
    tokens: list[tuple[bytes, Grant]] = []
    seen: set[str] = set()
    for where, entry in _entries(data, "tokens", path):
        extra = set(entry) - {"principal", "roles", "sha256"}
        if extra:
            # A `token = "..."` key would mean a secret stored in clear: refuse it.
            raise InvalidArgument(
                f"{where}: unknown keys {sorted(extra)}; an entry has principal, roles and "
                "sha256 (the token's hash, never the token)"
            )
        digest = entry.get("sha256")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise InvalidArgument(f"{where}: sha256 must be 64 lower-case hex characters")
        if digest in seen:
            raise InvalidArgument(f"{where}: the same sha256 appears twice")
        seen.add(digest)
        grant = Grant(_principal(entry.get("principal"), where), _roles(entry.get("roles"), where))
        tokens.append((bytes.fromhex(digest), grant))
    certificates: dict[str, Grant] = {}
    for where, entry in _entries(data, "certificates", path):
        extra = set(entry) - {"common_name", "principal", "roles"}
        if extra:
            raise InvalidArgument(f"{where}: unknown keys {sorted(extra)}")
        cn = entry.get("common_name")
        if not isinstance(cn, str) or not cn:
            raise InvalidArgument(f"{where}: common_name must be the certificate's subject CN")
        if cn in certificates:
            raise InvalidArgument(f"{where}: common_name {cn!r} appears twice")
        certificates[cn] = Grant(
            _principal(entry.get("principal"), where), _roles(entry.get("roles"), where)
        )
    return TokenTable(tuple(tokens), certificates)


def load_tokens(path: Path) -> TokenTable:
    """Read and check a tokens file; every mistake names the file and the entry."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise InvalidArgument(f"cannot read the tokens file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"the tokens file {path} is not valid TOML: {exc}") from None
    return parse_tokens(data, path)


def new_token(principal: str, roles: Iterable[str]) -> tuple[str, str]:
    """A fresh random token and the tokens-file entry (with its hash) that grants it."""
    where = "new token"
    name = _principal(principal, where)
    granted = sorted(_roles(list(roles), where))
    token = secrets.token_urlsafe(32)
    role_list = ", ".join(f'"{r.label}"' for r in granted)
    entry = (
        f'[[tokens]]\nprincipal = "{name}"\nroles = [{role_list}]\nsha256 = "{hash_token(token)}"\n'
    )
    return token, entry
