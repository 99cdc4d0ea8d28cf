"""The Python client as a user gets it: its wheel, in a clean venv, against a live server.

The wheel is built from clients/python and installed, with grpcio, protobuf and
grpcio-status from the package index (or pip's cache), into a venv of its own, once per
session. A script run
there (tests/e2e/wheel_scenario.py) plays an orchestrator and a worker configured from
ASSET_SERVICE_* variables only, over mTLS with a token file, while this test stops the
server in the middle of a watch and starts it again.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.security_helpers import SecureFiles, token_for
from tests.pki import CA
from tests.serverproc import ServerProcess, database_url_for, serving

ROOT = Path(__file__).resolve().parents[2]
CLIENT_DIR = ROOT / "clients" / "python"
SCENARIO = Path(__file__).with_name("wheel_scenario.py")
CLIENT_CN = "wheel-worker.test"
STEP = 120.0  # the most one exchange with the scenario may take
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Venv:
    python: Path
    wheel: Path


def _run(cmd: list[str], timeout: float, **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )  # type: ignore[call-overload]
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """The client's wheel, built from a copy of clients/python, installed in a new venv."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    # A copy: building writes build/ and *.egg-info beside the sources.
    shutil.copytree(
        CLIENT_DIR,
        source,
        ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"),
    )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _run([*pip, "wheel", "--no-deps", "-q", "-w", str(base / "dist"), str(source)], 300)
    (wheel,) = (base / "dist").glob("asset_service_client-*.whl")
    venv = base / "venv"
    # Not the repository's venv: the base interpreter, without this one's site-packages.
    _run([sys.executable, "-m", "venv", "--clear", str(venv)], 120)
    python = venv / "bin" / "python"
    _run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)], 300
    )
    return Venv(python, wheel)


def test_the_wheel_holds_the_client_its_stubs_and_license_and_needs_three_packages(
    wheel_venv: Venv,
) -> None:
    with zipfile.ZipFile(wheel_venv.wheel) as whl:
        names = whl.namelist()
        sources = {n: whl.read(n).decode() for n in names if n.endswith((".py", ".pyi"))}
        (metadata,) = (whl.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert "asset_client/_proto/asset/v1/asset_service_pb2.py" in names
    assert "asset_client/_proto/asset/v1/asset_service_pb2_grpc.pyi" in names
    assert "asset_client/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not [n for n in names if n.startswith(("tests/", "asset_service/"))]
    importing = [
        n
        for n, text in sources.items()
        if re.search(r"^\s*(from|import) asset_service\b", text, re.M)
    ]
    assert not importing, f"these import the server package: {importing}"
    assert "License-Expression: Apache-2.0" in metadata
    requires = sorted(
        re.split(r"[<>=!~ ;\[]", line.removeprefix("Requires-Dist: "))[0]
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist: ") and "extra ==" not in line
    )
    assert requires == ["grpcio", "grpcio-status", "protobuf"]


def test_the_clean_venv_has_no_server_package(wheel_venv: Venv) -> None:
    listed = _run(
        [
            str(wheel_venv.python),
            "-m",
            "pip",
            "list",
            "--format=json",
            "--disable-pip-version-check",
        ],
        120,
    )
    names = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}
    assert "asset-service-client" in names
    assert "asset-service" not in names, names
    found = _run(
        [
            str(wheel_venv.python),
            "-I",
            "-c",
            "import importlib.util as u; print(u.find_spec('asset_service'))",
        ],
        60,
        cwd="/",
    )
    assert found.stdout.strip() == "None"


