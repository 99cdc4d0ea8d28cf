"""Rows of the table: ratios per round, the bar they are held to, one printed line each."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

# Above `bench/`, whatever the current directory.
REPO = Path(__file__).resolve().parent.parent
DASH = "\u2013"  # an en dash between min and max, as in the table


@dataclass
class Row:
    """One line: `ratios` has one value per round (service against its ceiling)."""

    name: str
    bar: str  # "≥0.85", "≤1.2", "<32" (the comparison is the first character), "" for none
    ratios: list[float] = field(default_factory=list)
    load: float = 0.0
    detail: str = ""
    raw: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    # Why this machine cannot meet the bar (bench/README.md argues it): a miss then reads
    # "blocked", not MISS, and the summary names it apart.
    blocked: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def verdict(self) -> str:
        if self.error or not self.ratios:
            return "ERROR"
        if not self.bar:
            return "info"
        op, threshold = self.bar[0], float(self.bar[1:])
        value = self.median
        ok = {"≥": value >= threshold, "≤": value <= threshold, "<": value < threshold}[op]
        if ok:
            return "ok"
        return "blocked" if self.blocked else "MISS"

    def line(self) -> str:
        if self.error or not self.ratios:
            return f"{self.name:<36} ERROR: {self.error or 'no measurement'}"
        spread = f"({min(self.ratios):.2f}{DASH}{max(self.ratios):.2f})"
        return (
            f"{self.name:<36} {self.median:6.2f} {spread:<13}  bar {self.bar or '-':<6} "
            f"{self.verdict:<4}  load {self.load:.1f}  {self.detail}"
            + (f" (blocked: {self.blocked})" if self.verdict == "blocked" else "")
        ).rstrip()


def load1() -> float:
    return os.getloadavg()[0]


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def environment() -> dict[str, Any]:
    return {
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "grpcio": grpc.__version__,
        "machine": platform.platform(),
    }


def summary(rows: list[Row]) -> str:
    misses = [r.name for r in rows if r.verdict == "MISS"]
    blocked = [r.name for r in rows if r.verdict == "blocked"]
    errors = [r.name for r in rows if r.verdict == "ERROR"]
    met = sum(r.verdict == "ok" for r in rows)
    held = sum(bool(r.bar) for r in rows)
    text = f"{met} of {held} rows meet their bar"
    if misses:
        text += f"; missed: {', '.join(misses)}"
    if blocked:
        text += f"; blocked on this machine: {', '.join(blocked)}"
    if errors:
        text += f"; not measured: {', '.join(errors)}"
    return text


def write_json(path: Path, env: dict[str, Any], args: dict[str, Any], rows: list[Row]) -> None:
    document = {
        **env,
        "loadavg_end": list(os.getloadavg()),
        "args": args,
        "rows": [
            {**asdict(r), "median": r.median if r.ratios else None, "verdict": r.verdict}
            for r in rows
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
