"""The bench's seed: a store multiplied in SQL reads back as the store's own records."""

from __future__ import annotations

import dataclasses
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from asset_service.domain.models import AssetFilter
from asset_service.store.sqlite import SqliteStore
from bench._seed import multiply
from tests.records import pending_record

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


async def test_multiply_copies_records_tags_and_leases_with_fresh_ids_and_revisions(
    tmp_path: Path,
) -> None:
    path = tmp_path / "assets.db"
    now = datetime.now(UTC).replace(microsecond=0)
    store = SqliteStore(path, reserve_bytes=0)
    await store.open()
    try:
        for i in range(7):
            record = pending_record(task=f"t{i % 2}", tags=("bench", f"g{i}"), at=now)
            if i % 2:  # some promises hold a lease, some none
                lease = timedelta(hours=1)
                record = dataclasses.replace(
                    record, lease_seconds=3600, lease_expires_at=now + lease
                )
            await store.insert(record)
    finally:
        await store.close()

    assert multiply(path, 1000) == 1000

    with sqlite3.connect(path) as conn:
        ids = [i for (i,) in conn.execute("SELECT id FROM assets ORDER BY seq")]
        revisions = [r for (r,) in conn.execute("SELECT revision FROM assets")]
        (counter,) = conn.execute("SELECT value FROM counters WHERE name = 'revision'").fetchone()
        (tags,) = conn.execute("SELECT count(*) FROM asset_tags").fetchone()
        (g3,) = conn.execute("SELECT count(*) FROM assets WHERE tags LIKE '%\"g3\"%'").fetchone()
        (leases,) = conn.execute("SELECT count(*) FROM leases").fetchone()
        (leased,) = conn.execute(
            "SELECT count(*) FROM assets JOIN leases ON leases.asset_id = assets.id "
            "WHERE assets.lease_seconds = 3600"
        ).fetchone()
    assert len(set(ids)) == 1000 and all(UUID4.match(i) for i in ids)
    assert sorted(set(revisions)) == list(range(1, 1001)), "one revision per record"
    assert counter == 1000
    assert tags == 2000, "each copy has its source's two tags"
    # Which rows the last, partial doubling copies is random (the new ids' order).
    assert leases == leased and 300 < leases < 600, "each leased copy keeps its lease"

    store = SqliteStore(path, reserve_bytes=0)
    await store.open()
    try:
        copy = await store.get(ids[-1])
        assert copy is not None and copy.revision == 1000 and "bench" in copy.tags
        due = await store.leases_run_out(now + timedelta(hours=2), 10_000)
        assert len(due) == leases and all(a.lease_seconds == 3600 for a in due)
        page = await store.query(AssetFilter(tags=("bench", "g3")), 1000, "")
        assert len(page.assets) == g3 and g3 >= 128, "the tags index finds every copy"
        nxt = await store.insert(pending_record(at=now))
        assert nxt.revision == 1001, "the store counts on from the highest revision"
    finally:
        await store.close()
