"""A server-side file being adopted into any storage: held open, checked, journaled, removed."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from asset_service.domain.errors import Conflict
from asset_service.storage import fs

log = logging.getLogger(__name__)

COPY_CHUNK = 1024 * 1024


@dataclass
class Source:
    """The file `raw` names, opened (and flocked) by ImportRoots.open from hash to finish:
    every step acts on that open file, never on the path again. With `move`, it is removed
    once the record commits (remove()), and only if it still is the file opened."""

    raw: str
    opened: fs.Opened
    move: bool

    def chunks(self, size: int = COPY_CHUNK) -> Iterator[bytes]:
        """The file's bytes from the start, `size` at a time (pread: no shared offset)."""
        offset = 0
        while chunk := os.pread(self.opened.fd, size, offset):
            offset += len(chunk)
            yield chunk

    def check_unchanged(self, size_bytes: int) -> None:
        """Conflict unless the file is as opened and `size_bytes` (what was read) long."""
        now, then = os.fstat(self.opened.fd), self.opened.st
        if (now.st_size, now.st_mtime_ns) != (then.st_size, then.st_mtime_ns) or (
            now.st_size != size_bytes
        ):
            raise Conflict(
                "the server-side file changed while it was being read; retry once the worker "
                "has finished writing it"
            )

    def intent(self) -> dict[str, Any] | None:
        """What a move's journal entry says of its source (journal.py); None for a copy."""
        if not self.move:
            return None
        st = self.opened.st
        return {"source": self.raw, "dev": st.st_dev, "ino": st.st_ino}

    def remove(self) -> None:
        """A move's last step, after the record: the source goes (if still the same file)."""
        if self.move and not self.opened.remove_if_same():
            log.warning("the moved source %r was already gone or replaced", self.raw)

    def close(self) -> None:
        self.opened.close()
