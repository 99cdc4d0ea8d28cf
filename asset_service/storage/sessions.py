"""The record of a resumable upload as every storage keeps it: one small JSON document."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from asset_service.domain.models import UploadHeader
from asset_service.domain.uploads import UploadSession

FORMAT = 1


def encode(session: UploadSession, extra: dict[str, Any] | None = None) -> bytes:
    """The record, with `extra`: what one storage keeps beside it (an object store's
    multipart upload and the stream holding the session)."""
    header = session.header
    document: dict[str, Any] = {
        "format": FORMAT,
        "upload_id": session.upload_id,
        "owner": session.owner,
        "header": {
            "label": header.label,
            "media_type": header.media_type,
            "tags": list(header.tags),
            "expected_size_bytes": header.expected_size_bytes,
            "expected_sha256": header.expected_sha256,
            "pending_asset_id": header.pending_asset_id,
        },
        "created_at": session.created_at.isoformat(),
        "expires_at": session.expires_at.isoformat(),
        "committed_bytes": session.committed_bytes,
        "asset_id": session.asset_id,
        "sha256": session.sha256,
        "done": session.done,
    }
    if extra:
        document["extra"] = extra
    return json.dumps(document, sort_keys=True).encode()


def decode(raw: bytes) -> UploadSession:
    """The record; ValueError if `raw` is not one (cut short, edited by hand)."""
    return decode_with_extra(raw)[0]


def decode_with_extra(raw: bytes) -> tuple[UploadSession, dict[str, Any]]:
    try:
        document: dict[str, Any] = json.loads(raw)
        if document.get("format") != FORMAT:
            raise ValueError(f"unknown session format {document.get('format')!r}")
        header = document["header"]
        size = header["expected_size_bytes"]
        session = UploadSession(
            upload_id=str(document["upload_id"]),
            owner=str(document["owner"]),
            header=UploadHeader(
                label=str(header["label"]),
                media_type=str(header["media_type"]),
                tags=tuple(str(t) for t in header["tags"]),
                expected_size_bytes=None if size is None else int(size),
                expected_sha256=str(header["expected_sha256"]),
                pending_asset_id=str(header["pending_asset_id"]),
            ),
            created_at=datetime.fromisoformat(document["created_at"]),
            expires_at=datetime.fromisoformat(document["expires_at"]),
            committed_bytes=int(document["committed_bytes"]),
            asset_id=str(document["asset_id"]),
            sha256=str(document["sha256"]),
            done=bool(document["done"]),
        )
        extra = document.get("extra") or {}
        if not isinstance(extra, dict):
            raise TypeError("extra is not an object")
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not an upload session record: {exc}") from None
    if session.committed_bytes < 0 or session.expires_at.tzinfo is None:
        raise ValueError("not an upload session record: bad offset or expiry")
    return session, extra
