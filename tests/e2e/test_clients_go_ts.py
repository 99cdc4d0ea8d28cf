"""The Go and TypeScript clients: their own test suites against live servers, stubs up to date.

Each suite runs against three servers: one without security flags, one on loopback
plaintext with a tokens file and a task-token secret, and one with TLS, client
certificates (mTLS) and the same tokens. The suites learn how to connect from
ASSET_SERVICE_* variables (clients/go/README.md, clients/typescript/README.md).
The Go suite's restart tests run once, on servers they start and restart themselves;
a Go module of a user's own builds the client through a `replace` and runs a pipeline.
"""

from __future__ import annotations

import fcntl
import filecmp
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.security_helpers import SecureFiles, token_for
from tests.pki import CA
from tests.serverproc import ServerProcess, database_url_for, drop_database_of

ROOT = Path(__file__).resolve().parents[2]
GO_DIR = ROOT / "clients" / "go"
TS_DIR = ROOT / "clients" / "typescript"
# Checked-in generated trees, relative to the repository root.
GENERATED = [Path("clients/go/gen"), Path("clients/typescript/src/gen")]
# The client certificate's CN, mapped to the reader role (the suites check that role).
CLIENT_CN = "client-suites.test"
GO_TESTS = (
    "TestExampleFlow",
    "TestFailedOutputEndsWatchAndBlocksManifest",
    "TestErrorCodes",
    "TestBearerTokenIsChecked",
    "TestTaskTokenRoundTrip",
    "TestPlaintextTokenOnlyToLoopback",
    "TestKeepLeaseHoldsThePromiseUntilFulfilled",
    "TestLeaseNobodyRenewsFailsThePromise",
    "TestRenewLeaseErrors",
    "TestKeepLeaseRetriesTransientErrorsAndStopsForGood",
    "TestReadAssetReadsWholeAndRanges",
    "TestReadAssetCatchesBytesThatAreNotTheRecords",
    # assetclient
    "TestEveryRPCThroughTheClient",
    "TestTypedErrors",
    "TestTypedErrorsOfCredentials",
    "TestErrorWrapsLocalFailures",
    "TestDownloadResumesWhereTheStreamBroke",
    "TestDownloadCatchesBytesThatAreNotTheRecords",
    "TestUploadChecksWhatTheServerStored",
    "TestUploadResumesAfterCuts",
    "TestWatchResumesAfterTheLastRevision",
    "TestDefaultDeadlines",
    "TestFromEnv",
    "TestTokenFileIsReadBeforeEveryCall",
    "TestDialEnvReachesTheServer",
    "TestEveryMethodIsInOneRetryTable",
    "TestServiceConfigRetriesExactlyTheSafeMethods",
)
# Skipped by the Go suite against a server that takes no tokens.
GO_TOKEN_TESTS = {
    "TestBearerTokenIsChecked",
    "TestTaskTokenRoundTrip",
    "TestTypedErrorsOfCredentials",
}
# Run once, each on servers of its own that it stops, kills and restarts (-run Restart).
GO_RESTART_TESTS = (
    "TestRestartGetAssetIsRetried",
    "TestRestartWatchResumes/SIGKILL",
    "TestRestartWatchResumes/SIGTERM",
    "TestRestartWatchSelectorResumes",
    "TestRestartUploadResumes/SIGKILL",
    "TestRestartUploadResumes/SIGTERM",
)
# The TypeScript suite's tests: the flow, failure, errors, the two token tests, four of
# leases, and two without a server (credentials; whole reads checked against a lying one).
TS_TESTS = 11
# Skipped by the TypeScript suite against a server that takes no tokens.
TOKEN_TESTS = 2


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is missing: the Go and TypeScript client tests need it on PATH"
    return found


def run(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


@dataclass
class Live:
    """A running server and the environment that tells a client suite how to reach it."""

    mode: str  # "open", "token" (loopback plaintext) or "mtls"
    server: ServerProcess
    env: dict[str, str]
    import_root: Path

    def audit(self) -> str:
        return "".join(line for line in self.server.log if "asset_service.audit" in line)


@pytest.fixture(params=["open", "token", "mtls"])
def live(request: pytest.FixtureRequest, tmp_path: Path, import_root: Path) -> Iterator[Live]:
    mode: str = request.param
    # The suites wait for 1-second leases to run out: the sweep looks every 0.2 s.
    args: list[str] = ["--lease-check-interval", "0.2"]
    # Only our own ASSET_SERVICE_* variables reach the suites (none of the caller's).
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSET_SERVICE_")}
    env["ASSET_SERVICE_IMPORT_ROOT"] = str(import_root)
    if mode != "open":
        certificates = {CLIENT_CN: ("client-suites", "reader")} if mode == "mtls" else None
        files = SecureFiles(tmp_path).with_tokens(certificates).with_secret()
        args += files.args
        env["ASSET_SERVICE_TOKEN"] = token_for("orchestrator")
    if mode == "mtls":
        ca = CA("client suites CA")
        pki = tmp_path / "pki"
        cert, key = ca.server().write(pki, "server")
        client_cert, client_key = ca.client(CLIENT_CN).write(pki, "client")
        ca_file = ca.write(pki / "ca.crt")
        args += ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(ca_file)]
        env["ASSET_SERVICE_CA_FILE"] = str(ca_file)
        env["ASSET_SERVICE_CLIENT_CERT"] = str(client_cert)
        env["ASSET_SERVICE_CLIENT_KEY"] = str(client_key)
    url = database_url_for(tmp_path)
    proc = ServerProcess(tmp_path / "data", url, import_roots=[import_root], extra_args=args)
    proc.start()
    try:
        env["ASSET_SERVICE_ADDR"] = proc.address
        yield Live(mode, proc, env, import_root)
    finally:
        proc.stop()
        drop_database_of(url)


