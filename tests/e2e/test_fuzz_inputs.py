"""Property-based sweep: no input a client can send makes any RPC answer INTERNAL or UNKNOWN."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.serverproc import ServerProcess, database_url_for, serving

# One real server for the module; every RPC gets malformed and boundary field values (empty,
# huge, odd unicode, negative and max int64, unknown enum numbers, ids of existing and
# unknown assets, random bytes, broken upload streams). Each call must end OK or with a
# deliberate status and a message; afterwards the server must still be SERVING with no
# traceback in its log. Derandomized and bounded, so a run is reproducible and takes seconds.
EXAMPLES = 60
SWEEP = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
# Statuses that mean "the server did not expect this": a bug, whatever the input was.
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)
UNKNOWN_ID = "5b0e4f0e-0000-4000-8000-000000000000"


class World:
    """The server, a channel to it and assets in every state, made once for the module."""

    def __init__(self, server: ServerProcess, import_root: Path) -> None:
        self.server = server
        self.import_root = import_root
        self.channel = grpc.insecure_channel(server.address)
        self.stub = pb_grpc.AssetServiceStub(self.channel)
        s = self.stub
        self.file = s.UploadAsset(
            iter(
                [
                    pb.UploadAssetRequest(header=pb.UploadHeader(label="f.bin")),
                    pb.UploadAssetRequest(chunk=b"0123456789" * 100),
                ]
            )
        ).asset.id
        self.value = s.CreateValueAsset(
            pb.CreateValueAssetRequest(label="v.json", value=pb.Value(json='{"a": 1}'))
        ).asset.id
        self.pending = [
            s.CreatePendingAsset(
                pb.CreatePendingAssetRequest(task_id=f"task-{i}", label=f"p{i}", type=t)
            ).asset.id
            for i, t in enumerate([pb.ASSET_TYPE_FILE, pb.ASSET_TYPE_VALUE] * 3)
        ]
        self.failed = s.CreatePendingAsset(
            pb.CreatePendingAssetRequest(task_id="task-f", label="failed")
        ).asset.id
        s.FailAsset(pb.FailAssetRequest(asset_id=self.failed, reason="boom " * 800))
        for i in range(5):
            (import_root / f"in{i}.csv").write_text("a,b\n1,2\n")

    def ids(self) -> list[str]:
        return [self.file, self.value, self.failed, *self.pending]

    def close(self) -> None:
        self.channel.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("fuzz")
    import_root = base / "worker"
    import_root.mkdir()
    url = database_url_for(base)
    with serving(ServerProcess(base / "data", url, import_roots=[import_root])) as server:
        built = World(server, import_root)
        try:
            yield built
        finally:
            built.close()


# --- strategies -----------------------------------------------------------------------
# Each request starts valid and has up to two fields swapped for odd values, so that the
# odd value gets past the other fields' checks and reaches the code behind them.

# Any unicode protobuf can carry (no lone surrogates), with the troublemakers made likely.
ODD = [
    "",
    " ",
    ".",
    "..",
    "/",
    "../../etc/passwd",
    "\x00",
    "a\x00b",
    "\u2028",
    "\u202egpj.exe",
    "\u200f",
    "\ufeff",
    "👩\u200d💻",
    "%s%n%x",
    "'; DROP TABLE assets; --",
    "{",
    "NaN",
    "x" * 300,
    "é" * 5000,
    "y" * 100_000,
]
odd_texts = st.one_of(
    st.sampled_from(ODD),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=40),
)
names = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,15}", fullmatch=True)
name_lists = st.lists(names, max_size=3)
odd_lists = st.one_of(st.lists(odd_texts, max_size=5), st.just(["t"] * 65))
int64s = st.one_of(st.sampled_from([-1, *INT64]), st.integers(*INT64))
int32s = st.one_of(st.sampled_from([-1, 1001, *INT32]), st.integers(*INT32))
odd_enums = st.sampled_from([-1, 4, 99, *INT32])
media_types = st.sampled_from(["", "text/plain", "application/json", "image/png; q=1"])
odd_media_types = st.one_of(st.sampled_from(["a/b;" + "p" * 10_000, "text", "a/b/c"]), odd_texts)
odd_digests = st.one_of(st.sampled_from(["0" * 64, "A" * 64, "g" * 64, "0" * 63]), odd_texts)

json_texts = st.sampled_from(["null", "1", '{"a": [1, 2.5]}', '"s"'])
odd_json = st.one_of(
    st.sampled_from(
        [
            "",
            "NaN",
            "[Infinity]",
            "1e999",
            "-0",
            "1" * 5000,
            "[" * 5000 + "]" * 5000,
            '{"a": ' * 40 + "1" + "}" * 40,
            '"\\ud800"',
            '{"a": 1, "a": 2}',
        ]
    ),
    odd_texts,
)
values = st.one_of(
    names.map(lambda t: pb.Value(text=t)),
    json_texts.map(lambda t: pb.Value(json=t)),
    st.binary(max_size=64).map(lambda b: pb.Value(data=b)),
)
odd_values = st.one_of(
    odd_texts.map(lambda t: pb.Value(text=t)),
    odd_json.map(lambda t: pb.Value(json=t)),
    st.just(pb.Value()),
    st.just(pb.Value(data=b"\xff" * 5_000_000)),  # over the 4 MiB VALUE limit
)


def struct_values() -> st.SearchStrategy[struct_pb2.Value]:
    leaves = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).map(
            lambda f: struct_pb2.Value(number_value=f)
        ),
        odd_texts.map(lambda t: struct_pb2.Value(string_value=t)),
        st.booleans().map(lambda b: struct_pb2.Value(bool_value=b)),
        st.just(struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)),
        st.just(struct_pb2.Value()),  # no kind set at all
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3).map(
                lambda items: struct_pb2.Value(list_value=struct_pb2.ListValue(values=items))
            ),
            st.dictionaries(odd_texts, inner, max_size=3).map(
                lambda d: struct_pb2.Value(struct_value=struct_pb2.Struct(fields=d))
            ),
        ),
        max_leaves=8,
    )


def nested_lists(depth: int) -> struct_pb2.Struct:
    msg = struct_pb2.Struct()
    cur = msg.fields["deep"].list_value
    for _ in range(depth):
        cur = cur.values.add().list_value
    return msg


configs = st.just(struct_pb2.Struct(fields={"n": struct_pb2.Value(number_value=3)}))
odd_configs = st.one_of(
    st.dictionaries(odd_texts, struct_values(), max_size=4).map(
        lambda d: struct_pb2.Struct(fields=d)
    ),
    st.sampled_from([nested_lists(31), nested_lists(32), nested_lists(45)]),
)
FORGED_TOKENS = [
    base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
    for raw in ("sqlite:-1", "sqlite:0", "sqlite:" + "9" * 30, "sqlite:x", "mongo:1", "x:1")
]
odd_tokens = st.one_of(st.sampled_from(["!!!", "====", "é", *FORGED_TOKENS]), odd_texts)


def ids(world: World) -> st.SearchStrategy[str]:
    return st.sampled_from(world.ids())


def odd_ids(world: World) -> st.SearchStrategy[str]:
    existing = world.ids()
    return st.one_of(
        st.sampled_from([e.upper() for e in existing] + ["{" + e + "}" for e in existing]),
        st.sampled_from(
            [UNKNOWN_ID, "00000000-0000-0000-0000-000000000000", "urn:uuid:" + UNKNOWN_ID]
        ),
        st.uuids().map(str),
        odd_texts,
    )


Spec = dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]]


def requests(cls: type[Any], spec: Spec) -> st.SearchStrategy[Any]:
    """`cls` messages: every field valid but up to two, which get an odd value."""

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        odd = draw(st.sets(st.sampled_from(sorted(spec)), max_size=2))
        fields = {name: draw(bad if name in odd else good) for name, (good, bad) in spec.items()}
        return cls(**{k: v for k, v in fields.items() if v is not None})

    return build()


# --- the sweep ----------------------------------------------------------------------------


def check(world: World, call: Callable[[], Any]) -> None:
    """Run one call: OK, or a deliberate status with a message; never INTERNAL/UNKNOWN."""
    try:
        call()
    except grpc.RpcError as err:
        code, details = err.code(), err.details()  # type: ignore[attr-defined]
        assert code not in NEVER, f"{code}: {details}"
        if code is not grpc.StatusCode.CANCELLED:  # our own cancel after the first event
            assert details, f"{code} without a message"


def first_of(stream: Any) -> None:
    """Read one message of a server stream (enough to reach every check), then cancel."""
    try:
        next(stream, None)
    finally:
        stream.cancel()


def assert_healthy(world: World, log_from: int) -> None:
    """Still SERVING, and no traceback logged since line `log_from` of the server's log."""
    health = health_pb2_grpc.HealthStub(world.channel)
    answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    log = "".join(world.server.log[log_from:])
    assert "Traceback" not in log, log[-5000:]
    assert world.server.proc is not None and world.server.proc.poll() is None


