"""End to end: errors about huge or hostile input reach a DEFAULT client intact and small."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from asset_service.domain.models import MAX_JSON_DEPTH
from tests.e2e.helpers import expect_error
from tests.serverproc import ServerProcess, database_url_for, serving

# A default grpc client refuses response metadata past 8-16 KiB and reports
# "RESOURCE_EXHAUSTED: Stream removed" instead of the real status, so every channel here is
# opened without options: the real code, a bounded message and bounded details must arrive.
BAD = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
UNKNOWN_ID = "5b0e4f0e-0000-4000-8000-000000000000"
# What the server may send back for one error: grpc-message (<= 2 KiB on the wire) plus
# grpc-status-details-bin; well under the 8 KiB where default clients start refusing.
MAX_MESSAGE_BYTES = 2048
MAX_TRAILER_BYTES = 7 * 1024


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    """One server for the module: these tests only add records, so they can share it."""
    base = tmp_path_factory.mktemp("limits")
    import_root = base / "worker"
    import_root.mkdir()
    url = database_url_for(base)
    with serving(ServerProcess(base / "data", url, import_roots=[import_root])) as proc:
        yield proc, import_root


@pytest.fixture
def import_root(world: tuple[ServerProcess, Path]) -> Path:
    return world[1]


@pytest.fixture
async def stub(world: tuple[ServerProcess, Path]) -> AsyncIterator[pb_grpc.AssetServiceStub]:
    async with grpc.aio.insecure_channel(world[0].address) as channel:  # default options
        yield pb_grpc.AssetServiceStub(channel)


async def small_error(call: object, code: grpc.StatusCode, *fragments: str) -> grpc.aio.AioRpcError:
    err = await expect_error(call, code, *fragments)
    message = err.details() or ""
    assert 0 < len(message.encode("utf-8")) <= MAX_MESSAGE_BYTES, message[:300]
    trailers = sum(len(k) + len(v) for k, v in err.trailing_metadata() or ())
    assert trailers + len(message.encode("utf-8")) <= MAX_TRAILER_BYTES
    return err


def upload_of(header: pb.UploadHeader, chunks: int = 1) -> Any:
    async def requests() -> AsyncIterator[pb.UploadAssetRequest]:
        yield pb.UploadAssetRequest(header=header)
        for _ in range(chunks):
            yield pb.UploadAssetRequest(chunk=b"data")

    return requests()


async def pending(stub: pb_grpc.AssetServiceStub, type_: int = pb.ASSET_TYPE_FILE) -> str:
    made = await stub.CreatePendingAsset(
        pb.CreatePendingAssetRequest(task_id="t1", label="out", type=type_)
    )
    return made.asset.id


# --- every RPC with 100 KB where a short string belongs --------------------------------


@pytest.mark.parametrize("filler", ["x", "é", "\u2028"], ids=["ascii", "latin", "separator"])
async def test_oversized_strings_get_their_real_status_and_a_short_message(
    stub: pb_grpc.AssetServiceStub, import_root: Path, filler: str
) -> None:
    huge = filler * 100_000
    text = pb.Value(text="v")
    s = stub
    for call, code, fragment in [
        (s.GetAsset(pb.GetAssetRequest(asset_id=huge)), BAD, "is not a UUID"),
        (s.DeleteAsset(pb.DeleteAssetRequest(asset_id=huge)), BAD, "is not a UUID"),
        (s.FailAsset(pb.FailAssetRequest(asset_id=huge, reason="r")), BAD, "is not a UUID"),
        (s.FulfillAsset(pb.FulfillAssetRequest(asset_id=huge, value=text)), BAD, "not a UUID"),
        (s.ReadAsset(pb.ReadAssetRequest(asset_id=huge)).read(), BAD, "is not a UUID"),
        (s.BatchGetAssets(pb.BatchGetAssetsRequest(asset_ids=[huge])), BAD, "not a UUID"),
        (s.WatchAsset(pb.WatchAssetRequest(asset_ids=[huge])).read(), BAD, "not a UUID"),
        (s.CreateValueAsset(pb.CreateValueAssetRequest(label=huge, value=text)), BAD, "label"),
        (
            s.CreateValueAsset(pb.CreateValueAssetRequest(label="l", media_type=huge, value=text)),
            BAD,
            "media_type",
        ),
        (
            s.CreateValueAsset(pb.CreateValueAssetRequest(label="l", tags=[huge], value=text)),
            BAD,
            "tag",
        ),
        (
            s.CreateValueAsset(pb.CreateValueAssetRequest(label="l", value=pb.Value(json=huge))),
            BAD,
            "json value does not parse",
        ),
        (s.CreatePendingAsset(pb.CreatePendingAssetRequest(task_id=huge, label="l")), BAD, "task"),
        (s.UploadAsset(upload_of(pb.UploadHeader(label=huge))), BAD, "label"),
        (s.UploadAsset(upload_of(pb.UploadHeader(label="l", tags=[huge]))), BAD, "tag"),
        (s.UploadAsset(upload_of(pb.UploadHeader(label="l", expected_sha256=huge))), BAD, "sha"),
        (s.UploadAsset(upload_of(pb.UploadHeader(pending_asset_id=huge))), BAD, "not a UUID"),
        (s.RegisterFile(pb.RegisterFileRequest(path=huge)), BAD, "absolute"),
        (s.ListAssets(pb.ListAssetsRequest(page_token=huge)), BAD, "page_token"),
        (s.ListAssets(pb.ListAssetsRequest(tags=[huge])), BAD, "tag"),
        (
            s.GetManifest(pb.GetManifestRequest(asset_mappings={"k": huge})),
            BAD,
            "is not a UUID",
        ),
        (
            s.GetManifest(pb.GetManifestRequest(asset_mappings={huge: UNKNOWN_ID})),
            PRECONDITION,
            "1 input(s) not AVAILABLE: " + repr(filler)[:-1],
        ),
    ]:
        await small_error(call, code, fragment)
    # A filter is not an error: an unknown 100 KB label matches nothing.
    listed = await stub.ListAssets(pb.ListAssetsRequest(label=huge, created_by_task=huge))
    assert list(listed.assets) == []


async def test_overlong_server_paths_are_invalid_argument(
    stub: pb_grpc.AssetServiceStub, import_root: Path
) -> None:
    target = await pending(stub)
    long_name = f"{import_root}/{'n' * 300}"  # a component over NAME_MAX (255 bytes)
    long_path = f"{import_root}/" + "d/" * 2100 + "f"  # over PATH_MAX (4096 bytes)
    huge_path = f"{import_root}/" + "é" * 100_000
    for path, fragment in [(long_name, "255"), (long_path, "4095"), (huge_path, "path")]:
        await small_error(stub.RegisterFile(pb.RegisterFileRequest(path=path)), BAD, fragment)
        await small_error(
            stub.FulfillAsset(pb.FulfillAssetRequest(asset_id=target, source_path=path)),
            BAD,
            fragment,
        )


# --- echoes of stored failure reasons ---------------------------------------------------


async def test_a_4096_character_failure_reason_echoed_stays_small(
    stub: pb_grpc.AssetServiceStub,
) -> None:
    file_id = await pending(stub)
    value_id = await pending(stub, pb.ASSET_TYPE_VALUE)
    for asset_id in (file_id, value_id):
        failed = await stub.FailAsset(pb.FailAssetRequest(asset_id=asset_id, reason="é" * 10_000))
        assert len(failed.asset.failure_reason) == 4096  # kept, up to the limit
    await small_error(
        stub.FailAsset(pb.FailAssetRequest(asset_id=file_id, reason="another reason")),
        PRECONDITION,
        f"asset {file_id} is FAILED",
    )
    await small_error(
        stub.FulfillAsset(pb.FulfillAssetRequest(asset_id=value_id, value=pb.Value(text="x"))),
        PRECONDITION,
        f"asset {value_id} is FAILED",
    )
    await small_error(
        stub.UploadAsset(upload_of(pb.UploadHeader(pending_asset_id=file_id))),
        PRECONDITION,
        f"asset {file_id} is FAILED",
    )
    await small_error(
        stub.GetManifest(pb.GetManifestRequest(asset_mappings={"in": file_id})),
        PRECONDITION,
        f"1 input(s) not AVAILABLE: in={file_id} is FAILED ('éééé",
    )


async def test_a_manifest_blocked_by_1000_failed_inputs_names_20_and_counts_the_rest(
    stub: pb_grpc.AssetServiceStub,
) -> None:
    failed = []
    for i in range(5):
        asset_id = await pending(stub)
        await stub.FailAsset(pb.FailAssetRequest(asset_id=asset_id, reason=f"{i}" * 4096))
        failed.append(asset_id)
    # 1000 keys (the limit), long ones, over the five failed assets.
    mappings = {f"{n:04d}-" + "k" * 500: failed[n % 5] for n in range(1000)}
    err = await small_error(
        stub.GetManifest(pb.GetManifestRequest(asset_mappings=mappings)),
        PRECONDITION,
        "1000 input(s) not AVAILABLE: '0000-kkkk",
    )
    message = err.details() or ""
    assert message.endswith("more"), message[-200:]
    assert "(4096 characters)" in message and "(505 characters)" in message
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None and status.message == message
    failure = error_details_pb2.PreconditionFailure()
    assert status.details[0].Unpack(failure)
    named, more = failure.violations[:-1], failure.violations[-1]
    assert 1 <= len(named) <= 20
    assert named[0].subject == f"assets/{failed[0]}" and named[0].type == "FAILED"
    assert more.type == "MORE" and more.description.startswith(f"…and {1000 - len(named)} more")


async def test_batch_get_and_watch_of_1000_unknown_ids_list_ten(
    stub: pb_grpc.AssetServiceStub,
) -> None:
    ids = [f"5b0e4f0e-0000-4000-8000-{n:012d}" for n in range(1000)]
    for call in (
        stub.BatchGetAssets(pb.BatchGetAssetsRequest(asset_ids=ids)),
        stub.WatchAsset(pb.WatchAssetRequest(asset_ids=ids)).read(),
    ):
        err = await small_error(call, NOT_FOUND, "1000 asset(s) not found: ", ids[0])
        assert ids[-1] not in (err.details() or "")


# --- values, config_params and names ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("NaN", "not JSON"),
        ('{"x": Infinity}', "not JSON"),
        ("[-Infinity]", "not JSON"),
        ("[1e999]", "beyond a double's range"),
        ("[" * 200_000 + "]" * 200_000, f"deeper than {MAX_JSON_DEPTH} levels"),
        ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), f"{MAX_JSON_DEPTH} levels"),
    ],
    ids=["nan", "inf", "-inf", "1e999", "very-deep", "one-too-deep"],
)
async def test_json_values_that_are_not_portable_json_are_invalid_argument(
    stub: pb_grpc.AssetServiceStub, text: str, fragment: str
) -> None:
    value = pb.Value(json=text)
    await small_error(
        stub.CreateValueAsset(pb.CreateValueAssetRequest(label="v", value=value)), BAD, fragment
    )
    target = await pending(stub, pb.ASSET_TYPE_VALUE)
    await small_error(
        stub.FulfillAsset(pb.FulfillAssetRequest(asset_id=target, value=value)), BAD, fragment
    )


def config(**fields: Any) -> struct_pb2.Struct:
    msg = struct_pb2.Struct()
    msg.update(fields)
    return msg


async def test_config_params_must_be_json_and_input_data_json_always_is(
    stub: pb_grpc.AssetServiceStub,
) -> None:
    for number in (float("nan"), float("inf"), float("-inf")):
        params = config(ok=1, nested={"threshold": 0.5})
        params["nested"]["threshold"] = number
        await small_error(
            stub.GetManifest(pb.GetManifestRequest(config_params=params)),
            BAD,
            "config_params at ['nested']['threshold'] is ",
        )
    deep: Any = 1
    for _ in range(MAX_JSON_DEPTH + 5):
        deep = [deep]
    await small_error(
        stub.GetManifest(pb.GetManifestRequest(config_params=config(deep=deep))),
        BAD,
        "config_params at ['deep'][0]",
        f"deeper than {MAX_JSON_DEPTH} levels",
    )
    made = await stub.CreateValueAsset(
        pb.CreateValueAssetRequest(label="v", value=pb.Value(json='{"a": [1, 2.5]}'))
    )
    nested: Any = "leaf"
    for _ in range(MAX_JSON_DEPTH - 1):
        nested = [nested]
    params = config(n=3, x=0.5, big=1e300, s="é\u2028", ok=nested)
    manifest = await stub.GetManifest(
        pb.GetManifestRequest(asset_mappings={"v": made.asset.id}, config_params=params)
    )
    body = json.loads(
        Path(manifest.manifest_path).read_text(),
        parse_constant=lambda c: pytest.fail(f"input_data.json holds {c}"),
    )
    assert body["config_params"]["n"] == 3 and body["config_params"]["x"] == 0.5
    assert body["config_params"]["s"] == "é\u2028"
    assert json.loads(Path(body["inputs"]["v"]).read_text()) == {"a": [1, 2.5]}


async def test_names_with_unusual_unicode_are_kept_or_refused_never_internal(
    stub: pb_grpc.AssetServiceStub,
) -> None:
    for label in ("rtl\u200fmark.txt", "zwj👩\u200d💻.png", "中文 名前.txt"):
        made = await stub.CreateValueAsset(
            pb.CreateValueAssetRequest(label=label, tags=[label], value=pb.Value(text="x"))
        )
        assert made.asset.label == label and list(made.asset.tags) == [label]
    for label in ("line\u2028sep", "bidi\u202egpj.exe", "c1\x85control"):
        await small_error(
            stub.CreateValueAsset(
                pb.CreateValueAssetRequest(label=label, value=pb.Value(text="x"))
            ),
            BAD,
            "label",
        )
        await small_error(
            stub.CreatePendingAsset(pb.CreatePendingAssetRequest(task_id="t", label=label)),
            BAD,
            "label",
        )
    made = await stub.CreateValueAsset(
        pb.CreateValueAssetRequest(label="v", value=pb.Value(text="x"))
    )
    for key in ("\u2028", "\u202e", "\u200f", "é" * 1000):
        try:
            manifest = await stub.GetManifest(
                pb.GetManifestRequest(asset_mappings={key: made.asset.id})
            )
        except grpc.aio.AioRpcError as err:
            assert err.code() == BAD, err.details()
        else:
            assert json.loads(Path(manifest.manifest_path).read_text())["inputs"][key]
