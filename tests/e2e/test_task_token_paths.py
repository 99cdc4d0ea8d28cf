"""End to end: a task token's server-side files stay in its task's folder; its lifetime is
capped when verified, not only when minted."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import jwt
import pytest

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.e2e.helpers import expect_error
from tests.e2e.security_helpers import ORCH, SECRET, bearer, token_server
from tests.serverproc import ServerProcess

DENIED = grpc.StatusCode.PERMISSION_DENIED
DAY = 24 * 3600


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    base = tmp_path_factory.mktemp("task-paths")
    with token_server(base) as server:
        yield server, base / "imports"


@pytest.fixture
async def stub(secured: tuple[ServerProcess, Path]) -> AsyncIterator[pb_grpc.AssetServiceStub]:
    async with grpc.aio.insecure_channel(secured[0].address) as channel:
        yield pb_grpc.AssetServiceStub(channel)


async def promise(stub: pb_grpc.AssetServiceStub, task: str) -> str:
    request = pb.CreatePendingAssetRequest(task_id=task, label="out.bin")
    return (await stub.CreatePendingAsset(request, metadata=ORCH)).asset.id


async def task_token(stub: pb_grpc.AssetServiceStub, task: str, ttl: int = 600) -> str:
    minted = await stub.MintTaskToken(
        pb.MintTaskTokenRequest(task_id=task, ttl_seconds=ttl), metadata=ORCH
    )
    return minted.token


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


async def test_a_task_token_fulfils_only_from_its_own_task_folder(
    stub: pb_grpc.AssetServiceStub, secured: tuple[ServerProcess, Path]
) -> None:
    imports = secured[1]
    mine, mine_too, theirs = (
        await promise(stub, "task-a"),
        await promise(stub, "task-a"),
        await promise(stub, "task-b"),
    )
    token = bearer(await task_token(stub, "task-a"))
    # Another task's output waiting for its own fulfil, a loose file, and task-a's outputs.
    waiting = write(imports / "task-b" / "out.bin", b"task-b's output")
    loose = write(imports / "loose.bin", b"nobody's")
    own = write(imports / "task-a" / "out.bin", b"task-a's output")
    deeper = write(imports / "task-a" / "run-1" / "part.bin", b"task-a, deeper")
    # A folder named like a task that is a symlink to another task's folder.
    (imports / "task-a" / "via-link").symlink_to(imports / "task-b")

    def fulfil(source: Path | str, asset_id: str = mine) -> object:
        request = pb.FulfillAssetRequest(asset_id=asset_id, source_path=str(source))
        return stub.FulfillAsset(request, metadata=token)

    allowed = f"({imports / 'task-a'}/)"
    for source in (waiting, loose, imports / "task-a", imports / "task-ab" / "x", "/etc/passwd"):
        err = await expect_error(fulfil(source), DENIED, "scoped to task task-a", allowed)
        assert "task-b's output" not in (err.details() or "")
    await expect_error(
        fulfil(f"{imports}/task-a/../task-b/out.bin"), grpc.StatusCode.INVALID_ARGUMENT, "'..'"
    )
    await expect_error(fulfil(imports / "task-a" / "via-link" / "out.bin"), DENIED, "symbolic link")
    assert waiting.read_bytes() == b"task-b's output" and loose.exists()

    done = (await fulfil(own)).asset  # type: ignore[attr-defined]
    assert done.status == pb.ASSET_STATUS_AVAILABLE and not own.exists()
    done_too = (await fulfil(deeper, mine_too)).asset  # type: ignore[attr-defined]
    read = stub.ReadAsset(pb.ReadAssetRequest(asset_id=done_too.id), metadata=token)
    assert b"".join([r.chunk async for r in read]) == b"task-a, deeper"
    # The orchestrator's own token is not confined to a task folder.
    request = pb.FulfillAssetRequest(asset_id=theirs, source_path=str(waiting))
    taken = (await stub.FulfillAsset(request, metadata=ORCH)).asset
    assert taken.status == pb.ASSET_STATUS_AVAILABLE and not waiting.exists()


def signed(iat: int, exp: int, task: str = "task-a") -> str:
    claims = {"iss": "asset-service", "task": task, "inputs": [], "iat": iat, "exp": exp}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def test_a_task_token_living_longer_than_the_maximum_is_refused(
    stub: pb_grpc.AssetServiceStub,
) -> None:
    asset_id = await promise(stub, "task-a")
    get = pb.GetAssetRequest(asset_id=asset_id)
    now = int(time.time())
    for iat, exp in [(now, now + 2 * DAY), (now - DAY + 60, now + 3600), (now - 10, now + DAY)]:
        await expect_error(
            stub.GetAsset(get, metadata=bearer(signed(iat, exp))),
            grpc.StatusCode.UNAUTHENTICATED,
            f"lives {exp - iat}s (exp - iat), longer than this server's maximum of {DAY}s",
        )
    # A day exactly is the longest a token may be minted for, and it is accepted.
    longest = await task_token(stub, "task-a", ttl=DAY)
    assert (await stub.GetAsset(get, metadata=bearer(longest))).asset.id == asset_id
    assert (await stub.GetAsset(get, metadata=bearer(signed(now, now + DAY)))).asset.id == asset_id