@pytest.fixture
def sweep(world: World) -> Iterator[World]:
    log_from = len(world.server.log)
    yield world
    assert_healthy(world, log_from)


def test_upload_asset(sweep: World) -> None:
    header = requests(
        pb.UploadHeader,
        {
            "label": (names, odd_texts),
            "media_type": (media_types, odd_media_types),
            "tags": (name_lists, odd_lists),
            "expected_size_bytes": (st.none(), int64s),
            "expected_sha256": (st.just(""), odd_digests),
            "pending_asset_id": (st.just(""), st.one_of(ids(sweep), odd_ids(sweep))),
        },
    )
    chunks = st.lists(st.binary(max_size=256), max_size=4)
    well_formed = st.tuples(header, chunks).map(
        lambda hc: (
            [pb.UploadAssetRequest(header=hc[0])] + [pb.UploadAssetRequest(chunk=c) for c in hc[1]]
        )
    )
    message = st.one_of(
        header.map(lambda h: pb.UploadAssetRequest(header=h)),
        st.binary(max_size=256).map(lambda b: pb.UploadAssetRequest(chunk=b)),
        st.just(pb.UploadAssetRequest()),  # neither header nor chunk
    )
    # Also anything goes: empty streams, header-less, chunk first, two headers...
    streams = st.one_of(well_formed, st.lists(message, max_size=5))

    @SWEEP
    @given(streams)
    def run(messages: list[pb.UploadAssetRequest]) -> None:
        check(sweep, lambda: sweep.stub.UploadAsset(iter(messages), timeout=10))

    run()


