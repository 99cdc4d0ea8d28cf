"""Task-scoped capability tokens: short-lived JWTs (HS256) minted for one task's worker."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import jwt

from asset_service.domain.errors import FailedPrecondition, InvalidArgument
from asset_service.domain.models import parse_asset_id, validate_task_id
from asset_service.security.errors import Unauthenticated
from asset_service.security.principal import Principal, TaskScope

DEFAULT_TTL_SECONDS = 3600
MAX_TTL_SECONDS = 24 * 3600
# The token travels in a request header; gRPC servers start refusing header blocks past
# 8 KiB. 64 ids keep a token near 3 KiB.
MAX_INPUTS = 64
MIN_SECRET_BYTES = 32
ISSUER = "asset-service"
ALGORITHM = "HS256"


@dataclass(frozen=True)
class MintedToken:
    token: str
    expires_at: datetime


def load_secrets(path: Path) -> tuple[bytes, ...]:
    """One secret per line: the first signs, every line verifies (so keys can rotate)."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise InvalidArgument(f"cannot read the token secret file {path}: {exc.strerror}") from None
    found = tuple(line.strip() for line in lines if line.strip())
    if not found:
        raise InvalidArgument(f"the token secret file {path} is empty")
    for number, secret in enumerate(found, 1):
        if len(secret) < MIN_SECRET_BYTES:
            raise InvalidArgument(
                f"{path}: secret on line {number} is {len(secret)} bytes; use at least "
                f"{MIN_SECRET_BYTES} random bytes, e.g. `openssl rand -base64 48`"
            )
    return found


class TaskTokens:
    """Mints and verifies task tokens with the secrets of --token-secret-file."""

    def __init__(
        self, secrets: Sequence[bytes] = (), clock: Callable[[], float] = time.time
    ) -> None:
        self.secrets = tuple(secrets)
        self._clock = clock

    def mint(
        self, minted_by: str, task_id: str, inputs: Sequence[str], ttl_seconds: int
    ) -> MintedToken:
        if not self.secrets:
            raise FailedPrecondition(
                "task tokens are not configured on this server: start it with "
                "--token-secret-file FILE (or ASSET_SERVICE_TOKEN_SECRET_FILE) holding a "
                "random secret of at least 32 bytes (docs/security.md)"
            )
        validate_task_id(task_id)
        if len(inputs) > MAX_INPUTS:
            raise InvalidArgument(
                f"{len(inputs)} input_asset_ids given; a task token names at most {MAX_INPUTS}"
            )
        ids = sorted({parse_asset_id(i, "input_asset_ids entry") for i in inputs})
        if ttl_seconds < 0 or ttl_seconds > MAX_TTL_SECONDS:
            raise InvalidArgument(
                f"ttl_seconds is {ttl_seconds}; use 1 to {MAX_TTL_SECONDS} (0 means "
                f"{DEFAULT_TTL_SECONDS})"
            )
        now = int(self._clock())
        expires = now + (ttl_seconds or DEFAULT_TTL_SECONDS)
        claims = {
            "iss": ISSUER,
            "sub": f"task:{task_id}",
            "task": task_id,
            "inputs": ids,
            "by": minted_by,
            "iat": now,
            "exp": expires,
        }
        token = jwt.encode(claims, self.secrets[0], algorithm=ALGORITHM)
        return MintedToken(token, datetime.fromtimestamp(expires, UTC))

    def verify(self, token: str) -> Principal:
        """The task principal a token stands for; Unauthenticated when it does not verify."""
        if not self.secrets:
            raise Unauthenticated(
                "the bearer token is not valid (task tokens are not enabled on this server)"
            )
        for secret in self.secrets:
            try:
                claims = jwt.decode(
                    token,
                    secret,
                    algorithms=[ALGORITHM],
                    issuer=ISSUER,
                    options={"require": ["exp", "iat", "iss", "task"]},
                    leeway=0,
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                raise Unauthenticated(
                    "token expired: ask the orchestrator for a new task token"
                ) from None
            except jwt.InvalidTokenError:
                break
            return _principal(claims)
        raise Unauthenticated("the bearer token is not valid (bad signature or format)")


def _principal(claims: dict[str, object]) -> Principal:
    task, inputs, by, exp, iat = (
        claims.get("task"),
        claims.get("inputs", []),
        claims.get("by", ""),
        claims["exp"],
        claims["iat"],
    )
    if (
        not isinstance(task, str)
        or not isinstance(inputs, list)
        or not all(isinstance(i, str) for i in inputs)
        or not isinstance(by, str)
        or not isinstance(exp, int)
        or not isinstance(iat, int)
    ):
        raise Unauthenticated("the bearer token is not valid (unexpected claims)")
    if exp - iat > MAX_TTL_SECONDS:
        # Minting caps the lifetime; so does verifying, so that a token signed some other
        # way (an old server, a leaked secret used by hand) cannot live longer.
        raise Unauthenticated(
            f"the task token lives {exp - iat}s (exp - iat), longer than this server's "
            f"maximum of {MAX_TTL_SECONDS}s: ask the orchestrator for a new task token"
        )
    scope = TaskScope(task, frozenset(inputs), datetime.fromtimestamp(exp, UTC), by)
    return Principal(f"task:{task}", frozenset(), "task-token", scope)
