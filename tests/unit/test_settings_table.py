"""Every setting, from its one declaration: bad values refused in one line, good ones taken
from a flag or a variable (the flag winning), the README table, --version, --print-config."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from asset_service import cli
from asset_service.config import TABLE, load_settings, read_command_line
from asset_service.options import (
    BOOL,
    COUNT,
    TEXT,
    Many,
    OneLineParser,
    Setting,
    Table,
    describe,
    markdown,
    mask_url,
    parse_duration,
    parse_size,
    replace_block,
    setting,
)

ROOT = Path(__file__).resolve().parents[2]

# Per kind of value: two good texts (the variable gets the first, the flag the second: they
# must differ) and the bad ones. A setting of a new kind fails test_every_kind_has_samples
# until its samples are here; a new setting of a known kind needs nothing.
SAMPLES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "address": ("0.0.0.0:9000", "[::1]:0", ("localhost", "host:http", "h:70000", ":")),
    "address or empty": ("0.0.0.0:9464", "", ("localhost", "h:70000", "unix:/run/metrics")),
    "boolean": ("yes", "off", ("maybe", "2")),
    "choice of DEBUG, INFO, WARNING, ERROR": ("debug", "Warning", ("TRACE", "")),
    "choice of authenticated, open, off": ("OPEN", "off", ("closed",)),
    "choice of text, json": ("JSON", "text", ("yaml", "")),
    "count, above 0": ("7", "1000", ("0", "-3", "1.5", "lots")),
    "duration": ("0", "1h30m", ("-1", "soon", "nan", "inf", "10 s", "5x", "1e3")),
    "duration, above 0": ("250ms", "1.5", ("0", "0s", "-0.5", "nan", "inf", "10s5", "soon")),
    "file": ("server.pem", "/etc/asset/server.pem", ("/",)),
    "several expiry rules": (
        "failed,status=FAILED,7d",
        "values,type=VALUE,task=*,30d",
        ("failed", "x,status=PENDING,1d", "x,status=FAILED,0d", "ttl,tag=a,1d", "y,color=red,1d"),
    ),
    "folder": ("/srv/assets", "relative/data", ("", "  ")),
    "group": ("0", "12345", ("no-such-group-anywhere",)),
    "number": ("0", "2.5", ("-1", "nan", "inf", "fast", "1e3")),
    "region": ("eu-west-3", "us-east-1", ("us east 1", "a/b")),
    "several folders": ("/srv/in", "incoming", ()),  # an empty item is skipped
    "size": ("0", "1.5GiB", ("ten gigs", "-1", "1.3b", "5 parsecs")),
    "size, 0 or at least 1MiB": ("0", "16MiB", ("1k", "512KiB", "big")),
    "size, above 0": ("512MiB", "10G", ("0", "1.5Q", "-1")),
    "url (http or https)": ("http://127.0.0.1:9000", "https://s3.example", ("ftp://x", "x")),
    "url (s3)": ("s3://bucket", "s3://bucket/prefix/", ("gs://bucket", "/data")),
    "url (sqlite, mongodb, mongodb+srv or memory)": (
        "memory://",
        "mongodb://db/assets?replicaSet=rs",
        ("postgres://x", "assets.db"),
    ),
    "whole seconds, above 0": ("3600", "24h", ("1.5", "0", "-1", "a day")),
    "workers": ("auto", "4", ("0", "-1", "1.5", "many", "")),
}

CASES = [(s, bad) for s in TABLE.settings for bad in SAMPLES.get(s.kind.name, ("", "", ()))[2]]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() reads os.environ: only what a test sets may be there."""
    for name in list(os.environ):
        if name.startswith("ASSET_SERVICE_"):
            monkeypatch.delenv(name)


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The real command in this process: its exit status, stdout and stderr."""
    try:
        status = cli.main(argv)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


def test_every_kind_has_samples() -> None:
    kinds = {s.kind.name for s in TABLE.settings}
    assert kinds <= SAMPLES.keys(), f"add samples for {sorted(kinds - SAMPLES.keys())}"
    assert {name for name in kinds if not SAMPLES[name][2]} == {"several folders"}


def assert_one_line_refusal(status: int, err: str, s: Setting[Any], shown: str) -> None:
    assert status == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("asset-service: error: "), err
    assert s.flag in err and s.env in err and shown in err, err


def assert_says_what_is_accepted_once(err: str, s: Setting[Any]) -> None:
    """The accepted forms end the line, unless the parser's own message said them."""
    said = s.kind.forms.split(";")[0]
    assert err.count(said) == 1, err
    assert err.endswith(f"; accepted: {s.kind.forms}\n") or "; accepted: " not in err, err


