"""The --workers supervisor: a bounded stop, and what each worker is told."""

from __future__ import annotations

import logging
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asset_service import supervisor
from asset_service.config import load_settings

# A child that ignores SIGTERM (and SIGINT) and would otherwise sleep a minute.
STUBBORN = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
    "time.sleep(60)\n"
)


def _stubborn() -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"  # its handlers are installed
    return proc


def test_stop_kills_workers_that_ignore_sigterm_after_grace_and_slack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(supervisor, "STOP_SLACK_SECONDS", 0.5)
    settings = load_settings(["--storage-root", str(tmp_path), "--shutdown-grace", "1s"], {})
    procs = [_stubborn(), _stubborn()]
    try:
        sup = supervisor.Supervisor([], settings, 2)
        sup.workers = [supervisor._Worker(i, proc=p) for i, p in enumerate(procs)]
        started = time.monotonic()
        with caplog.at_level(logging.ERROR, logger=supervisor.__name__):
            status = sup._stop()
        took = time.monotonic() - started
    finally:
        for proc in procs:  # whatever happened above, no child outlives the test
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert all(p.returncode == -9 for p in procs), [p.returncode for p in procs]
    assert 1.4 <= took < 5, f"stopped in {took:.1f}s: grace 1 s + slack 0.5 s, then SIGKILL"
    assert status == 1, "workers killed is not a clean stop"
    assert sum("did not stop in time; killing it" in r.message for r in caplog.records) == 2


def test_kill_all_ends_every_live_worker_at_once() -> None:
    procs = [_stubborn(), _stubborn()]
    try:
        sup = supervisor.Supervisor([], load_settings([], {}), 2)
        sup.workers = [supervisor._Worker(i, proc=p) for i, p in enumerate(procs)]
        started = time.monotonic()
        sup._kill_all()
        assert time.monotonic() - started < 3
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert all(p.returncode == -9 for p in procs)


@pytest.mark.parametrize(
    ("listen", "index", "expected"),
    [
        ("127.0.0.1:9464", 0, "127.0.0.1:9464"),
        ("127.0.0.1:9464", 3, "127.0.0.1:9467"),
        ("[::1]:9000", 1, "[::1]:9001"),
        ("0.0.0.0:0", 2, "0.0.0.0:0"),
    ],
)
def test_each_worker_serves_metrics_on_its_own_port(listen: str, index: int, expected: str) -> None:
    assert supervisor._metrics_of(listen, index) == expected


@pytest.mark.parametrize("bad", ["0", "-1", "-3", "1.5", "many", ""])
def test_workers_zero_or_below_is_refused(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        load_settings(["--workers", bad], {})
    assert stopped.value.code == 2
    assert "--workers" in capsys.readouterr().err


def test_workers_from_the_environment() -> None:
    assert load_settings([], {"ASSET_SERVICE_WORKERS": "3"}).workers == 3
    assert load_settings([], {"ASSET_SERVICE_WORKERS": "auto"}).workers == 0  # one per core
    assert supervisor.worker_count(load_settings(["--workers", "auto"], {})) >= 1


def test_more_workers_than_cores_is_allowed_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(supervisor, "cores", lambda: 2)
    settings = load_settings(["--workers", "3", "--database-url", "sqlite:///x.db"], {})
    with caplog.at_level(logging.WARNING, logger=supervisor.__name__):
        supervisor.check(settings, 2)
    assert not caplog.records  # as many as the cores: nothing to say
    with caplog.at_level(logging.WARNING, logger=supervisor.__name__):
        supervisor.check(settings, 3)
    (record,) = caplog.records
    assert "--workers 3 is more than the 2 core(s)" in record.getMessage()


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, None),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        # cgroup v1 (hosts and runtimes still on it): 'auto' ignored the quota there.
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),
    ],
)
def test_the_cpu_quota_of_cgroup_v2_or_v1(
    tmp_path: Path, files: dict[str, str], expected: float | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert supervisor._cpu_quota(tmp_path) == expected
    unlimited = supervisor.cores(tmp_path / "none")  # the CPU affinity alone
    limited = min(unlimited, math.ceil(expected)) if expected else unlimited
    assert supervisor.cores(tmp_path) == limited


def test_a_stop_while_the_workers_start_exits_zero(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGTERM before every worker served (a slow first start: migrations, recovery)
    ended the supervisor with status 2, the status of a bad setting: a service manager's
    stop was reported as a failure."""
    spawned: list[subprocess.Popen[bytes]] = []

    def spawn(self: supervisor.Supervisor, worker: supervisor._Worker) -> None:
        worker.proc = _stubborn()  # never says it is ready
        spawned.append(worker.proc)

    def wait(self: supervisor.Supervisor, timeout: float) -> None:
        self.signals.append(signal.SIGTERM)  # the stop arrives while it waits

    monkeypatch.setattr(supervisor.Supervisor, "_spawn", spawn)
    monkeypatch.setattr(supervisor.Supervisor, "_wait", wait)
    settings = load_settings(["--listen", "127.0.0.1:0", "--database-url", "memory://"], {})
    monkeypatch.setattr(supervisor, "check", lambda settings, count: None)
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
    before = {sig: signal.getsignal(sig) for sig in handled}
    try:
        with caplog.at_level(logging.INFO, logger=supervisor.__name__):
            status = supervisor.Supervisor([], settings, 2).run()
    finally:
        signal.set_wakeup_fd(-1)  # run() installs its own: pytest's come back
        for sig, handler in before.items():
            signal.signal(sig, handler)
        for proc in spawned:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert status == 0
    assert "stopped while starting" in caplog.text
    assert all(p.returncode == -9 for p in spawned), "its _kill_all ended the worker"
