"""`asset run`: signals, lost promises, missing outputs, bad usage (issue 19 item 3)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from asset_client import AssetClient, AssetStatus, AssetType

from tests.e2e.cli_helpers import asset, one_line_error, out, run_args, start
from tests.e2e.tcp_proxy import proxy_to
from tests.serverproc import ServerProcess, database_url_for, serving


@pytest.fixture
def client(server: ServerProcess) -> Iterator[AssetClient]:
    with AssetClient(server.address, timeout=30) as c:
        yield c


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text().strip()


def _alive_in(group: int) -> list[int]:
    """Processes of the group still running (zombies not counted: they only await a
    reaper, which in a container without an init may never come)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def _finish(proc: subprocess.Popen[bytes], timeout: float = 30) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, err.decode()


def test_sigterm_is_passed_on_and_a_command_ignoring_it_is_killed(
    server: ServerProcess, client: AssetClient, tmp_path: Path
) -> None:
    promise = client.create_pending("task-term", "out.bin", lease_seconds=30)
    pidfile = tmp_path / "pid"
    script = f"trap '' TERM; echo $$ > {pidfile}; echo 'working hard' >&2; sleep 60 & wait"
    proc = start(
        server.address,
        ["run", "--grace", "1", "--output", f"out={promise.id}", "--", "sh", "-c", script],
    )
    try:
        group = int(_wait_for(pidfile, proc))
        proc.send_signal(signal.SIGTERM)
        began = time.monotonic()
        code, err = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 128 + signal.SIGKILL  # the command's own end, as a shell reports it
    assert time.monotonic() - began < 10
    assert _alive_in(group) == []  # its `sleep` too: the whole group went
    failed = client.get(promise.id)
    assert failed.status is AssetStatus.FAILED
    assert failed.failure_reason.startswith("asset run received SIGTERM; the command was killed")
    assert "working hard" in failed.failure_reason
    assert "working hard" in err


def test_sigint_reaches_the_command_whose_exit_status_is_asset_runs(
    server: ServerProcess, client: AssetClient, tmp_path: Path
) -> None:
    promise = client.create_pending("task-int", "out.bin")
    ready = tmp_path / "ready"
    program = (
        "import signal, sys, time\n"
        "def stop(n, f):\n"
        "    print('got SIGINT, cleaning up', file=sys.stderr); sys.exit(3)\n"
        "signal.signal(signal.SIGINT, stop)\n"
        f"open({str(ready)!r}, 'w').write('1')\n"
        "time.sleep(60)\n"
    )
    proc = start(
        server.address,
        ["run", "--output", f"out={promise.id}", "--", "python3", "-c", program],
    )
    _wait_for(ready, proc)
    proc.send_signal(signal.SIGINT)
    code, _ = _finish(proc)
    assert code == 3
    reason = client.get(promise.id).failure_reason
    assert reason.startswith("asset run received SIGINT; the command exited with status 3")
    assert reason.endswith("got SIGINT, cleaning up")


def test_a_promise_lost_meanwhile_stops_the_command_and_fails_the_others(
    server: ServerProcess, client: AssetClient, tmp_path: Path
) -> None:
    first = client.create_pending("task-lost", "a.bin", lease_seconds=1)
    second = client.create_pending("task-lost", "b.bin", lease_seconds=1)
    pidfile = tmp_path / "pid"
    script = f"echo $$ > {pidfile}; exec sleep 60"
    outputs = {"a": first.id, "b": second.id}
    proc = start(server.address, run_args("sh", "-c", script, outputs=outputs))
    _wait_for(pidfile, proc)
    client.fail(first.id, "the orchestrator gave up on it")
    code, err = _finish(proc)
    assert code == 128 + signal.SIGTERM
    assert "stopping the command: the promise" in err
    assert "could not fail" not in err  # the lost one is left as it is, without a try
    reason = client.get(second.id).failure_reason
    assert reason.startswith(f"the promise {first.id} was lost")
    assert reason.endswith("the command was killed by SIGTERM")
    assert client.get(first.id).failure_reason == "the orchestrator gave up on it"


