"""The server's memory tuning: the garbage collector leaves start-up's objects alone."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from asset_service import allocator


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_settle_heap_freezes_startup_objects_and_collects_the_young_less_often() -> None:
    kept = [{"held": i} for i in range(10)]  # what start-up holds
    allocator.settle_heap()
    assert gc.get_freeze_count() >= len(kept)
    assert gc.get_threshold()[0] == allocator.GC_YOUNG_THRESHOLD
    tracked = {id(o) for generation in range(3) for o in gc.get_objects(generation)}
    assert not tracked & {id(o) for o in kept}  # frozen: no collection traverses them


@pytest.mark.usefixtures("restored_gc")
def test_settle_heap_still_collects_garbage_cycles() -> None:
    allocator.settle_heap()

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    ref = weakref.ref(a)
    del a, b
    gc.collect()
    assert ref() is None