@pytest.mark.parametrize(("s", "bad"), CASES, ids=[f"{s.flag}={bad!r}" for s, bad in CASES])
def test_every_setting_refuses_a_bad_value_as_flag_and_as_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, s: Setting[Any], bad: str
) -> None:
    status, _, err = run_main([f"{s.flag}={bad}"], capsys)
    assert_one_line_refusal(status, err, s, repr(bad))
    assert f"{s.flag} (or {s.env}): " in err
    assert_says_what_is_accepted_once(err, s)
    monkeypatch.setenv(s.env, bad)
    status, _, err = run_main([], capsys)
    assert_one_line_refusal(status, err, s, repr(bad))
    assert f"{s.env} (the variable of {s.flag}): " in err
    assert_says_what_is_accepted_once(err, s)


def flag_arguments(s: Setting[Any], text: str) -> list[str]:
    if s.kind is BOOL:
        return [s.flag if BOOL.parse(text) else "--no-" + s.flag.removeprefix("--")]
    return [s.flag, text]


def expected(s: Setting[Any], text: str) -> Any:
    if isinstance(s.kind, Many):
        assert s.kind.item is not None
        return (s.kind.item.parse(text),)
    return s.kind.parse(text)


def print_config(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, list[str]]:
    status, out, err = run_main([*argv, "--print-config"], capsys)
    assert status == 0 and err == "", err
    lines = out.splitlines()
    assert lines[0].startswith("# asset-service ")
    return {cells[0]: cells for cells in (re.split(r"\s{2,}", line) for line in lines[1:])}


@pytest.mark.parametrize("s", TABLE.settings, ids=[s.flag for s in TABLE.settings])
def test_every_setting_takes_a_good_value_both_ways_and_the_flag_wins(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, s: Setting[Any]
) -> None:
    from_env, from_flag, _ = SAMPLES[s.kind.name]
    assert expected(s, from_env) != expected(s, from_flag), "samples must differ"
    env = {s.env: from_env}
    assert getattr(load_settings([], env), s.name) == expected(s, from_env)
    flagged = load_settings(flag_arguments(s, from_flag), env)
    assert getattr(flagged, s.name) == expected(s, from_flag)

    assert print_config(capsys, [])[s.flag][-1] == "default"
    monkeypatch.setenv(s.env, from_env)
    assert print_config(capsys, [])[s.flag][-1] == f"environment {s.env}"
    row = print_config(capsys, flag_arguments(s, from_flag))[s.flag]
    assert row[-1] == f"flag {flag_arguments(s, from_flag)[0]}"
    if s.name != "database_url":  # shown masked
        assert row[1] == s.kind.show(expected(s, from_flag)) or row[1] == "none"


def test_help_names_every_flag_with_its_variable_and_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, _ = run_main(["--help"], capsys)
    assert status == 0
    text = " ".join(out.split())  # argparse wraps lines
    for s in TABLE.settings:
        assert f"[{s.env}; default: {s.shown_default}]" in text, s.flag
        assert s.flag in text
    assert "--no-direct-io" in text and "--version" in text and "--print-config" in text


