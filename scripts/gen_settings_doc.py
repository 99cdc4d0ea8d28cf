"""README.md's settings tables from asset_service/config/ and healthcheck.py (`make generate`);
`--check` too."""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asset_service import healthcheck  # noqa: E402 - after the path above
from asset_service.config import TABLE  # noqa: E402
from asset_service.options import markdown, replace_block  # noqa: E402

README = ROOT / "README.md"
# `asset-service health`'s options, in a block of their own.
HEALTH_BEGIN = (
    "<!-- health-settings:begin (generated from asset_service/healthcheck.py: make generate) -->"
)
HEALTH_END = "<!-- health-settings:end -->"


def main(argv: list[str]) -> int:
    have = README.read_text()
    want = replace_block(have, markdown(TABLE))
    health = markdown(healthcheck.TABLE, HEALTH_BEGIN, HEALTH_END)
    want = replace_block(want, health, HEALTH_BEGIN, HEALTH_END)
    if argv == ["--check"]:
        if have != want:
            diff = difflib.unified_diff(
                have.splitlines(keepends=True),
                want.splitlines(keepends=True),
                "README.md (checked in)",
                "README.md (generated)",
            )
            print("README.md's settings tables are stale (run `make generate`):")
            print("".join(diff))
            return 1
        print("README.md settings tables up to date")
        return 0
    if argv:
        print("usage: gen_settings_doc.py [--check]", file=sys.stderr)
        return 2
    README.write_text(want)
    print("generated README.md's settings tables from asset_service/config/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
