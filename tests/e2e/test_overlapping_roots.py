"""End to end: an import root may not hold the server's own files, nor reach them later."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import pytest

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.e2e.helpers import all_assets, expect_error, read_all, upload
from tests.e2e.security_helpers import SECRET, tokens_toml
from tests.pki import CA
from tests.serverproc import ServerProcess, serving

DENIED = grpc.StatusCode.PERMISSION_DENIED
RegisterFile = pb.RegisterFileRequest


def refused_start(*args: str, launcher: Sequence[str] = ()) -> list[str]:
    """Run the server with `args`; it must exit 2 at once. Its stderr lines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSET_SERVICE_")}
    done = subprocess.run(
        [*launcher, sys.executable, "-m", "asset_service", "--listen", "127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        timeout=20,
        env=env,
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, f"exit {done.returncode}, stderr:\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return lines


def assert_one_line_naming(lines: list[str], *fragments: str) -> None:
    assert len(lines) == 1, f"expected one line, got {lines}"
    assert "cannot start" in lines[0], lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def test_an_import_root_holding_the_storage_root_is_refused_at_start_up(tmp_path: Path) -> None:
    """The issue's scenario: --storage-root X/data --import-root X."""
    lines = refused_start("--storage-root", str(tmp_path / "data"), "--import-root", str(tmp_path))
    assert_one_line_naming(
        lines, f"--import-root {tmp_path} contains the storage root {tmp_path / 'data'}"
    )
    assert "import root" in lines[0] and "does not contain" in lines[0]  # the fix
    assert not (tmp_path / "data").exists(), "nothing may be created before the refusal"


Layout = Callable[[Path], tuple[list[str], str, str]]


def _same(tmp: Path) -> tuple[list[str], str, str]:
    data = tmp / "data"
    return ["--storage-root", str(data), "--import-root", str(data)], str(data), "is the storage"


def _inside(tmp: Path) -> tuple[list[str], str, str]:
    data, inner = tmp / "data", tmp / "data" / "incoming"
    inner.mkdir(parents=True)
    args = ["--storage-root", str(data), "--import-root", str(inner)]
    return args, str(inner), f"lies inside the storage root {data}"


def _through_a_symlink(tmp: Path) -> tuple[list[str], str, str]:
    (tmp / "real").mkdir()
    (tmp / "link").symlink_to(tmp / "real")
    args = ["--storage-root", str(tmp / "real" / "data"), "--import-root", str(tmp / "link")]
    return args, str(tmp / "real"), "contains the storage root"  # named resolved


def _database_elsewhere(tmp: Path) -> tuple[list[str], str, str]:
    (tmp / "db").mkdir()
    database = tmp / "db" / "assets.db"
    args = ["--storage-root", str(tmp / "data"), "--database-url", f"sqlite:///{database}"]
    return [*args, "--import-root", str(tmp / "db")], str(database), "contains the database"


def _tokens_file(tmp: Path) -> tuple[list[str], str, str]:
    (tmp / "etc").mkdir()
    tokens = tmp / "etc" / "tokens.toml"
    tokens.write_text(tokens_toml())
    args = ["--storage-root", str(tmp / "data"), "--tokens-file", str(tokens)]
    return [*args, "--import-root", str(tmp / "etc")], str(tokens), "contains the tokens file"


def _secret_file(tmp: Path) -> tuple[list[str], str, str]:
    (tmp / "keys").mkdir()
    secret = tmp / "keys" / "secret"
    secret.write_bytes(SECRET)
    args = ["--storage-root", str(tmp / "data"), "--token-secret-file", str(secret)]
    return [*args, "--import-root", str(tmp / "keys")], str(secret), "contains the token secret"


def _tls_key(tmp: Path) -> tuple[list[str], str, str]:
    cert, key = CA().server().write(tmp / "tls", "server")
    args = ["--storage-root", str(tmp / "data"), "--tls-cert", str(cert), "--tls-key", str(key)]
    return [*args, "--import-root", str(tmp / "tls")], str(cert), "contains the TLS certificate"


@pytest.mark.parametrize(
    "layout",
    [_same, _inside, _through_a_symlink, _database_elsewhere, _tokens_file, _secret_file, _tls_key],
)
def test_every_overlap_with_the_servers_own_files_is_refused_at_start_up(
    tmp_path: Path, layout: Layout
) -> None:
    args, named, relation = layout(tmp_path)
    assert_one_line_naming(refused_start(*args), named, relation)


async def test_a_root_symlinked_over_the_storage_root_later_is_refused_per_request(
    tmp_path: Path,
) -> None:
    """The start-up check passes (the roots are apart); then a folder above the import root
    becomes a symlink, so the import root now holds the storage root. Moving the live
    database out through it must be refused, and nothing stored may be touched."""
    storage = tmp_path / "store" / "inner" / "data"
    storage.mkdir(parents=True)
    (tmp_path / "imp" / "inner").mkdir(parents=True)
    with serving(
        ServerProcess(
            storage, f"sqlite:///{storage / 'assets.db'}", import_roots=[tmp_path / "imp" / "inner"]
        )
    ) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssetServiceStub(channel)
            kept = await upload(stub, [b"precious bytes"], label="kept.bin")
            value = await stub.CreateValueAsset(
                pb.CreateValueAssetRequest(label="v", value=pb.Value(text="kept"))
            )
            (tmp_path / "imp").rename(tmp_path / "imp.before")
            (tmp_path / "imp").symlink_to(tmp_path / "store")
            through = tmp_path / "imp" / "inner" / "data"
            database = through / "assets.db"
            assert database.is_file()  # the symlink does reach the live database
            promise = await stub.CreatePendingAsset(
                pb.CreatePendingAssetRequest(task_id="t-1", label="out.bin")
            )
            stored = through / Path(kept.storage_path).relative_to(storage)
            is_database = "is the server's database"
            in_storage = f"lies in the server's storage root {storage}"
            attempts = [
                (RegisterFile(path=str(database), move=True), is_database),
                (RegisterFile(path=str(database)), is_database),
                (RegisterFile(path=str(through / "assets.db-wal")), "server's database file"),
                (RegisterFile(path=str(stored), move=True), in_storage),
                (RegisterFile(path=str(stored)), in_storage),
            ]
            for request, message in attempts:
                await expect_error(stub.RegisterFile(request), DENIED, message)
            fulfill = pb.FulfillAssetRequest(asset_id=promise.asset.id, source_path=str(stored))
            await expect_error(stub.FulfillAsset(fulfill), DENIED, in_storage)
            assert Path(kept.storage_path).read_bytes() == b"precious bytes"
            ids = {a.id for a in await all_assets(stub)}
            assert {kept.id, value.asset.id, promise.asset.id} <= ids
        server.stop()
        (tmp_path / "imp").unlink()
        (tmp_path / "imp.before").rename(tmp_path / "imp")
        server.start()  # the database is still where it was, with every record
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssetServiceStub(channel)
            assert len(await all_assets(stub)) == 3
            assert await read_all(stub, kept.id) == b"precious bytes"


PRIVATE_MOUNTS = ["unshare", "--mount", "--propagation", "private"]


def _bind_mounts_unavailable() -> str | None:
    """Why this machine cannot give a process a mount namespace with a bind mount, or None."""
    try:
        subprocess.run(
            [*PRIVATE_MOUNTS, "mount", "--bind", "/tmp", "/tmp"],
            check=True,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"no private mount namespace with bind mounts here ({exc})"
    return None


def bind_in(pid: int, source: Path, target: Path) -> None:
    """Bind-mount `source` at `target` in the mount namespace of process `pid` only (it
    goes away with that process)."""
    subprocess.run(
        ["nsenter", "--target", str(pid), "--mount", "mount", "--bind", str(source), str(target)],
        check=True,
        capture_output=True,
        timeout=10,
    )


async def test_a_bind_mount_of_the_storage_root_made_later_is_refused_per_request(
    tmp_path: Path,
) -> None:
    """A bind mount the server cannot have seen at start-up: one of the storage root under
    an import root, one of a folder inside it as a (sub)folder of an import root."""
    unavailable = _bind_mounts_unavailable()
    if unavailable:
        pytest.skip(unavailable)
    storage, incoming = tmp_path / "data", tmp_path / "incoming"
    for portal in ("portal", "uploads-portal"):
        (incoming / portal).mkdir(parents=True)
    with serving(
        ServerProcess(
            storage,
            f"sqlite:///{storage / 'assets.db'}",
            import_roots=[incoming],
            launcher=PRIVATE_MOUNTS,
        )
    ) as server:
        bind_in(server.pid, storage, incoming / "portal")
        bind_in(server.pid, storage / "uploads", incoming / "uploads-portal")
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssetServiceStub(channel)
            kept = await upload(stub, [b"precious bytes"], label="kept.bin")
            inside = Path(kept.storage_path).relative_to(storage / "uploads")
            attempts = [
                (incoming / "portal" / "assets.db", "is the server's database"),
                (incoming / "portal" / "uploads" / inside, "lies in the server's storage root"),
                (incoming / "uploads-portal" / inside, "lies in the server's storage root"),
            ]
            for path, message in attempts:
                request = RegisterFile(path=str(path), move=True)
                await expect_error(stub.RegisterFile(request), DENIED, message)
            assert Path(kept.storage_path).read_bytes() == b"precious bytes"
            assert [a.id for a in await all_assets(stub)] == [kept.id]
    assert (storage / "assets.db").is_file()


def test_a_bind_mount_of_the_storage_root_under_an_import_root_is_refused_at_start_up(
    tmp_path: Path,
) -> None:
    unavailable = _bind_mounts_unavailable()
    if unavailable:
        pytest.skip(unavailable)
    storage, incoming = tmp_path / "data", tmp_path / "incoming"
    storage.mkdir()
    (incoming / "portal").mkdir(parents=True)
    # In a mount namespace of its own: bind, then exec the server.
    launcher = [
        *PRIVATE_MOUNTS,
        "sh",
        "-c",
        'mount --bind "$1" "$2" && shift 2 && exec "$@"',
        "sh",
        str(storage),
        str(incoming / "portal"),
    ]
    lines = refused_start(
        "--storage-root", str(storage), "--import-root", str(incoming), launcher=launcher
    )
    assert_one_line_naming(lines, f"--import-root {incoming} contains the storage root {storage}")
