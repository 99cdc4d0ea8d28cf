"""Memory tuning: malloc keeps chunk buffers, the garbage collector skips start-up's objects."""

from __future__ import annotations

import ctypes
import gc
import logging
import platform

log = logging.getLogger(__name__)

# mallopt(3) parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Buffers below this come from the heap and are reused: every upload and download chunk
# (1 MiB, and protobuf's copies of it). Bigger ones are still mapped and returned at once.
MMAP_THRESHOLD = 4 * 1024 * 1024
# Free memory at the top of a heap is given back to the kernel only past this. By default
# glibc trims at twice its (adaptive) mmap threshold, about 2 MiB once it has seen 1 MiB
# buffers: a message and its serialized copy freed together pass that, so each 1 MiB chunk
# was returned and faulted in again (~500 minor faults per chunk sent by ReadAsset).
TRIM_THRESHOLD = 16 * 1024 * 1024


def keep_chunk_buffers() -> bool:
    """Apply the thresholds above on glibc; False (and nothing changed) elsewhere."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1)
        applied = bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1) and applied
    except (OSError, AttributeError):
        applied = False
    if not applied:
        log.debug("mallopt not applied; chunk buffers may be re-faulted")
    return applied


# The cyclic collector's youngest generation is collected after this many more container
# objects were allocated than freed (CPython's default is 700). A change fanned out to 1000
# watchers has ~10 objects per write in flight at once: at 700 every young collection
# traversed them again and moved them on, and the middle one (~1 ms with 1000 streams
# open) ran once or twice per fan-out. Measured (bench/README.md): with this and the
# freeze below, ~10-20% less server CPU per fan-out, about what no collector at all gives.
GC_YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Once the server is up: collect, then freeze what start-up allocated (modules,
    settings, the manager) so no collection traverses it again, and collect the youngest
    generation less often. Garbage cycles are still collected, only in bigger steps."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)