def test_an_input_that_failed_fails_the_promise_and_the_command_never_runs(
    server: ServerProcess, client: AssetClient, tmp_path: Path
) -> None:
    upstream = client.create_pending("task-up", "frames.zip")
    client.fail(upstream.id, "ffmpeg exited 1")
    promise = client.create_pending("task-down", "clip.mp4")
    marker = tmp_path / "ran"
    run = run_args(
        "touch", str(marker), inputs={"frames": upstream.id}, outputs={"clip": promise.id}
    )
    result = asset(server.address, *run)
    err = one_line_error(result, 19)  # FAILED_PRECONDITION
    assert "input 'frames'" in err
    assert not marker.exists()
    reason = client.get(promise.id).failure_reason
    assert reason.startswith("inputs not available: input 'frames'")
    assert "ffmpeg exited 1" in reason


def test_a_pending_input_is_waited_for_then_the_command_runs(
    server: ServerProcess, client: AssetClient, tmp_path: Path
) -> None:
    upstream = client.create_pending("task-up", "words.txt", type=AssetType.VALUE)
    promise = client.create_pending("task-count", "count.txt")
    command = ("sh", "-c", 'wc -w < "$1" > "$ASSET_OUTPUT"', "sh", "{input:words}")
    run = run_args(*command, inputs={"words": upstream.id}, outputs={"count": promise.id})
    proc = start(server.address, run)
    time.sleep(1)
    assert proc.poll() is None  # still waiting
    client.fulfill(upstream.id, value="one two three")
    code, err = _finish(proc)
    assert code == 0, err
    assert b"".join(client.read(promise.id)).strip() == b"3"


def test_the_commands_stdout_is_asset_runs_and_nothing_else(
    server: ServerProcess, client: AssetClient, tmp_path: Path
) -> None:
    promise = client.create_pending("task-out", "out.txt")
    target = tmp_path / "result.txt"
    command = ("sh", "-c", "echo to stdout; echo data > {output}")
    run = run_args(*command, outputs={"out": f"{promise.id}:{target}"})
    result = asset(server.address, *run, cwd=tmp_path)
    assert out(result) == "to stdout\n"
    assert client.get(promise.id).size_bytes == 5
    # The declared file exists now: a second run may not deliver it stale.
    again = client.create_pending("task-out", "out.txt")
    refused = asset(server.address, "run", "--output", f"out={again.id}:{target}", "--", "true")
    assert "exists already" in one_line_error(refused, 2)
    assert client.get(again.id).status is AssetStatus.PENDING


