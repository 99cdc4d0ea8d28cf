"""Argument types shared by the commands: KEY=ID pairs, JSON config, statuses and types."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from asset_client.models import AssetStatus, AssetType

STATUS = click.Choice([s.value for s in AssetStatus], case_sensitive=False)
TYPE = click.Choice([t.value for t in AssetType], case_sensitive=False)
POSITIVE = click.FloatRange(min=0, min_open=True)


def status_of(value: str | None) -> AssetStatus | None:
    return None if value is None else AssetStatus(value.upper())


def type_of(value: str | None) -> AssetType | None:
    return None if value is None else AssetType(value.upper())


def mappings(pairs: tuple[str, ...], option: str) -> dict[str, str]:
    """KEY=ASSET_ID pairs as a dict; click.BadParameter naming the malformed one."""
    found: dict[str, str] = {}
    for pair in pairs:
        key, sep, asset_id = pair.partition("=")
        if not sep or not key or not asset_id:
            raise click.BadParameter(f"{pair!r}: expected KEY=ASSET_ID", param_hint=option)
        if key in found and found[key] != asset_id:
            raise click.BadParameter(f"input {key!r} given twice", param_hint=option)
        found[key] = asset_id
    return found


def config(text: str | None) -> dict[str, Any]:
    """--config: a JSON object, given inline or as @FILE."""
    if text is None:
        return {}
    source = "--config"
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text()
        except OSError as exc:
            raise click.BadParameter(f"{path}: {exc.strerror}", param_hint=source) from None
        source = f"--config {path}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=source) from None
    if not isinstance(data, dict):
        raise click.BadParameter("must be a JSON object", param_hint=source)
    return data


F = TypeVar("F", bound=Callable[..., Any])


def config_option() -> Callable[[F], F]:
    return click.option(
        "--config",
        "config_text",
        metavar="JSON|@FILE",
        help="config_params of the manifest: a JSON object, inline or from a file.",
    )
