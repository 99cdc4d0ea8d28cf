"""End to end: hostile server-side paths (symlinks, escapes, odd files, links, races) fail."""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import os
import socket
import stat
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import pytest

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.e2e.helpers import all_assets, expect_error, read_all, server_trace, stored_files
from tests.serverproc import ServerProcess, database_url_for, serving

DENIED = grpc.StatusCode.PERMISSION_DENIED
BAD = grpc.StatusCode.INVALID_ARGUMENT
# A request that loses a race for one file: which of the two depends only on timing. ABORTED
# while the other holds the file's lock (or removed it after this one opened it); NOT_FOUND
# once the other has moved it away before this one looked.
CLEAR_LOSER = {grpc.StatusCode.ABORTED, grpc.StatusCode.NOT_FOUND}
SECRET = b"SECRET: the server must never read or move this file " + os.urandom(32)
SECRET_SHA = hashlib.sha256(SECRET).hexdigest()
WORKER = b"a worker's output, fine to adopt\n"
# The symlink-swap race runs this long: thousands of swaps and a few hundred calls here.
RACE_SECONDS = 5

Call = Callable[[str], Awaitable[object]]


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder next to the import root, holding a file the server must not touch."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_bytes(SECRET)
    (folder / "f").write_bytes(SECRET)
    return folder


async def pending(stub: pb_grpc.AssetServiceStub, task: str = "task-1") -> str:
    made = await stub.CreatePendingAsset(
        pb.CreatePendingAssetRequest(task_id=task, label="out.bin")
    )
    return str(made.asset.id)


def adopters(stub: pb_grpc.AssetServiceStub) -> dict[str, Call]:
    """The three ways to hand the server a path: RegisterFile (copy, move), FulfillAsset."""

    async def copy(path: str) -> object:
        return await stub.RegisterFile(pb.RegisterFileRequest(path=path), timeout=10)

    async def move(path: str) -> object:
        return await stub.RegisterFile(pb.RegisterFileRequest(path=path, move=True), timeout=10)

    async def fulfill(path: str) -> object:
        asset_id = await pending(stub)
        return await stub.FulfillAsset(
            pb.FulfillAssetRequest(asset_id=asset_id, source_path=path), timeout=10
        )

    return {"RegisterFile(copy)": copy, "RegisterFile(move)": move, "FulfillAsset": fulfill}


async def file_assets(stub: pb_grpc.AssetServiceStub) -> list[pb.Asset]:
    return [a for a in await all_assets(stub) if a.status == pb.ASSET_STATUS_AVAILABLE]


def assert_secret_untouched(outside: Path) -> None:
    for name in ("secret.txt", "f"):
        assert (outside / name).read_bytes() == SECRET, f"{outside / name} was changed or moved"


async def test_a_symlink_at_any_component_is_refused_without_saying_where_it_points(
    stub: pb_grpc.AssetServiceStub, server: ServerProcess, import_root: Path, outside: Path
) -> None:
    (import_root / "real.txt").write_bytes(WORKER)
    (import_root / "final-link.txt").symlink_to(outside / "secret.txt")
    (import_root / "inner-link.txt").symlink_to(import_root / "real.txt")  # even inside
    (import_root / "dir-link").symlink_to(outside)
    (import_root / "a" / "b").mkdir(parents=True)
    (import_root / "a" / "b" / "deep-link").symlink_to(outside)
    (import_root / "a" / "self").symlink_to(import_root / "a" / "b")
    (import_root / "a" / "b" / "f").write_bytes(WORKER)
    # (the path handed to the server, the symlink on the way)
    cases = [
        (import_root / "final-link.txt", import_root / "final-link.txt"),
        (import_root / "inner-link.txt", import_root / "inner-link.txt"),
        (import_root / "dir-link" / "secret.txt", import_root / "dir-link"),
        (import_root / "a" / "b" / "deep-link" / "f", import_root / "a" / "b" / "deep-link"),
        (import_root / "a" / "self" / "f", import_root / "a" / "self"),
    ]
    for name, call in adopters(stub).items():
        for path, link in cases:
            err = await expect_error(call(str(path)), DENIED, "symbolic link")
            details = err.details() or ""
            # Where the link points is the server's business: no target in the message.
            for secret in (str(outside), os.readlink(link)):
                assert secret not in details, f"{name} {path}: {details!r} reveals {secret}"
    assert_secret_untouched(outside)
    assert (import_root / "real.txt").read_bytes() == WORKER
    assert (import_root / "a" / "b" / "f").read_bytes() == WORKER
    assert await file_assets(stub) == []
    assert stored_files(server.root) == []


