"""The metadata path against etcd, side by side: `python -m bench.etcd` (bench/README.md).

Builds a pinned etcd (bench/etcd/server, go.etcd.io/etcd/server/v3 as bench/etcd/go.mod
pins it) and a Go load generator (bench/etcd/load) into .tools/ once, then runs the same
closed loop of Go callers against etcd and against the service, alternately, round by
round: CreatePendingAsset against Put, GetAsset against a serializable Get.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._report import REPO, Row, environment, load1, summary, write_json
from tests.serverproc import ServerProcess

ETCD_VERSION = "v3.6.17"  # bench/etcd/go.mod's go.etcd.io/etcd/server/v3
TOOLS = REPO / ".tools" / f"etcd-{ETCD_VERSION}"
MODULE = REPO / "bench" / "etcd"
START_TIMEOUT = 30.0
RUN_TIMEOUT = 300.0

# (service call, etcd call, bar); the service's calls per second over etcd's.
PAIRS = (
    ("asset-create", "etcd-put", "≥0.5"),
    ("asset-get", "etcd-get", "≥0.4"),
)
NAMES = {
    "asset-create": "CreatePendingAsset/s vs etcd Put",
    "asset-get": "GetAsset/s vs etcd serializable Get",
}


def build(tools: Path) -> tuple[Path, Path]:
    """etcd and the load generator, built once (GOTOOLCHAIN=local: this machine's Go)."""
    etcd, load = tools / "etcd", tools / "load"
    for binary, package in ((etcd, "./server"), (load, "./load")):
        if binary.exists():
            continue
        tools.mkdir(parents=True, exist_ok=True)
        print(f"building {binary} (the first time only: a few minutes)", flush=True)
        env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-buildvcs=false"}
        partial = binary.with_suffix(".tmp")
        subprocess.run(
            ["go", "build", "-o", str(partial), package],
            cwd=MODULE,
            env=env,
            check=True,
            timeout=1800,
        )
        partial.rename(binary)  # whole or not at all: a half-built binary never looks built
    return etcd, load


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Etcd:
    """One etcd member on 127.0.0.1, data in `root`, fsync on every commit (its default)."""

    def __init__(self, binary: Path, root: Path, load: Path) -> None:
        self.binary, self.root, self.load = binary, root, load
        self.client = _free_port()
        peer = _free_port()
        self.args = [
            str(binary),
            "--name=bench",
            f"--data-dir={root / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{self.client}",
            f"--advertise-client-urls=http://127.0.0.1:{self.client}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=bench=http://127.0.0.1:{peer}",
            "--log-level=error",
            "--quota-backend-bytes=8589934592",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.client}"

    def __enter__(self) -> Etcd:
        # Its log (errors only; a stop logs its listeners closing) stays with its data.
        with open(self.root / "etcd.log", "wb") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            probe = subprocess.run(
                [str(self.load), "-kind=etcd-get", f"-addr={self.address}", "-calls=1"],
                capture_output=True,
                timeout=START_TIMEOUT,
                check=False,
            )
            if probe.returncode == 0:
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"etcd did not start: {probe.stderr.decode()[-500:]}")
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_load(load: Path, kind: str, address: str, callers: int, calls: int) -> float:
    done = subprocess.run(
        [str(load), f"-kind={kind}", f"-addr={address}", f"-callers={callers}", f"-calls={calls}"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"load {kind}: {done.stderr.strip()[-500:]}")
    return float(json.loads(done.stdout.splitlines()[-1])["per_s"])


def compare(
    load: Path, service: str, etcd: str, workers: str, args: argparse.Namespace
) -> list[Row]:
    rows = []
    for ours, theirs, bar in PAIRS:
        for callers in args.callers:
            run_load(load, ours, service, callers, args.calls // 4)  # warm up both
            run_load(load, theirs, etcd, callers, args.calls // 4)
            rates = []
            for turn in range(args.rounds):
                if turn % 2:
                    e = run_load(load, theirs, etcd, callers, args.calls)
                    s = run_load(load, ours, service, callers, args.calls)
                else:
                    s = run_load(load, ours, service, callers, args.calls)
                    e = run_load(load, theirs, etcd, callers, args.calls)
                rates.append((s, e))
            s_r, e_r = [r[0] for r in rates], [r[1] for r in rates]
            rows.append(
                Row(
                    f"{NAMES[ours]}, {callers} callers, --workers {workers}",
                    bar if callers == 64 else "",
                    [s / e for s, e in rates],
                    load1(),
                    f"service {statistics.median(s_r):.0f}/s, etcd {statistics.median(e_r):.0f}/s "
                    "(Go clients, one connection per 16 callers)",
                    {"service_per_s": s_r, "etcd_per_s": e_r, "callers": callers},
                )
            )
            print(rows[-1].line(), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.etcd", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--calls", type=int, default=10000, help="calls per run (default 10000)")
    parser.add_argument(
        "--callers", type=int, action="append", help="calls in flight (repeatable; 1 and 64)"
    )
    parser.add_argument(
        "--workers",
        action="append",
        help="the service's --workers (repeatable; default 1 and auto)",
    )
    parser.add_argument("--json", type=Path, default=Path("bench-etcd.json"))
    parser.add_argument(
        "--tools", type=Path, default=TOOLS, help=f"where the binaries go (default {TOOLS})"
    )
    args = parser.parse_args()
    args.callers = args.callers or [1, 64]
    workers = args.workers or ["1", "auto"]
    if shutil.which("go") is None and not (args.tools / "load").exists():
        sys.exit("python -m bench.etcd: needs Go to build etcd and the load generator")
    etcd_bin, load = build(args.tools)
    env = environment()
    print(f"commit {env['commit'][:12]}, {env['cpu_count']} CPUs, load {load1():.1f}", flush=True)
    rows: list[Row] = []
    with (
        tempfile.TemporaryDirectory(prefix="asset-etcd-") as tmp,
        Etcd(etcd_bin, Path(tmp), load) as etcd,
    ):
        for count in workers:
            root = Path(tmp) / f"service-{count}"
            svc = ServerProcess(
                root / "data", f"sqlite:///{root / 'assets.db'}", extra_args=["--workers", count]
            ).start()
            try:
                rows += compare(load, svc.address, etcd.address, count, args)
            finally:
                svc.stop()
    print(summary(rows))
    params = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_json(args.json, env, params, rows)


if __name__ == "__main__":
    main()