def test_a_kept_workdir_never_delivers_an_output_a_run_before_left_there(
    server: ServerProcess, client: AssetClient, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    first = client.create_pending("task-again", "out.txt")
    run = ["run", "--workdir", str(work), "--output", f"out={first.id}", "--"]
    assert out(asset(server.address, *run, "sh", "-c", "echo data > {output}")) == ""
    assert (work / "outputs" / "out").read_text() == "data\n"
    # A retry in the same folder whose command writes nothing is refused at once.
    again = client.create_pending("task-again", "out.txt")
    run[-2] = f"out={again.id}"
    refused = asset(server.address, *run, "true")
    assert "exists already" in one_line_error(refused, 2)
    assert client.get(again.id).status is AssetStatus.PENDING


@pytest.mark.parametrize(
    ("command", "code", "said", "reason"),
    [
        ("true", 1, "the command exited 0 but wrote no file", "wrote no file at"),
        ("no-such-cmd", 127, "cannot run 'no-such-cmd'", "no-such-cmd"),
    ],
    ids=["writes-no-output", "cannot-be-found"],
)
def test_a_command_that_makes_no_output_fails_its_promise(
    server: ServerProcess, client: AssetClient, command: str, code: int, said: str, reason: str
) -> None:
    promise = client.create_pending("task-none", "out.txt")
    result = asset(server.address, *run_args(command, outputs={"out": promise.id}))
    assert said in one_line_error(result, code)
    failed = client.get(promise.id)
    assert failed.status is AssetStatus.FAILED and reason in failed.failure_reason


@pytest.mark.parametrize(
    ("media_type", "written", "said"),
    [
        ("application/json", "{not json", "is not JSON, which media type application/json"),
        ("text/plain", "\\377\\376", "is not UTF-8 text, which media type text/plain"),
    ],
    ids=["json", "text"],
)
def test_an_output_a_value_promise_cannot_take_is_a_local_error_naming_it(
    server: ServerProcess, client: AssetClient, media_type: str, written: str, said: str
) -> None:
    promise = client.create_pending("task-v", "v", type=AssetType.VALUE, media_type=media_type)
    command = ("sh", "-c", f"printf '{written}' > {{output}}")
    result = asset(server.address, *run_args(*command, outputs={"stats": promise.id}))
    err = one_line_error(result, 1)  # not 2: the command line was right
    assert "the command exited 0 but output stats (" in err and said in err
    failed = client.get(promise.id)
    assert failed.status is AssetStatus.FAILED and said in failed.failure_reason


def test_an_output_that_is_not_pending_is_refused_before_anything_runs(
    server: ServerProcess, client: AssetClient, tmp_path: Path
) -> None:
    done = client.create_value("done", text="x")
    marker = tmp_path / "ran"
    result = asset(server.address, "run", "--output", f"o={done.id}", "--", "touch", str(marker))
    assert "is AVAILABLE, not PENDING" in one_line_error(result, 19)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--output", "a=ID1", "--output", "b=ID2", "--", "cp", "x", "{output}"], "{output}"),
        (["--output", "a=ID1", "--", "cp", "x", "{output:b}"], "no --output named 'b'"),
        (["--output", "a=ID1", "--", "cat", "{input:nope}"], "no --input named 'nope'"),
        (["--output", "9a=ID1", "--", "true"], "NAME=ASSET_ID"),
        (["--input", "novalue", "--", "true"], "KEY=ASSET_ID"),
        (["--config", "[1]", "--", "true"], "JSON object"),
        (["--grace", "0", "--", "true"], "--grace"),
        (["--output", "a=ID1"], "COMMAND"),
    ],
)
def test_bad_usage_exits_2_with_one_line_and_touches_nothing(
    server: ServerProcess, args: list[str], message: str
) -> None:
    assert message in one_line_error(asset(server.address, "run", *args), 2)


def test_a_signal_while_waiting_for_inputs_fails_the_promise(
    server: ServerProcess, client: AssetClient, tmp_path: Path
) -> None:
    upstream = client.create_pending("task-up", "never.txt")
    promise = client.create_pending("task-wait", "out.txt", lease_seconds=30)
    marker = tmp_path / "ran"
    run = run_args("touch", str(marker), inputs={"x": upstream.id}, outputs={"o": promise.id})
    proc = start(server.address, ["-v", *run])
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()  # -v: it says when it starts waiting
    assert line == "asset: waiting for 1 input(s)\n", line
    proc.send_signal(signal.SIGTERM)
    code, err = _finish(proc)
    assert code == 128 + signal.SIGTERM
    assert "received SIGTERM" in err
    assert not marker.exists()
    reason = client.get(promise.id).failure_reason
    assert reason == "asset run received SIGTERM while waiting for its inputs"


def test_an_output_is_delivered_across_a_server_restart(tmp_path: Path) -> None:
    # The command ends while the server is down: the upload waits for it, not fails.
    with (
        serving(ServerProcess(tmp_path / "data", database_url_for(tmp_path))) as server,
        proxy_to(server.port) as proxy,
        AssetClient(server.address, timeout=30) as client,
    ):
        promise = client.create_pending("task-restart", "out.txt")
        wrote, go = tmp_path / "wrote", tmp_path / "go"
        script = (
            f"echo done > $ASSET_OUTPUT; echo x > {wrote}; until [ -e {go} ]; do sleep 0.05; done"
        )
        proc = start(proxy.address, run_args("sh", "-c", script, outputs={"o": promise.id}))
        _wait_for(wrote, proc)
        server.kill()
        proxy.cut_now()
        go.touch()
        time.sleep(1.5)  # the first upload attempts meet no server
        server.start()
        proxy.upstream = server.port
        code, err = _finish(proc, timeout=60)
        assert code == 0, err
        with AssetClient(server.address, timeout=30) as again:
            assert again.get(promise.id).status is AssetStatus.AVAILABLE
            assert b"".join(again.read(promise.id)) == b"done\n"
