"""End to end: reflection v1 and v1alpha, with the contract's comments, from real tools."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from tests.backends import grpcurl_binary
from tests.e2e.security_helpers import SecureFiles, bearer, server_process, token_for
from tests.e2e.test_grpcurl import grpcurl_binary as grpcurl_1_8
from tests.serverproc import ServerProcess, serving

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "tools" / "node_modules" / ".bin" / "buf"
SERVICE = "asset.v1.AssetService"
V1, V1ALPHA = "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"
# Comments of protos/asset/v1/asset_service.proto: a method's and a field's.
METHOD_COMMENT = "// GetManifest writes input_data.json for a task and returns its path."
FIELD_COMMENT = "// Absolute path of the bytes on the server; empty for VALUE and PENDING."


def run(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{cmd}: exit {done.returncode}\n{done.stderr}"
    return done


def buf_curl(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    assert BUF.exists(), "buf is missing: `make install` runs npm ci in tools/"
    return run(BUF, "curl", "--protocol", "grpc", "--reflect-protocol", "grpc-v1", *args)


def reflect(
    address: str, service: str, request: reflection_pb2.ServerReflectionRequest, **kw: object
) -> reflection_pb2.ServerReflectionResponse:
    """One request to the reflection service `service` (v1's messages are v1alpha's bytes)."""
    with grpc.insecure_channel(address) as channel:
        info = channel.stream_stream(
            f"/{service}/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        [response] = list(info(iter([request]), timeout=10, **kw))
        return response


@pytest.mark.requires("grpcurl")
def test_the_newest_grpcurl_lists_describes_with_comments_and_calls(server: ServerProcess) -> None:
    grpcurl = str(grpcurl_binary())
    assert "v1.9" in run(grpcurl, "-version").stderr + run(grpcurl, "-version").stdout
    listed = run(grpcurl, "-plaintext", server.address, "list").stdout.split()
    assert set(listed) == {SERVICE, "grpc.health.v1.Health", V1, V1ALPHA}
    method = run(grpcurl, "-plaintext", server.address, "describe", f"{SERVICE}.GetManifest")
    assert METHOD_COMMENT in method.stdout
    message = run(grpcurl, "-plaintext", server.address, "describe", "asset.v1.Asset")
    assert FIELD_COMMENT in message.stdout and "string storage_path = 6;" in message.stdout
    body = json.dumps({"label": "cfg", "value": {"json": '{"a": 1}'}})
    made = run(grpcurl, "-plaintext", "-d", body, server.address, f"{SERVICE}/CreateValueAsset")
    asset = json.loads(made.stdout)["asset"]
    got = run(
        grpcurl,
        "-plaintext",
        "-d",
        json.dumps({"asset_id": asset["id"]}),
        server.address,
        f"{SERVICE}/GetAsset",
    )
    assert json.loads(got.stdout)["asset"]["value"] == {"json": '{"a": 1}'}
    # The names scripts read, as before comments were served (reflection.source_files).
    assert '"media_type": "application/json"' in got.stdout


def test_buf_curl_over_reflection_v1_lists_and_calls(server: ServerProcess) -> None:
    base = f"http://{server.address}"
    services = buf_curl(server, "--list-services", base).stdout.split()
    assert set(services) == {SERVICE, "grpc.health.v1.Health", V1, V1ALPHA}
    methods = buf_curl(server, "--list-methods", base).stdout.split()
    assert f"{SERVICE}/GetManifest" in methods and f"{SERVICE}/WatchAsset" in methods
    body = json.dumps({"label": "cfg", "value": {"text": "hi"}})
    made = json.loads(buf_curl(server, "-d", body, f"{base}/{SERVICE}/CreateValueAsset").stdout)
    assert made["asset"]["status"] == "ASSET_STATUS_AVAILABLE"
    body = json.dumps({"assetId": made["asset"]["id"]})
    got = json.loads(buf_curl(server, "-d", body, f"{base}/{SERVICE}/GetAsset").stdout)
    assert got["asset"]["value"] == {"text": "hi"}


@pytest.mark.parametrize("service", [V1, V1ALPHA])
def test_both_protocols_serve_the_contract_with_its_comments(
    server: ServerProcess, service: str
) -> None:
    """What `describe` shows comes from here: the file with its source info (buf curl has no
    describe; grpcurl 1.9 asks v1, grpcurl 1.8 v1alpha)."""
    response = reflect(
        server.address,
        service,
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=f"{SERVICE}.GetManifest"),
    )
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    [ours] = [f for f in files if f.name == "asset/v1/asset_service.proto"]
    comments = [loc.leading_comments for loc in ours.source_code_info.location]
    assert any(c.strip().startswith(METHOD_COMMENT[3:]) for c in comments), comments[:5]
    assert len([c for c in comments if c]) > 100  # every documented element, not a few


def test_grpcurl_1_8_over_v1alpha_shows_the_comments_too(server: ServerProcess) -> None:
    method = run(grpcurl_1_8(), "-plaintext", server.address, "describe", f"{SERVICE}.GetManifest")
    assert METHOD_COMMENT in method.stdout


def test_authenticated_reflection_needs_a_reader_on_both_protocols(tmp_path: Path) -> None:
    imports = tmp_path / "imports"
    imports.mkdir()
    files = SecureFiles(tmp_path).with_tokens()
    with serving(
        server_process(tmp_path, imports, [*files.args, "--reflection", "authenticated"])
    ) as server:
        listing = reflection_pb2.ServerReflectionRequest(list_services="")
        for service in (V1, V1ALPHA):
            with pytest.raises(grpc.RpcError) as refused:
                reflect(server.address, service, listing)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, service
            answer = reflect(server.address, service, listing, metadata=bearer(token_for("reader")))
            assert SERVICE in {s.name for s in answer.list_services_response.service}
        # buf curl too: refused without a token, served with a reader's.
        base = f"http://{server.address}"
        args = ["curl", "--protocol", "grpc", "--reflect-protocol", "grpc-v1", "--list-services"]
        without = subprocess.run(
            [str(BUF), *args, base], capture_output=True, text=True, timeout=60
        )
        # buf words any UNAUTHENTICATED as a Buf Schema Registry login hint.
        assert without.returncode != 0 and "not authenticated" in without.stderr
        header = f"authorization: Bearer {token_for('reader')}"
        listed = run(BUF, *args, "--reflect-header", header, base).stdout.split()
        assert SERVICE in listed
