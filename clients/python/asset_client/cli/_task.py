"""What asset run works on: its outputs, the placeholders of its command, its promises."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from asset_client._leases import LeaseKeeper
from asset_client._progress import ProgressCallback
from asset_client.cli._supervise import Signals
from asset_client.client import AssetClient
from asset_client.errors import AssetServiceError, FailedPreconditionError
from asset_client.models import Asset, AssetStatus, AssetType, Value, ValueKind

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
    progress: bool | ProgressCallback
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

    def fail_all(self, reason: str, leases: Mapping[str, LeaseKeeper] = {}) -> None:
        """Fail every promise not delivered yet (best effort: one lost meanwhile is left).

        A promise whose lease keeper saw it lost (failed or deleted by another, or its
        lease ran out) is no longer PENDING: it is left as it is, without a try."""
        for out in self.outputs:
            lease = leases.get(out.asset_id)
            if out.asset_id in self.settled or (lease is not None and lease.lost is not None):
                continue
            self.settled.add(out.asset_id)
            try:
                self.client.fail(out.asset_id, reason)
                log.info("output %s (%s) failed: %s", out.name, out.asset_id, reason)
            except AssetServiceError as exc:
                log.warning("could not fail output %s (%s): %s", out.name, out.asset_id, exc)

    def deliver(self, client: AssetClient) -> None:
        """Upload each output file to fulfil its promise (a VALUE promise gets the content),
        through `client` (one that a signal may close)."""
        for out in self.outputs:
            if not out.path.is_file():
                raise NoOutput(f"wrote no file at {out.path} (output {out.name})")
        for out in self.outputs:
            path = out.path
            promise = self.promised[out.asset_id]
            if promise.type is AssetType.VALUE:
                try:
                    value = value_of(path, promise)
                except ValueError as exc:
                    raise BadOutput(f"output {out.name} ({path}) {exc}") from None
                client.fulfill(out.asset_id, value=value)
            else:
                # Resumable whatever its size: a server restarting as the command ends
                # must not cost the task its work (the upload waits for it, and resumes).
                client.upload(
                    path,
                    pending_asset_id=out.asset_id,
                    progress=self.progress,
                    resumable=True,
                )
            self.settled.add(out.asset_id)
            log.info("output %s delivered to %s", out.name, out.asset_id)


class NoOutput(Exception):
    """The command exited 0 without writing an output file."""


class BadOutput(NoOutput):
    """The command exited 0, but an output file is no content its promise can take."""


def value_of(path: Path, promise: Asset) -> Value:
    """A VALUE promise's content from a file: JSON, text or bytes after its media type
    (ValueError saying why the file is none of what the promise needs)."""
    size = path.stat().st_size
    if size > MAX_VALUE_BYTES:
        raise ValueError(f"holds {size} bytes; a VALUE holds at most {MAX_VALUE_BYTES}")
    data = path.read_bytes()
    media = promise.media_type.split(";")[0].strip().lower()
    try:
        if media == "application/json" or media.endswith("+json"):
            text = data.decode("utf-8")
            json.loads(text)
            return Value(ValueKind.JSON, text)
        if media.startswith("text/"):
            return Value.of_text(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"is not UTF-8 text, which media type {media} needs: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not JSON, which media type {media} needs: {exc}") from None
    return Value.of_bytes(data)


def lost_promise(leases: dict[str, LeaseKeeper]) -> str | None:
    for asset_id, lease in leases.items():
        if lease.lost is not None:
            return f"the promise {asset_id} was lost ({lease.lost})"
    return None
