"""What metrics and the access log cost: GetAsset calls per second, each setting against
telemetry off (and against another source tree, e.g. main before telemetry existed).

    .venv/bin/python -m bench.telemetry [--rounds 7] [--calls 4000] [--baseline /tmp/main]

Every server is a child process writing its log to a file (as a container runtime would
take it), on SQLite in a temp dir; the configurations run in turn, in a new order each
round, and the table shows the median calls/s with the min-max and the ratio of medians.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from bench._client import channel, closed_loop
from bench._procs import cpu_seconds

READY = re.compile(r"asset-service listening on \S+:(\d+)")
CONFIGS = {
    "off": ["--no-access-log"],
    "access log (text)": [],
    "access log (json)": ["--log-format", "json"],
    "metrics": ["--no-access-log", "--metrics-listen", "127.0.0.1:0"],
    "metrics + access log": ["--metrics-listen", "127.0.0.1:0"],
}


class Server:
    """One asset-service process from `tree` (None: this one) with `flags`."""

    def __init__(self, folder: Path, flags: list[str], tree: Path | None = None) -> None:
        self.log = folder / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSET_SERVICE_", "OTEL_"))}
        if tree is not None:
            env["PYTHONPATH"] = str(tree)
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        args = [sys.executable, "-m", "asset_service", "--listen", "127.0.0.1:0"]
        args += ["--storage-root", str(folder / "data"), *flags]
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                args, stdout=subprocess.DEVNULL, stderr=out, env=env, cwd=tree or folder
            )
        deadline = time.monotonic() + 30
        while not (found := READY.search(self.log.read_text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("did not start:\n" + self.log.read_text())
            time.sleep(0.05)
        self.address = f"127.0.0.1:{found.group(1)}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


async def get_rate(server: Server, calls: int, in_flight: int) -> tuple[float, float]:
    """GetAsset calls per second, and the server's CPU microseconds per call (which other
    work on the machine disturbs less than the rate)."""
    async with channel(server.address) as ch:
        stub = pb_grpc.AssetServiceStub(ch)
        made = await stub.CreateValueAsset(
            pb.CreateValueAssetRequest(label="v", value=pb.Value(text="x" * 100))
        )
        request = pb.GetAssetRequest(asset_id=made.asset.id)
        await closed_loop(lambda: stub.GetAsset(request), in_flight, calls // 4)  # warm up
        cpu = cpu_seconds(server.proc.pid)
        rate = await closed_loop(lambda: stub.GetAsset(request), in_flight, calls)
        return rate, (cpu_seconds(server.proc.pid) - cpu) / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.telemetry", description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument(
        "--baseline", type=Path, help="another source tree (git archive of main) to compare"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=list(CONFIGS),
        help="run only this configuration (repeat; 'off' always runs)",
    )
    args = parser.parse_args(argv)
    chosen = ["off", *(args.only or CONFIGS)]
    configs: dict[str, tuple[list[str], Path | None]] = {
        name: (flags, None) for name, flags in CONFIGS.items() if name in chosen
    }
    if args.baseline is not None:
        configs["baseline (its defaults)"] = ([], args.baseline.resolve())
    rates: dict[str, list[float]] = {name: [] for name in configs}
    cpus: dict[str, list[float]] = {name: [] for name in configs}
    names = list(configs)
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in order:
                flags, tree = configs[name]
                folder = Path(tmp) / f"{round_}-{names.index(name)}"
                folder.mkdir()
                server = Server(folder, flags, tree)
                try:
                    rate, cpu = asyncio.run(get_rate(server, args.calls, args.in_flight))
                except grpc.RpcError as exc:
                    raise SystemExit(f"{name}: {exc}") from exc
                finally:
                    server.stop()
                rates[name].append(rate)
                cpus[name].append(cpu)
            print(f"round {round_ + 1}/{args.rounds} done (load {os.getloadavg()[0]:.2f})")
    off = statistics.median(rates["off"])
    off_cpu = statistics.median(cpus["off"])
    runs = f"{args.calls} calls per run, median of {args.rounds}"
    print(f"\nGetAsset, {args.in_flight} in flight, {runs}")
    columns = f"{'calls/s':>8}  {'min-max':>13}  vs off  {'CPU µs/call':>11}  vs off"
    print(f"{'configuration':<26} {columns}")
    for name, found in rates.items():
        median = statistics.median(found)
        spread = f"{min(found):.0f}-{max(found):.0f}"
        cpu = statistics.median(cpus[name])
        print(
            f"{name:<26} {median:>8.0f}  {spread:>13}  {median / off:.3f}  {cpu:>11.0f}  "
            f"{cpu - off_cpu:+.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