async def test_paths_outside_the_import_roots_are_refused(
    stub: pb_grpc.AssetServiceStub, server: ServerProcess, import_root: Path, outside: Path
) -> None:
    """One answer per path, the same for every way of handing it over: a path that is not
    normalized is malformed (INVALID_ARGUMENT, checked before the roots); a normalized one
    outside every root is refused (PERMISSION_DENIED); the import root itself is a directory
    (INVALID_ARGUMENT), not a path outside it."""
    (import_root / "sub").mkdir()
    outside_roots = (DENIED, f"is outside the import roots [{import_root}]")
    cases = {
        str(outside / "secret.txt"): outside_roots,
        f"{import_root}/../outside/secret.txt": (BAD, "has a '..' component"),
        f"{import_root}/sub/../../outside/secret.txt": (BAD, "has a '..' component"),
        f"{import_root}/./sub/../../outside/f": (BAD, "has a '.' component"),
        f"{import_root}//sub/secret.txt": (BAD, "must be normalized: no empty"),
        "/etc/passwd": outside_roots,
        str(import_root) + "-sibling/secret.txt": outside_roots,
        str(import_root): (BAD, f"'{import_root}' is a directory"),
    }
    for call in adopters(stub).values():
        for path, (code, words) in cases.items():
            await expect_error(call(path), code, words)
    assert_secret_untouched(outside)
    assert await file_assets(stub) == []


def make_unix_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Unix socket paths are limited to ~107 bytes: bind from inside the folder.
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        sock.bind(path.name)
    finally:
        os.chdir(cwd)
    return sock


