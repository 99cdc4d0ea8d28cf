"""Where one call's CPU goes: `python -m bench.cpu_pieces` (bench/README.md, the etcd section).

Starts the service (SQLite, defaults, one worker) with the named sync pieces of the call
path wrapped in place, each adding its thread CPU (time.thread_time_ns; a piece inside
another counts for the outer one only), drives it with the Go load generator of
bench/etcd at 64 callers, and prints each piece's µs per call, and the rest (grpc, asyncio,
handler glue) as the process's CPU minus their sum.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._procs import cpu_seconds

WRITER = "store: writer thread"
# (module, attribute path, piece): what is wrapped in the server.
PIECES = [
    ("asset_service.telemetry._calls", "CallObserver._begin", "call observer and access line"),
    ("asset_service.telemetry._calls", "CallObserver._finish", "call observer and access line"),
    ("asset_service.telemetry._calls", "principal_of_call", "call observer and access line"),
    ("asset_service.api.convert", "asset_to_pb", "response conversion"),
    ("asset_service.api.interceptor", "_sends_credentials", "security wrapper"),
    ("asset_service.api.interceptor", "set_principal", "security wrapper"),
    ("asset_service.api.interceptor", "reset_principal", "security wrapper"),
    ("asset_service.api.handlers", "_parsed", "servicer wrapper"),
    ("asset_service.api.servicer", "_caller", "servicer wrapper"),
    ("asset_service.store.sqlite._readers", "Readers.get_on_loop", "store: point read"),
    ("asset_service.store.sqlite._writer", "GroupWriter._run_admitted", WRITER),
    ("asset_service.store.sqlite._writer", "GroupWriter._run_solo", WRITER),
    ("asset_service.domain.manager._creation", "pending_record", "manager"),
    ("asset_service.domain.manager._creation", "with_expiry", "manager"),
    ("asset_service.domain.manager._context", "parse_asset_id", "manager"),
    ("asset_service.domain.watch._hub", "ChangeHub.publish", "change hub publish"),
]
SPENT: dict[str, int] = {}
_depth = threading.local()


def _timed(fn: Callable[..., Any], piece: str) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        depth = getattr(_depth, "n", 0)
        _depth.n = depth + 1
        start = time.thread_time_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            _depth.n = depth
            if depth == 0:
                SPENT[piece] = SPENT.get(piece, 0) + time.thread_time_ns() - start

    return timed


def _instrument(out: Path) -> None:
    import importlib

    from asset_service.telemetry import _calls

    for module, path, piece in PIECES:
        owner: Any = importlib.import_module(module)
        *parents, name = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        setattr(owner, name, _timed(getattr(owner, name), piece))
    wrap_out, wrap_in = _calls._counting_serializer, _calls._counting_deserializer
    _calls._counting_serializer = lambda f: wrap_out(f and _timed(f, "response serialization"))  # type: ignore[assignment]
    _calls._counting_deserializer = lambda f: wrap_in(f and _timed(f, "request parsing"))  # type: ignore[assignment]

    def dump() -> None:
        while True:
            time.sleep(0.5)
            out.write_text(json.dumps(SPENT))

    threading.Thread(target=dump, daemon=True).start()


def serve(out: Path, server_args: list[str]) -> None:
    """In the server process: instrument, then run the server as `python -m asset_service`."""
    _instrument(out)
    sys.argv = ["asset_service", *server_args]
    runpy.run_module("asset_service", run_name="__main__", alter_sys=True)


def _spent(out: Path) -> dict[str, int]:
    time.sleep(1.0)  # a dump after the last call
    return {k: int(v) for k, v in json.loads(out.read_text()).items()}


def measure(load: Path, kind: str, calls: int) -> None:
    with tempfile.TemporaryDirectory(prefix="asset-pieces-") as tmp, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        out = Path(tmp) / "pieces.json"
        args = ["--listen", f"127.0.0.1:{port}", "--storage-root", f"{tmp}/data"]
        args += ["--database-url", f"sqlite:///{tmp}/assets.db", "--workers", "1"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASSET_SERVICE_")}
        server = subprocess.Popen(
            [sys.executable, "-m", "bench.cpu_pieces", "--serve", str(out), "--", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        try:

            def run(n: int) -> None:
                command = [str(load), f"-kind={kind}", f"-addr=127.0.0.1:{port}"]
                command += ["-callers=64", f"-calls={n}"]
                subprocess.run(command, capture_output=True, check=True, timeout=300)

            deadline = time.monotonic() + 60
            while subprocess.run(
                [str(load), f"-kind={kind}", f"-addr=127.0.0.1:{port}", "-calls=1"],
                capture_output=True,
                check=False,
                timeout=60,
            ).returncode:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the instrumented server did not start")
                time.sleep(0.2)
            run(2000)  # warm up
            before, cpu = _spent(out), cpu_seconds(server.pid)
            run(calls)
            cpu = cpu_seconds(server.pid) - cpu
            after = _spent(out)
        finally:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)
    per_call = calls + 200  # the load generator's own warm-up calls
    total = cpu * 1e6 / per_call
    print(f"{kind}: server CPU {total:.0f} us per call, load {os.getloadavg()[0]:.1f}")
    pieces = {k: (after[k] - before.get(k, 0)) / 1000 / per_call for k in after}
    for piece, us in sorted(pieces.items(), key=lambda p: -p[1]):
        print(f"  {us:6.1f} us  {piece}")
    print(f"  {total - sum(pieces.values()):6.1f} us  the rest: grpc, asyncio, handler glue")


def main() -> None:
    from bench.etcd import TOOLS

    parser = argparse.ArgumentParser(prog="python -m bench.cpu_pieces", description=__doc__)
    parser.add_argument("--kind", action="append", help="asset-get, asset-create (both)")
    parser.add_argument("--calls", type=int, default=8000, help="calls per kind (8000)")
    parser.add_argument("--tools", type=Path, default=TOOLS, help="where bench.etcd built load")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("server_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.server_args)
        return
    load = args.tools / "load"
    if not load.exists():
        sys.exit(f"no {load}: run `make bench-etcd` once (it builds the load generator)")
    for kind in args.kind or ["asset-get", "asset-create"]:
        measure(load, kind, args.calls)


if __name__ == "__main__":
    main()
