"""The `asset` command against a live server: each command, exit statuses, --help."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from asset_client import AssetClient, AssetStatus, AssetType
from asset_client.cli import _exit, _main

from tests.e2e.cli_helpers import ASSET, asset, cli_env, one_line_error, out, start
from tests.e2e.helpers import stored_files
from tests.serverproc import ServerProcess


@pytest.fixture
def client(server: ServerProcess) -> Iterator[AssetClient]:
    with AssetClient(server.address, timeout=30) as c:
        yield c


def test_put_cat_get_round_trip_a_file_and_stdin(
    server: ServerProcess, client: AssetClient, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 5000
    (tmp_path / "blob.bin").write_bytes(data)
    file_id = out(
        asset(server.address, "put", "--tag", "t1", "--tag", "t2", str(tmp_path / "blob.bin"))
    ).strip()
    record = client.get(file_id)
    assert (record.label, record.tags, record.size_bytes) == ("blob.bin", ("t1", "t2"), len(data))
    assert asset(server.address, "cat", file_id).stdout == data

    piped = asset(
        server.address, "put", "--label", "notes.md", "-", input="# notes\n", cwd=tmp_path
    )
    notes = client.get(out(piped).strip())
    assert (notes.label, notes.media_type, notes.size_bytes) == ("notes.md", "text/markdown", 8)

    into = tmp_path / "down"
    into.mkdir()
    written = out(asset(server.address, "get", file_id, str(into))).strip()
    assert Path(written) == into / "blob.bin"
    assert Path(written).read_bytes() == data
    assert sorted(p.name for p in into.iterdir()) == ["blob.bin"]


def test_get_and_cat_of_bytes_that_do_not_match_exit_25_leaving_no_file(
    server: ServerProcess, client: AssetClient, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "good.bin").write_bytes(b"A" * 100_000)
    asset_id = out(asset(server.address, "put", str(work / "good.bin"))).strip()
    (stored,) = [p for p in stored_files(server.root) if asset_id in str(p)]
    stored.chmod(0o600)
    stored.write_bytes(b"B" * 100_000)  # same size, other bytes: only the sha256 tells
    dest = work / "copy.bin"
    err = one_line_error(asset(server.address, "get", asset_id, str(dest)), 25)
    assert "DATA_LOSS" in err
    assert sorted(p.name for p in work.iterdir()) == ["good.bin"]  # nothing partial
    assert "DATA_LOSS" in one_line_error(asset(server.address, "cat", asset_id), 25)


def test_ls_as_a_table_as_json_lines_and_page_by_page(
    server: ServerProcess, client: AssetClient
) -> None:
    ids = [client.create_value(f"v{n}", text=str(n), tags=["ls"]).id for n in range(3)]
    client.create_value("other", text="x")
    table = out(asset(server.address, "ls", "--tag", "ls")).splitlines()
    assert table[0].split() == ["ID", "STATUS", "TYPE", "SIZE", "LABEL", "TASK", "TAGS", "UPDATED"]
    assert [row.split()[0] for row in table[1:] if row.strip()] == ids

    rows = out(asset(server.address, "ls", "--tag", "ls", "--page-size", "1", "--json"))
    assert [json.loads(r)["id"] for r in rows.splitlines()] == ids
    assert len(out(asset(server.address, "--json", "ls", "--limit", "2")).splitlines()) == 2

    first = asset(server.address, "ls", "--tag", "ls", "--page-size", "2", "--page-token", "")
    token = first.stderr.decode().strip().removeprefix("next page token: ")
    assert token and first.returncode == 0
    rest = asset(
        server.address, "ls", "--json", "--tag", "ls", "--page-size", "2", "--page-token", token
    )
    assert [json.loads(r)["id"] for r in out(rest).splitlines()] == ids[2:]
    assert rest.stderr == b""


def test_show_prints_the_record_as_text_or_json(server: ServerProcess, client: AssetClient) -> None:
    value = client.create_value("cfg", json={"a": 1}, tags=["x"])
    shown = json.loads(out(asset(server.address, "show", value.id, "--json")))
    assert shown["id"] == value.id and shown["type"] == "VALUE" and shown["tags"] == ["x"]
    assert shown["value"] == {"kind": "json", "content": '{"a": 1}'}
    text = out(asset(server.address, "show", value.id))
    assert any(line.split() == ["status", "AVAILABLE"] for line in text.splitlines())


def test_usage_by_tag_as_a_table_and_as_json(server: ServerProcess, client: AssetClient) -> None:
    client.create_value("a", text="12345", tags=["usage-cli"])
    client.create_value("b", text="123", tags=["usage-cli", "other"])
    shown = json.loads(out(asset(server.address, "usage", "--group", "tag", "--json")))
    assert shown["count"] == 2 and shown["bytes"] == 8 and shown["group"] == "tag"
    rows = {r["key"]: (r["count"], r["bytes"]) for r in shown["rows"]}
    assert rows == {"usage-cli": (2, 8), "other": (1, 3)}
    assert shown["by_status"] == {"AVAILABLE": {"count": 2, "bytes": 8}}
    text = out(asset(server.address, "usage", "--group", "tag", "--key", "other"))
    assert any(line.split()[:3] == ["other", "1", "3"] for line in text.splitlines()), text
    assert "total: 2 assets, 8 B" in text
    # By tag, each row splits by status; by status (the default) a row is one status.
    header = out(asset(server.address, "usage", "--group", "tag")).splitlines()[0].split()
    assert header == ["TAG", "ASSETS", "BYTES", "AVAILABLE", "PENDING", "FAILED"]
    by_status = out(asset(server.address, "usage")).splitlines()
    assert by_status[0].split() == ["STATUS", "ASSETS", "BYTES"]
    assert any(line.split() == ["AVAILABLE", "2", "8", "B"] for line in by_status), by_status


def test_pending_fulfill_fail_renew_rm(server: ServerProcess, client: AssetClient) -> None:
    file_promise = out(asset(server.address, "pending", "task-1", "a.bin", "--lease", "60"))
    file_promise = file_promise.strip()
    assert client.get(file_promise).lease_seconds == 60
    renewed = out(asset(server.address, "renew", file_promise, "--lease", "120")).split()
    assert renewed[0] == file_promise and renewed[1].startswith("20")
    assert out(asset(server.address, "fail", file_promise, "no input")).split() == [
        file_promise,
        "FAILED",
    ]
    assert client.get(file_promise).failure_reason == "no input"

    value_promise = out(
        asset(server.address, "pending", "task-1", "b.json", "--type", "value", "--json")
    )
    promise = json.loads(value_promise)
    assert promise["status"] == "PENDING" and promise["type"] == "VALUE"
    out(asset(server.address, "fulfill", promise["id"], "--json-value", '{"score": 0.9}'))
    kept = client.get(promise["id"])
    assert kept.value is not None and kept.value.as_json() == {"score": 0.9}
    # A second fulfilment is refused: FAILED_PRECONDITION, exit 19.
    again = asset(server.address, "fulfill", promise["id"], "--value", "late")
    assert "FAILED_PRECONDITION" in one_line_error(again, 19)
    assert out(asset(server.address, "rm", promise["id"], file_promise)).split() == [
        promise["id"],
        file_promise,
    ]
    assert "NOT_FOUND" in one_line_error(asset(server.address, "show", file_promise), 15)


def test_rm_of_a_held_asset_names_its_holders_unless_forced(
    server: ServerProcess, client: AssetClient
) -> None:
    held = client.create_value("held.json", json={"n": 1})
    client.place_hold(held.id, "auditor", "quarterly review")
    refused = one_line_error(asset(server.address, "rm", held.id), 19)
    assert "auditor (quarterly review)" in refused and "force" in refused
    assert client.get(held.id).status is AssetStatus.AVAILABLE
    assert out(asset(server.address, "rm", "--force", held.id)).split() == [held.id]
    assert "NOT_FOUND" in one_line_error(asset(server.address, "show", held.id), 15)


def test_watch_ends_when_terminal_and_says_how_in_its_exit_status(
    server: ServerProcess, client: AssetClient
) -> None:
    good = client.create_pending("task-w", "good.txt", type=AssetType.VALUE)
    bad = client.create_pending("task-w", "bad.txt")
    watcher = subprocess.Popen(
        [ASSET, "watch", good.id],
        env=cli_env(server.address),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert watcher.stdout is not None
    first = watcher.stdout.readline().decode().rstrip("\n").split("\t")
    assert first[1:4] == ["SNAPSHOT", good.id, "PENDING"]
    client.fulfill(good.id, value="ok")
    rest, _ = watcher.communicate(timeout=30)
    assert watcher.returncode == 0
    assert rest.decode().rstrip("\n").split("\t")[1:4] == ["CHANGED", good.id, "AVAILABLE"]

    client.fail(bad.id, "disk\nfull")
    ended = asset(server.address, "watch", "--task", "task-w", "--json")
    assert ended.returncode == 19
    events = [json.loads(line) for line in ended.stdout.decode().splitlines()]
    assert {(e["asset"]["id"], e["asset"]["status"]) for e in events} == {
        (good.id, "AVAILABLE"),
        (bad.id, "FAILED"),
    }
    assert f"{bad.id} FAILED" in one_line_error(ended, 19)
    timed = asset(server.address, "watch", good.id, "--follow", "--watch-timeout", "1")
    assert timed.stdout.decode().count("\n") == 1  # the snapshot, then the deadline:
    assert "DEADLINE_EXCEEDED" in one_line_error(timed, 14)  # 10 + DEADLINE_EXCEEDED


def test_manifest_on_the_server_and_locally_in_the_same_format(
    server: ServerProcess, client: AssetClient, tmp_path: Path
) -> None:
    (tmp_path / "v.txt").write_text("frames\n")
    video = client.upload(tmp_path / "v.txt", label="video.mp4", progress=False)
    note = client.create_value("note", text="be brief")
    args = [f"video={video.id}", f"note={note.id}", "--config", '{"fps": 25, "ratio": 0.5}']
    remote = Path(out(asset(server.address, "manifest", *args)).strip())
    local_dir = tmp_path / "task"
    env = {"ASSET_SERVICE_CACHE_DIR": str(tmp_path / "cache")}
    local = Path(
        out(asset(server.address, "manifest", *args, "--local", str(local_dir), env=env)).strip()
    )
    assert local == local_dir / "input_data.json"
    theirs, ours = json.loads(remote.read_text()), json.loads(local.read_text())
    assert ours["config_params"] == theirs["config_params"] == {"fps": 25, "ratio": 0.5}
    assert ours["inputs"].keys() == theirs["inputs"].keys() == {"video", "note"}
    for key in ("video", "note"):
        mine, server_side = Path(ours["inputs"][key]), Path(theirs["inputs"][key])
        assert mine.is_absolute() and mine.is_relative_to(local_dir)
        assert mine.read_bytes() == server_side.read_bytes()
        assert mine.suffix == server_side.suffix
    assert local.read_text() == json.dumps(ours, indent=2, sort_keys=True) + "\n"
    assert remote.read_text() == json.dumps(theirs, indent=2, sort_keys=True) + "\n"


def test_errors_exit_10_plus_the_grpc_code_with_one_line(server: ServerProcess) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    assert "NOT_FOUND" in one_line_error(asset(server.address, "show", missing), 15)
    assert "INVALID_ARGUMENT" in one_line_error(asset(server.address, "show", "nope"), 13)
    # A read is retried by gRPC while the server is away, until the deadline...
    closed = asset("127.0.0.1:1", "--timeout", "2", "ls")
    assert "DEADLINE_EXCEEDED" in one_line_error(closed, 14)
    assert "(server 127.0.0.1:1)" in closed.stderr.decode()
    # ...a call that creates something is not: UNAVAILABLE at once.
    refused = asset("127.0.0.1:1", "pending", "task-1", "x")
    assert "UNAVAILABLE" in one_line_error(refused, 24)
    assert "--timeout" in one_line_error(asset(server.address, "--timeout", "0", "ls"), 2)
    env_zero = asset(server.address, "ls", env={"ASSET_SERVICE_TIMEOUT": "-1"})
    assert "--timeout" in one_line_error(env_zero, 2)
    assert "No such option" in one_line_error(asset(server.address, "ls", "--bogus"), 2)
    nofile = asset(server.address, "put", "/nonexistent/file")
    assert "no such file" in one_line_error(nofile, 2)
    device = asset(server.address, "put", "/dev/null")  # or a pipe: `asset put <(make_it)`
    assert "/dev/null: not a regular file" in one_line_error(device, 2)


def test_a_tls_handshake_that_fails_is_one_line_without_grpcs_own_log(
    server: ServerProcess,
) -> None:
    # gRPC's core would print an INFO line per failed handshake (GRPC_VERBOSITY unset).
    tls_to_plaintext = asset(server.address, "--tls", "--timeout", "3", "ls")
    assert "DEADLINE_EXCEEDED" in one_line_error(tls_to_plaintext, 14)


def test_a_token_without_tls_for_a_remote_address_is_a_usage_error_at_once() -> None:
    refused = asset("192.0.2.1:50051", "--token", "t", "--timeout", "2", "ls")
    assert "only to a loopback address" in one_line_error(refused, 2)


def test_a_global_option_that_is_wrong_is_named_with_asset_help(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    wrong = asset("127.0.0.1:1", "--ca-file", str(tmp_path / "ca.pem"), "--timeout", "2", "ls")
    err = one_line_error(wrong, 2)
    assert err.startswith(f"asset: --ca-file {tmp_path / 'ca.pem'}: no PEM block"), err
    assert err.endswith("(see 'asset --help')\n")  # where --ca-file is explained


def test_get_into_a_missing_folder_names_it_and_a_download_follows_the_umask(
    server: ServerProcess, client: AssetClient, tmp_path: Path
) -> None:
    value = client.create_value("notes.txt", text="hello")
    missing = tmp_path / "missing"
    err = one_line_error(asset(server.address, "get", value.id, str(missing / "x.txt")), 1)
    assert err == f"asset: No such file or directory: {missing}\n"
    umask = os.umask(0o022)  # the child's umask, as a login shell's usually is
    try:
        written = Path(out(asset(server.address, "get", value.id, cwd=tmp_path)).strip())
    finally:
        os.umask(umask)
    assert (tmp_path / written).read_text() == "hello"
    assert stat.S_IMODE((tmp_path / written).stat().st_mode) == 0o644  # not tempfile's 0o600


def test_a_reader_that_goes_away_ends_cat_quietly_as_sigpipe_would(
    server: ServerProcess, client: AssetClient, tmp_path: Path
) -> None:
    # `asset cat ID | head -c 10`: more than a pipe's buffer, so a write meets the closed
    # pipe (click's own handling exited 1).
    (tmp_path / "big.bin").write_bytes(os.urandom(4 * 1024 * 1024))
    asset_id = client.upload(tmp_path / "big.bin", progress=False).id
    proc = start(server.address, ["cat", asset_id])
    assert proc.stdout is not None and proc.stderr is not None
    assert len(proc.stdout.read(10)) == 10
    proc.stdout.close()
    try:
        err = proc.stderr.read()
        assert proc.wait(30) == 128 + 13, err
    finally:
        proc.kill()
        proc.wait()
    assert err == b""


def test_get_into_a_folder_that_is_not_there_is_refused(
    server: ServerProcess, client: AssetClient, tmp_path: Path
) -> None:
    value = client.create_value("notes.txt", text="hello")
    work = tmp_path / "work"
    work.mkdir()
    err = one_line_error(asset(server.address, "get", value.id, "nodir/", cwd=work), 2)
    assert "nodir/: no such folder" in err
    assert list(work.iterdir()) == []  # not a file named nodir


def test_ctrl_c_ends_a_command_with_130_and_one_line(
    server: ServerProcess, client: AssetClient
) -> None:
    promise = client.create_pending("task-int", "never.txt")
    proc = start(server.address, ["watch", promise.id])
    try:
        assert proc.stdout is not None
        assert promise.id in proc.stdout.readline().decode()  # watching now
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130
    assert err == b"asset: interrupted\n"  # no blank line first (click's, for a terminal)


def test_the_exit_status_table_is_10_plus_each_grpc_code() -> None:
    import grpc

    codes = {c: _exit.for_code(c) for c in grpc.StatusCode}
    assert codes[grpc.StatusCode.OK] == 0
    others = [v for c, v in codes.items() if c is not grpc.StatusCode.OK]
    assert others == [10 + c.value[0] for c in grpc.StatusCode if c is not grpc.StatusCode.OK]
    assert len(set(others)) == len(others) and min(others) == 11 and max(others) < 126
    assert _exit.for_returncode(-9) == 137 and _exit.for_returncode(7) == 7


def _commands() -> list[str]:
    return sorted(_main.cli.commands)


@pytest.mark.parametrize("command", _commands())
def test_every_command_explains_itself(command: str) -> None:
    result = subprocess.run([ASSET, command, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    summary = _main.cli.commands[command].help or ""
    assert summary.split("\n")[0].split()[0] in result.stdout
    assert result.stdout.startswith(f"Usage: asset {command} ")
    cmd = _main.cli.commands[command]
    for param in cmd.params:
        if isinstance(param, click.Option) and param.help is None:
            pytest.fail(f"asset {command} {param.opts[0]} has no help")


def test_the_top_help_lists_every_command_and_the_exit_statuses() -> None:
    text = subprocess.run([ASSET, "--help"], capture_output=True, text=True, timeout=30).stdout
    for command in _commands():
        assert f"  {command} " in text
    assert "10 + " not in text and "26  the call ended with gRPC status UNAUTHENTICATED" in text
    for variable in ("ASSET_SERVICE_ADDR", "ASSET_SERVICE_TOKEN", "ASSET_SERVICE_CA_FILE"):
        assert variable in text


def test_without_the_cli_extra_asset_says_how_to_install_it() -> None:
    blocked = (
        "import sys; sys.modules['click'] = None\n"
        "from asset_client.cli import main\n"
        "sys.exit(main(['ls']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", blocked], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "asset: the command line needs the client's [cli] extra: "
        "pip install 'asset-service-client[cli]' (click is missing)\n"
    )


def test_settings_come_from_the_environment(server: ServerProcess, client: AssetClient) -> None:
    value = client.create_value("env", text="from env")
    got = subprocess.run(
        [ASSET, "cat", value.id],
        env=cli_env(server.address, {"ASSET_SERVICE_TIMEOUT": "5"}),
        capture_output=True,
        timeout=30,
    )
    assert got.stdout == b"from env"
    token_file = Path("/nonexistent/token")
    missing = asset(server.address, "ls", env={"ASSET_SERVICE_TOKEN_FILE": str(token_file)})
    assert str(token_file) in one_line_error(missing, 2)
    assert client.get(value.id).status is AssetStatus.AVAILABLE


def test_put_draws_a_progress_bar_on_a_terminal_only(server: ServerProcess, tmp_path: Path) -> None:
    import os
    import pty

    (tmp_path / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    quiet = asset(server.address, "put", str(tmp_path / "big.bin"))
    assert quiet.returncode == 0 and quiet.stderr == b""  # piped stderr: no bar
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [ASSET, "put", str(tmp_path / "big.bin")],
            env={**cli_env(server.address), "COLUMNS": "120", "TERM": "xterm"},
            stdout=subprocess.PIPE,
            stderr=follower,
        )
        os.close(follower)
        drawn = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other end closed
                break
            if not chunk:
                break
            drawn += chunk
        stdout, _ = proc.communicate(timeout=60)
    finally:
        os.close(leader)
    assert proc.returncode == 0
    assert len(stdout.decode().strip()) == 36  # the id, alone on stdout
    assert b"upload big.bin" in drawn and b"3.0/3.0 MiB" in drawn