async def test_only_regular_files_are_adopted(
    stub: pb_grpc.AssetServiceStub, server: ServerProcess, import_root: Path
) -> None:
    (import_root / "folder").mkdir()
    os.mkfifo(import_root / "fifo")
    sock = make_unix_socket(import_root / "sock")
    os.mknod(import_root / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    kinds = {
        "folder": "is a directory",
        "fifo": "is a FIFO",
        "sock": "is a socket",
        "null": "is a character device",
    }
    try:
        for name, call in adopters(stub).items():
            for entry, words in kinds.items():
                # The calls time out after 10 s: a server blocked opening the FIFO fails here.
                started = time.monotonic()
                await expect_error(call(str(import_root / entry)), BAD, words)
                assert time.monotonic() - started < 5, f"{name} {entry} took too long"
    finally:
        sock.close()
    # Still answering, still nothing adopted, every special file where it was.
    assert await file_assets(stub) == []
    assert stored_files(server.root) == []
    assert stat.S_ISFIFO(os.lstat(import_root / "fifo").st_mode)
    assert stat.S_ISSOCK(os.lstat(import_root / "sock").st_mode)
    assert stat.S_ISCHR(os.lstat(import_root / "null").st_mode)


async def test_a_file_with_several_hard_links_is_refused(
    stub: pb_grpc.AssetServiceStub, server: ServerProcess, import_root: Path, outside: Path
) -> None:
    link = import_root / "x"
    os.link(outside / "secret.txt", link)
    for call in adopters(stub).values():
        await expect_error(call(str(link)), DENIED, "--allow-hardlinked-imports")
    assert_secret_untouched(outside)
    assert os.stat(link).st_nlink == 2 and link.read_bytes() == SECRET
    assert await file_assets(stub) == []
    assert stored_files(server.root) == []


@pytest.fixture
def hardlink_server(tmp_path: Path, import_root: Path) -> Iterator[ServerProcess]:
    (tmp_path / "hl").mkdir()
    url = database_url_for(tmp_path / "hl")
    args = ["--allow-hardlinked-imports"]
    with serving(
        ServerProcess(tmp_path / "data-hl", url, import_roots=[import_root], extra_args=args)
    ) as proc:
        yield proc


async def test_allow_hardlinked_imports_copies_and_leaves_the_other_name_alone(
    hardlink_server: ServerProcess, import_root: Path, outside: Path
) -> None:
    """With --allow-hardlinked-imports a linked file is copied, never linked into storage: a
    copy leaves the name under the root, a move (RegisterFile(move), FulfillAsset) takes
    only that name; the other link keeps its inode and bytes, and the stored file is an
    inode of its own (the three adoptions of the same bytes share the first copy), so a
    later write through the other name does not reach it."""
    secret = outside / "secret.txt"
    inode = os.stat(secret).st_ino
    async with grpc.aio.insecure_channel(hardlink_server.address) as channel:
        stub = pb_grpc.AssetServiceStub(channel)

        async def fulfill(path: str) -> pb.Asset:
            asset_id = await pending(stub)
            request = pb.FulfillAssetRequest(asset_id=asset_id, source_path=path)
            return (await stub.FulfillAsset(request, timeout=10)).asset

        async def register(path: str, move: bool) -> pb.Asset:
            request = pb.RegisterFileRequest(path=path, move=move)
            return (await stub.RegisterFile(request, timeout=10)).asset

        adopted: list[pb.Asset] = []
        for way, moves in (("copy", False), ("move", True), ("fulfill", True)):
            link = import_root / f"linked-{way}"
            os.link(secret, link)
            if way == "fulfill":
                asset = await fulfill(str(link))
            else:
                asset = await register(str(link), move=moves)
            assert asset.sha256 == SECRET_SHA and asset.size_bytes == len(SECRET), way
            assert await read_all(stub, asset.id) == SECRET, way
            stored = os.stat(asset.storage_path)
            assert stored.st_ino != inode, f"{way}: stored as a link of the outside name"
            # Stored once: a later adoption of the same bytes is a name of the first copy.
            assert stored.st_nlink == len(adopted) + 1, way
            # The root's name: kept by a copy, taken by a move; nothing else changed.
            assert link.exists() is not moves, way
            assert os.stat(secret).st_ino == inode and secret.read_bytes() == SECRET, way
            assert os.stat(secret).st_nlink == 1 + len(list(import_root.glob("linked-*")))
            adopted.append(asset)

        # A write through the other name reaches none of the stored copies.
        secret.write_bytes(b"changed later through the outside name")
        for asset in adopted:
            assert await read_all(stub, asset.id) == SECRET
        secret.write_bytes(SECRET)
    assert_secret_untouched(outside)
    assert os.stat(secret).st_ino == inode
    assert sorted(stored_files(hardlink_server.root)) == sorted(
        Path(a.storage_path) for a in adopted
    )


async def test_concurrent_adoptions_of_one_source_have_one_winner(
    stub: pb_grpc.AssetServiceStub, server: ServerProcess, import_root: Path
) -> None:
    outcomes: Counter[str] = Counter()
    for round_ in range(15):
        content = WORKER + f"round {round_}\n".encode()
        src = import_root / f"shared-{round_}.bin"
        src.write_bytes(content)
        first, second = await pending(stub), await pending(stub)
        calls = [
            stub.FulfillAsset(pb.FulfillAssetRequest(asset_id=a, source_path=str(src)))
            for a in (first, second)
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        outcomes.update(_outcome(r) for r in results)
        winners = [r for r in results if not isinstance(r, BaseException)]
        losers = [r for r in results if isinstance(r, BaseException)]
        assert len(winners) == 1, results
        for loser in losers:
            assert isinstance(loser, grpc.aio.AioRpcError) and loser.code() in CLEAR_LOSER, loser
        won = winners[0].asset
        assert await read_all(stub, won.id) == content
        assert not src.exists()  # moved once, into the winner
        states = await stub.BatchGetAssets(pb.BatchGetAssetsRequest(asset_ids=[first, second]))
        assert sorted(a.status for a in states.assets) == sorted(
            [pb.ASSET_STATUS_AVAILABLE, pb.ASSET_STATUS_PENDING]
        )

        src.write_bytes(content)
        before = {a.id for a in await file_assets(stub)}
        moves = [
            stub.RegisterFile(pb.RegisterFileRequest(path=str(src), move=True)) for _ in range(2)
        ]
        results = await asyncio.gather(*moves, return_exceptions=True)
        outcomes.update(_outcome(r) for r in results)
        winners = [r for r in results if not isinstance(r, BaseException)]
        for loser in (r for r in results if isinstance(r, BaseException)):
            assert isinstance(loser, grpc.aio.AioRpcError) and loser.code() in CLEAR_LOSER, loser
        assert len(winners) == 1, results
        new = [a for a in await file_assets(stub) if a.id not in before]
        assert [a.id for a in new] == [winners[0].asset.id]
        assert await read_all(stub, new[0].id) == content
        assert not src.exists()
    print(f"\nconcurrent adoptions, outcomes: {dict(outcomes)}")
    # Every stored file belongs to exactly one record: no loser left bytes behind.
    paths = sorted(Path(a.storage_path) for a in await file_assets(stub))
    assert stored_files(server.root) == paths


def _outcome(result: object) -> str:
    if isinstance(result, grpc.aio.AioRpcError):
        return result.code().name
    if isinstance(result, BaseException):
        return f"exception {type(result).__name__}: {result}"
    return "OK"


_libc = ctypes.CDLL(None, use_errno=True)
RENAME_EXCHANGE = 2
AT_FDCWD = -100


def exchange(a: Path, b: Path) -> None:
    """Atomically swap two names (renameat2 RENAME_EXCHANGE): something is always at both."""
    if _libc.renameat2(AT_FDCWD, bytes(a), AT_FDCWD, bytes(b), RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a))


class Swapper(threading.Thread):
    """Flips root/d between a real folder and a symlink to the outside, as fast as it can."""

    def __init__(self, d: Path, other: Path) -> None:
        super().__init__(daemon=True)
        self.d, self.other = d, other
        self.stop = threading.Event()
        self.swaps = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                exchange(self.d, self.other)
                self.swaps += 1
                if self.swaps % 3 == 0:
                    # Also the slower two-step way, which leaves moments with no root/d.
                    os.rename(self.d, self.d.with_name("d.gap"))
                    exchange(self.d.with_name("d.gap"), self.other)
                    os.rename(self.d.with_name("d.gap"), self.d)
        except BaseException as exc:  # surfaced by the test
            self.error = exc


@pytest.fixture
async def racing_tree(import_root: Path, outside: Path) -> AsyncIterator[tuple[Path, int]]:
    """root/d and root/d.swap: one a real folder holding f, the other a link to outside/."""
    real = import_root / "d"
    real.mkdir()
    (import_root / "d.swap").symlink_to(outside)
    real_fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield import_root / "d", real_fd
    finally:
        os.close(real_fd)


def ensure_worker_file(real_fd: int) -> None:
    """(Re-)create f in the real folder, wherever the swapper has put that folder."""
    try:
        fd = os.open("f", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644, dir_fd=real_fd)
    except FileExistsError:
        return
    try:
        os.write(fd, WORKER)
    finally:
        os.close(fd)


async def test_swapping_a_folder_for_a_symlink_mid_request_never_escapes(
    stub: pb_grpc.AssetServiceStub,
    server: ServerProcess,
    import_root: Path,
    outside: Path,
    racing_tree: tuple[Path, int],
) -> None:
    d, real_fd = racing_tree
    target = str(d / "f")
    calls = adopters(stub)
    allowed = {"OK", *(c.name for c in (DENIED, BAD, *CLEAR_LOSER))}
    outcomes: dict[str, Counter[str]] = {name: Counter() for name in calls}
    worker_sha = hashlib.sha256(WORKER).hexdigest()
    samples: dict[str, str] = {}  # one message per status, for the printed summary

    async def attempt(name: str) -> None:
        try:
            answer = await calls[name](target)
        except grpc.aio.AioRpcError as exc:
            outcomes[name][exc.code().name] += 1
            samples.setdefault(exc.code().name, exc.details() or "")
            assert exc.code().name in allowed, (
                f"{name}: {exc.code()} {exc.details()}\n{server_trace(server, exc.details())}"
            )
            assert str(outside) not in (exc.details() or ""), exc.details()
        else:
            outcomes[name]["OK"] += 1
            asset = answer.asset
            assert asset.sha256 == worker_sha, f"{name} adopted foreign bytes"
        # After every call: the outside file is where it was, with its content.
        assert (outside / "f").read_bytes() == SECRET, f"{name} moved or changed outside/f"

    swapper = Swapper(d, d.with_name("d.swap"))
    swapper.start()
    deadline = time.monotonic() + RACE_SECONDS
    total = 0
    try:
        while time.monotonic() < deadline:
            ensure_worker_file(real_fd)
            batch = [attempt(name) for name in calls for _ in range(3)]
            await asyncio.gather(*batch)
            total += len(batch)
    finally:
        swapper.stop.set()
        swapper.join(10)
    assert swapper.error is None, swapper.error
    print(
        f"\nswap race: {total} calls, {swapper.swaps} swaps, outcomes: "
        + "; ".join(f"{n}: {dict(c)}" for n, c in outcomes.items())
        + "".join(f"\n  {code}: {text}" for code, text in sorted(samples.items()))
    )
    assert total >= 30 * RACE_SECONDS, f"only {total} calls in {RACE_SECONDS} s"
    assert swapper.swaps > total, "the swapper did not keep up: the race was not exercised"
    assert_secret_untouched(outside)

    # Zero bytes from outside: no record has the secret's digest, no stored file holds it,
    # and a sample read back is the worker's file.
    assets = await file_assets(stub)
    assert all(a.sha256 != SECRET_SHA for a in assets)
    assert all(p.read_bytes() != SECRET for p in stored_files(server.root))
    for asset in assets[:: max(1, len(assets) // 25)]:
        assert await read_all(stub, asset.id) == WORKER
    oks = sum(c["OK"] for c in outcomes.values())
    assert oks == len(assets), (oks, len(assets))
