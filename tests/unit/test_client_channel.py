"""The Python client's channel: settings from the environment, the retry table, own stubs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from asset_client import _channel
from asset_client._convert import pb, pb_grpc
from asset_client._core import WatchCursor
from asset_client.errors import (
    FailedPreconditionError,
    UnavailableError,
    Violation,
    from_rpc_error,
)
from google.rpc import error_details_pb2, status_pb2

from asset_service._proto.asset.v1 import asset_service_pb2 as server_pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as server_pb_grpc


def resolve(env: dict[str, str], **given: object) -> _channel.Settings:
    args: dict[str, object] = {
        "credentials": None,
        "tls": False,
        "root_certificates": None,
        "certificate_chain": None,
        "private_key": None,
        "token": None,
    }
    args.update(given)
    target = args.pop("target", None)
    timeout = args.pop("timeout", _channel.UNSET)
    return _channel.resolve(
        target,  # type: ignore[arg-type]
        timeout,
        environ=env,
        **args,  # type: ignore[arg-type]
    )


# -- settings from the environment ---------------------------------------------------------


def test_defaults_without_arguments_or_variables() -> None:
    settings = resolve({})
    assert (settings.target, settings.timeout, settings.credentials) == (
        "127.0.0.1:50051",
        30.0,
        None,
    )


def test_variables_fill_what_no_argument_gives() -> None:
    settings = resolve({"ASSET_SERVICE_ADDR": "assets:7000", "ASSET_SERVICE_TIMEOUT": "2.5"})
    assert (settings.target, settings.timeout) == ("assets:7000", 2.5)


def test_arguments_win_over_variables() -> None:
    env = {"ASSET_SERVICE_ADDR": "assets:7000", "ASSET_SERVICE_TIMEOUT": "2.5"}
    settings = resolve(env, target="other:1", timeout=None)
    assert (settings.target, settings.timeout) == ("other:1", None)
    assert resolve(env, timeout=4).timeout == 4.0


def test_empty_variables_count_as_unset() -> None:
    settings = resolve({"ASSET_SERVICE_ADDR": " ", "ASSET_SERVICE_TIMEOUT": ""})
    assert (settings.target, settings.timeout) == ("127.0.0.1:50051", 30.0)


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "soon"])
def test_a_timeout_variable_that_is_no_positive_number_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="ASSET_SERVICE_TIMEOUT"):
        resolve({"ASSET_SERVICE_TIMEOUT": text})


@pytest.mark.parametrize("timeout", [0, -3.0, float("nan")])
def test_a_timeout_argument_of_zero_or_below_is_refused(timeout: float) -> None:
    with pytest.raises(ValueError, match="more than 0 seconds"):
        resolve({}, timeout=timeout)


def test_a_token_and_a_token_file_together_are_refused(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("abc")
    env = {"ASSET_SERVICE_TOKEN": "abc", "ASSET_SERVICE_TOKEN_FILE": str(tmp_path / "t")}
    with pytest.raises(ValueError, match="unset one of them"):
        resolve(env)


def test_a_token_file_is_read_before_each_call(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first\n")
    source = _channel.TokenFile(str(path), "ASSET_SERVICE_TOKEN_FILE")
    assert source() == "first"
    path.write_text("second")
    assert source() == "second"
    path.unlink()  # e.g. while it is being replaced: the last token read goes on
    assert source() == "second"


@pytest.mark.parametrize("content", [None, "  \n"])
def test_a_missing_or_empty_token_file_is_refused_at_once(
    tmp_path: Path, content: str | None
) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=f"ASSET_SERVICE_TOKEN_FILE={path}"):
        resolve({"ASSET_SERVICE_TOKEN_FILE": str(path)})


def test_tls_files_from_the_environment_make_tls_credentials(tmp_path: Path) -> None:
    from tests.pki import CA

    ca = CA("channel test CA")
    cert, key = ca.client("worker").write(tmp_path, "client")
    env = {
        "ASSET_SERVICE_CA_FILE": str(ca.write(tmp_path / "ca.crt")),
        "ASSET_SERVICE_CLIENT_CERT": str(cert),
        "ASSET_SERVICE_CLIENT_KEY": str(key),
    }
    assert isinstance(resolve(env).credentials, grpc.ChannelCredentials)


@pytest.mark.parametrize(("text", "tls"), [("1", True), ("Yes", True), ("off", False), ("", False)])
def test_the_tls_variable_asks_for_tls_with_the_systems_roots(
    monkeypatch: pytest.MonkeyPatch, text: str, tls: bool
) -> None:
    seen: dict[str, bool] = {}
    real = _channel.channel_credentials

    def spy(credentials: object, **kwargs: Any) -> Any:
        seen["tls"] = kwargs["tls"]
        return real(credentials, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_channel, "channel_credentials", spy)
    creds = resolve({"ASSET_SERVICE_TLS": text}).credentials
    assert seen["tls"] is tls
    assert isinstance(creds, grpc.ChannelCredentials) is tls


@pytest.mark.parametrize("target", ["10.1.2.3:50051", "ipv4:192.0.2.7:1", "[2001:db8::1]:50051"])
def test_a_token_without_tls_for_an_address_off_this_host_is_refused_at_once(
    target: str,
) -> None:
    # gRPC's local credentials would refuse every connection, after 15 s of retries, with
    # "Endpoint is neither UDS or TCP loopback address".
    with pytest.raises(ValueError, match=r"only to a loopback address.*turn TLS on"):
        resolve({"ASSET_SERVICE_TOKEN": "t"}, target=target)
    assert resolve({"ASSET_SERVICE_TOKEN": "t", "ASSET_SERVICE_TLS": "1"}, target=target)


@pytest.mark.parametrize("target", ["127.0.0.1:1", "[::1]:1", "localhost:1", "assets:1", "unix:/s"])
def test_a_token_without_tls_for_a_loopback_address_or_a_name_is_left_to_grpc(
    target: str,
) -> None:
    assert resolve({}, target=target, token="t").credentials is not None


def test_a_tls_variable_that_is_no_boolean_is_refused() -> None:
    with pytest.raises(ValueError, match="ASSET_SERVICE_TLS='maybe' is not a boolean"):
        resolve({"ASSET_SERVICE_TLS": "maybe"})


def test_a_missing_tls_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.crt"
    with pytest.raises(ValueError, match=f"ASSET_SERVICE_CA_FILE={missing}: cannot read it"):
        resolve({"ASSET_SERVICE_CA_FILE": str(missing)})


def test_a_tls_file_or_argument_that_is_no_pem_is_refused_at_once(tmp_path: Path) -> None:
    # gRPC would take it, then fail every connection with error lines of its own.
    (tmp_path / "ca.der").write_bytes(b"\x30\x82garbage")
    with pytest.raises(ValueError, match=r"ASSET_SERVICE_CA_FILE=.*ca.der: no PEM block"):
        resolve({"ASSET_SERVICE_CA_FILE": str(tmp_path / "ca.der")})
    with pytest.raises(ValueError, match="root_certificates: no PEM block"):
        resolve({}, root_certificates=b"not a certificate")


def test_a_client_certificate_without_its_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    with pytest.raises(ValueError, match="ASSET_SERVICE_CLIENT_KEY"):
        resolve({"ASSET_SERVICE_CLIENT_CERT": str(tmp_path / "c.pem")})


def test_given_credentials_leave_the_tls_variables_unread(tmp_path: Path) -> None:
    env = {"ASSET_SERVICE_CA_FILE": str(tmp_path / "missing.crt")}
    creds = grpc.ssl_channel_credentials()
    assert resolve(env, credentials=creds).credentials is creds


def test_a_channel_of_the_caller_leaves_credentials_alone(tmp_path: Path) -> None:
    env = {"ASSET_SERVICE_CA_FILE": str(tmp_path / "missing.crt"), "ASSET_SERVICE_TOKEN": "t"}
    assert resolve(env, own_channel=False).credentials is None


# -- retries -------------------------------------------------------------------------------


def test_every_rpc_is_in_exactly_one_retry_table() -> None:
    methods = {m.name for m in server_pb.DESCRIPTOR.services_by_name["AssetService"].methods}
    retried, not_retried = set(_channel.RETRIED), set(_channel.NOT_RETRIED)
    assert not retried & not_retried
    assert methods <= retried | not_retried
    # QueryUpload (resumable uploads) may be listed ahead of the RPC itself.
    assert (retried | not_retried) - methods <= {"QueryUpload"}
    assert {"UploadAsset", "CreatePendingAsset", "CreateValueAsset", "RegisterFile"} <= (
        not_retried
    )


def test_the_service_config_retries_the_safe_calls_on_unavailable_only() -> None:
    options = dict(_channel.channel_options([]))
    assert options["grpc.enable_retries"] == 1
    (method_config,) = json.loads(options["grpc.service_config"])["methodConfig"]
    names = {(n["service"], n["method"]) for n in method_config["name"]}
    assert names == {("asset.v1.AssetService", m) for m in _channel.RETRIED}
    policy = method_config["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert 2 <= policy["maxAttempts"] <= 5  # gRPC caps attempts at 5


def test_options_of_the_caller_replace_the_defaults() -> None:
    options = _channel.channel_options([("grpc.enable_retries", 0), ("grpc.lb_policy_name", "x")])
    assert dict(options)["grpc.enable_retries"] == 0
    assert [k for k, _ in options].count("grpc.enable_retries") == 1
    assert ("grpc.lb_policy_name", "x") in options


def test_a_watch_is_resumed_by_hand_only_after_it_delivered_events() -> None:
    cursor = WatchCursor(["a"], 0, False, None)
    cursor.request()
    down = UnavailableError("server restarting")
    assert not cursor.resumes(down)  # gRPC's retry policy had the call before any event
    asset = pb.Asset(id="a", status=pb.ASSET_STATUS_PENDING, type=pb.ASSET_TYPE_FILE)
    cursor.observe(
        pb.WatchAssetResponse(type=pb.WATCH_EVENT_TYPE_SNAPSHOT, asset=asset, revision=7)
    )
    assert not cursor.resumes(FailedPreconditionError("no"))
    assert cursor.resumes(down)
    assert cursor.request().after_revision == 7
    assert not cursor.resumes(down)  # the re-opened stream delivered nothing yet


# -- the client's own stubs ----------------------------------------------------------------


def test_the_client_stubs_call_the_servers_method_paths() -> None:
    """Registered under another package, the client's stubs still call /asset.v1.AssetService."""

    class Recording:
        def __init__(self) -> None:
            self.paths: list[str] = []

        def __getattr__(self, kind: str) -> object:
            def make(path: str, *args: object, **kwargs: object) -> None:
                self.paths.append(path)

            return make

    client, server = Recording(), Recording()
    pb_grpc.AssetServiceStub(client)  # type: ignore[arg-type]
    server_pb_grpc.AssetServiceStub(server)  # type: ignore[arg-type]
    assert client.paths == server.paths and client.paths
    assert all(p.startswith("/asset.v1.AssetService/") for p in client.paths)
    assert pb.Asset.DESCRIPTOR.full_name == "asset_client.asset.v1.Asset"


