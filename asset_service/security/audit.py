"""One audit line per mutating RPC: who, what, on which assets, with which outcome."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence

import grpc

from asset_service import logs
from asset_service.security.principal import Principal

audit_log = logging.getLogger("asset_service.audit")

_PLAIN = re.compile(r"[A-Za-z0-9._@:/+()=,-]{1,200}")
_MAX_IDS = 20


def _field(value: str) -> str:
    """As is when plain; otherwise JSON-quoted and cut, so one line stays one field."""
    return value if _PLAIN.fullmatch(value) else json.dumps(value[:200])


def record(
    principal: Principal | None,
    rpc: str,
    subjects: Sequence[str],
    code: grpc.StatusCode,
) -> None:
    """Write the line; `subjects` are asset ids (or task=...), never tokens or contents."""
    if principal is not None and principal.via == "none":
        return  # no authentication configured: there is no "who" to record
    who = "unauthenticated"
    if principal is not None:
        who = principal.name
        if principal.task is not None and principal.task.minted_by:
            who += f"(minted-by={principal.task.minted_by})"
    shown = list(dict.fromkeys(s for s in subjects if s))
    more = f",+{len(shown) - _MAX_IDS}" if len(shown) > _MAX_IDS else ""
    # Refused callers without credentials could flood the log: their lines are
    # rate-limited. Authenticated callers are accountable: each of their lines is kept.
    extra = {logs.RATE_KEY: "audit-unauthenticated"} if principal is None else {}
    audit_log.info(
        "principal=%s via=%s rpc=%s subjects=%s outcome=%s",
        _field(who),
        principal.via if principal else "-",
        rpc,
        _field(",".join(shown[:_MAX_IDS]) + more) if shown else "-",
        code.name,
        extra=extra,
    )
