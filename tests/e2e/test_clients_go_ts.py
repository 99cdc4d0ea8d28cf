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
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.security_helpers import SecureFiles, token_for
from tests.pki import CA
from tests.serverproc import ServerProcess, database_url_for, serving

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
    "TestMintTaskTokenRoundsAShortLifetimeUp",
    "TestTheClientsOwnErrorsHaveTheirCodes",
)
# Skipped by the Go suite against a server that takes no tokens.
GO_TOKEN_TESTS = {
    "TestBearerTokenIsChecked",
    "TestTaskTokenRoundTrip",
    "TestTypedErrorsOfCredentials",
    "TestMintTaskTokenRoundsAShortLifetimeUp",
}
# Run once, each on servers of its own that it stops, kills and restarts, or reaches through
# a proxy that silences the connection (-run 'Restart|Keepalive').
GO_OWN_SERVER_TESTS = "Restart|Keepalive"
GO_RESTART_TESTS = (
    "TestRestartGetAssetIsRetried",
    "TestRestartWatchResumes/SIGKILL",
    "TestRestartWatchResumes/SIGTERM",
    "TestRestartWatchSelectorResumes",
    "TestRestartUploadResumes/SIGKILL",
    "TestRestartUploadResumes/SIGTERM",
    "TestKeepaliveResumesAWatchOnASilentConnection",
)
# The TypeScript suite's files and tests: orchestrator.test.js (the flow, failure, errors,
# the two token tests, four of leases, and two without a server: credentials; whole reads
# checked against a lying one) and rpcs.test.js (every RPC through its method, typed
# errors, argument checks, deadlines, cancellation).
TS_SUITE = ("build/test/orchestrator.test.js", "build/test/rpcs.test.js")
TS_TESTS = 11 + 12
# Run once, each with servers of its own or none: offline.test.js (on fake servers: the
# retry table and keepalive in effect, resume budgets, answers checked, close(), resumable
# uploads cut in several ways; the environment, the README's tables) and resilience.test.js
# (restarts: retried calls, resumed watch, read and upload; a watch resumed after keepalive
# found its connection silently dead; a process whose calls fail exits by itself).
TS_ONCE = ("build/test/offline.test.js", "build/test/resilience.test.js")
TS_ONCE_TESTS = 12 + 6
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
        # Test-only: the TypeScript suite deletes an asset with it (DeleteAsset: admin).
        env["ASSET_SERVICE_ADMIN_TOKEN"] = token_for("admin")
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
    with serving(proc):
        env["ASSET_SERVICE_ADDR"] = proc.address
        yield Live(mode, proc, env, import_root)


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
    """build/ (src, test, examples) compiled once for every server the suite runs against."""
    built = run([str(ts_installed / "node_modules" / ".bin" / "tsc"), "-p", "."], ts_installed)
    assert built.returncode == 0, built.stdout
    return ts_installed


@pytest.mark.slow
def test_go_client_suite_against_live_server(live: Live) -> None:
    done = run(
        [tool("go"), "test", "-count=1", "-v", "-skip", GO_OWN_SERVER_TESTS, "./..."],
        GO_DIR,
        live.env,
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
    """A retried GetAsset, resumed watches and uploads across SIGTERM, SIGKILL and a restart;
    a watch resumed after keepalive found its connection silently dead."""
    cmd = [tool("go"), "test", "-count=1", "-v", "-run", GO_OWN_SERVER_TESTS, "./assetclient/"]
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
    with serving(proc):
        env["ASSET_SERVICE_ADDR"] = proc.address
        env["ASSET_SERVICE_TOKEN"] = token_for("orchestrator")
        done = run([str(consumer / "pipeline")], consumer, env, timeout=120)
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
        [tool("node"), "--test", "--test-reporter=tap", *TS_SUITE],
        ts_built,
        live.env,
    )
    out = done.stdout
    assert done.returncode == 0, out
    counts = tap_counts(out)
    skipped = TOKEN_TESTS if live.mode == "open" else 0
    assert counts.get("tests", 0) >= TS_TESTS and counts["pass"] == counts["tests"] - skipped, out
    assert counts["fail"] == 0 and counts["skipped"] == skipped, out
    assert not list(live.import_root.iterdir()), "the server should have moved the worker's file in"
    check_audit(live)
    check_lease_expired(live)


