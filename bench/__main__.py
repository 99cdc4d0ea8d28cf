"""Run the benchmarks against a real server process: `make bench` or `python -m bench`."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path

from bench._object_store import object_store_rows
from bench._report import Row, environment, summary, write_json
from bench._reuse import reuse_rows
from bench._rows import Sizes, fanout_rows, guarded, server, store_rows, unary_rows
from bench._transfer import transfer_rows
from bench._watchers import fulfil_latency_row

GROUPS = ("transfer", "fanout", "unary", "reuse", "store")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Every row: the service against a bare grpc.aio ceiling in the same run.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="about a minute: 32 MiB, 200 watchers, 1k vs 10k assets, 2 rounds, no S3 rows",
    )
    parser.add_argument("--rounds", type=int, help="alternating rounds per row (default 5)")
    parser.add_argument("--size-mib", type=int, help="upload/read size (default 256)")
    parser.add_argument("--watchers", type=int, help="fan-out watchers (default 1000)")
    parser.add_argument("--calls", type=int, help="calls per closed-loop run (default 3000)")
    parser.add_argument("--big-store", type=int, help="assets in the big store (default 1000000)")
    parser.add_argument(
        "--only", action="append", choices=GROUPS, help="run only these groups (repeatable)"
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=Path("bench-results.json"),
        help="where every raw measurement goes (default ./bench-results.json)",
    )
    parser.add_argument(
        "--s3-size-mib", type=int, help="object-store upload/read size, 0 skips (default 64)"
    )
    parser.add_argument(
        "--s3-rounds", type=int, default=5, help="object-store rounds, alternating with raw calls"
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="one more flag for every service process, e.g. --server-arg=--direct-io "
        "(repeatable; to measure a setting both ways)",
    )
    args = parser.parse_args()
    quick = args.quick

    def pick(given: int | None, full: int, fast: int) -> int:
        return given if given is not None else (fast if quick else full)

    args.sizes = Sizes(
        transfer_mib=pick(args.size_mib, 256, 32),
        watchers=pick(args.watchers, 1000, 200),
        calls=pick(args.calls, 3000, 1000),
        small_store=1000,
        big_store=pick(args.big_store, 1_000_000, 10_000),
        latency_calls=200 if quick else 300,
        rounds=pick(args.rounds, 5, 2),
        # 1000 watchers share the bench's one connection: keep room above them.
        max_streams=2048,
        server_args=tuple(args.server_arg),
    )
    args.s3_size_mib = pick(args.s3_size_mib, 64, 0)
    if args.sizes.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


async def run(args: argparse.Namespace) -> list[Row]:
    sizes: Sizes = args.sizes
    groups = args.only or GROUPS
    rows: list[Row] = []

    def show(new: list[Row]) -> None:
        for row in new:
            print(row.line(), flush=True)
        rows.extend(new)

    with tempfile.TemporaryDirectory(prefix="asset-bench-") as tmp:
        root = Path(tmp)
        if {"transfer", "fanout", "unary", "reuse"} & set(groups):
            svc = server(root / "main", sizes).start()
            try:
                mib = sizes.transfer_mib
                if "transfer" in groups:
                    names = [
                        f"upload {mib} MiB (quiet)",
                        f"upload {mib} MiB (busy)",
                        f"server RSS growth, {mib} MiB upload",
                        f"ReadAsset {mib} MiB",
                        f"ReadAsset {mib} MiB right after its upload",
                    ]
                    show(await guarded(names, transfer_rows(svc, sizes)))
                if "fanout" in groups:
                    names = [f"fan-out to {sizes.watchers} watchers"]
                    show(await guarded(names, fanout_rows(svc, sizes)))
                    names = [f"FulfillAsset latency, {sizes.watchers} watchers / none"]
                    latency = fulfil_latency_row(svc.address, sizes.watchers, sizes.rounds)
                    show(await guarded(names, _one(latency)))
                if "unary" in groups:
                    names = [f"GetAsset at {n} in flight" for n in (1, 16, 64)]
                    names.append("CreatePendingAsset at 64 in flight")
                    show(await guarded(names, unary_rows(svc, sizes)))
                if "reuse" in groups:
                    names = ["get-or-create hit latency", f"upload a known {mib} MiB file"]
                    show(await guarded(names, reuse_rows(svc, sizes)))
            finally:
                svc.stop()
        if "store" in groups:
            names = [
                "GetManifest 1000 inputs",
                "GetManifest 1000 inputs, VALUEs new",
                "GetAsset latency",
                "ListAssets(100) latency",
                "selector watch start latency",
                "selector watch from revision 0 latency",
                "label selector watch from revision 0 latency",
                "tag selector watch from revision 0 latency",
                "lease sweep pass latency",
            ]
            show(await guarded(names, store_rows(root / "store", sizes)))
    if args.s3_size_mib > 0:
        names = [
            f"object store {op} {args.s3_size_mib} MiB{what}"
            for op in ("upload", "read")
            for what in ("", ": what the cores allow")
        ]
        show(await guarded(names, object_store_rows(args.s3_size_mib, args.s3_rounds)))
    return rows


async def _one(row: Awaitable[Row]) -> list[Row]:
    return [await row]


def main() -> None:
    args = parse()
    env = environment()
    sizes: Sizes = args.sizes
    started = time.monotonic()
    print(
        f"commit {env['commit'][:12]}{' (dirty)' if env['dirty'] else ''}, "
        f"{env['cpu_count']} CPUs, load {env['loadavg'][0]:.1f}, "
        f"{sizes.rounds} rounds{', quick' if args.quick else ''}; "
        "ratio = service / bare ceiling (throughput), or as the row says",
        flush=True,
    )
    rows = asyncio.run(run(args))
    print(f"{summary(rows)} ({time.monotonic() - started:.0f} s)")
    params = {k: v for k, v in vars(args).items() if k not in ("sizes", "json")}
    params["sizes"] = vars(sizes)
    write_json(args.json, env, params, rows)
    print(f"raw measurements: {args.json}")


if __name__ == "__main__":
    main()