def test_client_and_server_messages_share_the_wire_format() -> None:
    sent = server_pb.WatchAssetRequest(asset_ids=["a", "b"], after_revision=9, follow=True)
    got = pb.WatchAssetRequest.FromString(sent.SerializeToString())
    assert (list(got.asset_ids), got.after_revision, got.follow) == (["a", "b"], 9, True)


# -- status details, decoded by grpcio-status -----------------------------------------------


class Refused(grpc.RpcError):
    """A failed call as grpc raises it: code, details and the trailers it ended with."""

    def __init__(self, *trailers: tuple[str, bytes]) -> None:
        self.trailers = trailers

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.FAILED_PRECONDITION

    def details(self) -> str:
        return "inputs not ready"

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return self.trailers


def test_precondition_violations_decode_from_the_status_details() -> None:
    failure = error_details_pb2.PreconditionFailure()
    failure.violations.add(type="NOT_AVAILABLE", subject="asset 1", description="PENDING")
    failure.violations.add(type="NOT_AVAILABLE", subject="asset 2", description="FAILED")
    status = status_pb2.Status(code=9, message="inputs not ready")
    status.details.add().Pack(status_pb2.Status(code=1))  # another kind of detail: skipped
    status.details.add().Pack(failure)
    err = from_rpc_error(Refused(("grpc-status-details-bin", status.SerializeToString())))
    assert isinstance(err, FailedPreconditionError)
    assert err.violations == (
        Violation("NOT_AVAILABLE", "asset 1", "PENDING"),
        Violation("NOT_AVAILABLE", "asset 2", "FAILED"),
    )


@pytest.mark.parametrize(
    "trailers",
    [(), (("other-bin", b"x"),), (("grpc-status-details-bin", b"\xff not a status"),)],
)
def test_missing_or_malformed_status_details_leave_the_error_as_it_is(
    trailers: tuple[tuple[str, bytes], ...],
) -> None:
    err = from_rpc_error(Refused(*trailers))
    assert isinstance(err, FailedPreconditionError)
    assert (err.details, err.violations) == ("inputs not ready", ())


def test_the_channel_pings_while_a_call_is_open_and_the_caller_may_say_otherwise() -> None:
    """A watch on a connection dropped in silence must end (tests/e2e/test_client_keepalive
    shows it resuming): 30 s pings during calls, 20 s for the answer, no cap on pings
    without data (a watch sends none); a caller's own value wins."""
    options = dict(_channel.channel_options(()))
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.keepalive_timeout_ms"] == options["grpc.http2.ping_timeout_ms"] == 20_000
    assert options["grpc.keepalive_permit_without_calls"] == 0
    assert options["grpc.http2.max_pings_without_data"] == 0
    mine = _channel.channel_options([("grpc.keepalive_time_ms", 120_000)])
    assert [v for k, v in mine if k == "grpc.keepalive_time_ms"] == [120_000]
