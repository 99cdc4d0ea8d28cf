"""Server-side files a client may name: opened safely beneath the configured import roots."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from pathlib import Path

from asset_service.domain.errors import AssetError, Conflict, InvalidArgument, PermissionDenied
from asset_service.storage import fs
from asset_service.storage.own_files import OwnFiles


def _shown(raw: str) -> str:
    return repr(raw) if len(raw) <= 200 else repr(raw[:200]) + f"… ({len(raw)} characters)"


def no_import_roots() -> PermissionDenied:
    """What a server-side path gets from a server started without import roots."""
    return PermissionDenied(
        "the server has no import roots; start it with --import-root DIR "
        "(or ASSET_SERVICE_IMPORT_ROOTS) to allow server-side paths"
    )


class ImportRoots:
    """The folders whose files RegisterFile and FulfillAsset(source_path) may adopt.

    A path is checked lexically against the roots, then opened one component at a time
    from a directory fd on its root with O_NOFOLLOW: a symlink anywhere (even one swapped in
    mid-request) is refused, and every later step acts on the fds opened here. A file that
    is one of the server's own, or lies in its storage root, is refused whatever the roots
    (`own`): a root could be mounted or symlinked over them after start-up.
    """

    def __init__(
        self, roots: Sequence[Path], allow_hardlinks: bool = False, own: OwnFiles | None = None
    ) -> None:
        self.roots = tuple(roots)
        self.allow_hardlinks = allow_hardlinks
        self.own = own

    def parts_of(self, raw: str) -> tuple[Path, tuple[str, ...]]:
        if not raw:
            raise InvalidArgument("path is required: an absolute path on the server")
        if not raw.startswith("/"):
            raise InvalidArgument(f"path {_shown(raw)} must be absolute")
        fs.relative_parts(raw[1:], f"path {_shown(raw)}")
        if not self.roots:
            raise no_import_roots()
        found = fs.split_under(raw, self.roots)
        if found is None and Path(raw) in self.roots:
            raise InvalidArgument(
                f"{_shown(raw)} is a directory (an import root), not a regular file; name a "
                "file in it"
            )
        if found is None:
            shown = ", ".join(str(r) for r in self.roots)
            raise PermissionDenied(f"{_shown(raw)} is outside the import roots [{shown}]")
        return found

    def open(self, raw: str, exclusive: bool) -> fs.Opened:
        """Open a regular file under a root and lock it (exclusive: it is about to move)."""
        root, parts = self.parts_of(raw)
        opened = fs.open_file(root, parts, _shown(raw))
        try:
            if self.own is not None:
                self.own.refuse(opened.fd, opened.st, _shown(raw))
            try:
                fcntl.flock(
                    opened.fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
                )
            except BlockingIOError:
                raise Conflict(
                    f"{_shown(raw)} is being adopted by another request; one of them wins, "
                    "re-read the asset before retrying"
                ) from None
            st = os.fstat(opened.fd)
            if st.st_nlink > 1 and not self.allow_hardlinks:
                raise PermissionDenied(
                    f"{_shown(raw)} has {st.st_nlink} hard links; a link to a file outside the "
                    "import roots would be a way out, so such files are refused (start the "
                    "server with --allow-hardlinked-imports to adopt them by copy)"
                )
            if st.st_nlink == 0:
                raise Conflict(f"{_shown(raw)} was removed while being opened; retry")
            opened.st = st
        except BaseException:
            opened.close()
            raise
        return opened

    def reopen_parent(self, raw: str) -> tuple[int, str]:
        """A directory fd on the parent of `raw` (no symlinks followed), and its name there."""
        root, parts = self.parts_of(raw)
        return fs.open_dir(root, parts[:-1], _shown(raw)), parts[-1]

    def remove_if_same(self, raw: str, dev_ino: tuple[int, int]) -> bool:
        """Unlink `raw` if it still is that very file; never follows a symlink."""
        try:
            parent_fd, name = self.reopen_parent(raw)
        except (OSError, AssetError):
            # Gone, or no longer reachable without crossing a symlink: not ours to touch.
            return False
        try:
            return fs.unlink_if_same(parent_fd, name, dev_ino)
        finally:
            os.close(parent_fd)
