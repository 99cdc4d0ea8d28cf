"""Retention: expiry by TTL or operator rule, holds that follow the consumers, collection."""

from asset_service.domain.retention._ports import TASK_OWNER, RetentionStore
from asset_service.domain.retention._rules import (
    MAX_TTL_SECONDS,
    RULE_SYNTAX,
    ExpiryRule,
    by_rules,
    check_ttl,
    deletion_reason,
    parse_rule,
)

__all__ = [
    "MAX_TTL_SECONDS",
    "RULE_SYNTAX",
    "TASK_OWNER",
    "ExpiryRule",
    "RetentionStore",
    "by_rules",
    "check_ttl",
    "deletion_reason",
    "parse_rule",
]
