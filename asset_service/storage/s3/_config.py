"""Where the bucket is, how to reach it, and what its errors mean to the domain."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from asset_service.domain.errors import (
    IntegrityError,
    InvalidArgument,
    StorageFull,
    Unavailable,
)

# S3 rejects parts under 5 MiB (but the last); 8 MiB keeps memory flat and requests few.
PART_SIZE = 8 * 1024 * 1024
# A server-side copy moves at most 5 GiB per request; bigger objects copy in parts.
COPY_PART_SIZE = 1024 * 1024 * 1024
# What a conditional write that lost (the key exists) answers: 412 on S3 and MinIO, 409
# ConditionalRequestConflict on S3 when two conditional writes race.
PRECONDITION_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
MISSING_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchUpload"}


@dataclass(frozen=True)
class S3Location:
    """`s3://bucket/prefix`: the bucket and the key prefix (empty or ending in '/')."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Location:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise InvalidArgument(f"storage url {url!r} is not s3://bucket[/prefix]")
        if parts.query or parts.fragment:
            raise InvalidArgument(f"storage url {url!r} must not carry ?query or #fragment")
        prefix = parts.path.strip("/")
        if any(p in ("", ".", "..") for p in prefix.split("/")) and prefix:
            raise InvalidArgument(f"storage url {url!r} has an empty, '.' or '..' segment")
        return cls(parts.netloc, f"{prefix}/" if prefix else "")

    def path_of(self, object_key: str) -> str:
        return f"s3://{self.bucket}/{object_key}"


@dataclass(frozen=True)
class Credentials:
    """Endpoint, region and keys: constructor arguments first, then the AWS variables."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None

    def resolved(self) -> Credentials:
        env = os.environ.get
        return Credentials(
            self.endpoint_url or env("AWS_ENDPOINT_URL_S3") or env("AWS_ENDPOINT_URL"),
            self.region or env("AWS_REGION") or env("AWS_DEFAULT_REGION") or "us-east-1",
            # None lets botocore's own chain look further (profiles, instance roles).
            self.access_key_id or env("AWS_ACCESS_KEY_ID"),
            self.secret_access_key or env("AWS_SECRET_ACCESS_KEY"),
        )


def client_settings(creds: Credentials, max_connections: int) -> dict[str, Any]:
    """botocore Config arguments, the same for the asyncio client and the bulk one."""
    return {
        # Path-style addressing: MinIO and most self-hosted stores have no wildcard DNS.
        "s3": {"addressing_style": "path"} if creds.endpoint_url else {},
        "retries": {"max_attempts": 4, "mode": "standard"},
        "max_pool_connections": max_connections,
        "connect_timeout": 5,
        "read_timeout": 60,
    }


def create_client(creds: Credentials, max_connections: int) -> Any:
    """An aiobotocore client context manager (enter it to get an S3Client)."""
    config = AioConfig(**client_settings(creds, max_connections))
    return get_session().create_client(
        "s3",
        endpoint_url=creds.endpoint_url,
        region_name=creds.region,
        aws_access_key_id=creds.access_key_id,
        aws_secret_access_key=creds.secret_access_key,
        config=config,
    )


def code_of(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def is_precondition(exc: BaseException) -> bool:
    return code_of(exc) in PRECONDITION_CODES


def is_missing(exc: BaseException) -> bool:
    return code_of(exc) in MISSING_CODES


def translate(exc: BaseException, where: str, shown: str) -> Exception:
    """A domain error for an object-store failure, naming what was being done and where."""
    code = code_of(exc)
    if code in ("EntityTooLarge", "XMinioStorageFull", "QuotaExceeded"):
        return StorageFull(f"the object store is full while {where} ({shown}): {exc}")
    if code in MISSING_CODES:
        return IntegrityError(f"its bytes at {shown} are missing from the object store")
    if isinstance(exc, (ClientError, BotoCoreError, OSError)):
        return Unavailable(f"the object store failed while {where} ({shown}): {exc}; retry later")
    return RuntimeError(f"{where} ({shown}): {exc!r}")


__all__ = [
    "COPY_PART_SIZE",
    "PART_SIZE",
    "Credentials",
    "S3Location",
    "client_settings",
    "code_of",
    "create_client",
    "is_missing",
    "is_precondition",
    "translate",
]
