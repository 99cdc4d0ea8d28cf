"""Transfer rows: upload, download and read right after write, beside their bare ceilings."""

from __future__ import annotations

import hashlib
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from bench import _client as client
from bench._procs import (
    Burner,
    Ceiling,
    RssSampler,
    cpu_seconds,
    minor_faults,
    own_cpu_seconds,
    wait_quiet,
)
from bench._report import Row, load1
from bench._rows import Sizes, alternate
from tests.serverproc import ServerProcess

MiB = client.MiB


def _cpu_per_mib(pid: int, before: tuple[float, float], mib: int) -> tuple[float, float]:
    server, own = cpu_seconds(pid) - before[0], own_cpu_seconds() - before[1]
    return server * 1e3 / mib, own * 1e3 / mib


def _sha256_ms_per_mib(chunk: bytes, mib: int = 64) -> float:
    """CPU milliseconds one core spends on sha256 per MiB (the best of three runs)."""
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        digest = hashlib.sha256()
        for _ in range(mib * MiB // len(chunk)):
            digest.update(chunk)
        best = min(best, time.process_time() - start)
    return best * 1e3 / mib


def _cpu_bound_row(
    mib: int,
    cpu: dict[str, list[tuple[float, float]]],
    bare_s: list[float],
    size: int,
    sha256_ms: float,
) -> Row:
    """What the machine's cores allow the upload: each quiet run's CPU per MiB (server and
    client processes; the kernel's writeback threads are not counted, so the bound is
    generous) turned into the throughput the cores could give at best, against the bare
    ceiling's throughput in the same round."""
    cores = os.cpu_count() or 1
    bounds = [
        cores / ((server + client_ms) / 1e3) / (size / MiB / bare)
        for (server, client_ms), bare in zip(cpu["service"], bare_s, strict=True)
    ]

    def med(key: str, i: int) -> float:
        return statistics.median(run[i] for run in cpu[key])

    return Row(
        f"upload {mib} MiB: what {cores} cores allow",
        "",
        bounds,
        load1(),
        f"info: CPU ms per MiB: service {med('service', 0):.2f} + its client "
        f"{med('service', 1):.2f}; bare {med('bare', 0):.2f} + its client {med('bare', 1):.2f}; "
        f"sha256 alone {sha256_ms:.2f}; ratio = {cores} cores / the service's CPU per MiB, "
        "against the bare throughput",
        {"cpu_ms_per_mib": cpu, "sha256_ms_per_mib": sha256_ms},
    )


def _upload_info_rows(
    mib: int, size: int, service: list[float], extra: dict[str, list[float]]
) -> list[Row]:
    """The quiet uploads against what else could bound them (info rows, no bar)."""
    what = {
        "tuned": (
            "vs bare with the service's malloc",
            "the count-only ceiling with asset_service/allocator.py applied: {} MiB/s (a bare "
            "server need not fault in each 1 MiB message)",
        ),
        "parse": (
            "vs a bare server parsing each message",
            "UploadAssetRequest.FromString per message, then count: {} MiB/s (the ceiling "
            "before the service stopped parsing chunks)",
        ),
        "sink": (
            "vs its own sink alone",
            "storage/sink.FileSink in the bench process, no network: {} MiB/s (hash, direct "
            "write, fsync: what the upload costs without gRPC)",
        ),
    }
    return [
        Row(
            f"upload {mib} MiB {name}",
            "",
            [t / s for s, t in zip(service, extra[key], strict=True)],
            load1(),
            "info: " + detail.format(f"{_mib_s(size, extra[key]):.0f}"),
            {"service_s": service, "other_s": extra[key]},
        )
        for key, (name, detail) in what.items()
    ]


def _two_cores() -> str:
    """Why the quiet upload's bar is out of reach with two cores (bench/README.md)."""
    if (os.cpu_count() or 1) > 2:
        return ""
    return (
        "2 cores: sha256 (0.58 ms/MiB) and the ceiling's own receive and send (~1.2 ms/MiB) "
        "cap it near the bar before a byte is written"
    )


def _mib_s(size: int, seconds: list[float]) -> float:
    return size / MiB / statistics.median(seconds)


async def transfer_rows(svc: ServerProcess, sizes: Sizes) -> list[Row]:
    """Upload quiet and busy (and what limits it), RSS growth during the upload, ReadAsset."""
    size, mib = sizes.transfer, sizes.transfer_mib
    payload = client.Payload.make(size)
    warm = client.Payload.make(MiB)
    rows = []
    with (
        Ceiling("upload", sizes.max_streams) as up_bare,
        Ceiling("upload", sizes.max_streams, service_malloc=True) as up_tuned,
        Ceiling("upload-parse", sizes.max_streams) as up_parse,
        Ceiling("read", sizes.max_streams) as read_bare,
    ):
        async with (
            client.channel(svc.address) as s_ch,
            client.channel(up_bare.address) as b_ch,
            client.channel(up_tuned.address) as t_ch,
            client.channel(up_parse.address) as p_ch,
        ):
            s_stub, b_stub = pb_grpc.AssetServiceStub(s_ch), pb_grpc.AssetServiceStub(b_ch)
            # Info ceilings, timed once per quiet round after the service and the bare one.
            extras = {
                "tuned": pb_grpc.AssetServiceStub(t_ch),
                "parse": pb_grpc.AssetServiceStub(p_ch),
            }
            _, warm_id = await client.upload(s_stub, warm)
            await s_stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=warm_id))
            for stub in (b_stub, *extras.values()):
                await client.upload(stub, warm)
            rss: dict[str, list[float]] = {"service": [], "bare": []}
            quiet_rss = rss
            # CPU milliseconds per MiB uploaded: (server process, client process) per run.
            cpu: dict[str, list[tuple[float, float]]] = {"service": [], "bare": []}

            def uploader(
                stub: pb_grpc.AssetServiceAsyncStub, pid: int, key: str, stores: bool
            ) -> Callable[[], Awaitable[float]]:
                async def run() -> float:
                    before = cpu_seconds(pid), own_cpu_seconds()
                    with RssSampler(pid) as sampler:
                        elapsed, asset_id = await client.upload(stub, payload)
                    cpu[key].append(_cpu_per_mib(pid, before, mib))
                    rss[key].append(sampler.growth / MiB)
                    if stores:  # the service: deleted again (the bare ceiling keeps nothing)
                        await stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=asset_id))
                    wait_quiet()
                    return elapsed

                return run

            svc_upload = uploader(s_stub, svc.pid, "service", stores=True)
            bare_upload = uploader(b_stub, up_bare.pid, "bare", stores=False)

            extra_times: dict[str, list[float]] = {"tuned": [], "parse": [], "sink": []}
            for mode in ("quiet", "busy"):
                times: list[tuple[float, float]] = []
                for turn in range(sizes.rounds):
                    if mode == "busy":
                        with Burner():
                            wait_quiet(0.3)
                            times.append(await alternate(turn, svc_upload, bare_upload))
                        continue
                    times.append(await alternate(turn, svc_upload, bare_upload))
                    for name, stub in extras.items():
                        extra_times[name].append((await client.upload(stub, payload))[0])
                        wait_quiet()
                    extra_times["sink"].append(await client.local_sink(svc.root, payload))
                    wait_quiet()
                row = _throughput_row(
                    f"upload {mib} MiB ({mode})",
                    "≥0.85" if mode == "quiet" else "≥0.65",
                    size,
                    times,
                    blocked=_two_cores() if mode == "quiet" else "",
                )
                rows.append(row)
                if mode == "quiet":
                    # Growth of the quiet runs only: a burner does not change what is buffered.
                    quiet_rss = {k: list(v) for k, v in rss.items()}
                    sha256_ms = _sha256_ms_per_mib(payload.chunk)
                    rows.append(_cpu_bound_row(mib, cpu, row.raw["bare_s"], size, sha256_ms))
            rows += _upload_info_rows(mib, size, rows[0].raw["service_s"], extra_times)
            rows.append(
                Row(
                    f"server RSS growth, {mib} MiB upload",
                    "<32",
                    quiet_rss["service"],
                    load1(),
                    f"MiB; bare server {statistics.median(quiet_rss['bare']):.1f} MiB",
                    {"service_mib": quiet_rss["service"], "bare_mib": quiet_rss["bare"]},
                )
            )

        async with client.channel(svc.address) as s_ch, client.channel(read_bare.address) as b_ch:
            s_stub, b_stub = pb_grpc.AssetServiceStub(s_ch), pb_grpc.AssetServiceStub(b_ch)
            # A pipeline's next task reads an output right after its upload: each round
            # uploads (untimed), then times that first read against one bare read. The
            # last round's asset stays for the rows after, which read it again and again.
            first: list[tuple[float, float]] = []

            def read_of(
                stub: pb_grpc.AssetServiceAsyncStub, asset_id: str
            ) -> Callable[[], Awaitable[float]]:
                return lambda: client.read(stub, asset_id, size)

            for turn in range(sizes.rounds):
                _, asset_id = await client.upload(s_stub, payload)
                first.append(
                    await alternate(turn, read_of(s_stub, asset_id), read_of(b_stub, asset_id))
                )
                if turn < sizes.rounds - 1:
                    await s_stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=asset_id))
                wait_quiet()
            faults: dict[str, list[float]] = {"service": [], "bare": []}

            def reader(
                stub: pb_grpc.AssetServiceAsyncStub, pid: int, key: str
            ) -> Callable[[], Awaitable[float]]:
                async def run() -> float:
                    before = minor_faults(pid)
                    elapsed = await client.read(stub, asset_id, size)
                    faults[key].append(minor_faults(pid) - before)
                    wait_quiet()
                    return elapsed

                return run

            times = [
                await alternate(
                    turn,
                    reader(s_stub, svc.pid, "service"),
                    reader(b_stub, read_bare.pid, "bare"),
                )
                for turn in range(sizes.rounds)
            ]
            await s_stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=asset_id))
        rows.append(
            _throughput_row(
                f"ReadAsset {mib} MiB",
                "≥0.8",
                size,
                times,
                after=f"; minor faults service {statistics.median(faults['service']):.0f}, "
                f"bare {statistics.median(faults['bare']):.0f}",
                raw={"minflt": faults},
            )
        )
        rows.append(
            _throughput_row(
                f"ReadAsset {mib} MiB right after its upload",
                "≥0.8",
                size,
                first,
                before="the first read of each round's new upload: ",
            )
        )
    return rows


def _throughput_row(
    name: str,
    bar: str,
    size: int,
    times: list[tuple[float, float]],
    *,
    before: str = "",
    after: str = "",
    raw: Mapping[str, Any] | None = None,
    blocked: str = "",
) -> Row:
    """A row of (service, bare) seconds per round for `size` bytes: the ratio of their
    throughputs, both in MiB/s in the detail (between `before` and `after`), both raw."""
    service, bare = [t[0] for t in times], [t[1] for t in times]
    return Row(
        name,
        bar,
        [b / s for s, b in times],
        load1(),
        f"{before}service {_mib_s(size, service):.0f} MiB/s, "
        f"bare {_mib_s(size, bare):.0f} MiB/s{after}",
        {"service_s": service, "bare_s": bare, **(raw or {})},
        blocked=blocked,
    )
