"""Reading a server's /metrics: its port from the log, and its samples by name and labels."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

from tests.serverproc import ServerProcess

METRICS_LINE = re.compile(r"metrics at http://(\S+):(\d+)/metrics")


def metrics_port(server: ServerProcess, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(server.log):
            found = METRICS_LINE.search(line)
            if found:
                return int(found.group(2))
        time.sleep(0.05)
    raise AssertionError("no 'metrics at' line in the log:\n" + "".join(server.log))


class Samples:
    """One scrape: every sample's value by (name, labels), and every family's name."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        self.families: set[str] = set()
        for family in text_string_to_metric_families(text):
            self.families.add(family.name)
            for sample in family.samples:
                self.values[(sample.name, frozenset(sample.labels.items()))] = sample.value

    @property
    def names(self) -> set[str]:
        """Every sample name (histograms' _bucket, _sum and _count; counters' _total)."""
        return {name for name, _ in self.values}

    def get(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """The value (0 for a series not exported yet)."""
        return self.values.get((name, frozenset((labels or {}).items())), 0.0)

    def total(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """The sum over every series of `name` whose labels include `labels`."""
        wanted = set((labels or {}).items())
        return sum(v for (n, ls), v in self.values.items() if n == name and wanted <= ls)


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return Samples(response.read().decode())


def rpc(method: str, code: str | None = None, kind: str = "unary") -> dict[str, str]:
    """go-grpc-prometheus' labels of an AssetService method (and a code)."""
    labels = {"grpc_service": "asset.v1.AssetService", "grpc_method": method, "grpc_type": kind}
    if code is not None:
        labels["grpc_code"] = code
    return labels
