"""The settings table written out: README rows, and the effective values for --print-config."""

from __future__ import annotations

import os
from typing import Any

from asset_service.options._kinds import BOOL, MASK
from asset_service.options._table import Loaded, Many, Setting, Table

BEGIN = "<!-- settings:begin (generated from asset_service/config/: make generate) -->"
END = "<!-- settings:end -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _flag_cell(s: Setting[Any]) -> str:
    if s.kind is BOOL:
        return f"`{s.flag}` / `--no-{s.flag.removeprefix('--')}`"
    if isinstance(s.kind, Many):
        return f"`{s.flag} {s.metavar}` (repeat)"
    return f"`{s.flag} {s.metavar}`"


def markdown(table: Table[Any], begin: str = BEGIN, end: str = END) -> str:
    """README's settings block: per group a line saying what it holds, then a table."""
    out = [begin]
    for group, description in table.groups.items():
        out += ["", f"**{group.capitalize()}**: {description}.", ""]
        out += ["| flag | variable | default | what it sets |", "| --- | --- | --- | --- |"]
        for s in table.settings:
            if s.group != group:
                continue
            default = "none" if s.shown_default == "none" else f"`{s.shown_default}`"
            separated = f" (`{os.pathsep}`-separated)" if isinstance(s.kind, Many) else ""
            out.append(
                f"| {_flag_cell(s)} | `{s.env}`{separated} | {_cell(default)} | {_cell(s.help)} |"
            )
    out += ["", end]
    return "\n".join(out)


def replace_block(document: str, block: str, begin: str = BEGIN, end: str = END) -> str:
    """`document` with the text from `begin` to `end` replaced by `block`."""
    start = document.index(begin)
    stop = document.index(end, start) + len(end)
    return document[:start] + block + document[stop:]


def shown(s: Setting[Any], value: Any) -> str:
    """A value as --print-config shows it: secrets masked, empty as "none"."""
    text = s.kind.show(value)
    if not text:
        return "none"
    return MASK if s.secret else text


def describe(table: Table[Any], loaded: Loaded[Any]) -> str:
    """Each setting's flag, effective value and where it came from, one per line."""
    rows = [
        (s.flag, shown(s, getattr(loaded.settings, s.name)), loaded.sources[s.name])
        for s in table.settings
    ]
    flag_width = max(len(r[0]) for r in rows)
    value_width = min(60, max(len(r[1]) for r in rows))
    return "\n".join(
        f"{flag:<{flag_width}}  {value:<{value_width}}  {source}" for flag, value, source in rows
    )
