"""The buffer's footing on its filesystem: one owner at a time, a full disk told apart from a
damaged file, and the path checks that ``edge check`` and ``edge run`` share.

* **One owner.** ``<buffer>.lock`` beside the buffer carries an exclusive flock(2) for as long as
  a gateway has the buffer open, and that gateway's PID as text. The kernel drops the lock when
  the process ends, however it ends (SIGTERM, a crash, SIGKILL), so a left-over lock file never
  blocks a restart. A second gateway on the same buffer is refused and told the holder's PID.
  ``edge check`` and ``edge doctor`` never take the lock (doctor reads the buffer read-only,
  which SQLite's WAL mode allows beside a writer); they look the holder up in /proc/locks.
* **Full is not damaged.** SQLite reports a full disk as SQLITE_FULL, or, where the kernel says
  ENOSPC while it grows the shared-memory index, fsyncs or truncates, as an I/O error. Neither
  says anything about the file's content, so neither may send it to salvage (edge/store/salvage.py):
  only SQLITE_CORRUPT, SQLITE_NOTADB and a failed read do.
* **Paths.** :func:`path_problem` says, without changing anything, why a path cannot be the
  buffer file for this user: a folder, a device or pipe, a file or folder this user cannot
  write, a folder that does not exist and cannot be created.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import pwd
import sqlite3
import stat
import time
from pathlib import Path

__all__ = [
    "BufferInUse",
    "BufferLock",
    "BufferUnavailable",
    "Episode",
    "disk_free",
    "is_damage",
    "is_full",
    "lock_holder",
    "lock_path",
    "mount_point",
    "path_problem",
    "unavailable",
    "user_name",
]

#: Free bytes below which an I/O error while writing is taken for a full disk (SQLite reports
#: ENOSPC as SQLITE_FULL only for writes; growing the -shm index, fsync and truncate come back
#: as SQLITE_IOERR_*). 64 KiB: the largest of those, a -shm growth step, is 32 KiB.
FULL_BELOW = 64 * 1024
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class BufferUnavailable(Exception):
    """The buffer cannot be opened or written for a reason outside its content (a full disk,
    permissions, the path is a folder). Nothing was moved or changed. ``retry``: the reason can
    pass by itself (space returns); else it needs the operator, and the message says what to do.
    """

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class BufferInUse(BufferUnavailable):
    """Another process holds the buffer's lock (``pid``: that process, None if unknown)."""

    def __init__(self, buffer: Path, pid: int | None) -> None:
        who = f"PID {pid}" if pid is not None else "a process whose PID cannot be seen"
        super().__init__(
            f"buffer {buffer} is in use by another gateway ({who}); stop that one first, or "
            "give this config its own buffer.path",
            retry=False,
        )
        self.pid = pid


def user_name() -> str:
    uid = os.geteuid()
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def disk_free(path: Path) -> int | None:
    """Bytes an unprivileged process may still write on the filesystem holding ``path`` (the
    gateway runs as its own user, so root's reserve does not count); None if it cannot be told."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def mount_point(path: Path) -> Path:
    """The mount point of the filesystem holding ``path`` (for messages)."""
    path = path.resolve()
    try:
        dev = path.stat().st_dev
    except OSError:
        return path
    while path.parent != path:
        try:
            if path.parent.stat().st_dev != dev:
                break
        except OSError:
            break
        path = path.parent
    return path


def is_damage(exc: BaseException) -> bool:
    """True when SQLite says the file's content is bad (salvage can help); False when the error
    is about the environment (space, permissions, locks), which moving the file cannot fix."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        # Our own DatabaseErrors (an unknown schema version) are about the content; our own
        # OperationalErrors (cannot switch to WAL: a read-only file) are not.
        return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
            exc, sqlite3.OperationalError
        )
    if code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return True
    return code in (sqlite3.SQLITE_IOERR_READ, sqlite3.SQLITE_IOERR_SHORT_READ)  # a bad sector


def is_full(exc: BaseException, path: Path) -> bool:
    """True when ``exc`` (from SQLite or the OS) means the disk holding ``path`` has no room."""
    if isinstance(exc, OSError):
        return exc.errno in _FULL_ERRNOS
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return False
    if code & 0xFF == sqlite3.SQLITE_FULL:
        return True
    if code & 0xFF == sqlite3.SQLITE_IOERR and not is_damage(exc):
        free = disk_free(path.parent)
        return free is not None and free < FULL_BELOW
    return False


def unavailable(path: Path, exc: BaseException, doing: str = "open") -> BufferUnavailable:
    """The :class:`BufferUnavailable` for a failure that is not damage, with the fix."""
    if is_full(exc, path):
        free = disk_free(path.parent)
        return BufferUnavailable(
            f"cannot {doing} the buffer {path}: the disk holding it ({mount_point(path.parent)}) "
            f"is full ({free if free is not None else '?'} bytes free); free space there",
            retry=True,
        )
    code = getattr(exc, "sqlite_errorcode", None)
    retry = code is not None and code & 0xFF in (
        sqlite3.SQLITE_IOERR,  # e.g. a card remounted read-only after errors: it may come back
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
    )
    problem = path_problem(path)
    why = problem or f"{exc} (as user {user_name()})"
    return BufferUnavailable(f"cannot {doing} the buffer {path}: {why}", retry=retry)


