"""Resumable uploads: a session's record, its id, and what a later stream must repeat."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime

from asset_service.domain.errors import Conflict, InvalidArgument, NotFound, shown
from asset_service.domain.models import Asset, UploadHeader, check_pattern

# What a client may choose as an upload_id (a UUID, in any of its spellings, fits).
_UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
DEFAULT_SESSION_TTL_SECONDS = 24 * 3600.0


@dataclass(frozen=True)
class UploadSession:
    """The record of one resumable upload, kept by the blob storage beside its bytes.

    `committed_bytes` is the durable offset as last recorded: the storage may find fewer
    bytes (what a power cut took), never more. `asset_id` and `sha256` are set just before
    the completing commit, `done` once it committed: a later stream (or QueryUpload) then
    answers that asset again.
    """

    upload_id: str
    # The principal that started it; only the same principal finds it (session_key).
    owner: str
    # Fields 1-6 of the first stream's header (upload_id and write_offset cleared).
    header: UploadHeader
    created_at: datetime
    # An unfinished upload is removed with everything it staged after this (TTL after its
    # last stream ended), unless a stream is open on it.
    expires_at: datetime
    committed_bytes: int = 0
    asset_id: str = ""
    sha256: str = ""
    done: bool = False

    def completing(self, asset_id: str, size_bytes: int, sha256: str) -> UploadSession:
        return dataclasses.replace(
            self, asset_id=asset_id, committed_bytes=size_bytes, sha256=sha256
        )


@dataclass(frozen=True)
class UploadState:
    """What QueryUpload answers."""

    committed_bytes: int
    expires_at: datetime
    asset: Asset | None = None


def validate_upload_id(raw: str) -> str:
    return check_pattern(
        _UPLOAD_ID,
        "upload_id",
        raw,
        "use 8 to 64 letters, digits, '_' or '-' (e.g. a UUID), the same on every stream of "
        "the upload",
    )


def session_key(owner: str, upload_id: str) -> str:
    """Where a session is kept: its upload_id within the principal that started it, so that
    another principal's upload with the same id is another session (and never found)."""
    return hashlib.sha256(f"{owner}\0{upload_id}".encode()).hexdigest()[:40]


def first_header(header: UploadHeader) -> UploadHeader:
    """What a session keeps of the header that started it (as later ones are compared)."""
    return dataclasses.replace(
        header,
        tags=tuple(dict.fromkeys(header.tags)),
        expected_sha256=header.expected_sha256.lower(),
        upload_id="",
        write_offset=0,
    )


def check_same_header(kept: UploadHeader, header: UploadHeader) -> None:
    """A later stream repeats the first one's header fields or leaves them empty."""
    pairs: tuple[tuple[str, object, object, bool], ...] = (
        ("label", kept.label, header.label, bool(header.label)),
        ("media_type", kept.media_type, header.media_type, bool(header.media_type)),
        ("tags", kept.tags, tuple(dict.fromkeys(header.tags)), bool(header.tags)),
        (
            "expected_size_bytes",
            kept.expected_size_bytes,
            header.expected_size_bytes,
            header.expected_size_bytes is not None,
        ),
        (
            "expected_sha256",
            kept.expected_sha256,
            header.expected_sha256.lower(),
            bool(header.expected_sha256),
        ),
        (
            "pending_asset_id",
            kept.pending_asset_id,
            header.pending_asset_id,
            bool(header.pending_asset_id),
        ),
    )
    for name, first, now, given in pairs:
        if given and now != first:
            raise InvalidArgument(
                f"header.{name} differs from the one this upload started with; a later "
                "stream of a resumable upload repeats its header fields or leaves them empty "
                "(to change them, start again with a new upload_id)"
            )


def gone(upload_id: str, why: str = "") -> NotFound:
    reason = f" ({why})" if why else ""
    return NotFound(
        f"upload {shown(upload_id)} is unknown or has expired{reason}: start again from 0 "
        "with a new upload_id"
    )


def busy(upload_id: str) -> Conflict:
    return Conflict(
        f"upload {shown(upload_id)} has another stream open (one at a time): end or cancel "
        "that one, then ask QueryUpload where to resume"
    )


def expired(session: UploadSession, now: datetime) -> bool:
    return session.expires_at <= now