def tap_counts(out: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"^# (tests|pass|fail|skipped) (\d+)$", out, re.M)}


@pytest.mark.slow
def test_typescript_client_offline_and_across_restarts(ts_built: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSET_SERVICE_")}
    env["ASSET_SERVICE_PYTHON"] = sys.executable  # for the servers resilience.test.js starts
    done = run([tool("node"), "--test", "--test-reporter=tap", *TS_ONCE], ts_built, env, 300)
    counts = tap_counts(done.stdout)
    assert done.returncode == 0, done.stdout
    assert counts["tests"] == counts["pass"] == TS_ONCE_TESTS, done.stdout


def packed_files(tarball: Path) -> list[str]:
    with tarfile.open(tarball) as tar:
        return sorted(m.name.removeprefix("package/") for m in tar.getmembers() if m.isfile())


@pytest.mark.slow
@pytest.mark.parametrize("live", ["mtls"], indirect=True)
def test_typescript_package_from_npm_pack(live: Live, ts_installed: Path, tmp_path: Path) -> None:
    """`npm pack`, installed into a scratch project, runs an orchestrator and a worker."""
    npm = tool("npm")
    packed = run([npm, "pack", "--json", "--pack-destination", str(tmp_path)], ts_installed)
    assert packed.returncode == 0, packed.stdout
    listing = re.search(r"^\[$", packed.stdout, re.M)  # the JSON, after prepack's lines
    assert listing, packed.stdout
    tarball = tmp_path / json.loads(packed.stdout[listing.start() :])[0]["filename"]
    files = packed_files(tarball)
    assert {"LICENSE", "README.md", "package.json", "dist/index.js", "dist/index.d.ts"} <= set(
        files
    )
    strays = [f for f in files if f not in {"LICENSE", "README.md", "package.json"}]
    strays = [f for f in strays if not re.fullmatch(r"dist/[\w/]+\.(js|d\.ts)", f) or "test" in f]
    assert not strays, f"the tarball holds more than the library: {strays}"
    manifest = json.loads((ts_installed / "package.json").read_text())
    assert manifest["license"] == "Apache-2.0" and not manifest.get("private"), manifest

    project = tmp_path / "consumer"
    project.mkdir()
    (project / "package.json").write_text(
        '{"name": "consumer", "version": "1.0.0", "private": true}\n'
    )
    installed = run(
        [
            npm,
            "install",
            "--no-audit",
            "--no-fund",
            "--prefer-offline",
            "--loglevel=error",
            str(tarball),
        ],
        project,
    )
    assert installed.returncode == 0, installed.stdout
    for name in ("scenario.cjs", "esm.mjs", "consumer.ts"):
        shutil.copy(ts_installed / "test" / "package" / name, project / name)

    scenario = run([tool("node"), "scenario.cjs"], project, live.env, 120)
    assert scenario.returncode == 0, scenario.stdout
    result = json.loads(scenario.stdout.strip().splitlines()[-1])
    assert result["statuses"] == ["ASSET_STATUS_PENDING", "ASSET_STATUS_AVAILABLE"], result
    assert result["manifestEntries"] == ["report"] and result["bytesBack"] and result["sha256"], (
        result
    )
    assert result["denied"] == "PERMISSION_DENIED", result
    assert result["typeError"].startswith("TypeError: assetId must be a string"), result

    esm = run([tool("node"), "esm.mjs"], project, live.env, 60)
    assert esm.returncode == 0, esm.stdout
    assert json.loads(esm.stdout.strip().splitlines()[-1]) == {
        "typed": True,
        "code": "NOT_FOUND",
        "deep": "ERR_PACKAGE_PATH_NOT_EXPORTED",
        "version": manifest["version"],
    }

    tsconfig = {
        "compilerOptions": {
            "module": "node16",
            "moduleResolution": "node16",
            "target": "ES2022",
            "strict": True,
            "noEmit": True,
            # A consumer's usual setting; the package's own .d.ts come from tsc.
            "skipLibCheck": True,
            "types": ["node"],
            "typeRoots": [str(ts_installed / "node_modules" / "@types")],
        },
        "files": ["consumer.ts"],
    }
    (project / "tsconfig.json").write_text(json.dumps(tsconfig))
    checked = run(
        [str(ts_installed / "node_modules" / ".bin" / "tsc"), "-p", "."], project, timeout=120
    )
    assert checked.returncode == 0, checked.stdout


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
