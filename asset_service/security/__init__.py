"""Authentication and authorization: principals, roles, tokens, TLS (docs/security.md)."""

from asset_service.security.errors import Unauthenticated
from asset_service.security.principal import (
    ANONYMOUS,
    Principal,
    Role,
    TaskScope,
    current_principal,
)
from asset_service.security.roles import RULES, Rule, TaskAccess, rule_for
from asset_service.security.task_tokens import MintedToken, TaskTokens
from asset_service.security.tokens import TokenTable, hash_token, load_tokens, new_token

__all__ = [
    "ANONYMOUS",
    "RULES",
    "MintedToken",
    "Principal",
    "Role",
    "Rule",
    "TaskAccess",
    "TaskScope",
    "TaskTokens",
    "TokenTable",
    "Unauthenticated",
    "current_principal",
    "hash_token",
    "load_tokens",
    "new_token",
    "rule_for",
]