def test_register_file(sweep: World) -> None:
    root = str(sweep.import_root)
    files = st.sampled_from([f"{root}/in{i}.csv" for i in range(5)])
    odd_paths = st.one_of(
        odd_texts,
        odd_texts.map(lambda t: f"{root}/{t}"),
        st.sampled_from([root, f"{root}/", f"{root}/../x", "/etc/passwd", "/proc/self/mem"]),
    )
    req = requests(
        pb.RegisterFileRequest,
        {
            "path": (files, odd_paths),
            "label": (names, odd_texts),
            "media_type": (media_types, odd_media_types),
            "tags": (name_lists, odd_lists),
            "move": (st.just(False), st.just(True)),
        },
    )

    @SWEEP
    @given(req)
    def run(request: pb.RegisterFileRequest) -> None:
        check(sweep, lambda: sweep.stub.RegisterFile(request, timeout=10))

    run()


def test_create_value_asset(sweep: World) -> None:
    req = requests(
        pb.CreateValueAssetRequest,
        {
            "label": (names, odd_texts),
            "media_type": (media_types, odd_media_types),
            "value": (values, odd_values),
            "tags": (name_lists, odd_lists),
        },
    )

    @SWEEP
    @given(req)
    def run(request: pb.CreateValueAssetRequest) -> None:
        check(sweep, lambda: sweep.stub.CreateValueAsset(request, timeout=10))

    run()


def test_create_pending_asset(sweep: World) -> None:
    req = requests(
        pb.CreatePendingAssetRequest,
        {
            "task_id": (names, odd_texts),
            "label": (names, odd_texts),
            "media_type": (media_types, odd_media_types),
            "type": (st.integers(0, 2), odd_enums),
            "tags": (name_lists, odd_lists),
        },
    )

    @SWEEP
    @given(req)
    def run(request: pb.CreatePendingAssetRequest) -> None:
        check(sweep, lambda: sweep.stub.CreatePendingAsset(request, timeout=10))

    run()


def test_fulfill_asset(sweep: World) -> None:
    root = str(sweep.import_root)
    files = st.sampled_from([f"{root}/in{i}.csv" for i in range(5)])
    odd_paths = st.one_of(odd_texts, odd_texts.map(lambda t: f"{root}/{t}"))
    common = {
        "asset_id": (ids(sweep), odd_ids(sweep)),
        "expected_sha256": (st.just(""), odd_digests),
    }
    req = st.one_of(
        requests(pb.FulfillAssetRequest, {**common, "source_path": (files, odd_paths)}),
        requests(pb.FulfillAssetRequest, {**common, "value": (values, odd_values)}),
        requests(pb.FulfillAssetRequest, common),  # no content at all
    )

    @SWEEP
    @given(req)
    def run(request: pb.FulfillAssetRequest) -> None:
        check(sweep, lambda: sweep.stub.FulfillAsset(request, timeout=10))

    run()


def test_fail_asset(sweep: World) -> None:
    req = requests(
        pb.FailAssetRequest,
        {"asset_id": (ids(sweep), odd_ids(sweep)), "reason": (names, odd_texts)},
    )

    @SWEEP
    @given(req)
    def run(request: pb.FailAssetRequest) -> None:
        check(sweep, lambda: sweep.stub.FailAsset(request, timeout=10))

    run()


