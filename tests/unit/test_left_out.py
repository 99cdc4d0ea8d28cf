"""The suite's own bookkeeping: cases a missing backend cannot run are deselected and counted."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests import left_out


@dataclass
class Case:
    """What left_out reads of a pytest.Item."""

    name: str
    fixturenames: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    marks: tuple[pytest.Mark, ...] = ()
    path: Path = Path("tests/unit/test_x.py")

    @property
    def callspec(self) -> Any:
        return type("CallSpec", (), {"params": self.params})() if self.params else None

    def iter_markers(self, name: str) -> list[pytest.Mark]:
        return [m for m in self.marks if m.name == name]


class Config:
    def __init__(self) -> None:
        self.stash = pytest.Stash()
        self.deselected: list[Case] = []
        self.hook = self

    def pytest_deselected(self, items: list[Case]) -> None:
        self.deselected += items


def test_cases_needing_an_absent_backend_are_deselected_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        left_out, "absent_backends", lambda: {"mongo": "MONGODB_URI not set", "s3": "no MinIO"}
    )
    needs_tx = pytest.mark.needs("transactions").mark
    cases = [
        Case("plain"),
        Case("e2e", path=Path("tests/e2e/test_y.py")),
        Case("marked", marks=(pytest.mark.requires("mongo").mark,)),
        Case("store[mongo]", ("backend",), {"backend": "mongo"}),
        Case("store[sqlite]", ("backend",), {"backend": "sqlite"}, (needs_tx,)),
        Case("store[ferretdb]", ("backend",), {"backend": "ferretdb"}, (needs_tx,)),
        Case("store[ferretdb]-plain", ("backend",), {"backend": "ferretdb"}),
        Case("blob[s3]", ("blob",), {"blob": "s3"}),
        Case("blob[local]", ("blob",), {"blob": "local"}),
        Case("on-minio", ("minio", "tmp_path")),
    ]
    items: list[Any] = list(cases)
    config: Any = Config()
    left_out.deselect(config, items)
    assert [c.name for c in items] == [
        "plain",
        "e2e",
        "store[sqlite]",
        "store[ferretdb]-plain",
        "blob[local]",
    ]
    assert [c.name for c in config.deselected] == [
        "marked",
        "store[mongo]",
        "store[ferretdb]",
        "blob[s3]",
        "on-minio",
    ]
    lines = left_out.report(config, items)
    assert lines[0].startswith("left out for want of a backend (deselected: not run")
    lacks = left_out.LACKS["ferretdb"]["transactions"]
    assert lines[1:] == [
        f"  ferretdb: 1 case deselected, lacks transactions: {lacks}",
        "  mongo: 2 cases deselected, not run: MONGODB_URI not set",
        "  s3: 2 cases deselected, not run: no MinIO",
        "  end-to-end: 1 case, none on MongoDB (their servers use sqlite; MONGODB_URI runs "
        "them on MongoDB)",
    ]


def test_nothing_is_said_when_every_backend_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(left_out, "absent_backends", dict)
    items: list[Any] = [Case("store[mongo]", ("backend",), {"backend": "mongo"})]
    config: Any = Config()
    left_out.deselect(config, items)
    assert len(items) == 1 and config.deselected == [] and left_out.report(config, items) == []


def test_under_xdist_the_controller_reports_what_a_worker_left_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pytest-xdist's controller collects nothing: a worker hands its counts over
    (config.workeroutput, read back when the worker goes down) for the summary at the end."""
    monkeypatch.setattr(left_out, "absent_backends", lambda: {"mongo": "MONGODB_URI not set"})
    worker: Any = Config()
    worker.workeroutput = {}
    items: list[Any] = [
        Case("store[mongo]", ("backend",), {"backend": "mongo"}),
        Case("e2e", path=Path("tests/e2e/test_y.py")),
    ]
    left_out.deselect(worker, items)
    controller: Any = Config()
    left_out.from_worker(controller, worker.workeroutput)
    left_out.from_worker(controller, {})  # a worker that had nothing to say changes nothing
    assert left_out.report(controller) == [
        "left out for want of a backend (deselected: not run, not counted as passed):",
        "  mongo: 1 case deselected, not run: MONGODB_URI not set",
        "  end-to-end: 1 case, none on MongoDB (their servers use sqlite; MONGODB_URI runs "
        "them on MongoDB)",
    ]
