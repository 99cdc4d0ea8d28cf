"""Which metadata-store backends the suite can reach here, and what each cannot do."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FERRETDB_VERSION = "v1.24.0"
FERRETDB_BIN = REPO / ".tools" / f"ferretdb-{FERRETDB_VERSION}" / "ferretdb"

# What FerretDB 1.x (no replica set) cannot do; those cases run only on a real replica set.
FERRETDB_LACKS = {
    "change_streams": "no change streams (FerretDB 1.x has no replica set)",
    "transactions": "no multi-document transactions (FerretDB 1.x)",
    "atomic_find_and_modify": (
        "FerretDB 1.24 (SQLite) runs findAndModify as read-then-write: here several of 20 "
        "racing conditional updates all 'won', so the race contract needs real MongoDB"
    ),
}
LACKS: dict[str, dict[str, str]] = {"sqlite": {}, "mongo": {}, "ferretdb": FERRETDB_LACKS}


def ferretdb_binary() -> Path:
    return Path(os.environ.get("FERRETDB_BIN", FERRETDB_BIN))


def missing_backends() -> dict[str, str]:
    """Backends that will not run here, with the reason."""
    missing = {}
    if not os.environ.get("MONGODB_URI"):
        missing["mongo"] = "MONGODB_URI not set (a replica set URL; see docs/mongodb.md)"
    if not ferretdb_binary().is_file():
        missing["ferretdb"] = f"{ferretdb_binary()} missing (`make ferretdb` builds it)"
    return missing


def report_lines() -> list[str]:
    missing = missing_backends()
    ran = [name for name in LACKS if name not in missing]
    lines = [f"metadata store backends under test: {', '.join(ran)}"]
    lines += [f"  NOT run against {name}: {why}" for name, why in missing.items()]
    if "ferretdb" in ran:
        lines += [f"  ferretdb leaves out cases needing {cap}" for cap in FERRETDB_LACKS]
    if "mongo" in missing:
        lines.append("  end-to-end tests run on sqlite (MONGODB_URI runs them on MongoDB)")
    return lines
