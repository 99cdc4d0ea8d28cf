"""`asset run`: a command-line module as a task, on any machine."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from asset_client._blobcache import default_cache_dir
from asset_client._leases import LeaseKeeper
from asset_client.cli import _exit, _params, _render
from asset_client.cli._app import Settings, cli
from asset_client.cli._supervise import Interrupted, Outcome, Signals, run_command
from asset_client.cli._workdir import Workdir
from asset_client.client import AssetClient
from asset_client.errors import AssetServiceError, FailedPreconditionError
from asset_client.models import Asset, AssetStatus, AssetType, Manifest, Value, ValueKind

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLACEHOLDER = re.compile(r"\{(manifest|workdir|output|output:[^{}]*|input:[^{}]*)\}")
MAX_VALUE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Output:
    name: str
    asset_id: str
    path: Path
    explicit: bool


def parse_output(spec: str) -> Output:
    """NAME=ASSET_ID[:PATH]; without PATH the file is <workdir>/outputs/NAME."""
    name, sep, rest = spec.partition("=")
    asset_id, colon, path = rest.partition(":")
    if not sep or not _NAME.fullmatch(name) or not asset_id or (colon and not path):
        raise click.BadParameter(
            f"{spec!r}: expected NAME=ASSET_ID[:PATH], NAME a word ([A-Za-z_][A-Za-z0-9_]*)",
            param_hint="--output",
        )
    if colon:
        return Output(name, asset_id, Path(path).absolute(), True)
    return Output(name, asset_id, Path("outputs", name), False)


def placed(out: Output, workdir: Path) -> Output:
    """The output with its file's absolute path (a default one is in the workdir)."""
    return out if out.explicit else dataclasses.replace(out, path=workdir / out.path)


def expand(
    argv: Sequence[str],
    manifest: Path,
    workdir: Path,
    outputs: Sequence[Output],
    inputs: dict[str, Path],
) -> list[str]:
    """The command with its placeholders filled in (anything else in braces is left)."""
    by_name = {o.name: o for o in outputs}

    def fill(match: re.Match[str]) -> str:
        word = match.group(1)
        if word == "manifest":
            return str(manifest)
        if word == "workdir":
            return str(workdir)
        if word == "output":
            (only,) = outputs
            return str(only.path)
        kind, _, name = word.partition(":")
        return str(by_name[name].path if kind == "output" else inputs[name])

    return [_PLACEHOLDER.sub(fill, arg) for arg in argv]


def check_placeholders(
    argv: Sequence[str], outputs: Sequence[Output], inputs: dict[str, str]
) -> None:
    for arg in argv:
        for match in _PLACEHOLDER.finditer(arg):
            word = match.group(1)
            kind, _, name = word.partition(":")
            if word == "output" and len(outputs) != 1:
                raise click.UsageError(
                    f"{{output}} needs exactly one --output (there are {len(outputs)}); "
                    "use {output:NAME}"
                )
            if kind == "output" and name and name not in {o.name for o in outputs}:
                raise click.UsageError(f"{match.group(0)}: no --output named {name!r}")
            if kind == "input" and name not in inputs:
                raise click.UsageError(f"{match.group(0)}: no --input named {name!r}")


@dataclass
class Task:
    """One run: promises checked and kept, inputs made local, command run, outputs sent."""

    client: AssetClient
    outputs: list[Output]
    signals: Signals
    progress: bool | Callable[..., object]
    promised: dict[str, Asset]
    settled: set[str]

    def check_promises(self) -> None:
        for out in self.outputs:
            asset = self.client.get(out.asset_id)
            if asset.status is not AssetStatus.PENDING:
                raise FailedPreconditionError(
                    f"output {out.name}: asset {asset.id} is {asset.status.value}, not PENDING"
                )
            self.promised[out.asset_id] = asset

    def fail_all(self, reason: str) -> None:
        """Fail every promise not delivered yet (best effort: one lost meanwhile is left)."""
        with self.signals.deferred():
            for out in self.outputs:
                if out.asset_id in self.settled:
                    continue
                self.settled.add(out.asset_id)
                try:
                    self.client.fail(out.asset_id, reason)
                    log.info("output %s (%s) failed: %s", out.name, out.asset_id, reason)
                except AssetServiceError as exc:
                    log.warning("could not fail output %s (%s): %s", out.name, out.asset_id, exc)

    def deliver(self) -> None:
        """Upload each output file to fulfil its promise (a VALUE promise gets the content)."""
        for out in self.outputs:
            if not out.path.is_file():
                raise _NoOutput(f"wrote no file at {out.path} (output {out.name})")
        for out in self.outputs:
            path = out.path
            promise = self.promised[out.asset_id]
            if promise.type is AssetType.VALUE:
                self.client.fulfill(out.asset_id, value=_value_of(path, promise))
            else:
                self.client.upload(
                    path,
                    pending_asset_id=out.asset_id,
                    progress=self.progress,  # type: ignore[arg-type]
                )
            self.settled.add(out.asset_id)
            log.info("output %s delivered to %s", out.name, out.asset_id)


