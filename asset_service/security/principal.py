"""Who is calling: the authenticated principal, kept in a contextvar for the current RPC."""

from __future__ import annotations

import contextvars
import enum
from dataclasses import dataclass
from datetime import datetime


class Role(enum.IntEnum):
    """Each role includes every lower one (a worker is also a reader)."""

    READER = 1
    WORKER = 2
    ORCHESTRATOR = 3
    ADMIN = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            known = ", ".join(r.label for r in cls)
            raise ValueError(f"unknown role {text!r}; roles are {known}") from None


@dataclass(frozen=True)
class TaskScope:
    """What a task-scoped token may touch: its task's promises and the named inputs."""

    task_id: str
    inputs: frozenset[str]
    expires_at: datetime
    minted_by: str


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a name (for audit), its roles, and a task scope if any."""

    name: str
    roles: frozenset[Role]
    # How it authenticated: "token", "certificate", "task-token" or "none" (no security).
    via: str
    task: TaskScope | None = None

    def has(self, role: Role) -> bool:
        return any(r >= role for r in self.roles)

    @property
    def roles_text(self) -> str:
        return ", ".join(sorted(r.label for r in self.roles)) or "none"


# Without any security configured every caller is this one, with every right.
ANONYMOUS = Principal("anonymous", frozenset({Role.ADMIN}), "none")

_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "asset_service_principal", default=None
)


# The last principal set in this task, kept after reset_principal: the call's access line is
# written once the handler (and the reset) is done.
_last: contextvars.ContextVar[str] = contextvars.ContextVar("asset_service_caller", default="")


def principal_of_call() -> str:
    """The name of the principal the current call ran as ("" if none was admitted)."""
    return _last.get()


def current_principal() -> Principal | None:
    """The principal of the RPC being served (None outside one)."""
    return _current.get()


def note_caller(principal: Principal) -> None:
    """Who made the current call, though it is refused before running as them."""
    _last.set(principal.name)


def set_principal(principal: Principal) -> contextvars.Token[Principal | None]:
    _last.set(principal.name)
    return _current.set(principal)


def reset_principal(token: contextvars.Token[Principal | None]) -> None:
    _current.reset(token)
