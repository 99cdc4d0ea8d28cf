"""Domain errors: one small tree, mapped to gRPC codes by one table (api/errors.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass


class AssetError(Exception):
    """Base of every error the domain reports to a caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(AssetError):
    """The request itself is malformed (bad id, empty label, unsafe path...)."""


class NotFound(AssetError):
    """No asset (or file) with that name exists."""


class FailedPrecondition(AssetError):
    """The asset is not in the state the operation needs."""


class Held(FailedPrecondition):
    """Something still needs the asset: `holders` says what (explicit holds, tasks, a
    manifest within its TTL), each as one short phrase."""

    def __init__(self, asset_id: str, holders: Sequence[str]) -> None:
        super().__init__(
            f"asset {asset_id} is held by {len(holders)} holder(s): {shown_list(list(holders))}; "
            "release the holds (ReleaseHold) or let the tasks finish, or delete it with force "
            "(admin)"
        )
        self.asset_id = asset_id
        self.holders = list(holders)


class Conflict(AssetError):
    """A concurrent writer changed the asset first; re-read and retry if still relevant."""


class Occupied(Conflict):
    """commit() met a file at the key's name that no live commit holds: a dead process's
    half-made commit, or bytes a record points at. Only the records can tell which: the
    caller awaits `replace()` (the same commit, the occupant set aside) if none points at
    `storage_path`. A storage that cannot tell a live commit from a dead one never raises it."""

    def __init__(
        self, message: str, storage_path: str, replace: Callable[[], Awaitable[str]]
    ) -> None:
        super().__init__(message)
        self.storage_path = storage_path
        self.replace = replace


class LeaseRanOut(Conflict):
    """A promise's lease had run out, by the store's clock, when a renewal or a fulfilment
    reached the store. `expires_at` is when it ran out (a datetime, UTC)."""

    def __init__(self, asset_id: str, expires_at: object) -> None:
        super().__init__(f"asset {asset_id}'s lease ran out at {expires_at}")
        self.asset_id = asset_id
        self.expires_at = expires_at


class KeyTaken(Conflict):
    """Another record holds the get-or-create key an insert wanted (nothing was written)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"key {key!r} is held by another asset")
        self.key = key


class SharedBytesGone(Conflict):
    """A write meant to share stored bytes (shared=True) found no live record still
    pointing at them: the last one went meanwhile and its bytes may be on their way out.
    Nothing was written; the caller stores the bytes anew."""

    def __init__(self, storage_path: str) -> None:
        super().__init__(f"no asset holds the stored bytes at {storage_path} any more")
        self.storage_path = storage_path


class PermissionDenied(AssetError):
    """A server-side path lies outside the configured import roots (or crosses a symlink)."""


class ResourceExhausted(AssetError):
    """A limit of the server was reached: size, space, concurrency, buffers."""


class TooLarge(ResourceExhausted):
    """An upload exceeds the configured maximum size."""


class StorageFull(ResourceExhausted):
    """The disk (or object store) holding bytes or metadata has no space left."""


class LimitExceeded(ResourceExhausted):
    """A configured concurrency limit was reached; the message names the setting."""


class Timeout(AssetError):
    """The client stayed silent (or did not read) for longer than a configured limit."""


class HistoryGone(AssetError):
    """A selector watch asked for changes this server can no longer replay: older than
    the deletions the store keeps, or from before a rollback."""

    def __init__(self, after: int, floor: int | None, why: str = "") -> None:
        if why:
            problem = f"revision {after} cannot be replayed ({why})"
        elif floor is not None:
            problem = (
                f"revision {after} is older than this server's change history (it can replay "
                f"the changes after revision {floor}; the store keeps deleted assets' "
                "tombstones for --watch-tombstone-ttl)"
            )
        else:
            problem = (
                f"revision {after} is older than this server's change history (it is "
                "starting anew after its change source lost its place)"
            )
        super().__init__(
            f"{problem}: list again (ListAssets gives the revision of its page) and watch "
            "from that revision"
        )
        self.after = after
        self.floor = floor


class IntegrityError(AssetError):
    """Content does not match the size or digest the caller declared, or stored bytes are gone."""


class CorruptBytes(IntegrityError):
    """Stored bytes differ from what was stored: a block's checksum, the size or the sha256
    does not match the record. `offset`: where the first bad block starts, if known."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset


