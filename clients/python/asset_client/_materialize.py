"""Materialize a manifest locally: where each input goes, and input_data.json beside."""

# What the drivers share: AsyncMaterializer (_aio_materializer.py) for AsyncAssetClient,
# and Materializer, generated from it for the blocking AssetClient (_materializer.py).

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from asset_client.errors import AssetDeletedError, AssetFailedError, AssetStateError
from asset_client.models import Asset, AssetType, Manifest, ValueKind

INDEX_NAME = "input_data.json"
# The server's suffixes (GetManifest), so a module finds the same names either way.
VALUE_SUFFIX = {ValueKind.TEXT: ".txt", ValueKind.JSON: ".json", ValueKind.DATA: ".bin"}


def safe_file_name(label: str, fallback: str = "content") -> str:
    """A file name from a label, as the server derives it: [A-Za-z0-9._-], never a path."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._")[:120]
    return cleaned or fallback


def plain_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """config_params as the server writes them: JSON data, whole numbers as ints (a
    protobuf Struct, which carries the params to the server, keeps every number a double)."""
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise TypeError(f"config_params must be a mapping, not {type(config).__name__}")

    def plain(value: Any, where: str) -> Any:
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return value
        if isinstance(value, int | float):
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(f"config_params{where}: {value!r} is not JSON")
            if number.is_integer() and abs(number) < 2**53:
                return int(number)
            return number
        if isinstance(value, Mapping):
            return {str(k): plain(v, f"{where}[{k!r}]") for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        raise ValueError(f"config_params{where}: a {type(value).__name__} is not JSON")

    return {str(k): plain(v, f"[{k!r}]") for k, v in config.items()}


class Plan:
    """One materialization's files: where each input goes, and the index written last."""

    def __init__(
        self,
        mappings: Mapping[str, str],
        config_params: Mapping[str, Any] | None,
        dest: str | os.PathLike[str],
    ) -> None:
        for key, asset_id in mappings.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"input keys must be non-empty strings, not {key!r}")
            if not isinstance(asset_id, str) or not asset_id:
                raise ValueError(f"input {key!r}: the asset id must be a non-empty string")
        self.mappings = dict(mappings)
        self.config = plain_config(config_params)
        self.dest = Path(dest).absolute()
        self.entries: dict[str, Path] = {}

    @property
    def asset_ids(self) -> list[str]:
        return list(dict.fromkeys(self.mappings.values()))

    def named(self, exc: AssetStateError) -> AssetStateError:
        """The same error, saying which input key(s) the asset is."""
        keys = [k for k, v in self.mappings.items() if v == exc.asset.id]
        which = ", ".join(repr(k) for k in keys) or "?"
        cls = AssetDeletedError if isinstance(exc, AssetDeletedError) else AssetFailedError
        return cls(f"input {which}: {exc.details}", exc.asset)

    def prepare(self) -> None:
        for folder in (self.dest, self.dest / "files", self.dest / "values"):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)

    def file_path(self, asset: Asset) -> Path:
        return self.dest / "files" / f"{asset.id}-{safe_file_name(asset.label)}"

    def write_value(self, asset: Asset) -> Path:
        assert asset.value is not None
        path = self.dest / "values" / f"{asset.id}{VALUE_SUFFIX[asset.value.kind]}"
        _write_atomically(path, asset.value.as_bytes())
        return path

    def add(self, asset_id: str, path: Path) -> None:
        for key, value in self.mappings.items():
            if value == asset_id:
                self.entries[key] = path

    def finish(self) -> Manifest:
        """input_data.json in the server's format, with these local absolute paths."""
        body = {
            "inputs": {key: str(self.entries[key]) for key in self.mappings},
            "config_params": self.config,
        }
        data = json.dumps(body, indent=2, sort_keys=True).encode() + b"\n"
        index = self.dest / INDEX_NAME
        _write_atomically(index, data)
        return Manifest(index, {key: self.entries[key] for key in self.mappings})


def _write_atomically(path: Path, data: bytes) -> None:
    part = path.with_name(f".{path.name}.part")
    with open(part, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(part, path)


def needs_value(asset: Asset) -> bool:
    return asset.type is AssetType.VALUE and asset.value is None
