"""bench.cpu_pieces wraps functions of the server by name: each name must still be there."""

from __future__ import annotations

import importlib

import pytest

from bench.cpu_pieces import PIECES


@pytest.mark.parametrize(("module", "path", "piece"), PIECES, ids=[p[1] for p in PIECES])
def test_every_piece_names_a_function_of_the_server(module: str, path: str, piece: str) -> None:
    """A refactor that moves or renames one of them must move the table too: the tool
    otherwise stops at start-up ("the instrumented server did not start")."""
    owner: object = importlib.import_module(module)
    for part in path.split("."):
        assert hasattr(owner, part), f"{piece}: {module}.{path} is gone; update bench/cpu_pieces.py"
        owner = getattr(owner, part)
    assert callable(owner)
