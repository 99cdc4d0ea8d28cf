"""The README's Clients section names every client the repository ships, with its README."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_clients_section_links_every_client() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Clients\n", 1)[1].split("\n## ", 1)[0]
    clients = sorted(p.name for p in (ROOT / "clients").iterdir() if (p / "README.md").is_file())
    assert clients, "no client under clients/"
    missing = [c for c in clients if f"](clients/{c}/README.md)" not in section]
    assert not missing, f"README.md's Clients section does not link {missing}"


def test_the_clients_section_names_every_variable_the_clients_read() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Clients\n", 1)[1].split("\n## ", 1)[0]
    go = (ROOT / "clients/go/assetclient/env.go").read_text(encoding="utf-8")
    ts = (ROOT / "clients/typescript/src/env.ts").read_text(encoding="utf-8")
    names = set(re.findall(r'^\tEnv\w+ *= "(ASSET_SERVICE_\w+)"', go, re.M))
    names |= set(re.findall(r"^  (ASSET_SERVICE_\w+): ", ts, re.M))
    assert len(names) >= 8, names
    missing = sorted(n for n in names if f"`{n}`" not in section)
    assert not missing, f"README.md's Clients section does not name {missing}"