class Unverified(IntegrityError):
    """Stored bytes whose metadata says they were written or replaced after their record
    pointed at them: to be read and checked in full before anyone is told to use them."""


class Unavailable(AssetError):
    """The metadata store (or storage) cannot be reached right now; retry later."""


class OutcomeUnknown(Unavailable):
    """A write was sent but its outcome could not be learnt; re-read before retrying."""


class Overloaded(Unavailable):
    """A write refused before it was sent (a full or slow write queue): nothing was
    written; retry with backoff."""


# --- echoing client input in messages ------------------------------------------------
# Status messages travel in HTTP/2 headers, and a default gRPC client refuses a response
# whose metadata passes 16 KiB (8 KiB soft): echoing a 100 KB label would turn a clear
# INVALID_ARGUMENT into "RESOURCE_EXHAUSTED: Stream removed". So input is shown, not pasted.

SHOWN_CHARS = 60
SHOWN_ITEMS = 10


def shown(value: str, limit: int = SHOWN_CHARS) -> str:
    """A client-supplied string for a message: repr-quoted, cut to `limit` characters.

    >>> shown("x" * 100, 5)
    "'xxxxx…' (100 characters)"
    """
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit] + '…'!r} ({len(value)} characters)"


def brief(value: str, limit: int = 40) -> str:
    """`value` as is when short and printable (reads naturally), else `shown(value, limit)`."""
    if len(value) <= limit and value.isprintable():
        return value
    return shown(value, limit)


def shown_list(items: Sequence[str], limit: int = SHOWN_ITEMS) -> str:
    """The first `limit` items joined by ', ', then '…and M more' for the rest."""
    head = ", ".join(items[:limit])
    rest = len(items) - limit
    return f"{head}, …and {rest} more" if rest > 0 else head


@dataclass(frozen=True)
class BlockingAsset:
    """One asset that keeps a manifest from being built."""

    key: str
    asset_id: str
    state: str
    reason: str = ""


MAX_BLOCKERS_SHOWN = 20
# The blockers' part of a ManifestBlocked message stays under this many characters, so
# the whole message fits the API's cap (api/errors.py) with its "…and M more" tail intact.
MAX_BLOCKERS_CHARS = 1800


def _blockers(blocking: list[BlockingAsset]) -> tuple[str, list[BlockingAsset]]:
    """'N input(s) not AVAILABLE: key=id is STATE (reason); …' naming the first
    MAX_BLOCKERS_SHOWN (fewer if keys and reasons are long), and those shown."""
    parts: list[str] = []
    used = 0
    for b in blocking[:MAX_BLOCKERS_SHOWN]:
        detail = f" ({brief(b.reason)})" if b.reason else ""
        part = f"{brief(b.key)}={b.asset_id} is {b.state}{detail}"
        if parts and used + len(part) > MAX_BLOCKERS_CHARS:
            break
        parts.append(part)
        used += len(part) + 2
    rest = len(blocking) - len(parts)
    more = f"; …and {rest} more" if rest else ""
    text = f"{len(blocking)} input(s) not AVAILABLE: " + "; ".join(parts) + more
    return text, blocking[: len(parts)]


class ManifestBlocked(FailedPrecondition):
    """Some assets of a manifest are not AVAILABLE; `blocking` names every one.

    The message names the first few and counts the rest; `shown_blocking` is that same
    prefix, for the rich details.
    """

    def __init__(self, blocking: list[BlockingAsset]) -> None:
        text, self.shown_blocking = _blockers(blocking)
        super().__init__(text)
        self.blocking = blocking


class ManifestWaitTimeout(Timeout):
    """GetManifest waited for its inputs until the call's deadline; some are still PENDING."""

    def __init__(self, seconds: float, blocking: list[BlockingAsset]) -> None:
        text, _ = _blockers(blocking)
        super().__init__(
            f"waited {seconds:.3g}s (the call's deadline) for the manifest's inputs; {text}; "
            "call again with a later deadline, or without wait to get the blockers at once"
        )
        self.blocking = blocking
