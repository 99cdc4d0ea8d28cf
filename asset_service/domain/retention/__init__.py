"""Retention: expiry by TTL or operator rule, holds that follow the consumers, collection."""
