"""Running the development venv's `asset` command against a test server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ASSET = str(Path(sys.executable).parent / "asset")


def cli_env(address: str, extra: Mapping[str, str] = {}) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSET_SERVICE_")}
    env["ASSET_SERVICE_ADDR"] = address
    env.update(extra)
    return env


def asset(
    address: str,
    *args: str,
    env: Mapping[str, str] = {},
    input: str | bytes | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[bytes]:
    """`asset ARGS...` to completion (bytes out, so `cat` output is compared exactly)."""
    return subprocess.run(
        [ASSET, *args],
        env=cli_env(address, env),
        input=input.encode() if isinstance(input, str) else input,
        capture_output=True,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def out(result: subprocess.CompletedProcess[bytes]) -> str:
    """stdout of a call that must have succeeded."""
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def one_line_error(result: subprocess.CompletedProcess[bytes], code: int) -> str:
    """The single stderr line of a call that must have failed with exit `code`."""
    err = result.stderr.decode()
    assert result.returncode == code, (result.returncode, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def run_args(
    *command: str,
    inputs: Mapping[str, str] = {},
    outputs: Mapping[str, str] = {},
    options: Sequence[str] = (),
) -> list[str]:
    """`asset run`'s arguments: the options, each input and output as `--input NAME=ID`
    and `--output NAME=ID` (or `NAME=ID:PATH`), then the command after `--`."""
    named = [a for n, i in inputs.items() for a in ("--input", f"{n}={i}")]
    named += [a for n, o in outputs.items() for a in ("--output", f"{n}={o}")]
    return ["run", *options, *named, "--", *command]


def start(address: str, args: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [ASSET, *args],
        env=cli_env(address),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,  # type: ignore[arg-type]
    )
