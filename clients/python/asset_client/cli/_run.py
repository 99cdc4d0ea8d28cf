"""`asset run`: a command-line module as a task, on any machine."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from asset_client._blobcache import default_cache_dir
from asset_client._leases import LeaseKeeper
from asset_client.cli import _exit, _params, _render
from asset_client.cli._app import Settings, cli
from asset_client.cli._supervise import Interrupted, Signals, run_command
from asset_client.cli._task import (
    NoOutput,
    Task,
    check_placeholders,
    expand,
    lost_promise,
    parse_output,
    placed,
)
from asset_client.cli._workdir import Workdir
from asset_client.client import AssetClient
from asset_client.errors import AssetServiceError

log = logging.getLogger(__name__)


@cli.command(context_settings={"allow_interspersed_args": False})
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="KEY=ASSET_ID",
    help="An input of the task; repeat for more.",
)
@_params.config_option()
@click.option(
    "--output",
    "outputs",
    multiple=True,
    metavar="NAME=ASSET_ID[:PATH]",
    help="A promise of the task, fulfilled with the file the command writes at PATH "
    "(default: $ASSET_WORKDIR/outputs/NAME); repeat for more.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Work here, and keep it (default: a fresh folder in the cache, removed at the end); "
    "an output file a run before left in it is refused.",
)
@click.option("--keep-workdir", is_flag=True, help="Keep the default folder (its path is logged).")
@click.option(
    "--cache-dir",
    envvar="ASSET_SERVICE_CACHE_DIR",
    show_envvar=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where inputs are cached by sha256 (default: ~/.cache/asset-service).",
)
@click.option(
    "--wait-timeout",
    type=_params.POSITIVE,
    help="Seconds to wait for the inputs (default: as long as it takes).",
)
@click.option(
    "--grace",
    type=_params.POSITIVE,
    default=10.0,
    show_default=True,
    help="Seconds the command has to end after a signal is passed on, then SIGKILL.",
)
@click.option(
    "--stderr-tail",
    type=click.IntRange(min=0, max=100_000),
    default=2000,
    show_default=True,
    help="Characters of the command's stderr quoted when a promise is failed.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bars on stderr (default: only when stderr is a terminal).",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def run(
    settings: Settings,
    inputs: tuple[str, ...],
    config_text: str | None,
    outputs: tuple[str, ...],
    workdir: Path | None,
    keep_workdir: bool,
    cache_dir: Path | None,
    wait_timeout: float | None,
    grace: float,
    stderr_tail: int,
    progress: bool | None,
    command: tuple[str, ...],
) -> int:
    """Run COMMAND as a task: wait for its inputs, bring them to this machine, run it,
    and fulfil its promises with the files it wrote, or fail them saying why.

    \b
    1. Checks each --output promise is PENDING and keeps its lease alive until the end.
    2. Waits for the --input assets; one that FAILED or was deleted fails the promises.
    3. Downloads FILE inputs into the cache (sha256 checked; one already cached is not
       downloaded again), writes VALUEs as .txt/.json/.bin files, and writes
       input_data.json with these local paths: {"inputs": {KEY: path},
       "config_params": --config}.
    4. Runs COMMAND in its own process group, in the current folder. These words in its
       arguments are replaced: {manifest} (input_data.json), {workdir}, {output} (the only
       output's file), {output:NAME}, {input:KEY}; the environment has ASSET_MANIFEST,
       ASSET_WORKDIR, ASSET_OUTPUT_<NAME> (and ASSET_OUTPUT with one output). Its stdout and
       stderr are ours.
    5. Exit 0: each output file is uploaded to fulfil its promise (a VALUE promise gets
       the file's content). Otherwise, or on SIGINT/SIGTERM/SIGHUP (passed on to the
       command; SIGKILL after --grace), or if a promise is lost meanwhile, every promise
       not delivered is failed with the exit status and the tail of stderr.

    Exit status: the command's (128 + N if killed by signal N); when the command did not
    run or succeeded but the task failed, that of the step that failed (1 local, 10 +
    the gRPC code, 127 command not found, 126 not executable).

    \b
      asset run --input text=$IN --output sorted=$OUT -- sort -o {output} {input:text}
      asset run --input video=$V --output frames=$F --config '{"fps": 25}' \\
          -- python extract.py {manifest} {output:frames}
    """
    mappings = _params.mappings(inputs, "--input")
    config = _params.config(config_text)
    specs = [parse_output(s) for s in outputs]
    if len({o.name for o in specs}) != len(specs) or len({o.asset_id for o in specs}) != len(specs):
        raise click.BadParameter(
            "each output needs its own NAME and ASSET_ID", param_hint="--output"
        )
    for out in specs:
        # A --workdir is kept: a run before may have left its default output files there.
        path = out.path if workdir is None else placed(out, workdir).path
        if (out.explicit or workdir is not None) and path.exists():
            raise click.BadParameter(
                f"{path} exists already; remove it so that a stale file is never delivered",
                param_hint="--output",
            )
    check_placeholders(command, specs, mappings)
    plan = Plan(
        mappings=mappings,
        config=config,
        command=tuple(command),
        cache_root=(cache_dir or default_cache_dir()).absolute(),
        workdir=workdir,
        keep_workdir=keep_workdir,
        wait_timeout=wait_timeout,
        grace=grace,
        tail_chars=stderr_tail,
    )
    # Two channels: the transfers' one is closed to cut them short on a signal; the
    # other keeps the leases and fails the promises.
    with (
        Signals() as signals,
        settings.connect() as client,
        settings.connect() as work,
        _render.Transfers(progress, "asset run") as bars,
    ):
        task = Task(client, specs, signals, bars.callback, {}, set())
        try:
            return _run_task(task, plan, work)
        except Interrupted as exc:
            # Between the steps (checking the promises, making the folder).
            task.fail_all(f"asset run {exc}")
            click.echo(f"asset run: {exc}", err=True)
            return _exit.for_signal(exc.signum)


@dataclass(frozen=True)
class Plan:
    """What the command line asked for, checked."""

    mappings: dict[str, str]
    config: dict[str, Any]
    command: tuple[str, ...]
    cache_root: Path
    workdir: Path | None
    keep_workdir: bool
    wait_timeout: float | None
    grace: float
    tail_chars: int


def _run_task(task: Task, plan: Plan, work: AssetClient) -> int:
    """Promises checked and kept alive for the whole run, in a working folder."""
    task.check_promises()
    with contextlib.ExitStack() as stack:
        leases = {
            o.asset_id: stack.enter_context(task.client.keep_lease(o.asset_id))
            for o in task.outputs
        }
        folder = stack.enter_context(Workdir(plan.cache_root, plan.workdir, plan.keep_workdir))
        if folder.keep:
            log.info("working in %s", folder.path)
        task.outputs = [placed(o, folder.path) for o in task.outputs]
        task.signals.check()
        return _steps(task, plan, work, folder.path, leases)


def _steps(
    task: Task, plan: Plan, work: AssetClient, workdir: Path, leases: dict[str, LeaseKeeper]
) -> int:
    """Inputs, command, outputs; every way out fails what was not delivered."""
    log.info("waiting for %d input(s)", len(set(plan.mappings.values())))
    try:
        manifest = task.signals.interruptibly(
            lambda: work.materialize(
                plan.mappings,
                plan.config,
                dest=workdir / "inputs",
                cache_dir=plan.cache_root,
                progress=task.progress,
                timeout=plan.wait_timeout,
            ),
            work.close,
        )
    except Interrupted as exc:
        task.fail_all(f"asset run {exc} while waiting for its inputs", leases)
        return _exit.for_signal(exc.signum)
    except AssetServiceError as exc:
        task.fail_all(f"inputs not available: {exc.details}", leases)
        raise
    (workdir / "outputs").mkdir(exist_ok=True)
    argv = expand(plan.command, manifest.path, workdir, task.outputs, dict(manifest.entries))
    env = dict(os.environ)
    env.update(ASSET_MANIFEST=str(manifest.path), ASSET_WORKDIR=str(workdir))
    for out in task.outputs:
        env[f"ASSET_OUTPUT_{out.name}"] = str(out.path)
        if len(task.outputs) == 1:
            env["ASSET_OUTPUT"] = str(out.path)
    try:
        outcome = run_command(
            argv,
            env,
            task.signals,
            grace=plan.grace,
            tail_chars=plan.tail_chars,
            should_stop=lambda: lost_promise(leases),
        )
    except OSError as exc:
        reason = f"cannot run {plan.command[0]!r}: {exc.strerror}"
        task.fail_all(reason, leases)
        click.echo(f"asset run: {reason}", err=True)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    if not outcome.ok:
        task.fail_all(outcome.describe(), leases)
        summary = outcome.describe().split("; stderr:")[0].removeprefix("asset run ")
        click.echo(f"asset run: {summary}", err=True)
        return outcome.exit_status
    try:
        task.signals.interruptibly(lambda: task.deliver(work), work.close)
    except Interrupted as exc:
        task.fail_all(f"asset run {exc} while delivering the outputs", leases)
        return _exit.for_signal(exc.signum)
    except NoOutput as exc:
        task.fail_all(f"the command exited 0 but {exc}", leases)
        click.echo(f"asset run: the command exited 0 but {exc}", err=True)
        return _exit.LOCAL
    except (AssetServiceError, OSError, ValueError) as exc:
        task.fail_all(f"delivering the outputs failed: {exc}", leases)
        raise
    return _exit.OK