def check_audit(live: Live) -> None:
    """The server saw the suites' credentials: token principal, task tokens, certificate."""
    if live.mode == "open":
        assert not live.audit(), "a server without authentication writes no audit lines"
        return
    audit = live.audit()
    assert "principal=orchestrator-1 via=token rpc=CreatePendingAsset" in audit, audit
    assert re.search(r"via=task-token rpc=FulfillAsset subjects=\S+ outcome=OK", audit), audit
    assert re.search(
        r"via=task-token rpc=FulfillAsset subjects=\S+ outcome=PERMISSION_DENIED", audit
    )
    assert "via=- rpc=CreatePendingAsset subjects=- outcome=UNAUTHENTICATED" in audit, audit
    if live.mode == "mtls":
        line = "principal=client-suites via=certificate rpc=CreatePendingAsset"
        assert line in audit, audit


def check_lease_expired(live: Live) -> None:
    """The suite's unrenewed 1-second promises were failed by *this* server's sweep."""
    log = "".join(live.server.log)
    assert re.search(r"asset \S+ failed: its lease ran out", log), log


@pytest.fixture(scope="module")
def ts_installed() -> Iterator[Path]:
    """clients/typescript/node_modules from package-lock.json (npm ci when missing or stale)."""
    tool("npm")
    stamp = TS_DIR / "node_modules" / ".installed"
    lock = TS_DIR / "package-lock.json"
    # One installer at a time, also across pytest processes.
    with (TS_DIR / "package.json").open() as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            if not stamp.exists() or stamp.stat().st_mtime <= lock.stat().st_mtime:
                done = run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], TS_DIR)
                assert done.returncode == 0, done.stdout
                stamp.touch()
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)
    yield TS_DIR


@pytest.fixture(scope="module")
def ts_built(ts_installed: Path) -> Path:
    """dist/ compiled once for every server the suite runs against."""
    built = run([str(ts_installed / "node_modules" / ".bin" / "tsc"), "-p", "."], ts_installed)
    assert built.returncode == 0, built.stdout
    return ts_installed


@pytest.mark.slow
def test_go_client_suite_against_live_server(live: Live) -> None:
    done = run(
        [tool("go"), "test", "-count=1", "-v", "-skip", "Restart", "./..."], GO_DIR, live.env
    )
    out = done.stdout
    assert done.returncode == 0, out
    skipped = GO_TOKEN_TESTS if live.mode == "open" else set()
    for name in GO_TESTS:
        assert f"--- {'SKIP' if name in skipped else 'PASS'}: {name}" in out, out
    assert "--- FAIL" not in out and out.count("--- SKIP") == len(skipped), out
    # The flow ran against *this* server: it fulfilled a FILE output from our import root.
    assert "promised report" in out, out
    assert not list(live.import_root.iterdir()), "the server should have moved the worker's file in"
    check_audit(live)
    check_lease_expired(live)


def go_env() -> dict[str, str]:
    """The caller's environment without ASSET_SERVICE_*; the Go tests start servers with us."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSET_SERVICE_")}
    env["ASSET_SERVICE_PYTHON"] = sys.executable
    return env


@pytest.mark.slow
def test_go_client_survives_server_restarts() -> None:
    """A retried GetAsset, resumed watches and uploads across SIGTERM, SIGKILL and a restart."""
    cmd = [tool("go"), "test", "-count=1", "-v", "-run", "Restart", "./assetclient/"]
    done = run(cmd, GO_DIR, go_env())
    out = done.stdout
    assert done.returncode == 0, out
    for name in GO_RESTART_TESTS:
        assert f"--- PASS: {name} " in out, out
    assert "--- FAIL" not in out and "--- SKIP" not in out, out


def go_version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


@pytest.mark.slow
def test_go_module_asks_for_the_lowest_go_its_dependencies_allow() -> None:
    """go.mod's `go` line is the highest one among the modules it builds with, no higher
    (issue 19: it asked for 1.26.0, which kept every older toolchain out)."""
    fmt = "{{with .Module}}{{.Path}} {{.GoVersion}}{{end}}"
    listed = run([tool("go"), "list", "-deps", "-f", fmt, "./..."], GO_DIR, go_env())
    assert listed.returncode == 0, listed.stdout
    versions = dict(line.split() for line in set(listed.stdout.splitlines()) if line.strip())
    ours = versions.pop("github.com/asset-service/asset-service/clients/go")
    assert ours == max(versions.values(), key=go_version_key), versions
    assert go_version_key(ours) < (1, 26), ours


CONSUMER_GO_MOD = """module example.com/consumer

