"""End to end: what the server creates is owner-only whatever the umask; --share-group shares
exactly the stored files and manifests with a group."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.backends import MinIO
from tests.contract import s3_helpers
from tests.e2e.helpers import pattern_chunks, upload
from tests.serverproc import ServerProcess

# A group that is not the tests' own (root's) group, so that a file left in the creating
# process's group is told apart from one given to the shared group.
SHARED_GID = next(g.gr_gid for g in grp.getgrall() if g.gr_gid != os.getgid())


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """The tests' umask while a server starts: the child inherits it."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def start(root: Path, import_root: Path, mask: int, *flags: str, **kw: object) -> ServerProcess:
    server = ServerProcess(
        root,
        f"sqlite:///{root / 'assets.db'}",
        import_roots=[import_root],
        extra_args=list(flags),
        **kw,  # type: ignore[arg-type]
    )
    with umask(mask):
        return server.start()


async def workload(address: str, import_root: Path) -> dict[str, str]:
    """Every way bytes come in, a value of each kind, and a manifest naming them all."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.AssetServiceStub(channel)
        uploaded = await upload(stub, pattern_chunks(100_000), label="up.bin")
        inputs = {"uploaded": uploaded.id}
        for move in (False, True):
            source = import_root / f"reg-{move}.bin"
            source.write_bytes(b"registered %d" % move)
            source.chmod(0o644)  # as a worker leaves it: a move must not keep that
            reply = await stub.RegisterFile(pb.RegisterFileRequest(path=str(source), move=move))
            inputs[f"registered-{move}"] = reply.asset.id
        for how in ("path", "upload"):
            promise = await stub.CreatePendingAsset(
                pb.CreatePendingAssetRequest(task_id=f"task-{how}", label="out.csv")
            )
            if how == "path":
                source = import_root / "out.csv"
                source.write_text("a,b\n")
                source.chmod(0o644)
                await stub.FulfillAsset(
                    pb.FulfillAssetRequest(asset_id=promise.asset.id, source_path=str(source))
                )
            else:
                await upload(stub, [b"c,d\n"], pending_asset_id=promise.asset.id)
            inputs[f"fulfilled-{how}"] = promise.asset.id
        for kind, value in (("text", pb.Value(text="hello")), ("json", pb.Value(json="[1]"))):
            made = await stub.CreateValueAsset(pb.CreateValueAssetRequest(label=kind, value=value))
            inputs[kind] = made.asset.id
        manifest = await stub.GetManifest(pb.GetManifestRequest(asset_mappings=inputs))
        body = json.loads(Path(manifest.manifest_path).read_text())
        assert set(body["inputs"]) == set(inputs)
        return {"manifest": manifest.manifest_path, **body["inputs"]}


def everything_under(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    yield root, root.lstat()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            yield path, path.lstat()


def is_shared(path: Path, root: Path) -> bool:
    """What --share-group gives the group: stored files, manifests, and the folders above."""
    rel = path.relative_to(root).parts
    if rel in {(), ("tmp",)}:
        return True  # traversed on the way to the shared folders
    if rel[0] in {"uploads", "generated"}:
        return True
    if rel[:2] == ("tmp", "manifests"):
        return True
    if rel[:2] == ("tmp", "values"):
        return rel[-1] != ".lock"
    if rel[:2] == ("tmp", "cache"):
        return len(rel) > 2  # the copies manifests link to, not their folder
    return False


def expected_mode(path: Path, st: os.stat_result, root: Path, shared: bool) -> int:
    group = shared and is_shared(path, root)
    if stat.S_ISDIR(st.st_mode):
        return 0o750 if group else 0o700
    if path.parent.name == "values" and not path.name.startswith("."):
        return 0o440 if group else 0o400  # read-only: tasks share them
    return 0o640 if group else 0o600


def check_modes(root: Path, shared: bool) -> int:
    wrong = []
    count = 0
    for path, st in everything_under(root):
        count += 1
        assert not stat.S_ISLNK(st.st_mode), path
        mode, want = stat.S_IMODE(st.st_mode), expected_mode(path, st, root, shared)
        if mode != want:
            wrong.append(f"{path.relative_to(root)}: {mode:o}, expected {want:o}")
        elif shared and is_shared(path, root) and st.st_gid != SHARED_GID:
            wrong.append(f"{path.relative_to(root)}: group {st.st_gid}, expected {SHARED_GID}")
    assert wrong == [], "\n".join(wrong)
    return count


@pytest.mark.parametrize("mask", [0o022, 0o000])
@pytest.mark.parametrize("shared", [False, True], ids=["private", "share-group"])
async def test_every_file_and_folder_the_server_makes_has_the_right_mode(
    tmp_path: Path, import_root: Path, mask: int, shared: bool
) -> None:
    root = tmp_path / "data"
    flags = ["--share-group", str(SHARED_GID)] if shared else []
    server = start(root, import_root, mask, *flags)
    try:
        paths = await workload(server.address, import_root)
        checked = check_modes(root, shared)
    finally:
        server.stop()
    assert not [line for line in server.log if "changed the modes" in line]  # all new
    # The workload reached every kind of file: database, stored bytes, manifest, values.
    names = {p.name for p, _ in everything_under(root)}
    assert {"assets.db", "assets.db.reserve", "assets.db.lock", "input_data.json"} <= names
    assert any(n.endswith(".json") and len(n) == 64 + 5 for n in names)  # a VALUE's file
    assert Path(paths["manifest"]).is_relative_to(root) and checked > 20
    # While it ran, the WAL and its index were there too, and were checked.
    check_modes(root, shared)  # and after a clean stop


async def test_an_object_store_server_keeps_its_state_and_cache_private(
    tmp_path: Path, import_root: Path, minio: MinIO
) -> None:
    root = tmp_path / "state"
    url = f"s3://{s3_helpers.BUCKET}/modes-{uuid.uuid4().hex[:8]}"
    server = start(
        root,
        import_root,
        0o000,
        "--storage-url",
        url,
        "--share-group",
        str(SHARED_GID),
        env=minio.aws_env(),
    )
    try:
        paths = await workload(server.address, import_root)
        names = {p.relative_to(root).parts[:2] for p, _ in everything_under(root) if p != root}
        assert {("tmp", "cache"), ("tmp", "s3-state"), ("tmp", "manifests")} <= names
        assert Path(paths["uploaded"]).is_relative_to(root / "tmp" / "manifests")
        check_modes(root, shared=True)
    finally:
        server.stop()
    assert not [line for line in server.log if "changed the modes" in line]


async def test_start_up_tightens_the_folders_of_an_older_install(
    tmp_path: Path, import_root: Path
) -> None:
    root = tmp_path / "data"
    server = start(root, import_root, 0o022)
    try:
        await workload(server.address, import_root)
    finally:
        server.stop()
    # As an older release left them: world-readable folders and database.
    loose = [root, root / "uploads", root / "generated", root / "tmp", root / "tmp" / "values"]
    loose += [root / "tmp" / "manifests", root / "tmp" / "staging"]
    for folder in loose:
        folder.chmod(0o755)
    for name in ("assets.db", "assets.db.lock", "assets.db.reserve"):
        (root / name).chmod(0o644)
    server = start(root, import_root, 0o022)
    try:
        for folder in loose:
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
        for name in ("assets.db", "assets.db.lock", "assets.db.reserve"):
            assert stat.S_IMODE((root / name).stat().st_mode) == 0o600, name
        said = "".join(line for line in server.log if "changed the modes of" in line)
        for path in [*loose, *(root / n for n in ("assets.db", "assets.db.lock"))]:
            assert f"{path} (from " in said, said
    finally:
        server.stop()
