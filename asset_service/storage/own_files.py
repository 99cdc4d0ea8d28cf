"""The server's own files (storage root, database, keys): no server-side path may reach them."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from asset_service.domain.errors import InvalidArgument, PermissionDenied

MOUNTINFO = "/proc/self/mountinfo"
# mountinfo escapes these in its root and mount point fields (\040 for a space).
_ESCAPED = re.compile(r"\\([0-7]{3})")

# Where a path lives, whichever mount or symlink reaches it: the device of its file system
# and its path from that file system's own root. A bind mount shows one folder at a second
# place; both places have the same location.
Location = tuple[str, PurePosixPath]


def _unescape(field: str) -> str:
    return _ESCAPED.sub(lambda m: chr(int(m.group(1), 8)), field)


def _mounts() -> list[tuple[PurePosixPath, str, PurePosixPath]]:
    """(mount point, device, the mounted folder's path in its file system), in mount order."""
    mounts = []
    with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) >= 5:
                point = PurePosixPath(_unescape(fields[4]))
                mounts.append((point, fields[2], PurePosixPath(_unescape(fields[3]))))
    return mounts


def location(
    real_path: str, mounts: Sequence[tuple[PurePosixPath, str, PurePosixPath]]
) -> Location:
    """The location of `real_path` (absolute, no symlinks): through the mount that holds it
    (the deepest mount point above it, the latest mounted of equals)."""
    path = PurePosixPath(real_path)
    best: tuple[PurePosixPath, str, PurePosixPath] | None = None
    for mount in mounts:
        point = mount[0]
        if path.is_relative_to(point) and (best is None or len(point.parts) >= len(best[0].parts)):
            best = mount
    if best is None:
        return "", path
    point, device, inside = best
    return device, inside / path.relative_to(point)


def _within(inner: Location, outer: Location) -> bool:
    return inner[0] == outer[0] and inner[1].is_relative_to(outer[1])


def _fd_path(fd: int) -> str:
    path = os.readlink(f"/proc/self/fd/{fd}")
    return path.removesuffix(" (deleted)")


@dataclass(frozen=True)
class OwnFiles:
    """The storage root and the files the server keeps outside it (database, tokens, keys)."""

    storage_root: Path
    # (what it is, its path), e.g. ("database", /srv/data/assets.db): named in refusals.
    files: tuple[tuple[str, Path], ...] = ()

    def check_import_roots(self, roots: Sequence[Path]) -> None:
        """At start-up: refuse an import root that holds, is, or lies inside any of them.

        Paths are compared resolved (symlinks followed) and by location, so a bind mount
        of the storage root under an import root is seen too.
        """
        try:
            mounts = _mounts()
        except OSError:
            mounts = []
        guarded = [("storage root", self.storage_root), *self.files]
        for root in roots:
            real_root = Path(os.path.realpath(root))
            where = location(str(real_root), mounts)
            # What the root shows: its own folder, and every file system mounted below it.
            shown = [where] + [
                (d, inside) for at, d, inside in mounts if at.is_relative_to(real_root)
            ]
            for what, path in guarded:
                real = Path(os.path.realpath(path))
                theirs = location(str(real), mounts)
                if real == real_root or where == theirs:
                    relation, fix = "is", "a folder of its own (e.g. a sibling of the storage root)"
                elif real.is_relative_to(real_root) or any(_within(theirs, s) for s in shown):
                    relation, fix = "contains", f"a folder that does not contain {path}"
                elif real_root.is_relative_to(real) or _within(where, theirs):
                    relation, fix = "lies inside", f"a folder outside {path}"
                else:
                    continue
                raise InvalidArgument(
                    f"--import-root {root} {relation} the {what} {path}: RegisterFile and "
                    "FulfillAsset could then move or copy out the server's own files; give "
                    f"as import root {fix}"
                )

    def refuse(self, fd: int, st: os.stat_result, shown: str) -> None:
        """Per request: PermissionDenied if the open file `fd` is one of the server's own
        files or lies in the storage root, however the path reached it (a symlink or bind
        mount made after start-up included)."""
        for what, path in self.files:
            try:
                own = os.stat(path)
            except OSError:
                continue  # not there now (a -wal file between checkpoints): nothing to take
            if (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino):
                raise PermissionDenied(
                    f"{shown} is the server's {what}; server-side paths may never name the "
                    "server's own files"
                )
        try:
            mounts = _mounts()
            here = location(_fd_path(fd), mounts)
            storage = location(os.path.realpath(self.storage_root), mounts)
        except OSError as exc:
            # Fail closed: a path that cannot be placed is not adopted.
            raise PermissionDenied(
                f"cannot tell whether {shown} lies in the server's storage root ({exc}); "
                "server-side paths need /proc mounted"
            ) from None
        if _within(here, storage):
            raise PermissionDenied(
                f"{shown} lies in the server's storage root {self.storage_root}; server-side "
                "paths may never name stored files or the server's own state (read assets "
                "with ReadAsset; keep import roots outside the storage root)"
            )
