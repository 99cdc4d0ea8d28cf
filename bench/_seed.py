"""Stores of a given size: seeded through the real server, then multiplied in SQLite."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc


async def seed_inputs(
    stub: pb_grpc.AssetServiceAsyncStub, files: int, values: int, salt: str = ""
) -> list[str]:
    """`files` small FILE uploads and `values` VALUE assets (tagged), in flight 16 at a time;
    their ids, FILEs first. A `salt` makes the values' contents differ from other calls'."""
    gate = asyncio.Semaphore(16)
    content = b"x" * 1024

    async def one_file(i: int) -> str:
        async with gate:
            header = pb.UploadAssetRequest(
                header=pb.UploadHeader(label=f"in-{i}.bin", tags=["bench", f"g{i % 10}"])
            )

            async def requests() -> AsyncIterator[pb.UploadAssetRequest]:
                yield header
                yield pb.UploadAssetRequest(chunk=content)

            return (await stub.UploadAsset(requests())).asset.id

    async def one_value(i: int) -> str:
        async with gate:
            request = pb.CreateValueAssetRequest(
                label=f"v-{i}",
                value=pb.Value(json=f'{{"i": {i}, "salt": "{salt}"}}'),
                tags=["bench", f"g{i % 10}"],
            )
            return (await stub.CreateValueAsset(request)).asset.id

    ids = await asyncio.gather(*(one_file(i) for i in range(files)))
    return [*ids, *await asyncio.gather(*(one_value(i) for i in range(values)))]


def _columns(conn: sqlite3.Connection, table: str) -> list[tuple[str, bool]]:
    """(name, is part of the primary key) of each column, from PRAGMA table_info."""
    return [(row[1], row[5] > 0) for row in conn.execute(f"PRAGMA table_info({table})")]


def multiply(database: Path, target: int) -> int:
    """Copy the rows of `assets` (with fresh ids and increasing revisions) until it holds
    `target` rows; rows of every other table keyed by `asset_id` (tags) are copied with them,
    and the 'revision' counter ends at the highest revision. The column lists are read from
    the database, not written here. Returns the final row count. The server must be stopped."""
    conn = sqlite3.connect(database, isolation_level=None)
    try:
        asset_columns = [name for name, key in _columns(conn, "assets") if not key]
        if "id" not in asset_columns or "revision" not in asset_columns:
            raise RuntimeError(f"assets has no id/revision column: {asset_columns}")
        id_at, revision_at = asset_columns.index("id"), asset_columns.index("revision")
        sources = conn.execute(f"SELECT {', '.join(asset_columns)} FROM assets").fetchall()
        if not sources:
            raise RuntimeError(f"{database} holds no assets to multiply")
        tables = [
            name
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if name != "assets" and "asset_id" in (c for c, _ in _columns(conn, name))
        ]
        related: dict[str, tuple[list[str], dict[str, list[tuple[object, ...]]]]] = {}
        for table in tables:
            columns = [c for c, _ in _columns(conn, table)]
            by_asset: dict[str, list[tuple[object, ...]]] = {}
            for row in conn.execute(f"SELECT {', '.join(columns)} FROM {table}"):
                by_asset.setdefault(row[columns.index("asset_id")], []).append(row)
            related[table] = (columns, by_asset)

        (count,) = conn.execute("SELECT count(*) FROM assets").fetchone()
        (revision,) = conn.execute("SELECT max(revision) FROM assets").fetchone()
        counter = conn.execute("SELECT value FROM counters WHERE name = 'revision'").fetchone()
        revision = max(revision or 0, counter[0] if counter else 0)

        new_assets: list[tuple[object, ...]] = []
        new_related: dict[str, list[tuple[object, ...]]] = {t: [] for t in related}
        while count + len(new_assets) < target:
            for source in sources:
                if count + len(new_assets) >= target:
                    break
                fresh = list(source)
                fresh[id_at] = str(uuid.uuid4())
                revision += 1
                fresh[revision_at] = revision
                new_assets.append(tuple(fresh))
                for table, (columns, by_asset) in related.items():
                    at = columns.index("asset_id")
                    for row in by_asset.get(str(source[id_at]), []):
                        copy = list(row)
                        copy[at] = fresh[id_at]
                        new_related[table].append(tuple(copy))

        conn.execute("BEGIN")
        marks = ", ".join("?" * len(asset_columns))
        conn.executemany(
            f"INSERT INTO assets ({', '.join(asset_columns)}) VALUES ({marks})", new_assets
        )
        for table, rows in new_related.items():
            columns = related[table][0]
            conn.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' * len(columns))})",
                rows,
            )
        conn.execute(
            "UPDATE counters SET value = max(value, ?) WHERE name = 'revision'", (revision,)
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (final,) = conn.execute("SELECT count(*) FROM assets").fetchone()
        return int(final)
    finally:
        conn.close()