def test_readme_settings_tables_are_generated_from_the_declarations() -> None:
    readme = (ROOT / "README.md").read_text()
    assert replace_block(readme, markdown(TABLE)) == readme, "run `make generate`"
    for s in TABLE.settings:
        assert f"| `{s.env}`" in readme


def test_the_generator_script_checks_the_readme() -> None:
    done = subprocess.run(
        [sys.executable, "scripts/gen_settings_doc.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "up to date" in done.stdout, done.stdout + done.stderr


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    status, out, _ = run_main(["--version"], capsys)
    assert status == 0
    assert out.startswith(f"asset-service {version('asset-service')}, grpcio {version('grpcio')}")
    assert f"Python {sys.version.split()[0]}" in out


def test_print_config_shows_sources_and_masks_credentials(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(
        "ASSET_SERVICE_DATABASE_URL",
        "mongodb://orch:hunter2@db1:27017,db2/assets?replicaSet=rs"
        "&authMechanismProperties=AWS_SESSION_TOKEN:tok3n",
    )
    monkeypatch.setenv("ASSET_SERVICE_S3_ENDPOINT_URL", "https://AKIA:s3cr3t@minio:9000")
    monkeypatch.setenv("ASSET_SERVICE_SHUTDOWN_GRACE", "1m30s")
    rows = print_config(capsys, ["--listen", "127.0.0.1:0", "--storage-root", str(tmp_path)])
    assert rows["--listen"][1:] == ["127.0.0.1:0", "flag --listen"]
    assert rows["--shutdown-grace"][1:] == ["90s", "environment ASSET_SERVICE_SHUTDOWN_GRACE"]
    assert rows["--max-upload-bytes"][1:] == ["10GiB", "default"]
    assert rows["--database-url"][1:] == [
        "mongodb://orch:****@db1:27017,db2/assets?replicaSet=rs&authMechanismProperties=****",
        "environment ASSET_SERVICE_DATABASE_URL",
    ]
    assert rows["--s3-endpoint-url"][1] == "https://AKIA:****@minio:9000"
    assert len(rows) == len(TABLE.settings)
    # The derived default is shown as it will be used.
    rows = print_config(capsys, ["--storage-root", str(tmp_path), "--database-url", ""])
    assert rows["--database-url"][1] == f"sqlite:///{tmp_path.resolve()}/assets.db"


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("mongodb://u:p@h/db", "mongodb://u:****@h/db"),
        ("mongodb://h/db?replicaSet=rs", "mongodb://h/db?replicaSet=rs"),  # nothing to hide
        ("mongodb://u@h/db?password=x&w=1", "mongodb://u@h/db?password=****&w=1"),
        ("https://s3?X-Amz-Signature=abc", "https://s3?X-Amz-Signature=****"),
        ("sqlite:////srv/a.db", "sqlite:////srv/a.db"),
    ],
)
def test_mask_url(given: str, shown: str) -> None:
    assert mask_url(given) == shown


@dataclass(frozen=True)
class Demo:
    """A table of two settings, as a new one would be added: one field each."""

    password: str = setting(TEXT, "", "what opens it", group="g", secret=True)
    retries: int = setting(COUNT.where(lambda n: n > 0, "above 0"), "3", "tries (100 %)", group="g")


def test_a_new_setting_is_one_field_and_a_secret_is_masked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    table = Table(Demo, env_prefix="DEMO_", groups={"g": "demo"})
    parser = OneLineParser(prog="demo")
    table.add_arguments(parser)
    loaded = table.load(parser, ["--retries", "5"], {"DEMO_PASSWORD": "open sesame"})
    assert loaded.settings == Demo(password="open sesame", retries=5)
    assert "open sesame" not in describe(table, loaded)
    assert describe(table, loaded).splitlines()[0].split() == [
        "--password",
        "****",
        "environment",
        "DEMO_PASSWORD",
    ]
    assert "| `--retries N` | `DEMO_RETRIES` | `3` | tries (100 %) |" in markdown(table)
    assert "tries (100 %) [DEMO_RETRIES; default: 3]" in " ".join(parser.format_help().split())
    with pytest.raises(SystemExit):
        table.load(parser, [], {"DEMO_RETRIES": "0"})
    assert capsys.readouterr().err == (
        "demo: error: DEMO_RETRIES (the variable of --retries): '0' is not above 0; "
        "accepted: a whole number, above 0\n"
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10), ("5m", 300), ("1h", 3600), ("250ms", 0.25), ("1.5", 1.5), ("1h30m", 5400),
     ("7d", 604800), (" 2 ", 2), ("0.5s", 0.5), (".5", 0.5)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [("1048576", 1048576), ("512MiB", 512 * 1024**2), ("1.5GiB", 3 * 1024**3 // 2),
     ("10G", 10 * 1024**3), ("1 kb", 1024), ("2TB", 2 * 1024**4), ("0.5k", 512)],
)  # fmt: skip
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_the_command_line_of_a_flag_and_a_variable_agree() -> None:
    """The values of the issue: each was a traceback or a refusal from one side only."""
    env = {
        "ASSET_SERVICE_SHUTDOWN_GRACE": "10s",
        "ASSET_SERVICE_LOG_LEVEL": "warning",
        "ASSET_SERVICE_MAX_UPLOAD_BYTES": "1.5G",
        "ASSET_SERVICE_DIRECT_IO": "no",
    }
    loaded = read_command_line([], env)
    argv = ["--shutdown-grace", "10s", "--log-level", "warning", "--max-upload-bytes", "1.5G"]
    assert loaded.settings == read_command_line([*argv, "--no-direct-io"], {}).settings
    assert loaded.settings.shutdown_grace_seconds == 10.0
    assert loaded.settings.max_upload_bytes == 3 * 1024**3 // 2
    assert loaded.settings.log_level == "WARNING" and loaded.settings.direct_io is False


# As real processes: what an operator sees, with nothing of pytest's in between.
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ASSET_SERVICE_SHUTDOWN_GRACE", "10x"),
        ("ASSET_SERVICE_LOG_LEVEL", "TRACE"),
        ("ASSET_SERVICE_MAX_UPLOAD_BYTES", "1.5Q"),
        ("ASSET_SERVICE_DIRECT_IO", "maybe"),
        ("ASSET_SERVICE_SHARE_GROUP", "no-such-group-anywhere"),
        ("ASSET_SERVICE_DISK_RESERVE_BYTES", "1k"),
    ],
)
def test_a_bad_variable_stops_the_real_command_in_one_line(variable: str, value: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "asset_service", "--listen", "127.0.0.1:0"],
        env={variable: value, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and variable in lines[0] and repr(value) in lines[0], done.stderr
    assert "accepted: " in lines[0] and done.stdout == ""


def test_the_real_command_prints_its_config_without_reading_files(tmp_path: Path) -> None:
    """--print-config names the token secret file but never opens it: a FIFO there would
    block an open until the timeout."""
    secret = tmp_path / "task-secret"
    os.mkfifo(secret)
    done = subprocess.run(
        [sys.executable, "-m", "asset_service", "--print-config", "--storage-root", str(tmp_path)],
        env={
            "ASSET_SERVICE_TOKEN_SECRET_FILE": str(secret),
            "ASSET_SERVICE_DATABASE_URL": "mongodb://orch:hunter2@db/assets",
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "hunter2" not in done.stdout and "mongodb://orch:****@db/assets" in done.stdout
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()[1:]}
    assert rows["--token-secret-file"] == [
        str(secret),
        "environment",
        "ASSET_SERVICE_TOKEN_SECRET_FILE",
    ]
    assert not (tmp_path / "assets.db").exists(), "it did not start"
    version = subprocess.run(
        [sys.executable, "-m", "asset_service", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert version.returncode == 0 and version.stdout.startswith("asset-service ")