class Scenario:
    """The scenario script in the clean venv; lines from its stdout, with a bound on each."""

    def __init__(self, python: Path, work: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [str(python), "-I", str(SCENARIO), str(work)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=work,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._drain, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        self.stderr.extend(self.proc.stderr)

    def expect(self, prefix: str) -> str:
        deadline = time.monotonic() + STEP
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"no {prefix!r} from the scenario:\n{self.log()}") from None
            if line is None:
                self.proc.wait(10)
                raise AssertionError(f"the scenario ended before {prefix!r}:\n{self.log()}")
            if line.startswith(prefix):
                return line.removeprefix(prefix).strip()

    def send(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def log(self) -> str:
        return "".join(self.stderr)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def secure_server(tmp_path: Path) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    """A server with TLS, client certificates and tokens, and the variables to reach it."""
    files = SecureFiles(tmp_path).with_tokens({CLIENT_CN: ("wheel-worker", "reader")}).with_secret()
    ca = CA("wheel test CA")
    pki = tmp_path / "pki"
    cert, key = ca.server().write(pki, "server")
    client_cert, client_key = ca.client(CLIENT_CN).write(pki, "client")
    ca_file = ca.write(pki / "ca.crt")
    token_file = tmp_path / "orchestrator.token"
    token_file.write_text(token_for("orchestrator") + "\n")
    args = [*files.args, "--tls-cert", str(cert), "--tls-key", str(key)]
    args += ["--tls-client-ca", str(ca_file)]
    url = database_url_for(tmp_path)
    with serving(ServerProcess(tmp_path / "data", url, extra_args=args)) as server:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path),
            "LANG": "C.UTF-8",
            "ASSET_SERVICE_ADDR": server.address,
            "ASSET_SERVICE_CA_FILE": str(ca_file),
            "ASSET_SERVICE_CLIENT_CERT": str(client_cert),
            "ASSET_SERVICE_CLIENT_KEY": str(client_key),
            "ASSET_SERVICE_TOKEN_FILE": str(token_file),
            "ASSET_SERVICE_TIMEOUT": "40",
        }
        yield server, env


def test_orchestrator_and_worker_from_the_wheel_survive_a_server_restart(
    wheel_venv: Venv, secure_server: tuple[ServerProcess, dict[str, str]], tmp_path: Path
) -> None:
    server, env = secure_server
    work = tmp_path / "work"
    work.mkdir()
    scenario = Scenario(wheel_venv.python, work, env)
    try:
        scenario.expect("WATCHING")
        server.kill()  # mid-watch: the stream breaks with UNAVAILABLE
        down = time.monotonic()
        scenario.send("DOWN")
        scenario.expect("CALLED")  # a GetAsset is on its way, with nothing listening
        time.sleep(1.5)  # its first attempt and at least one retry find no server
        server.extra_args = [*server.extra_args, "--listen", f"127.0.0.1:{server.port}"]
        server.start()
        downtime = time.monotonic() - down
        scenario.send("UP")
        result = json.loads(scenario.expect("RESULT"))
        assert scenario.proc.wait(30) == 0, scenario.log()
    finally:
        scenario.close()

    assert result["asset_service_importable"] is False
    assert (result["target"], result["timeout"]) == (env["ASSET_SERVICE_ADDR"], 40.0)

    flow = result["scenario"]
    ids = flow["ids"]
    assert len(set(flow["input_sha256"])) == 1  # downloaded == uploaded == the server's
    assert flow["input_manifest_keys"] == ["video"]
    assert flow["renewals"] >= 1 and flow["lease_lost"] is None
    uploaded_id, status, stored_sha, produced_sha = flow["uploaded"]
    assert (uploaded_id, status, stored_sha) == (ids["frames"], "AVAILABLE", produced_sha)
    assert flow["read_back_sha256"] == produced_sha
    assert flow["watch_error"] is None
    assert flow["watch"][:2] == [
        ["SNAPSHOT", ids["frames"], "PENDING"],
        ["SNAPSHOT", ids["note"], "PENDING"],
    ]
    # (Lease renewals come as CHANGED events of a PENDING asset.)
    assert sorted(e[1:] for e in flow["watch"] if e[2] != "PENDING") == sorted(
        [[ids["frames"], "AVAILABLE"], [ids["note"], "AVAILABLE"]]
    )
    assert flow["output_manifest_keys"] == ["frames", "note"]

    restart = result["restart"]
    # Retries off: the call fails at once. On (the default): the same call, made while
    # nothing listened, is answered once the server is back, within its deadline.
    assert restart["without_retries"][0] == "UNAVAILABLE"
    assert restart["without_retries"][1] < 1.0
    for client in ("get", "get_async"):  # AssetClient, AsyncAssetClient
        assert restart[client].get("asset") == ids["video"], restart[client]
        assert 1.5 <= restart[client]["seconds"] < 40, (restart[client], downtime)
    # The watch was cut, resumed by the client, and saw the fulfilment made after the restart.
    late = restart["late"]
    assert restart["watch_error"] is None and restart["watch_ended"]
    # A change made before the resumed stream opened comes as its snapshot, else as CHANGED.
    assert restart["watch"][0] == ["SNAPSHOT", late, "PENDING"]
    assert [e[1:] for e in restart["watch"]] == [[late, "PENDING"], [late, "AVAILABLE"]]
    assert "late but here" in restart["watch_value"]
    assert restart["resumptions"] >= 1
