"""Open paths beneath a trusted directory one component at a time, never following symlinks."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from asset_service.domain.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    StorageFull,
)

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused after fstat anyway.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISLNK, "a symbolic link"),
)


def libc_function(name: str, *argtypes: Any) -> Any:
    """A Linux C library call the os module lacks (syncfs, sync_file_range), with its
    argument types and an int result (errno kept for ctypes.get_errno), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return function


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words ('a directory', 'a FIFO', ...)."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def relative_parts(path: str, what: str = "path") -> tuple[str, ...]:
    """The components of a relative, normalized path; refuses '.', '..', '' and overlong ones."""
    if "\x00" in path:
        raise InvalidArgument(f"{what} contains a NUL character")
    if len(path.encode()) > MAX_PATH_BYTES:
        raise InvalidArgument(f"{what} is longer than {MAX_PATH_BYTES} bytes")
    parts = tuple(path.split("/"))
    for part in parts:
        if part in {"", ".", ".."}:
            raise InvalidArgument(f"{what} must be normalized: no empty, '.' or '..' components")
        if len(part.encode()) > MAX_NAME_BYTES:
            raise InvalidArgument(
                f"{what} has a component longer than {MAX_NAME_BYTES} bytes ({part[:40]!r}…)"
            )
    return parts


def no_space(exc: OSError, where: str) -> StorageFull:
    return StorageFull(
        f"storage is full ({where}: {os.strerror(exc.errno or errno.ENOSPC)}); free space, "
        "e.g. delete assets with DeleteAsset, or give the server a bigger volume"
    )


@dataclass
class Opened:
    """An open directory fd for a file's parent, the file's name in it, and the file's fd."""

    parent_fd: int
    name: str
    fd: int
    st: os.stat_result

    def remove_if_same(self) -> bool:
        """Unlink the name if it is still the file opened (a move's last step); whether it
        was (False: gone or replaced meanwhile, left alone)."""
        return unlink_if_same(self.parent_fd, self.name, (self.st.st_dev, self.st.st_ino))

    def close(self) -> None:
        for fd in (self.fd, self.parent_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def _error_for(exc: OSError, shown: str, component: str, parent_fd: int) -> Exception:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        try:
            st = os.stat(component, dir_fd=parent_fd, follow_symlinks=False)
        except OSError:
            return NotFound(f"{shown} does not exist on the server")
        if stat.S_ISLNK(st.st_mode):
            # Never say where the link points: that would map the server's files.
            return PermissionDenied(
                f"{shown} crosses a symbolic link at {component!r}; server-side paths are "
                "opened without following symbolic links"
            )
        if exc.errno == errno.ELOOP or stat.S_ISDIR(st.st_mode):
            # The open met a symlink (or a non-folder) that is no longer there: swapped.
            return Conflict(f"{shown} changed while it was being opened; retry")
        return InvalidArgument(f"{shown}: {component!r} is {kind_of(st.st_mode)}, not a folder")
    if exc.errno == errno.ENOENT:
        return NotFound(f"{shown} does not exist on the server")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PermissionDenied(f"the server may not read {shown}")
    if exc.errno == errno.ENAMETOOLONG:
        return InvalidArgument(f"{shown} is too long for the server's file system")
    return exc


@contextlib.contextmanager
def _closing_on_error(fd: int) -> Iterator[None]:
    try:
        yield
    except BaseException:
        os.close(fd)
        raise


# Makes the folder `name` in the folder `dir_fd` (FileExistsError if it is there).
MakeDir = Callable[[str, int], None]


def _private_dir(name: str, dir_fd: int) -> None:
    os.mkdir(name, 0o700, dir_fd=dir_fd)


def open_dir(
    root: Path | int,
    parts: Sequence[str],
    shown: str,
    create: bool = False,
    mkdir: MakeDir = _private_dir,
) -> int:
    """An fd on root/parts[0]/.../parts[-1], a folder; no component may be a symlink.

    With `create`, missing folders are made (by `mkdir`: owner-only unless told); a walk
    that loses a race with a concurrent prune of an empty folder (ENOENT under a folder
    just removed) starts over.
    """
    for attempt in range(5):
        try:
            return _walk(root, parts, shown, create, mkdir)
        except FileNotFoundError:
            if not create or attempt == 4:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _walk(root: Path | int, parts: Sequence[str], shown: str, create: bool, mkdir: MakeDir) -> int:
    fd = os.open(root, DIR_FLAGS) if isinstance(root, Path) else os.dup(root)
    for part in parts:
        with _closing_on_error(fd):
            if create:
                try:
                    mkdir(part, fd)
                except FileExistsError:
                    pass
                except OSError as exc:
                    if exc.errno in NO_SPACE:
                        raise no_space(exc, shown) from None
                    raise  # ENOENT: this folder was just pruned; open_dir starts over
                else:
                    # The new folder's name must survive power loss, or so does nothing
                    # later fsynced inside it (seen under tests/powerloss).
                    fsync_dir(fd)
            try:
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if create:
                    raise
                raise NotFound(f"{shown} does not exist on the server") from None
            except OSError as exc:
                raise _error_for(exc, shown, part, fd) from None
        os.close(fd)
        fd = child
    return fd


def open_file(root: Path | int, parts: Sequence[str], shown: str) -> Opened:
    """Open root/parts... read-only without following symlinks; refuse non-regular files."""
    parent_fd = open_dir(root, parts[:-1], shown)
    name = parts[-1]
    with _closing_on_error(parent_fd):
        try:
            fd = os.open(name, FILE_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # a unix socket cannot be opened
                st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
                what = kind_of(st.st_mode)
                raise InvalidArgument(f"{shown} is {what}, not a regular file") from None
            raise _error_for(exc, shown, name, parent_fd) from None
        with _closing_on_error(fd):
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise InvalidArgument(f"{shown} is {kind_of(st.st_mode)}, not a regular file")
            os.set_blocking(fd, True)
    return Opened(parent_fd, name, fd, st)


def fsync_dir(fd: int) -> None:
    with contextlib.suppress(OSError):  # some file systems refuse fsync on folders
        os.fsync(fd)


def unlink_if_same(parent_fd: int, name: str, dev_ino: tuple[int, int]) -> bool:
    """Remove `name` only if it still is that file (device, inode); True if removed."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if (st.st_dev, st.st_ino) != dev_ino:
        return False
    try:
        os.unlink(name, dir_fd=parent_fd)
    except FileNotFoundError:
        return False
    fsync_dir(parent_fd)
    return True


def split_under(path: str, roots: Sequence[Path]) -> tuple[Path, tuple[str, ...]] | None:
    """(root, parts below it) for an absolute path lexically under one of `roots`, else None."""
    pure = PurePosixPath(path)
    for root in roots:
        if pure.is_relative_to(root) and pure != PurePosixPath(root):
            return root, tuple(pure.relative_to(root).parts)
    return None
