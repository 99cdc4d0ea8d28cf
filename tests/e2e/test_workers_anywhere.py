"""Workers that share no disk with the server: a shell script of `asset` commands and
`asset run`, from the packed wheel, as another uid than the server's (issue 19)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from asset_client import AssetClient, AssetStatus, AssetType

from tests.e2e.cli_helpers import run_args
from tests.e2e.grpc_proxy import CountingProxy
from tests.e2e.helpers import stored_files
from tests.e2e.packed_cli import PackedCli
from tests.e2e.security_helpers import SecureFiles, start_server, token_for
from tests.serverproc import ServerProcess

ORCH = token_for("orchestrator")


class Site:
    """A secured server whose storage root lies where the worker uid could reach it, were
    it not owner-only; a counting proxy in front of it; an orchestrator client."""

    def __init__(self, packed: PackedCli) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="server-", dir=packed.root))
        self.base.chmod(0o755)  # the server's own modes are what keep the worker out
        imports = self.base / "imports"
        imports.mkdir()
        files = SecureFiles(self.base).with_tokens().with_secret()
        self.server: ServerProcess = start_server(self.base, imports, files.args)
        self.proxy = CountingProxy(self.server.address).start()
        self.orchestrator = AssetClient(self.server.address, token=ORCH, timeout=30)

    @property
    def root(self) -> Path:
        return self.server.root

    def close(self) -> None:
        self.orchestrator.close()
        self.proxy.stop()
        self.server.stop()


@pytest.fixture(scope="module")
def site(packed: PackedCli) -> Iterator[Site]:
    s = Site(packed)
    try:
        yield s
    finally:
        s.close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_worker_uid_cannot_read_the_storage_root(site: Site, packed: PackedCli) -> None:
    asset = site.orchestrator.create_value("probe", text="x")
    uploaded = site.orchestrator.get(asset.id)
    assert uploaded.status is AssetStatus.AVAILABLE
    home = packed.worker_dir("probe")
    (home / "f").write_text("secret bytes\n")
    stored = site.orchestrator.upload(home / "f", label="f.txt", progress=False)
    files = stored_files(site.root)
    assert Path(stored.storage_path) in files
    assert stat.S_IMODE(site.root.stat().st_mode) == 0o700
    for path in (site.root, Path(stored.storage_path)):
        denied = packed.as_worker(["cat" if path.is_file() else "ls", str(path)], home)
        assert denied.returncode != 0, denied.stdout
        assert "Permission denied" in denied.stderr
    # ...while the API hands the same bytes over.
    shown = packed.as_worker(["asset", "cat", stored.id], home, _auth(site, ORCH))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "secret bytes\n"


def _auth(site: Site, token: str) -> dict[str, str]:
    return {"ASSET_SERVICE_ADDR": site.proxy.address, "ASSET_SERVICE_TOKEN": token}


SHELL_WORKER = r"""
set -euo pipefail
# The orchestrator's part: an input that is still a promise, the task's output, a token.
export ASSET_SERVICE_TOKEN=$ORCH_TOKEN
raw=$(asset pending task-shell-in fruit.txt --media-type text/plain)
out=$(asset pending task-shell sorted.txt --lease 30 --tag shell)
token=$(asset task-token task-shell --input "$raw" --ttl 600)

# The worker, with nothing but its task token: wait for the input, sort it, deliver.
(
  export ASSET_SERVICE_TOKEN=$token
  asset watch "$raw" > watch.log
  asset cat "$raw" | sort > sorted.txt
  asset put --fulfill "$out" sorted.txt > delivered.txt
  status=0; asset ls > /dev/null 2> denied.txt || status=$?
  echo "$status" > denied-status.txt
) &
worker=$!

printf 'pear\napple\nfig\n' | asset put --fulfill "$raw" - > /dev/null
wait "$worker"
asset watch "$out" > /dev/null
echo "content:"
asset cat "$out"
echo "statuses:"
asset ls --json --task task-shell | python3 -c '
import json, sys
for line in sys.stdin:
    row = json.loads(line)
    print(row["id"], row["status"], row["sha256"], ",".join(row["tags"]))