def lock_path(buffer: Path) -> Path:
    """``<buffer>.lock`` beside the real file (symlinks resolved, as SQLite does for its -wal
    and -shm), so two spellings of one buffer share one lock."""
    real = Path(os.path.realpath(buffer))
    return real.with_name(real.name + ".lock")


def lock_holder(buffer: Path) -> int | None:
    """The PID of the process holding ``buffer``'s lock, or None when nobody holds it. Takes
    nothing: it reads /proc/locks (Linux), else the PID written in the lock file if that
    process still runs."""
    lp = lock_path(buffer)
    try:
        st = os.stat(lp)
    except OSError:
        return None
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        text = None
    if text is not None:
        # "1: FLOCK  ADVISORY  WRITE 1234 00:27:26 0 EOF" (major:minor in hex, inode decimal)
        where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for line in text.splitlines():
            f = line.split()
            if len(f) >= 6 and f[1] == "FLOCK" and f[5] == where and f[4].isdigit():
                return int(f[4])
        return None
    try:
        pid = int(lp.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


class BufferLock:
    """An exclusive flock on ``<buffer>.lock`` recording the holder's PID (see module doc)."""

    def __init__(self, buffer: Path) -> None:
        self.buffer = buffer
        self.path = lock_path(buffer)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock. :class:`BufferInUse` when another process holds it;
        :class:`BufferUnavailable` when the lock file cannot be created or opened."""
        if self._fd is not None:
            return
        if self.path.is_symlink() or (self.path.exists() and not self.path.is_file()):
            raise BufferUnavailable(
                f"the buffer's lock file {self.path} is not a regular file: remove it",
                retry=False,
            )
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise BufferUnavailable(
                f"cannot create the buffer's lock file {self.path}: {exc.strerror} "
                f"(as user {user_name()})",
                retry=exc.errno in _FULL_ERRNOS,
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BufferInUse(self.buffer, lock_holder(self.buffer)) from None
        except OSError as exc:
            os.close(fd)
            raise BufferUnavailable(
                f"cannot lock {self.path}: {exc.strerror}", retry=False
            ) from None
        try:  # for people and for systems without /proc/locks; a full disk may refuse it
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        self._fd = fd

    def release(self) -> None:
        """Let go (the file stays: removing it would race with a gateway opening it now)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # closing the last descriptor drops the flock


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _writable(path: Path, *, folder: bool) -> bool:
    mode = os.W_OK | (os.X_OK if folder else os.R_OK)
    eff = os.access in os.supports_effective_ids
    return os.access(path, mode, effective_ids=eff)


def path_problem(path: Path) -> str | None:
    """Why ``path`` cannot be the buffer file of a gateway running as this user, or None.
    Changes nothing (``edge check`` and ``edge run`` both ask it)."""
    me = user_name()
    try:
        st = os.stat(path)  # follows a symlink: what SQLite would open
    except FileNotFoundError:
        st = None
    except OSError as exc:
        return f"{path} cannot be looked at: {exc.strerror} (as user {me})"
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            return (
                f"{path} is a folder; buffer.path names the buffer file, e.g. "
                f"{path / 'buffer.sqlite'}"
            )
        if not stat.S_ISREG(st.st_mode):
            return f"{path} is {_kind(st.st_mode)}, not a file the buffer can live in"
        if not _writable(path, folder=False):
            return (
                f"buffer file {path} is not writable by user {me}: chown it to the user the "
                "gateway runs as"
            )
    folder = path.parent
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder, so the buffer folder {folder} cannot be made"
    if not _writable(existing, folder=True):
        if existing == folder:
            return (
                f"buffer folder {folder} is not writable by user {me} (the gateway creates "
                f"{path.name}, its -wal, -shm and .lock files there): chown it to the user the "
                "gateway runs as, and check as that user"
            )
        return (
            f"buffer folder {folder} does not exist and user {me} cannot create it "
            f"({existing} is not writable)"
        )
    real = Path(os.path.realpath(path))
    for suffix in ("-wal", "-shm", ".lock"):
        side = real.with_name(real.name + suffix)
        try:
            sst = os.stat(side)
        except OSError:
            continue
        if not stat.S_ISREG(sst.st_mode):
            return f"{side} is {_kind(sst.st_mode)}: remove it (the buffer needs that name)"
        if not _writable(side, folder=False):
            return f"{side} is not writable by user {me}: chown it to the user the gateway runs as"
    return None


class Episode:
    """A condition that lasts (the disk is full): logged at ERROR when it starts, at DEBUG
    while it lasts, at INFO when it ends (house style §17)."""

    def __init__(self, logger: logging.Logger) -> None:
        self.log = logger
        self.since: float | None = None

    @property
    def active(self) -> bool:
        return self.since is not None

    def start(self, msg: str, *args: object) -> None:
        if self.since is None:
            self.since = time.monotonic()
            self.log.error(msg, *args)
        else:
            self.log.debug(msg, *args)

    def end(self, msg: str, *args: object) -> None:
        if self.since is not None:
            self.log.info(msg + " (after %.0f s)", *args, time.monotonic() - self.since)
            self.since = None
