"""Security units: the role table, tokens files, task tokens, the CLI, start-up checks."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service.api.guard import Guard, Refused
from asset_service.cli import main
from asset_service.config import load_settings
from asset_service.domain.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from asset_service.security import RULES, Role, TaskAccess, TaskTokens, rule_for
from asset_service.security.authn import Authenticator
from asset_service.security.errors import Unauthenticated
from asset_service.security.principal import Principal, TaskScope
from asset_service.security.setup import Security, is_loopback
from asset_service.security.tokens import hash_token, load_tokens
from tests.pki import CA

SECRET = b"s" * 40
ZERO = "0" * 64


def test_every_rpc_of_the_contract_has_exactly_one_rule() -> None:
    service = pb.DESCRIPTOR.services_by_name["AssetService"]
    methods = {f"/asset.v1.AssetService/{m.name}" for m in service.methods}
    assert methods == {m for m in RULES if m.startswith("/asset.v1.")}
    assert rule_for("/grpc.health.v1.Health/Check").role is None  # type: ignore[union-attr]
    assert rule_for("/asset.v1.AssetService/Unknown") is None
    # A task token's fields list names real request fields (a typo would lock it out).
    for method, rule in RULES.items():
        if rule.task is TaskAccess.NONE:
            continue
        request = service.methods_by_name[method.rsplit("/", 1)[1]].input_type
        fields = set(request.fields_by_name)
        if rule.asset_field.startswith("header."):
            fields = set(request.fields_by_name["header"].message_type.fields_by_name)
        names = {*rule.task_fields, rule.asset_field.removeprefix("header.")} - {""}
        assert names <= fields, method
        assert set(rule.task_paths) <= set(rule.task_fields), method


def test_roles_include_the_lower_ones() -> None:
    assert Role.ADMIN > Role.ORCHESTRATOR > Role.WORKER > Role.READER
    assert Role.parse(" Worker ") is Role.WORKER
    with pytest.raises(ValueError, match="roles are reader, worker, orchestrator, admin"):
        Role.parse("root")


def test_new_token_entry_loads_and_matches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "new", "--principal", "orch-1", "--role", "orchestrator"]) == 0
    out = capsys.readouterr().out
    token = out.split("\n")[1]
    entry = out[out.index("[[tokens]]") :]
    assert token not in entry
    path = tmp_path / "tokens.toml"
    path.write_text(entry)
    table = load_tokens(path)
    grant = table.by_token(token)
    assert grant is not None and grant.principal == "orch-1"
    assert grant.roles == frozenset({Role.ORCHESTRATOR})
    assert table.by_token(token + "x") is None
    assert tomllib.loads(entry)["tokens"][0]["sha256"] == hash_token(token)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[[tokens]]\nprincipal = "a"\nroles = ["reader"]\ntoken = "x"\n', "never the token"),
        ('[[tokens]]\nprincipal = "a"\nroles = ["reader"]\nsha256 = "abc"\n', "64 lower-case"),
        (f'[[tokens]]\nprincipal = "a"\nroles = ["god"]\nsha256 = "{"0" * 64}"\n', "unknown role"),
        (
            f'[[tokens]]\nprincipal = "a b"\nroles = ["reader"]\nsha256 = "{"0" * 64}"\n',
            "principal",
        ),
        ("[[tokens]\n", "not valid TOML"),
        ('[[certificates]]\nprincipal = "a"\nroles = ["reader"]\n', "common_name"),
    ],
)
def test_tokens_file_mistakes_name_the_file_and_entry(
    tmp_path: Path, text: str, fragment: str
) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(text)
    with pytest.raises(InvalidArgument, match=fragment) as info:
        load_tokens(path)
    assert str(path) in info.value.message


def test_task_tokens_mint_verify_expire() -> None:
    now = [1_000_000.0]
    tokens = TaskTokens([SECRET], clock=lambda: now[0])
    ids = ["6F9619FF-8B86-4011-B42D-00C04FC964FF"]
    minted = tokens.mint("orch-1", "task-a", ids, 60)
    assert minted.expires_at.timestamp() == 1_000_060
    claims = jwt.decode(minted.token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert claims["inputs"] == ["6f9619ff-8b86-4011-b42d-00c04fc964ff"]
    with pytest.raises(Unauthenticated, match="token expired"):
        tokens.verify(minted.token)  # the real clock is far past 1970 + 1_000_060 s
    rotated = TaskTokens([b"n" * 40, SECRET])
    fresh = TaskTokens([SECRET]).mint("orch-1", "task-a", [], 0)
    principal = rotated.verify(fresh.token)  # an old secret still verifies
    assert principal.task is not None and principal.task.task_id == "task-a"
    with pytest.raises(Unauthenticated, match="bad signature"):
        TaskTokens([b"n" * 40]).verify(fresh.token)
    with pytest.raises(Unauthenticated, match="bad signature"):
        rotated.verify(fresh.token[:-2] + "xx")
    with pytest.raises(FailedPrecondition, match="--token-secret-file"):
        TaskTokens().mint("orch-1", "task-a", [], 0)
    with pytest.raises(InvalidArgument, match="ttl_seconds"):
        tokens.mint("orch-1", "task-a", [], -1)
    with pytest.raises(InvalidArgument, match="task_id"):
        tokens.mint("orch-1", "../etc", [], 0)


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("localhost:1", True),
        ("[::1]:1", True),
        ("unix:/tmp/s", True),
        ("0.0.0.0:1", False),
        ("[::]:1", False),
        ("10.0.0.5:1", False),
        ("example.org:1", False),
        (":50051", False),
    ],
)
def test_is_loopback(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback


def _settings(tmp_path: Path, *args: str) -> Security:
    return Security(load_settings(["--storage-root", str(tmp_path), *args], env={}))


def test_startup_checks_name_what_is_wrong(tmp_path: Path) -> None:
    ca = CA()
    cert, key = ca.server().write(tmp_path, "server")
    _, other_key = ca.server().write(tmp_path / "other", "server")
    with pytest.raises(InvalidArgument, match="go together"):
        _settings(tmp_path, "--tls-cert", str(cert))
    with pytest.raises(InvalidArgument, match="does not belong to the certificate"):
        _settings(tmp_path, "--tls-cert", str(cert), "--tls-key", str(other_key))
    with pytest.raises(InvalidArgument, match="without --tokens-file"):
        _settings(
            tmp_path, "--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(cert)
        )
    with pytest.raises(InvalidArgument, match="cannot read the tokens file"):
        _settings(tmp_path, "--tokens-file", str(tmp_path / "missing.toml"))
    short = tmp_path / "secret"
    short.write_text("short\n")
    with pytest.raises(InvalidArgument, match="at least 32"):
        _settings(tmp_path, "--token-secret-file", str(short))
    secured = _settings(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key))
    assert secured.certificates is not None and not secured.authenticated


def test_settings_from_environment(tmp_path: Path) -> None:
    env = {
        "ASSET_SERVICE_TLS_CERT": "c.pem",
        "ASSET_SERVICE_TLS_KEY": "k.pem",
        "ASSET_SERVICE_TOKENS_FILE": "t.toml",
        "ASSET_SERVICE_TOKEN_SECRET_FILE": "s",
        "ASSET_SERVICE_REFLECTION": "off",
        "ASSET_SERVICE_INSECURE": "1",
    }
    settings = load_settings([], env=env)
    assert settings.tls_cert is not None and settings.tls_cert.name == "c.pem"
    assert settings.tokens_file is not None and settings.tokens_file.name == "t.toml"
    assert settings.reflection == "off" and settings.insecure
    assert load_settings([], env={}).tls_client_ca is None


async def test_a_task_id_that_is_no_safe_folder_name_cannot_use_server_side_paths() -> None:
    """Minting refuses such task ids; a token that carries one anyway (signed some other
    way) is refused a source_path before the path is looked at."""
    asset_id = "6f9619ff-8b86-4011-b42d-00c04fc964ff"

    class Promised:
        async def promised_by(self, asset_ids: Sequence[str]) -> dict[str, str]:
            return {asset_id: "../task-b"}

    method = "/asset.v1.AssetService/FulfillAsset"
    guard = Guard(
        method,
        rule_for(method),
        Authenticator(None, TaskTokens(), False),
        Promised(),
        1.0,
        [Path("/imports")],
    )
    scope = TaskScope("../task-b", frozenset(), datetime.now(UTC), "orch-1")
    principal = Principal("task:../task-b", frozenset(), "task-token", scope)
    request = pb.FulfillAssetRequest(asset_id=asset_id, source_path="/imports/task-b/out.bin")
    with pytest.raises(Refused) as refused:
        await guard.check_scope(principal, request)
    assert isinstance(refused.value.error, PermissionDenied)
    assert "is not a safe folder name" in refused.value.error.message
    # A value is no server-side path: that stays allowed.
    await guard.check_scope(principal, pb.FulfillAssetRequest(asset_id=asset_id, value=pb.Value()))
