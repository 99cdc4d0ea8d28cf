"""Settings from flags and environment; label, task id and file-name validation."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from asset_service.config import load_settings, parse_size
from asset_service.domain.errors import InvalidArgument
from asset_service.domain.models import (
    parse_asset_id,
    safe_file_name,
    validate_label,
    validate_media_type,
    validate_task_id,
)
from asset_service.server import open_storage
from asset_service.storage.local import LocalStorage


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1048576", 1048576), ("512MiB", 512 * 1024**2), ("10G", 10 * 1024**3), ("1 kb", 1024)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_parse_size_rejects_garbage() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a size"):
        parse_size("ten gigs")


def test_settings_from_env_and_flags(tmp_path: Path) -> None:
    env = {
        "ASSET_SERVICE_LISTEN": "0.0.0.0:9000",
        "ASSET_SERVICE_STORAGE_ROOT": str(tmp_path / "store"),
        "ASSET_SERVICE_IMPORT_ROOTS": f"{tmp_path / 'a'}:{tmp_path / 'b'}",
        "ASSET_SERVICE_MAX_UPLOAD_BYTES": "2MiB",
        "ASSET_SERVICE_LOG_LEVEL": "debug",
    }
    s = load_settings([], env)
    assert s.listen == "0.0.0.0:9000"
    assert s.storage_root == (tmp_path / "store").resolve()
    assert s.database_url == f"sqlite:///{(tmp_path / 'store').resolve()}/assets.db"
    assert s.import_roots == ((tmp_path / "a").resolve(), (tmp_path / "b").resolve())
    assert s.max_upload_bytes == 2 * 1024**2
    assert s.log_level == "DEBUG"
    assert s.manifest_ttl_seconds == 7 * 24 * 3600
    flags = load_settings(["--listen", "127.0.0.1:0", "--import-root", str(tmp_path)], env)
    assert flags.listen == "127.0.0.1:0"  # a flag wins over the variable
    assert flags.import_roots == (tmp_path.resolve(),)


def test_scrub_settings_default_off_and_refusals() -> None:
    s = load_settings([], {})
    assert (s.scrub_rate_mib, s.scrub_interval_seconds) == (8.0, 86400.0)
    off = load_settings([], {"ASSET_SERVICE_SCRUB_RATE": "0", "ASSET_SERVICE_SCRUB_INTERVAL": "60"})
    assert (off.scrub_rate_mib, off.scrub_interval_seconds) == (0.0, 60.0)
    assert load_settings(["--scrub-rate", "2.5"], {}).scrub_rate_mib == 2.5
    for argv in (
        ["--scrub-rate", "-1"],
        ["--scrub-rate", "nan"],
        ["--scrub-rate", "inf"],
        ["--scrub-interval", "0"],
        ["--scrub-interval", "-5"],
    ):
        with pytest.raises(SystemExit) as info:
            load_settings(argv, {})
        assert info.value.code == 2, argv


@pytest.mark.parametrize(
    ("argv", "env", "direct"),
    [
        ([], {}, False),  # through the page cache, written back early (storage/sink.py)
        (["--direct-io"], {}, True),
        ([], {"ASSET_SERVICE_DIRECT_IO": "1"}, True),
        (["--no-direct-io"], {"ASSET_SERVICE_DIRECT_IO": "1"}, False),  # the flag wins
        (["--direct-io"], {"ASSET_SERVICE_DIRECT_IO": "off"}, True),
    ],
)
def test_direct_io_setting_reaches_the_local_storage(
    tmp_path: Path, argv: list[str], env: dict[str, str], direct: bool
) -> None:
    settings = load_settings(["--storage-root", str(tmp_path), *argv], env)
    assert settings.direct_io is direct
    storage, _ = open_storage(settings)
    assert isinstance(storage, LocalStorage) and storage.direct_io is direct


@pytest.mark.parametrize("label", ["", " ", "a/b", "..", ".", "x\\y", "tab\there", "x" * 256])
def test_bad_labels(label: str) -> None:
    with pytest.raises(InvalidArgument, match="label"):
        validate_label(label)


def test_good_labels_and_safe_names() -> None:
    assert validate_label("Input Video (final).mp4") == "Input Video (final).mp4"
    assert safe_file_name("Input Video (final).mp4") == "Input_Video_final_.mp4"
    assert safe_file_name("...") == "content"
    assert safe_file_name("ünïcode.txt") == "n_code.txt"
    assert "/" not in safe_file_name("a" * 300) and len(safe_file_name("a" * 300)) <= 120


@pytest.mark.parametrize("task", ["", "../x", "a/b", "-x", "x" * 129, "a b"])
def test_bad_task_ids(task: str) -> None:
    with pytest.raises(InvalidArgument, match="task_id"):
        validate_task_id(task)


def test_ids_and_media_types() -> None:
    raw = "5B0E4F0E-0000-4000-8000-000000000000"
    assert parse_asset_id(raw) == raw.lower()
    with pytest.raises(InvalidArgument, match="not a UUID"):
        parse_asset_id("5b0e4f0e")
    assert validate_media_type("", "text/plain") == "text/plain"
    assert validate_media_type("text/plain; charset=utf-8", "") == "text/plain; charset=utf-8"
    with pytest.raises(InvalidArgument, match="MIME"):
        validate_media_type("text", "")


def test_database_urls() -> None:
    from asset_service.store import open_store
    from asset_service.store.sqlite import SqliteStore

    for url in ("sqlite:////data/assets.db", "sqlite:///data/assets.db"):
        store = open_store(url)
        assert isinstance(store, SqliteStore) and store.path == Path("/data/assets.db")
    with pytest.raises(InvalidArgument, match="absolute path"):
        open_store("sqlite://relative.db")
    with pytest.raises(InvalidArgument, match="not supported"):
        open_store("postgres://x")


def test_every_flag_is_in_the_readme_table_with_its_variable() -> None:
    """The README's flag table is written by hand: it must name every option of --help,
    with the environment variable that sets it."""
    from asset_service.config import ENV_PREFIX, build_parser

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `--")]
    parser = build_parser({})
    flags = {
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and not option.startswith("--no-") and option != "--help"
    }
    for flag in sorted(flags):
        row = next((r for r in rows if f"`{flag}`" in r or f"`{flag} " in r), None)
        assert row is not None, f"{flag} is missing from README.md's flag table"
        name = ENV_PREFIX + flag[2:].upper().replace("-", "_")
        short = "…_" + name.removeprefix(ENV_PREFIX)
        assert name in row or short in row, f"{flag}'s row does not name {name}"


# Every interval and timeout: zero would spin a loop (the health check at 90-99 % CPU, and
# a stop that never ended) or end every call at once.
INTERVALS = [
    ("--shutdown-grace", "SHUTDOWN_GRACE"),
    ("--health-interval", "HEALTH_INTERVAL"),
    ("--lease-check-interval", "LEASE_CHECK_INTERVAL"),
    ("--max-lease-seconds", "MAX_LEASE_SECONDS"),
    ("--upload-idle-timeout", "UPLOAD_IDLE_TIMEOUT"),
    ("--watch-stall-timeout", "WATCH_STALL_TIMEOUT"),
    ("--read-stall-timeout", "READ_STALL_TIMEOUT"),
]


@pytest.mark.parametrize("value", ["0", "-1", "-0.5", "nan", "inf", "soon"])
@pytest.mark.parametrize(("flag", "variable"), INTERVALS)
def test_intervals_and_timeouts_below_or_at_zero_are_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], flag: str, variable: str, value: str
) -> None:
    for argv, env, named in (
        ([flag, value], {}, flag),
        ([], {f"ASSET_SERVICE_{variable}": value}, f"ASSET_SERVICE_{variable}"),
    ):
        with pytest.raises(SystemExit) as exited:
            load_settings(argv, env)
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, f"one line, not the usage: {err!r}"
        assert flag in err and named in err and repr(value) in err


@pytest.mark.parametrize(
    ("flag", "variable"), [("--orphan-grace", "ORPHAN_GRACE"), ("--manifest-ttl", "MANIFEST_TTL")]
)
def test_ages_may_be_zero_but_not_negative(
    capsys: pytest.CaptureFixture[str], flag: str, variable: str
) -> None:
    assert load_settings([flag, "0"], {}) is not None  # 0: sweep at once / keep forever
    with pytest.raises(SystemExit):
        load_settings([], {f"ASSET_SERVICE_{variable}": "-1"})
    assert f"ASSET_SERVICE_{variable}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        # Accepted, it overflowed the stop's hard deadline (a thread's wait): a traceback
        # at SIGTERM, and no bound on the stop.
        (["--shutdown-grace", "1000000000d"], "'1000000000d' is longer than 100 years"),
        (["--orphan-grace", "40000d"], "'40000d' is longer than 100 years"),
        (["--max-lease-seconds", "36601d"], "'36601d' is longer than 100 years"),
        # Accepted, every FailAsset (or fulfilment) the rule matched was INTERNAL: its
        # expiry date overflowed.
        (
            ["--expiry-rule", "failed,status=FAILED,1000000000000d"],
            "AFTER '1000000000000d' is longer than 100 years",
        ),
    ],
)
def test_durations_past_a_hundred_years_are_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], said: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        load_settings(argv, {})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and argv[0] in err and said in err, err
    assert load_settings([argv[0], argv[1].replace(argv[1].rsplit(",", 1)[-1], "36500d")], {})


@pytest.mark.parametrize(
    "flag",
    [
        "--max-streams-per-connection",  # was a traceback: grpc's channel argument overflowed
        "--retention-sweep-limit",  # was a sweep failing every time: SQLite's INTEGER overflowed
        "--mongo-write-queue",
        "--workers",
    ],
)
def test_counts_past_a_c_int_are_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        load_settings([flag, "99999999999"], {})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag in err and "is more than 2147483647" in err, err
    assert load_settings([flag, "2147483647"], {})


def test_a_flag_wins_over_a_bad_variable_and_variables_are_typed() -> None:
    env = {"ASSET_SERVICE_HEALTH_INTERVAL": "0", "ASSET_SERVICE_UPLOAD_IDLE_TIMEOUT": "7.5"}
    settings = load_settings(["--health-interval", "0.5"], env)
    assert settings.health_interval_seconds == 0.5
    assert settings.upload_idle_timeout_seconds == 7.5
    env = {"ASSET_SERVICE_MAX_CONCURRENT_UPLOADS": "9", "ASSET_SERVICE_WATCH_BUFFER_BYTES": "2MiB"}
    settings = load_settings([], env)
    assert settings.max_concurrent_uploads == 9 and settings.watch_buffer_bytes == 2 * 1024**2


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ASSET_SERVICE_MAX_CONCURRENT_UPLOADS": "0"}, "--max-concurrent-uploads"),
        ({"ASSET_SERVICE_WATCH_BUFFER_BYTES": "lots"}, "ASSET_SERVICE_WATCH_BUFFER_BYTES"),
        ({"ASSET_SERVICE_DIRECT_IO": "maybe"}, "ASSET_SERVICE_DIRECT_IO"),
    ],
)
def test_a_bad_variable_is_one_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str], env: dict[str, str], named: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        load_settings([], env)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert named in err and err.count("\n") == 1 and "Traceback" not in err


def test_every_variable_the_clients_read_is_known_to_the_server() -> None:
    """The server warns of ASSET_SERVICE_* variables it does not know; the clients' own,
    set beside it in one container, must not be among them."""
    from asset_service.config import unknown_variables

    root = Path(__file__).resolve().parents[2] / "clients"
    sources = [
        *root.glob("python/asset_client/**/*.py"),
        *(p for p in root.glob("go/**/*.go") if not p.name.endswith("_test.go")),
        *root.glob("typescript/src/**/*.ts"),
    ]
    read = set()
    for source in sources:
        if "testserver" in source.parts:
            continue  # the Go tests' harness, not a client
        read |= set(re.findall(r"\bASSET_SERVICE_[A-Z0-9_]*[A-Z0-9]\b", source.read_text()))
    assert len(read) >= 8, read
    assert unknown_variables(dict.fromkeys(read, "x")) == []
