"""Blob storage in an S3-compatible object store (AWS S3, MinIO, ...)."""

from asset_service.storage.s3._config import S3Location
from asset_service.storage.s3._storage import S3Storage

__all__ = ["S3Location", "S3Storage"]
