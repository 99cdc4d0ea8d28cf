"""`buf breaking` against the released contract: incompatible changes fail, additions pass."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUF = ROOT / "tools" / "node_modules" / ".bin" / "buf"
PROTO = Path("protos/asset/v1/asset_service.proto")
# The contract as released: `make contract-baseline` at a release (README: Contract).
RELEASED = ROOT / "protos" / "asset" / "v1" / "released.binpb"


def breaking(module: Path) -> subprocess.CompletedProcess[str]:
    assert BUF.exists(), "buf is missing: `make install` runs npm ci in tools/"
    return subprocess.run(
        [str(BUF), "breaking", "--against", str(RELEASED), "--error-format", "text"],
        cwd=module,
        capture_output=True,
        text=True,
        timeout=120,
    )


def changed(tmp_path: Path, old: str, new: str) -> Path:
    """A scratch copy of the module with one edit of the contract."""
    module = tmp_path / "module"
    module.mkdir()
    shutil.copy(ROOT / "buf.yaml", module / "buf.yaml")
    (module / PROTO).parent.mkdir(parents=True)
    text = (ROOT / PROTO).read_text()
    assert text.count(old) == 1, f"{old!r} is not in the contract once"
    (module / PROTO).write_text(text.replace(old, new))
    return module


def test_the_contract_is_compatible_with_the_released_one() -> None:
    assert RELEASED.is_file(), "the released image is missing: `make contract-baseline`"
    done = breaking(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("old", "new", "says"),
    [
        # A field renumbered: old clients would send and read the wrong field.
        ("string storage_path = 6;", "string storage_path = 60;", "storage_path"),
        ("  string storage_path = 6;\n", "", 'Previously present field "6"'),
        ("string media_type = 5;", "bytes media_type = 5;", "media_type"),
        (
            "  rpc DeleteAsset(DeleteAssetRequest) returns (DeleteAssetResponse);\n",
            "",
            'Previously present RPC "DeleteAsset"',
        ),
    ],
    ids=["field-renumbered", "field-removed", "field-type-changed", "rpc-removed"],
)
def test_an_incompatible_change_fails(tmp_path: Path, old: str, new: str, says: str) -> None:
    done = breaking(changed(tmp_path, old, new))
    assert done.returncode != 0, f"buf breaking accepted {old!r} -> {new!r}"
    assert says in done.stdout, done.stdout + done.stderr


def test_additions_pass(tmp_path: Path) -> None:
    """New fields and RPCs (resumable uploads add both) are compatible."""
    module = changed(
        tmp_path,
        "  string storage_path = 6;\n",
        "  string storage_path = 6;\n  string added_later = 99;\n",
    )
    proto = module / PROTO
    proto.write_text(
        proto.read_text().replace(
            "  rpc DeleteAsset(DeleteAssetRequest) returns (DeleteAssetResponse);\n",
            "  rpc DeleteAsset(DeleteAssetRequest) returns (DeleteAssetResponse);\n"
            "  rpc AddedLater(AddedLaterRequest) returns (AddedLaterResponse);\n",
        )
        + "\nmessage AddedLaterRequest {}\n\nmessage AddedLaterResponse {}\n"
    )
    done = breaking(module)
    assert done.returncode == 0, done.stdout + done.stderr