'
echo "ids: $raw $out"
"""


def test_a_shell_script_worker_uses_only_asset_commands(site: Site, packed: PackedCli) -> None:
    home = packed.worker_dir("shell")
    script = home / "worker.sh"
    script.write_text(SHELL_WORKER)
    result = packed.as_worker(["bash", str(script)], home, {**_auth(site, ""), "ORCH_TOKEN": ORCH})
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    raw, out = lines[-1].removeprefix("ids: ").split()
    content = lines[lines.index("content:") + 1 : lines.index("statuses:")]
    assert content == ["apple", "fig", "pear"]
    (row,) = lines[lines.index("statuses:") + 1 : -1]
    assert row.split() == [out, "AVAILABLE", _sha(b"apple\nfig\npear\n"), "shell"]
    assert (home / "delivered.txt").read_text().strip() == out
    watched = (home / "watch.log").read_text().splitlines()
    assert watched[-1].split("\t")[2:4] == [raw, "AVAILABLE"]
    # The task token lists nothing beyond its task: PERMISSION_DENIED is exit 10 + 7.
    assert (home / "denied-status.txt").read_text().strip() == "17"
    assert (home / "denied.txt").read_text().count("\n") == 1
    record = site.orchestrator.get(out)
    assert record.updated_by.startswith("task:task-shell")


def _task(site: Site, task: str, inputs: list[str], **pending: object) -> tuple[str, str]:
    out = site.orchestrator.create_pending(task, f"{task}.out", **pending)  # type: ignore[arg-type]
    token = site.orchestrator.mint_task_token(task, inputs, 600)
    return out.id, token.token


def test_asset_run_runs_a_real_program_and_reuses_cached_inputs(
    site: Site, packed: PackedCli
) -> None:
    home = packed.worker_dir("run")
    lines = [f"line {n:05d} {hashlib.md5(str(n).encode()).hexdigest()}\n" for n in range(20000)]
    (home / "input.txt").write_text("".join(reversed(lines)))
    text = site.orchestrator.upload(home / "input.txt", label="lines.txt", progress=False)
    reads = site.proxy.calls["ReadAsset"]

    out, token = _task(site, "task-sort", [text.id], media_type="text/plain", lease_seconds=5)
    command = ("sort", "-o", "{output}", "{input:text}")
    sort = packed.as_worker(
        ["asset", *run_args(*command, inputs={"text": text.id}, outputs={"sorted": out})],
        home,
        _auth(site, token),
        timeout=120,
    )
    assert sort.returncode == 0, sort.stderr
    done = site.orchestrator.get(out)
    assert done.status is AssetStatus.AVAILABLE
    assert done.sha256 == _sha("".join(lines).encode())
    assert site.proxy.calls["ReadAsset"] == reads + 1

    # A second task on the same machine: a Python module reading input_data.json, with a
    # VALUE input, config params and a VALUE output; its lease (2 s) outlives a 3 s run.
    note = site.orchestrator.create_value("note", json={"words": ["a", "b"]})
    result, token = _task(
        site,
        "task-count",
        [text.id, note.id],
        media_type="application/json",
        type=AssetType.VALUE,
        lease_seconds=2,
    )
    program = (
        "import json, os, sys, time\n"
        "m = json.load(open(sys.argv[1]))\n"
        "lines = open(m['inputs']['text']).read().splitlines()\n"
        "note = json.load(open(m['inputs']['note']))\n"
        "time.sleep(3)\n"
        "json.dump({'lines': len(lines), 'first': lines[0], 'note': note,\n"
        "           'config': m['config_params'], 'manifest': sys.argv[1],\n"
        "           'paths': m['inputs']}, open(os.environ['ASSET_OUTPUT'], 'w'))\n"
    )
    config = ("--config", '{"fps": 25, "scale": 0.5}')
    run = run_args(
        "python3",
        "-c",
        program,
        "{manifest}",
        inputs={"text": text.id, "note": note.id},
        outputs={"summary": result},
        options=config,
    )
    count = packed.as_worker(
        ["asset", *run],
        home,
        _auth(site, token),
        timeout=120,
    )
    assert count.returncode == 0, count.stderr
    summary = site.orchestrator.get(result)
    assert summary.status is AssetStatus.AVAILABLE, summary.failure_reason
    assert summary.value is not None
    seen = summary.value.as_json()
    assert seen["lines"] == 20000 and seen["first"] == lines[-1].rstrip("\n")  # unsorted
    assert seen["note"] == {"words": ["a", "b"]}
    assert seen["config"] == {"fps": 25, "scale": 0.5}  # ints stay ints, as the server's
    for key, path in seen["paths"].items():
        assert os.path.isabs(path), (key, path)
        assert not path.startswith(str(site.root))
    assert seen["paths"]["note"].endswith(".json")
    # The input was already in the worker's cache: no second download.
    assert site.proxy.calls["ReadAsset"] == reads + 1
    cached = list((home / ".cache" / "asset-service" / "blobs").iterdir())
    assert [p.name for p in cached] == [text.sha256]
    # The run folder (with its hard link to the blob) is gone; the blob stays.
    assert list((home / ".cache" / "asset-service" / "runs").iterdir()) == []


def test_asset_run_fails_the_promise_of_a_failing_command(site: Site, packed: PackedCli) -> None:
    home = packed.worker_dir("fail")
    text = site.orchestrator.create_value("words", text="b\na\n")
    out, token = _task(site, "task-broken", [text.id], lease_seconds=5)
    script = (
        "cat \"$1\" > /dev/null; echo 'reading the input' >&2;"
        " echo 'it broke: no frames' >&2; exit 7"
    )
    command = ("sh", "-c", script, "sh", "{input:words}")
    broken = packed.as_worker(
        ["asset", *run_args(*command, inputs={"words": text.id}, outputs={"frames": out})],
        home,
        _auth(site, token),
        timeout=120,
    )
    assert broken.returncode == 7
    assert "it broke: no frames" in broken.stderr  # passed through as it came
    failed = site.orchestrator.get(out)
    assert failed.status is AssetStatus.FAILED
    assert "exited with status 7" in failed.failure_reason
    assert failed.failure_reason.endswith("reading the input\nit broke: no frames")
    assert json.loads(json.dumps(failed.failure_reason))  # a plain string, no traceback


def _with_chunks(streams: list[int]) -> list[int]:
    """The upload streams that carried bytes (not a header alone)."""
    return [n for n in streams if n > 4096]


def test_a_cut_upload_resumes_where_the_server_stopped(site: Site, packed: PackedCli) -> None:
    """asset put and asset run, cut mid-upload (the connection drops), resume by themselves:
    the prefix the server holds is not sent again and the sha256 covers the whole file."""
    home = packed.worker_dir("resume")
    size = 24 * 1024 * 1024
    chunk = hashlib.sha256(b"seed").digest() * 32768  # 1 MiB, not all one byte
    (home / "big.bin").write_bytes(chunk * 24)
    digest = _sha((home / "big.bin").read_bytes())

    out, token = _task(site, "task-put-cut", [], lease_seconds=10)
    before = len(site.proxy.upload_bytes)
    site.proxy.cut_upload_after = 10 * 1024 * 1024
    put = packed.as_worker(
        ["asset", "put", "--fulfill", out, "big.bin"], home, _auth(site, token), timeout=120
    )
    assert put.returncode == 0, put.stderr
    assert site.orchestrator.get(out).sha256 == digest
    # The question whether the server stores these bytes (reuse_stored_bytes: a header,
    # refused to a task token) is a stream of its own, of a few hundred bytes.
    streams = _with_chunks(site.proxy.upload_bytes[before:])
    assert len(streams) == 2 and streams[0] >= 10 * 1024 * 1024, streams
    # Resumed from the server's durable offset (some of what was cut may not have been
    # durable yet), not started again: the second stream carries less than the file.
    assert streams[1] < size - 1024 * 1024, streams

    result, token = _task(site, "task-run-cut", [], lease_seconds=10)
    before = len(site.proxy.upload_bytes)
    site.proxy.cut_upload_after = 10 * 1024 * 1024
    run = packed.as_worker(
        ["asset", *run_args("cp", str(home / "big.bin"), "{output}", outputs={"copy": result})],
        home,
        _auth(site, token),
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert site.orchestrator.get(result).sha256 == digest
    streams = _with_chunks(site.proxy.upload_bytes[before:])
    assert len(streams) == 2 and streams[1] < size - 1024 * 1024, streams
