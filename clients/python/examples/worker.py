"""Example worker: wait for inputs, bring them here, run a command, fulfill or fail its output.

    python worker.py --server 127.0.0.1:50051 \
        --input video=3f0c...  --input params=9a1e... \
        --output 7d2b...   (the id of the PENDING asset this task must produce) \
        --command 'python my_module.py {manifest} {output}'

`{manifest}` becomes the path of an input_data.json written on this machine, naming local
copies of the inputs (`materialize`: FILE inputs are downloaded into a cache shared by the
machine's tasks, $ASSET_SERVICE_CACHE_DIR or ~/.cache/asset-service), so the worker needs
no access to the server's disk. `{output}` is the file the command must write (default: a
fresh file in a temporary folder, or --output-file). On
success that file is uploaded as the fulfillment of the PENDING asset; if an input FAILED,
the wait times out, or the command fails, the PENDING asset is failed with the reason (the
tail of the command's stderr), so that every task waiting on it learns why. An output
promised with a lease is renewed the whole time (keep_lease).
Exit status: 0 fulfilled, 1 output failed, 2 bad usage, 3 the output could not be updated.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from asset_client import (
    AssetClient,
    AssetServiceError,
    AssetStateError,
    Manifest,
    WaitTimeoutError,
)

STDERR_TAIL_CHARS = 2000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run one task: wait for its input assets, run a command on their manifest, "
        "and fulfill (or fail) the task's PENDING output asset.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  worker.py --input video=ID --output PENDING_ID "
        "--command 'python my_module.py {manifest} {output}'",
    )
    parser.add_argument(
        "--server",
        default=os.environ.get("ASSET_SERVICE_ADDR", "127.0.0.1:50051"),
        help="host:port of the Asset Service (default: $ASSET_SERVICE_ADDR or %(default)s)",
    )
    parser.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="KEY=ASSET_ID",
        help="an input of the task; repeat for several",
    )
    parser.add_argument(
        "--output", required=True, metavar="ASSET_ID", help="the PENDING asset to produce"
    )
    parser.add_argument(
        "--command",
        required=True,
        help="command to run; {manifest} and {output} are replaced by paths",
    )
    parser.add_argument("--output-file", type=Path, help="where the command writes its output")
    parser.add_argument("--config", default="{}", help="JSON object copied to config_params")
    parser.add_argument(
        "--wait-timeout",
        type=float,
        default=None,
        help="seconds to wait for the inputs (default: forever)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no upload progress bar on stderr"
    )
    args = parser.parse_args(argv)
    try:
        args.mappings = dict(_split_input(item) for item in args.input)
        args.config_params = json.loads(args.config)
        if not isinstance(args.config_params, dict):
            raise ValueError("--config must be a JSON object")
    except ValueError as exc:
        parser.error(str(exc))
    return args


def _split_input(item: str) -> tuple[str, str]:
    key, sep, asset_id = item.partition("=")
    if not sep or not key or not asset_id:
        raise ValueError(f"--input {item!r}: expected KEY=ASSET_ID")
    return key, asset_id


def build_command(template: str, manifest: Path, output: Path) -> list[str]:
    """Split the template like a shell would, then fill the placeholders in each word."""
    return [
        word.replace("{manifest}", str(manifest)).replace("{output}", str(output))
        for word in shlex.split(template)
    ]


def tail(text: str, limit: int = STDERR_TAIL_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-limit:]


def run(args: argparse.Namespace, client: AssetClient, workdir: Path) -> int:
    output_file: Path = args.output_file or workdir / "output"
    try:
        # Waits for the inputs, then downloads them here: the server's own manifest
        # (client.manifest) names paths on the server's disk, which a worker elsewhere
        # cannot open.
        manifest: Manifest = client.materialize(
            args.mappings, args.config_params, dest=workdir / "inputs", timeout=args.wait_timeout
        )
    except AssetStateError as exc:
        return fail(client, args.output, f"input not available: {exc.details}")
    except WaitTimeoutError as exc:
        return fail(client, args.output, f"gave up waiting for inputs: {exc.details}")
    command = build_command(args.command, manifest.path, output_file)
    print(f"worker: running {shlex.join(command)}", file=sys.stderr)
    try:
        proc = subprocess.run(command, stderr=subprocess.PIPE, text=True, errors="replace")
    except OSError as exc:
        return fail(client, args.output, f"cannot run {command[0]!r}: {exc}")
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        return fail(
            client,
            args.output,
            f"command exited with status {proc.returncode}: {tail(proc.stderr)}",
        )
    if not output_file.is_file():
        return fail(client, args.output, f"command succeeded but wrote no file at {output_file}")

    asset = client.upload(output_file, pending_asset_id=args.output, progress=not args.no_progress)
    print(json.dumps({"asset_id": asset.id, "status": asset.status.value, "sha256": asset.sha256}))
    return 0


def fail(client: AssetClient, asset_id: str, reason: str) -> int:
    print(f"worker: failing {asset_id}: {reason}", file=sys.stderr)
    client.fail(asset_id, reason)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with AssetClient(args.server) as client, tempfile.TemporaryDirectory() as tmp:
        try:
            # A leased output stays PENDING while this task works (nothing to do without one).
            with client.keep_lease(args.output):
                return run(args, client, Path(tmp))
        except AssetServiceError as exc:
            print(f"worker: {exc}", file=sys.stderr)
            return 3


if __name__ == "__main__":
    sys.exit(main())
