"""End to end: every bad input gets a clear status and message, and leaves nothing behind."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.e2e.helpers import (
    MiB,
    all_assets,
    expect_error,
    pattern_chunks,
    pending_asset,
    stored_files,
    unfinished_upload,
    upload,
    upload_sync,
    value_asset,
)
from tests.serverproc import ServerProcess, database_url_for

BAD = grpc.StatusCode.INVALID_ARGUMENT
UNKNOWN_ID = "5b0e4f0e-0000-4000-8000-000000000000"


@pytest.fixture
async def untouched(stub: pb_grpc.AssetServiceStub, server: ServerProcess) -> AsyncIterator[None]:
    """Asserts that the test body created no record and left no file."""
    before = await all_assets(stub)
    yield
    await asyncio.sleep(0.2)  # let a cancelled upload finish unwinding on the server
    assert await all_assets(stub) == before
    leftovers = [
        p
        for p in stored_files(server.root)
        if not any(p.samefile(a.storage_path) for a in before if a.storage_path)
    ]
    assert leftovers == [], f"files left behind: {leftovers}"


async def test_unknown_and_malformed_ids(stub: pb_grpc.AssetServiceStub, untouched: None) -> None:
    await expect_error(
        stub.GetAsset(pb.GetAssetRequest(asset_id=UNKNOWN_ID)),
        grpc.StatusCode.NOT_FOUND,
        UNKNOWN_ID,
    )
    await expect_error(
        stub.GetAsset(pb.GetAssetRequest(asset_id="not-a-uuid")), BAD, "'not-a-uuid' is not a UUID"
    )
    await expect_error(stub.GetAsset(pb.GetAssetRequest()), BAD, "asset_id is required")
    await expect_error(
        stub.FailAsset(pb.FailAssetRequest(asset_id=UNKNOWN_ID, reason="x")),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_error(
        stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=UNKNOWN_ID)), grpc.StatusCode.NOT_FOUND
    )
    await expect_error(
        stub.BatchGetAssets(pb.BatchGetAssetsRequest(asset_ids=[UNKNOWN_ID])),
        grpc.StatusCode.NOT_FOUND,
        UNKNOWN_ID,
    )
    await expect_error(
        stub.GetManifest(pb.GetManifestRequest(asset_mappings={"in": UNKNOWN_ID})),
        grpc.StatusCode.FAILED_PRECONDITION,
        f"in={UNKNOWN_ID} is NOT_FOUND",
    )
    watch = stub.WatchAsset(pb.WatchAssetRequest(asset_ids=[UNKNOWN_ID]))
    await expect_error(watch.read(), grpc.StatusCode.NOT_FOUND, UNKNOWN_ID)
    read = stub.ReadAsset(pb.ReadAssetRequest(asset_id="zzz"))
    await expect_error(read.read(), BAD, "not a UUID")


@pytest.mark.parametrize("label", ["", "   ", "../../etc/passwd", "a/b", "..", "nul\x00byte"])
async def test_bad_labels(stub: pb_grpc.AssetServiceStub, untouched: None, label: str) -> None:
    fragment = "label"
    await expect_error(upload(stub, [b"data"], label=label), BAD, fragment)
    await expect_error(
        stub.CreateValueAsset(pb.CreateValueAssetRequest(label=label, value=pb.Value(text="x"))),
        BAD,
        fragment,
    )
    await expect_error(
        stub.CreatePendingAsset(pb.CreatePendingAssetRequest(task_id="t", label=label)),
        BAD,
        fragment,
    )


async def test_bad_task_ids_and_values(stub: pb_grpc.AssetServiceStub, untouched: None) -> None:
    for task in ["", "../x", "a/b", "-lead"]:
        await expect_error(
            stub.CreatePendingAsset(pb.CreatePendingAssetRequest(task_id=task, label="x")),
            BAD,
            "task_id",
        )
    await expect_error(
        stub.CreateValueAsset(pb.CreateValueAssetRequest(label="x")), BAD, "value is required"
    )
    await expect_error(
        stub.CreateValueAsset(pb.CreateValueAssetRequest(label="x", value=pb.Value(json="{nope"))),
        BAD,
        "json value does not parse",
    )
    await expect_error(
        stub.CreateValueAsset(
            pb.CreateValueAssetRequest(label="x", media_type="not a type", value=pb.Value(text="x"))
        ),
        BAD,
        "media_type",
    )


async def test_register_file_outside_import_roots(
    stub: pb_grpc.AssetServiceStub, untouched: None, import_root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    denied = grpc.StatusCode.PERMISSION_DENIED
    await expect_error(
        stub.RegisterFile(pb.RegisterFileRequest(path=str(outside))),
        denied,
        "outside the import roots",
    )
    await expect_error(
        stub.RegisterFile(pb.RegisterFileRequest(path="/etc/passwd")),
        denied,
        "outside the import roots",
    )
    dotdot = f"{import_root}/../secret.txt"
    await expect_error(stub.RegisterFile(pb.RegisterFileRequest(path=dotdot)), BAD, "'..'")
    link = import_root / "innocent.txt"
    link.symlink_to(outside)
    err = await expect_error(
        stub.RegisterFile(pb.RegisterFileRequest(path=str(link))), denied, "symbolic link"
    )
    assert str(outside) not in (err.details() or ""), "never say where a symlink points"
    dir_link = import_root / "escape"
    dir_link.symlink_to(tmp_path)
    await expect_error(
        stub.RegisterFile(pb.RegisterFileRequest(path=str(dir_link / "secret.txt"))),
        denied,
        "symbolic link at 'escape'",
    )
    await expect_error(
        stub.RegisterFile(pb.RegisterFileRequest(path="relative.txt")), BAD, "must be absolute"
    )
    await expect_error(
        stub.RegisterFile(pb.RegisterFileRequest(path=str(import_root / "missing.txt"))),
        grpc.StatusCode.NOT_FOUND,
        "does not exist",
    )
    pending = await pending_asset(stub, "o")
    await expect_error(
        stub.FulfillAsset(pb.FulfillAssetRequest(asset_id=pending.id, source_path=str(link))),
        denied,
    )
    assert outside.read_text() == "secret"
    await stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=pending.id))


async def test_register_file_on_a_directory_says_it_is_one(
    stub: pb_grpc.AssetServiceStub, untouched: None, import_root: Path
) -> None:
    """The import root itself is a directory under it, not a path outside it."""
    (import_root / "sub").mkdir()
    for folder in (import_root, import_root / "sub"):
        for move in (False, True):
            request = pb.RegisterFileRequest(path=str(folder), move=move)
            await expect_error(stub.RegisterFile(request), BAD, f"'{folder}' is a directory")
    pending = await pending_asset(stub, "o")
    fulfill = pb.FulfillAssetRequest(asset_id=pending.id, source_path=str(import_root))
    await expect_error(stub.FulfillAsset(fulfill), BAD, "is a directory")
    assert import_root.is_dir() and (import_root / "sub").is_dir()
    await stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=pending.id))


async def test_a_page_token_reused_with_other_filters_is_refused(
    stub: pb_grpc.AssetServiceStub,
) -> None:
    for i in range(3):
        await stub.CreateValueAsset(
            pb.CreateValueAssetRequest(label=f"v{i}", value=pb.Value(text="x"), tags=["paged"])
        )
    first = await stub.ListAssets(pb.ListAssetsRequest(tags=["paged"], page_size=1))
    assert len(first.assets) == 1 and first.next_page_token
    for other in (
        pb.ListAssetsRequest(),
        pb.ListAssetsRequest(tags=["other"]),
        pb.ListAssetsRequest(tags=["paged"], label="v1"),
        pb.ListAssetsRequest(tags=["paged"], status=pb.ASSET_STATUS_AVAILABLE),
    ):
        other.page_token = first.next_page_token
        await expect_error(
            stub.ListAssets(other), BAD, "issued for a ListAssets with other filters"
        )
    rest = await stub.ListAssets(
        pb.ListAssetsRequest(tags=["paged"], page_size=10, page_token=first.next_page_token)
    )
    assert [a.label for a in rest.assets] == ["v1", "v2"] and not rest.next_page_token


async def test_upload_protocol_errors(stub: pb_grpc.AssetServiceStub, untouched: None) -> None:
    async def chunks_only() -> AsyncIterator[pb.UploadAssetRequest]:
        yield pb.UploadAssetRequest(chunk=b"data")

    await expect_error(
        stub.UploadAsset(chunks_only()), BAD, "first message of an upload must be the header"
    )

    async def nothing() -> AsyncIterator[pb.UploadAssetRequest]:
        return
        yield

    await expect_error(stub.UploadAsset(nothing()), BAD, "empty upload")

    async def two_headers() -> AsyncIterator[pb.UploadAssetRequest]:
        yield pb.UploadAssetRequest(header=pb.UploadHeader(label="a"))
        yield pb.UploadAssetRequest(chunk=b"x" * 1000)
        yield pb.UploadAssetRequest(header=pb.UploadHeader(label="b"))

    await expect_error(stub.UploadAsset(two_headers()), BAD, "second header")


async def test_digest_and_size_mismatch(stub: pb_grpc.AssetServiceStub, untouched: None) -> None:
    data = b"payload" * 1000
    wrong = hashlib.sha256(b"other").hexdigest()
    await expect_error(
        upload(stub, [data], label="a", expected_sha256=wrong),
        grpc.StatusCode.DATA_LOSS,
        f"declared {wrong}",
    )
    await expect_error(
        upload(stub, [data], label="a", expected_size_bytes=len(data) + 1),
        grpc.StatusCode.DATA_LOSS,
        f"received {len(data)} bytes",
    )
    await expect_error(
        upload(stub, [data], label="a", expected_sha256="xyz"), BAD, "64 hexadecimal"
    )


async def test_client_cancels_mid_upload(
    stub: pb_grpc.AssetServiceStub, untouched: None, server: ServerProcess
) -> None:
    sent = asyncio.Event()
    call = stub.UploadAsset(unfinished_upload("cancelled.bin", pattern_chunks(8 * MiB), sent))
    await asyncio.wait_for(sent.wait(), 30)
    staging = [p for p in stored_files(server.root) if "staging" in p.parts]
    assert staging, "the server should be staging the upload by now"
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    for _ in range(50):  # the server notices the cancellation asynchronously
        if not stored_files(server.root):
            break
        await asyncio.sleep(0.1)


async def test_wrong_state_transitions(stub: pb_grpc.AssetServiceStub, import_root: Path) -> None:
    available = await value_asset(stub, "v", text="x")
    await expect_error(
        stub.FulfillAsset(pb.FulfillAssetRequest(asset_id=available.id, value=pb.Value(text="y"))),
        grpc.StatusCode.FAILED_PRECONDITION,
        f"asset {available.id} is AVAILABLE",
        "only a PENDING asset",
    )
    await expect_error(
        stub.FailAsset(pb.FailAssetRequest(asset_id=available.id, reason="late")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "AVAILABLE",
    )
    file_pending = await pending_asset(stub, "f")
    await expect_error(
        stub.FulfillAsset(
            pb.FulfillAssetRequest(asset_id=file_pending.id, value=pb.Value(text="y"))
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "is a FILE asset",
    )
    # A promise that can no longer be fulfilled says so, whatever the way tried.
    failed_file = await pending_asset(stub, "ff")
    await stub.FailAsset(pb.FailAssetRequest(asset_id=failed_file.id, reason="worker died"))
    await expect_error(
        stub.FulfillAsset(
            pb.FulfillAssetRequest(asset_id=failed_file.id, value=pb.Value(text="y"))
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        f"asset {failed_file.id} is FAILED",
    )
    value_pending = await pending_asset(stub, "v", type=pb.ASSET_TYPE_VALUE)
    src = import_root / "x.txt"
    src.write_text("x")
    await expect_error(
        stub.FulfillAsset(pb.FulfillAssetRequest(asset_id=value_pending.id, source_path=str(src))),
        grpc.StatusCode.FAILED_PRECONDITION,
        "is a VALUE asset",
    )
    assert src.exists()
    await expect_error(
        upload(stub, [b"x"], pending_asset_id=value_pending.id),
        grpc.StatusCode.FAILED_PRECONDITION,
        "VALUE asset",
    )
    await expect_error(
        stub.FulfillAsset(pb.FulfillAssetRequest(asset_id=file_pending.id)), BAD, "source_path"
    )
    await expect_error(
        stub.FailAsset(pb.FailAssetRequest(asset_id=file_pending.id)), BAD, "reason is required"
    )
    read = stub.ReadAsset(pb.ReadAssetRequest(asset_id=file_pending.id))
    await expect_error(read.read(), grpc.StatusCode.FAILED_PRECONDITION, "PENDING")
    # The failed attempts changed nothing.
    again = (await stub.GetAsset(pb.GetAssetRequest(asset_id=file_pending.id))).asset
    assert again == file_pending


@pytest.fixture
def small_limit_server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path / "small", database_url_for(tmp_path), extra_args=["--max-upload-bytes", "1MiB"]
    ).start()
    yield proc
    proc.stop()


async def test_upload_over_the_size_limit(small_limit_server: ServerProcess) -> None:
    async with grpc.aio.insecure_channel(small_limit_server.address) as channel:
        stub = pb_grpc.AssetServiceStub(channel)
        too_big = grpc.StatusCode.RESOURCE_EXHAUSTED
        big = pattern_chunks(2 * MiB, chunk=256 * 1024)
        await expect_error(
            asyncio.to_thread(upload_sync, small_limit_server.address, big, label="big"),
            too_big,
            "1048576 bytes",
        )
        await expect_error(
            upload(stub, [b"x"], label="big", expected_size_bytes=MiB + 1),
            too_big,
            "--max-upload-bytes",
        )
        ok = await upload(stub, pattern_chunks(MiB), label="fits")
        assert ok.size_bytes == MiB
        assert stored_files(small_limit_server.root) == [Path(ok.storage_path)]
        assert len(await all_assets(stub)) == 1
