"""The metadata path against etcd, side by side: `python -m bench.etcd` (bench/README.md).

Builds a pinned etcd (bench/etcd/server, go.etcd.io/etcd/server/v3 as bench/etcd/go.mod
pins it) and a Go load generator (bench/etcd/load) into .tools/ once, then runs the same
closed loop of Go callers against etcd and against the service, alternately, round by
round: CreatePendingAsset against Put, GetAsset against a serializable Get. A third
side, the echo floor, is bare grpc.aio (bench/_bare.py `unary`) in as many processes as
the service has workers, sharing one port the same way (SO_REUSEPORT), answering each
call with the bytes the service answered: what Python gRPC alone allows. Every run also
takes each side's CPU seconds (all its processes), per call.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service.config import Settings
from asset_service.supervisor import cores
from bench._procs import Ceiling, cpu_seconds
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
FLOOR_NAMES = {
    "asset-create": "CreatePendingAsset/s vs the grpc.aio echo floor",
    "asset-get": "GetAsset/s vs the grpc.aio echo floor",
}
# The load generator's own warm-up calls in every run (bench/etcd/load): CPU covers them too.
WARM_UP_CALLS = 200


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

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

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


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (a supervisor's workers)."""
    pids = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                for child in fh.read().split():
                    pids += _tree(int(child))
    except FileNotFoundError:  # it ended meanwhile
        pass
    return pids


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for root in pids:
        for pid in _tree(root):
            with contextlib.suppress(FileNotFoundError):  # it ended meanwhile
                total += cpu_seconds(pid)
    return total


@dataclass
class Side:
    """One side of a comparison: where the load goes, and whose CPU it costs."""

    address: str
    pids: list[int]


@dataclass
class Run:
    per_s: float
    cpu_us: float  # CPU microseconds of the side's processes per call


def measure(load: Path, kind: str, side: Side, callers: int, calls: int) -> Run:
    before = _cpu(side.pids)
    per_s = run_load(load, kind, side.address, callers, calls)
    spent = _cpu(side.pids) - before
    return Run(per_s, spent * 1e6 / (calls + WARM_UP_CALLS))


def captured_replies(address: str) -> dict[str, bytes]:
    """The service's own answers to the load generator's calls (same sizes for the floor)."""
    with grpc.insecure_channel(address) as channel:

        def call(method: str, request: Any) -> bytes:
            stub = channel.unary_unary(
                f"/asset.v1.AssetService/{method}",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=None,
            )
            return bytes(stub(request, timeout=30))

        made = call(
            "CreateValueAsset",
            pb.CreateValueAssetRequest(label="bench", value=pb.Value(json='{"k": 1}')),
        )
        asset_id = pb.CreateValueAssetResponse.FromString(made).asset.id
        return {
            "CreateValueAsset": made,
            "GetAsset": call("GetAsset", pb.GetAssetRequest(asset_id=asset_id)),
            "CreatePendingAsset": call(
                "CreatePendingAsset",
                pb.CreatePendingAssetRequest(
                    task_id="bench", label="out-0", type=pb.ASSET_TYPE_VALUE
                ),
            ),
        }


class Floor:
    """`count` bare grpc.aio processes on one port (SO_REUSEPORT), as --workers `count`."""

    def __init__(self, count: int, replies: dict[str, bytes]) -> None:
        self.count, self.replies = count, replies
        self.ceilings: list[Ceiling] = []

    def __enter__(self) -> Side:
        streams = Settings.max_streams_per_connection
        try:
            first = Ceiling("unary", streams, self.replies, shared=True)
            self.ceilings.append(first)
            for _ in range(self.count - 1):
                self.ceilings.append(
                    Ceiling("unary", streams, self.replies, port=first.port, shared=True)
                )
        except BaseException:
            self.__exit__()
            raise
        return Side(first.address, [c.pid for c in self.ceilings])

    def __exit__(self, *exc: object) -> None:
        for ceiling in self.ceilings:
            ceiling.stop()


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
    load: Path, sides: dict[str, Side], workers: str, args: argparse.Namespace
) -> list[Row]:
    """Rounds of service, etcd and floor runs, the order rotated every round."""
    rows = []
    for ours, theirs, bar in PAIRS:
        kinds = {"service": ours, "etcd": theirs, "floor": ours}
        for callers in args.callers:
            for name, kind in kinds.items():  # warm up all three
                run_load(load, kind, sides[name].address, callers, args.calls // 4)
            runs: dict[str, list[Run]] = {name: [] for name in kinds}
            for turn in range(args.rounds):
                order = list(kinds)[turn % 3 :] + list(kinds)[: turn % 3]
                for name in order:
                    runs[name].append(measure(load, kinds[name], sides[name], callers, args.calls))
            s_r, e_r, f_r = ([r.per_s for r in runs[n]] for n in ("service", "etcd", "floor"))
            cpu = {n: statistics.median(r.cpu_us for r in runs[n]) for n in runs}
            raw = {
                "callers": callers,
                "service_per_s": s_r,
                "etcd_per_s": e_r,
                "floor_per_s": f_r,
                **{f"{n}_cpu_us_per_call": [r.cpu_us for r in runs[n]] for n in runs},
            }
            rows.append(
                Row(
                    f"{NAMES[ours]}, {callers} callers, --workers {workers}",
                    bar if callers == 64 else "",
                    [s / e for s, e in zip(s_r, e_r, strict=True)],
                    load1(),
                    f"service {statistics.median(s_r):.0f}/s, etcd {statistics.median(e_r):.0f}/s "
                    f"(Go clients, one connection per 16 callers); CPU per call: service "
                    f"{cpu['service']:.0f} us, etcd {cpu['etcd']:.0f} us",
                    raw,
                )
            )
            print(rows[-1].line(), flush=True)
            rows.append(
                Row(
                    f"{FLOOR_NAMES[ours]}, {callers} callers, --workers {workers}",
                    "",
                    [s / f for s, f in zip(s_r, f_r, strict=True)],
                    load1(),
                    f"floor {statistics.median(f_r):.0f}/s, {cpu['floor']:.0f} us CPU per call "
                    f"(service {cpu['service']:.0f}); floor vs etcd "
                    f"{statistics.median(f / e for f, e in zip(f_r, e_r, strict=True)):.2f}",
                    raw,
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
                processes = cores() if count == "auto" else int(count)
                with Floor(processes, captured_replies(svc.address)) as floor:
                    sides = {
                        "service": Side(svc.address, [svc.pid]),
                        "etcd": Side(etcd.address, [etcd.pid]),
                        "floor": floor,
                    }
                    rows += compare(load, sides, count, args)
            finally:
                svc.stop()
    print(summary(rows))
    params = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_json(args.json, env, params, rows)


if __name__ == "__main__":
    main()