go 1.24.0

require github.com/asset-service/asset-service/clients/go v0.0.0

replace github.com/asset-service/asset-service/clients/go => {client}
"""


@pytest.mark.slow
def test_go_module_from_a_consumer(tmp_path: Path, import_root: Path) -> None:
    """A module of a user's own requires the client (replace: this checkout), resolves its
    dependencies with `go mod tidy` and runs an orchestrator + worker against a server with
    tokens, configured by the environment only (the worker holds only a task token)."""
    consumer = tmp_path / "consumer"
    consumer.mkdir()
    (consumer / "go.mod").write_text(CONSUMER_GO_MOD.format(client=GO_DIR))
    shutil.copy(GO_DIR / "cmd" / "example-pipeline" / "main.go", consumer / "main.go")
    env = go_env()
    env["GOFLAGS"] = "-mod=mod"
    tidy = run([tool("go"), "mod", "tidy"], consumer, env)
    assert tidy.returncode == 0, tidy.stdout
    sums = (consumer / "go.sum").read_text()
    assert "google.golang.org/grpc v1.79.3 h1:" in sums, sums
    built = run([tool("go"), "build", "-o", "pipeline", "."], consumer, env)
    assert built.returncode == 0, built.stdout

    files = SecureFiles(tmp_path).with_tokens().with_secret()
    url = database_url_for(tmp_path)
    proc = ServerProcess(tmp_path / "data", url, import_roots=[import_root], extra_args=files.args)
    proc.start()
    try:
        env["ASSET_SERVICE_ADDR"] = proc.address
        env["ASSET_SERVICE_TOKEN"] = token_for("orchestrator")
        done = run([str(consumer / "pipeline")], consumer, env, timeout=120)
    finally:
        proc.stop()
        drop_database_of(url)
    out = done.stdout
    assert done.returncode == 0, out
    assert "worker uses a task token" in out, out
    assert re.search(r"event WATCH_EVENT_TYPE_SNAPSHOT ASSET_STATUS_PENDING", out), out
    assert re.search(r'result \S+ sha256 [0-9a-f]{64}: \{"words": 9\}', out), out
    audit = "".join(line for line in proc.log if "asset_service.audit" in line)
    assert re.search(r"via=task-token rpc=UploadAsset subjects=\S+ outcome=OK", audit), audit


@pytest.mark.slow
def test_typescript_client_suite_against_live_server(live: Live, ts_built: Path) -> None:
    done = run(
        [tool("node"), "--test", "--test-reporter=tap", "dist/test/orchestrator.test.js"],
        ts_built,
        live.env,
    )
    out = done.stdout
    assert done.returncode == 0, out
    counts = {k: int(v) for k, v in re.findall(r"^# (tests|pass|fail|skipped) (\d+)$", out, re.M)}
    skipped = TOKEN_TESTS if live.mode == "open" else 0
    assert counts.get("tests", 0) >= TS_TESTS and counts["pass"] == counts["tests"] - skipped, out
    assert counts["fail"] == 0 and counts["skipped"] == skipped, out
    assert not list(live.import_root.iterdir()), "the server should have moved the worker's file in"
    check_audit(live)
    check_lease_expired(live)


@pytest.mark.slow
def test_generated_client_stubs_are_up_to_date(tmp_path: Path, ts_installed: Path) -> None:
    tool("go")
    done = run(["bash", str(ROOT / "scripts" / "gen_clients.sh"), str(tmp_path)], ROOT)
    assert done.returncode == 0, done.stdout
    for rel in GENERATED:
        fresh, checked_in = tmp_path / rel, ROOT / rel
        fresh_files = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
        ours = sorted(p.relative_to(checked_in) for p in checked_in.rglob("*") if p.is_file())
        assert fresh_files, f"generation wrote nothing under {rel}"
        assert fresh_files == ours, f"{rel}: files differ; run `make generate`"
        stale = [
            str(f) for f in fresh_files if not filecmp.cmp(fresh / f, checked_in / f, shallow=False)
        ]
        assert not stale, f"{rel}: stale generated files {stale}; run `make generate`"
