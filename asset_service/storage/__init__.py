"""Blob storage adapters (local filesystem today)."""
