"""Operators' expiry rules: which assets expire how long after they reach their state."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from asset_service.domain.errors import InvalidArgument
from asset_service.domain.models import (
    EXPIRY_NEVER,
    EXPIRY_TTL,
    AssetType,
    RuleExpiry,
    Status,
)

# The longest TTL a client may give (CreateX ttl_seconds, SetExpiry): about 100 years.
MAX_TTL_SECONDS = 100 * 366 * 86400
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_KEYS = ("status", "type", "tag", "task")
_DURATION = re.compile(r"(\d+(?:\.\d*)?)(s|m|h|d)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
RULE_SYNTAX = (
    "NAME,KEY=VALUE[,KEY=VALUE...],AFTER with KEY one of status (AVAILABLE or FAILED), type "
    "(FILE or VALUE), tag (without ',' or ':'), task (a task id, or * for any task) and AFTER "
    "a duration like 7d or 12h; e.g. failed,status=FAILED,7d or values,type=VALUE,task=*,30d"
)


@dataclass(frozen=True)
class ExpiryRule:
    """Assets matching every condition expire `after` seconds after they reach their state
    (created AVAILABLE, fulfilled or failed). The first matching rule wins; none: no expiry.
    A rule never replaces an expiry a client chose (a TTL, or SetExpiry)."""

    name: str
    after: float
    status: Status | None = None
    type: AssetType | None = None
    tag: str = ""
    task: str = ""  # "*": any task's

    def matches(self, status: Status, type_: AssetType, tags: Sequence[str], task: str) -> bool:
        if self.status is not None and status is not self.status:
            return False
        if self.type is not None and type_ is not self.type:
            return False
        if self.tag and self.tag not in tags:
            return False
        if self.task == "*":
            return bool(task)
        return not self.task or task == self.task


def parse_rule(text: str) -> ExpiryRule:
    """One --expiry-rule; ValueError (a message naming the syntax) if malformed."""
    parts = [p.strip() for p in text.strip().split(",")]
    if len(parts) < 3:
        raise ValueError(f"expiry rule {text!r} is not {RULE_SYNTAX}")
    name, conditions, after_text = parts[0], parts[1:-1], parts[-1]
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"expiry rule name {name!r}: use 1-63 lowercase letters, digits, '_', '.', '-'"
        )
    if name in (EXPIRY_TTL, EXPIRY_NEVER):
        raise ValueError(f"expiry rule name {name!r} is reserved (client-chosen expiries)")
    match = _DURATION.fullmatch(after_text)
    if match is None or float(match.group(1)) * _UNITS[match.group(2)] <= 0:
        raise ValueError(f"expiry rule {name}: AFTER {after_text!r} is not a duration above 0")
    if float(match.group(1)) * _UNITS[match.group(2)] > MAX_TTL_SECONDS:
        # Past a date's range every FailAsset and fulfilment it matched was INTERNAL.
        raise ValueError(f"expiry rule {name}: AFTER {after_text!r} is longer than 100 years")
    found: dict[str, str] = {}
    for condition in conditions:
        key, sep, value = condition.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in _KEYS or not value or key in found:
            raise ValueError(f"expiry rule {name}: condition {condition!r} is not {RULE_SYNTAX}")
        found[key] = value
    try:
        status = Status(found["status"]) if "status" in found else None
        type_ = AssetType(found["type"]) if "type" in found else None
    except ValueError:
        raise ValueError(f"expiry rule {name}: unknown status or type; {RULE_SYNTAX}") from None
    if status is Status.PENDING:
        raise ValueError(f"expiry rule {name}: a PENDING asset never expires")
    return ExpiryRule(
        name,
        float(match.group(1)) * _UNITS[match.group(2)],
        status,
        type_,
        found.get("tag", ""),
        found.get("task", ""),
    )


def by_rules(
    rules: Sequence[ExpiryRule],
    status: Status,
    type_: AssetType,
    tags: Sequence[str],
    task: str,
    now: datetime,
) -> RuleExpiry | None:
    """The expiry the first matching rule gives an asset reaching `status` at `now`;
    None if no rule matches (a PENDING asset: never)."""
    if status is Status.PENDING:
        return None
    for rule in rules:
        if rule.matches(status, type_, tags, task):
            return RuleExpiry(now + timedelta(seconds=rule.after), rule.name)
    return None


def check_ttl(ttl_seconds: int) -> int:
    if ttl_seconds < 0 or ttl_seconds > MAX_TTL_SECONDS:
        raise InvalidArgument(
            f"ttl_seconds must be 1 to {MAX_TTL_SECONDS} (or 0: none), got {ttl_seconds}"
        )
    return ttl_seconds


def deletion_reason(expiry_rule: str) -> str:
    """What a DELETED event says of an expiry: by which rule, or the client's TTL."""
    if expiry_rule == EXPIRY_TTL or not expiry_rule:
        return "expired (ttl)"
    return f"expired (rule {expiry_rule})"
