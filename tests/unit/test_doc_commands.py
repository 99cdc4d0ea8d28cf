"""The `make run ARGS="..."` lines of the documentation pass flags the server has."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from asset_service.config import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MAKE_RUN = re.compile(r'make run ARGS="([^"]*)"')


def _examples() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        # A line break inside the quotes is the Markdown's wrapping, not the command's.
        for args in MAKE_RUN.findall(doc.read_text().replace("\n", " ")):
            found.append((doc.name, " ".join(args.split())))
    return found


@pytest.mark.parametrize(("doc", "args"), _examples())
def test_every_make_run_example_parses_and_stays_on_loopback(doc: str, args: str) -> None:
    """docs/mongodb.md passed --port (no such flag); the README's first example listened
    on 0.0.0.0, which the server refuses without TLS and tokens: both stopped at once."""
    parser = build_parser()
    known = {o for action in parser._actions for o in action.option_strings}
    words = shlex.split(args)
    for word in words:
        if word.startswith("--"):
            assert word.split("=", 1)[0] in known, f"{doc}: {word} is not a flag"
    if "--listen" in words and not {"--insecure", "--tls-cert"} & set(words):
        host = words[words.index("--listen") + 1].rpartition(":")[0]
        assert host in ("127.0.0.1", "localhost", "[::1]"), f"{doc}: {args}"


def test_the_examples_were_found() -> None:
    assert len(_examples()) >= 3
