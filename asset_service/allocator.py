"""Tune glibc malloc so 1 MiB chunk buffers are reused instead of mapped and unmapped each time."""

from __future__ import annotations

import ctypes
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
