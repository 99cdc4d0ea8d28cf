"""Stores of a given size: seeded through the real server, then multiplied in SQLite."""

from __future__ import annotations

import asyncio
import sqlite3
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


# A random version-4 UUID, made by SQLite itself (the shape uuid.uuid4() gives).
_UUID4 = (
    "lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' || "
    "substr(lower(hex(randomblob(2))), 2) || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) "
    "|| substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6)))"
)


def multiply(database: Path, target: int) -> int:
    """Copy the rows of `assets` (with fresh ids and increasing revisions) until it holds
    `target` rows; rows of every other table keyed by `asset_id` (tags, leases) are copied
    with them, and the 'revision' counter ends at the highest revision. The column lists
    are read from the database, not written here. Returns the final row count. The server
    must be stopped.

    In SQL, doubling the table each step (INSERT ... SELECT through a temporary map of old
    id to new id and revision): a million rows in seconds, none of them through Python."""
    conn = sqlite3.connect(database, isolation_level=None)
    try:
        asset_columns = [name for name, key in _columns(conn, "assets") if not key]
        if "id" not in asset_columns or "revision" not in asset_columns:
            raise RuntimeError(f"assets has no id/revision column: {asset_columns}")
        tables = [
            name
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if name != "assets" and "asset_id" in (c for c, _ in _columns(conn, name))
        ]
        (count,) = conn.execute("SELECT count(*) FROM assets").fetchone()
        if not count:
            raise RuntimeError(f"{database} holds no assets to multiply")
        (revision,) = conn.execute("SELECT max(revision) FROM assets").fetchone()
        counter = conn.execute("SELECT value FROM counters WHERE name = 'revision'").fetchone()
        revision = max(revision or 0, counter[0] if counter else 0)
        # A seed, not the server's data: no fsync per step; the checkpoint below writes it.
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -262144")  # 256 MiB: the indexes stay in memory
        conn.execute("PRAGMA temp_store = MEMORY")
        fresh = {"id": "m.new", "revision": "m.rev"}
        picked = ", ".join(fresh.get(c, f"a.{c}") for c in asset_columns)
        conn.execute("BEGIN")
        # The secondary indexes built once at the end (a sort) rather than row by row.
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
            f"AND tbl_name IN ('assets', {', '.join(repr(t) for t in tables)})"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f"DROP INDEX {name}")
        while count < target:
            step = min(count, target - count)
            conn.execute("DROP TABLE IF EXISTS temp.m")
            # The new ids in order (revisions and seq grow with them): the id index, which
            # stays, takes each step's rows as one sorted run instead of random inserts.
            conn.execute(
                f"CREATE TEMP TABLE ids AS SELECT id AS old, {_UUID4} AS new "
                "FROM assets ORDER BY seq LIMIT ?",
                (step,),
            )
            conn.execute(
                "CREATE TEMP TABLE m AS SELECT old, new, ? + row_number() OVER (ORDER BY new) "
                "AS rev FROM ids",
                (revision,),
            )
            conn.execute("DROP TABLE temp.ids")
            conn.execute("CREATE UNIQUE INDEX temp.m_old ON m (old)")
            conn.execute(
                f"INSERT INTO assets ({', '.join(asset_columns)}) "
                f"SELECT {picked} FROM m JOIN assets a ON a.id = m.old ORDER BY m.rev"
            )
            for table in tables:
                columns = [c for c, _ in _columns(conn, table)]
                values = ", ".join("m.new" if c == "asset_id" else f"t.{c}" for c in columns)
                conn.execute(
                    f"INSERT INTO {table} ({', '.join(columns)}) "
                    f"SELECT {values} FROM m JOIN {table} t ON t.asset_id = m.old"
                )
            count += step
            revision += step
        conn.execute("DROP TABLE IF EXISTS temp.m")
        for _, sql in indexes:
            conn.execute(sql)
        conn.execute(
            "UPDATE counters SET value = max(value, ?) WHERE name = 'revision'", (revision,)
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (final,) = conn.execute("SELECT count(*) FROM assets").fetchone()
        return int(final)
    finally:
        conn.close()