def test_get_asset(sweep: World) -> None:
    req = requests(pb.GetAssetRequest, {"asset_id": (ids(sweep), odd_ids(sweep))})

    @SWEEP
    @given(req)
    def run(request: pb.GetAssetRequest) -> None:
        check(sweep, lambda: sweep.stub.GetAsset(request, timeout=10))

    run()


def test_batch_get_assets(sweep: World) -> None:
    odd = st.one_of(
        st.lists(st.one_of(ids(sweep), odd_ids(sweep)), max_size=20),
        st.integers(999, 1001).map(lambda n: [UNKNOWN_ID] * n),
    )
    req = requests(pb.BatchGetAssetsRequest, {"asset_ids": (st.lists(ids(sweep), min_size=1), odd)})

    @SWEEP
    @given(req)
    def run(request: pb.BatchGetAssetsRequest) -> None:
        check(sweep, lambda: sweep.stub.BatchGetAssets(request, timeout=10))

    run()


def test_list_assets(sweep: World) -> None:
    req = requests(
        pb.ListAssetsRequest,
        {
            "status": (st.integers(0, 3), odd_enums),
            "type": (st.integers(0, 2), odd_enums),
            "tags": (name_lists, odd_lists),
            "created_by_task": (st.just(""), odd_texts),
            "label": (st.just(""), odd_texts),
            "page_size": (st.integers(0, 1000), int32s),
            "page_token": (st.just(""), odd_tokens),
        },
    )

    @SWEEP
    @given(req)
    def run(request: pb.ListAssetsRequest) -> None:
        check(sweep, lambda: sweep.stub.ListAssets(request, timeout=10))

    run()


def test_watch_asset(sweep: World) -> None:
    odd = st.one_of(
        st.lists(st.one_of(ids(sweep), odd_ids(sweep)), max_size=5),
        st.integers(999, 1001).map(lambda n: [UNKNOWN_ID] * n),
    )
    req = requests(
        pb.WatchAssetRequest,
        {
            "asset_ids": (st.lists(ids(sweep), min_size=1, max_size=5), odd),
            "after_revision": (st.integers(0, 50), int64s),
            "follow": (st.just(False), st.just(True)),
        },
    )

    @SWEEP
    @given(req)
    def run(request: pb.WatchAssetRequest) -> None:
        # A live watch waits for changes: past its first event (or the deadline) the
        # request has been fully checked, so ending it there is the client's choice.
        check(sweep, lambda: first_of(sweep.stub.WatchAsset(request, timeout=1)))

    run()


def test_read_asset(sweep: World) -> None:
    req = requests(
        pb.ReadAssetRequest,
        {
            "asset_id": (ids(sweep), odd_ids(sweep)),
            "offset": (st.integers(0, 1000), int64s),
            "limit": (st.integers(0, 1000), int64s),
        },
    )

    @SWEEP
    @given(req)
    def run(request: pb.ReadAssetRequest) -> None:
        check(sweep, lambda: list(sweep.stub.ReadAsset(request, timeout=10)))

    run()


def test_get_manifest(sweep: World) -> None:
    odd = st.one_of(
        st.dictionaries(odd_texts, st.one_of(ids(sweep), odd_ids(sweep)), max_size=6),
        st.integers(999, 1001).map(lambda n: {f"k{i}": sweep.failed for i in range(n)}),
    )
    req = requests(
        pb.GetManifestRequest,
        {
            "asset_mappings": (st.dictionaries(names, ids(sweep), max_size=4), odd),
            "config_params": (configs, odd_configs),
        },
    )

    @SWEEP
    @given(req)
    def run(request: pb.GetManifestRequest) -> None:
        check(sweep, lambda: sweep.stub.GetManifest(request, timeout=10))

    run()


def test_delete_asset(sweep: World) -> None:
    # Runs last: it deletes the shared assets the other sweeps point at.
    req = requests(pb.DeleteAssetRequest, {"asset_id": (ids(sweep), odd_ids(sweep))})

    @SWEEP
    @given(req)
    def run(request: pb.DeleteAssetRequest) -> None:
        check(sweep, lambda: sweep.stub.DeleteAsset(request, timeout=10))

    run()


@pytest.mark.parametrize("token", FORGED_TOKENS)
def test_forged_page_tokens(sweep: World, token: str) -> None:
    """Tokens that decode but were never issued, one by one (the sweep may miss one)."""
    check(sweep, lambda: sweep.stub.ListAssets(pb.ListAssetsRequest(page_token=token), timeout=10))
