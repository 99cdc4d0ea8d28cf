"""End to end: power cuts under mixed load on lazyfs; nothing acknowledged is lost.

The same test must catch a server that skips a durability step: run on a copy of the code
with SQLite's synchronous=FULL turned OFF, or with the fsync of the folder an upload is
committed into removed, the loop has to report lost acknowledged writes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.crashloop import WEIGHTS, Violation
from tests.powerloss._run import patched_server, power_loss_loop

# A fixed seed keeps failures reproducible; POWER_LOSS_SEED=<n> explores other schedules.
SEED = int(os.environ.get("POWER_LOSS_SEED", "9009"))
CUTS = 6


@pytest.mark.slow
async def test_power_loss_loses_nothing_acknowledged(tmp_path: Path) -> None:
    print(f"power-loss loop seed {SEED} (set POWER_LOSS_SEED to change it), {CUTS} cuts")
    report, cuts = await power_loss_loop(tmp_path, SEED, CUTS)
    print(report.summary())
    assert report.kills == len(cuts) == CUTS
    assert report.violations == []
    # Not vacuous: every kind of operation was acknowledged (and so survived), and the
    # cuts threw unsynced state away.
    for kind in WEIGHTS:
        assert report.count(kind, "acked") > 0, f"no {kind} was acknowledged"
    assert sum(c["unsynced_dirs"] + c["unsynced_files"] for c in cuts) > 0, cuts


SYNCHRONOUS_OFF = (
    "store/sqlite/_open.py",
    'conn.execute("PRAGMA synchronous=FULL")',
    'conn.execute("PRAGMA synchronous=OFF")',
)
# _place(): link the staged bytes to their final name, unlink staging, fsync the folder.
NO_COMMIT_FOLDER_FSYNC = (
    "storage/local/_blobs.py",
    "            os.unlink(staging)\n            fs.fsync_dir(folder)\n",
    "            os.unlink(staging)\n",
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        pytest.param(SYNCHRONOUS_OFF, "is gone", id="sqlite-synchronous-off"),
        pytest.param(NO_COMMIT_FOLDER_FSYNC, "points at missing", id="no-commit-folder-fsync"),
    ],
)
async def test_power_loss_catches_a_missing_durability_step(
    tmp_path: Path, patch: tuple[str, str, str], expected: str
) -> None:
    env = patched_server(tmp_path, *patch)
    with pytest.raises(Violation) as caught:
        await power_loss_loop(tmp_path, SEED, CUTS, env=env)
    print(caught.value)
    assert expected in str(caught.value)