class _NoOutput(Exception):
    """The command exited 0 without writing an output file."""


def _value_of(path: Path, promise: Asset) -> Value:
    """A VALUE promise's content from a file: JSON, text or bytes after its media type."""
    size = path.stat().st_size
    if size > MAX_VALUE_BYTES:
        raise ValueError(f"{path} holds {size} bytes; a VALUE holds at most {MAX_VALUE_BYTES}")
    data = path.read_bytes()
    media = promise.media_type.split(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        text = data.decode("utf-8")
        json.loads(text)
        return Value(ValueKind.JSON, text)
    if media.startswith("text/"):
        return Value.of_text(data.decode("utf-8"))
    return Value.of_bytes(data)


def _lost(leases: dict[str, LeaseKeeper]) -> str | None:
    for asset_id, lease in leases.items():
        if lease.lost is not None:
            return f"the promise {asset_id} was lost ({lease.lost})"
    return None


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
    help="Work here, and keep it (default: a fresh folder in the cache, removed at the end).",
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
        if out.explicit and out.path.exists():
            raise click.BadParameter(
                f"{out.path} exists already; remove it so that a stale file is never delivered",
                param_hint="--output",
            )
    check_placeholders(command, specs, mappings)
    cache_root = (cache_dir or default_cache_dir()).absolute()
    with Signals() as signals, settings.connect() as client:
        task = Task(client, specs, signals, _render.progress(progress), {}, set())
        task.check_promises()
        with contextlib.ExitStack() as stack:
            leases = {o.asset_id: stack.enter_context(client.keep_lease(o.asset_id)) for o in specs}
            folder = stack.enter_context(Workdir(cache_root, workdir, keep_workdir))
            if folder.keep:
                log.info("working in %s", folder.path)
            task.outputs = [placed(o, folder.path) for o in specs]
            return _run_task(
                task,
                folder.path,
                mappings,
                config,
                cache_root,
                wait_timeout,
                command,
                grace,
                stderr_tail,
                leases,
            )


def _run_task(
    task: Task,
    workdir: Path,
    mappings: dict[str, str],
    config: dict[str, object],
    cache_root: Path,
    wait_timeout: float | None,
    command: Sequence[str],
    grace: float,
    tail_chars: int,
    leases: dict[str, LeaseKeeper],
) -> int:
    try:
        manifest: Manifest = task.client.materialize(
            mappings,
            config,
            dest=workdir / "inputs",
            cache_dir=cache_root,
            progress=task.progress,  # type: ignore[arg-type]
            timeout=wait_timeout,
        )
    except Interrupted as exc:
        task.fail_all(f"asset run {exc} while waiting for its inputs")
        return _exit.for_signal(exc.signum)
    except AssetServiceError as exc:
        task.fail_all(f"inputs not available: {exc.details}")
        raise
    (workdir / "outputs").mkdir(exist_ok=True)
    argv = expand(command, manifest.path, workdir, task.outputs, dict(manifest.entries))
    env = dict(os.environ)
    env.update(ASSET_MANIFEST=str(manifest.path), ASSET_WORKDIR=str(workdir))
    for out in task.outputs:
        env[f"ASSET_OUTPUT_{out.name}"] = str(out.path)
        if len(task.outputs) == 1:
            env["ASSET_OUTPUT"] = str(out.path)
    try:
        outcome: Outcome = run_command(
            argv,
            env,
            task.signals,
            grace=grace,
            tail_chars=tail_chars,
            should_stop=lambda: _lost(leases),
        )
    except OSError as exc:
        task.fail_all(f"cannot run {command[0]!r}: {exc.strerror}")
        click.echo(f"asset run: cannot run {command[0]!r}: {exc.strerror}", err=True)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    if not outcome.ok:
        task.fail_all(outcome.describe())
        summary = outcome.describe().split("; stderr:")[0].removeprefix("asset run ")
        click.echo(f"asset run: {summary}", err=True)
        return outcome.exit_status
    try:
        task.deliver()
    except Interrupted as exc:
        task.fail_all(f"asset run {exc} while delivering the outputs")
        return _exit.for_signal(exc.signum)
    except _NoOutput as exc:
        task.fail_all(f"the command exited 0 but {exc}")
        click.echo(f"asset run: the command exited 0 but {exc}", err=True)
        return _exit.LOCAL
    except (AssetServiceError, OSError, ValueError) as exc:
        task.fail_all(f"delivering the outputs failed: {exc}")
        raise
    return _exit.OK
