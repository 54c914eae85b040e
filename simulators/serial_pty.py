"""The device end of a serial port, on a pseudo-terminal that behaves like a USB-serial adapter.

A program opens :attr:`PtyPort.path` (the pty's slave side) as it would open /dev/ttyUSB0; the
simulator reads and writes the master side. The simulator holds the slave open itself, so the
pty survives the program closing and reopening it, as a real adapter does. Without more care
that hold has a side effect no real adapter has: bytes the device sent that the program had not
read when it closed the port stay queued and are delivered to the **next** program that opens
it (an answer to an old request read as the answer to a new one). A real port loses them: the
kernel discards a tty's input on its last close (``n_tty_close``), and a USB-serial driver does
not read from the adapter while the port is closed.

So :class:`PtyPort` watches the slave's device node with inotify (``IN_OPEN`` / ``IN_CLOSE_*``,
see inotify(7)); when the last program closes it, what is queued for the program is flushed
(``tcflush(TCIFLUSH)``) and counted in :attr:`PtyPort.discarded_bytes`, and whatever the device
sends while nobody holds the port open falls off the wire (:meth:`PtyPort.write` returns False,
also counted in :attr:`PtyPort.lost_bytes`). Where inotify is not available (not Linux) the port
behaves as before: always open, nothing flushed; :attr:`PtyPort.watching` says which.

Limit: a pty cannot flush inside the program's close() as a tty driver does; the flush follows
the close within the event loop's latency (well under a millisecond when it is idle). A program
that opens the port and reads within that instant of another's close can still see the old
bytes; the next program started after a close cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import fcntl
import logging
import os
import struct
import termios
import time
import tty
import weakref
from collections.abc import Callable

from protocols.modbus_frame import LineTiming

__all__ = ["CHUNK_S", "PtyPort", "write_paced"]

log = logging.getLogger(__name__)

CHUNK_S = 0.002  # write an answer in pieces of about this much wire time

# inotify(7): event masks and the fixed part of struct inotify_event (wd, mask, cookie, len).
_IN_CLOSE_WRITE, _IN_CLOSE_NOWRITE, _IN_OPEN = 0x08, 0x10, 0x20
_IN_Q_OVERFLOW = 0x4000
_EVENT = struct.Struct("iIII")


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None
    return libc if hasattr(libc, "inotify_init1") else None


_LIBC = _libc()
#: the watcher of each event loop (a test's loop that ends takes its entry with it)
_WATCHERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watcher] = (
    weakref.WeakKeyDictionary()
)


class _Watcher:
    """One inotify instance per event loop, for every :class:`PtyPort` on it (the kernel allows
    few instances per user: ``fs.inotify.max_user_instances``, 128 by default)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self.loop, self.fd = loop, fd
        self.ports: dict[int, PtyPort] = {}  # watch descriptor -> port
        loop.add_reader(fd, self.poll)

    @classmethod
    def watch(cls, port: PtyPort) -> _Watcher | None:
        """Watch ``port``'s device node for opens and closes; None where that cannot be done."""
        if _LIBC is None:
            log.debug("no inotify here: %s keeps what a closing program left unread", port.path)
            return None
        loop = asyncio.get_running_loop()
        watcher = _WATCHERS.get(loop)
        if watcher is None:
            fd = _LIBC.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd < 0:
                log.debug("inotify_init1 failed: %s", os.strerror(ctypes.get_errno()))
                return None
            watcher = _WATCHERS[loop] = cls(loop, fd)
        mask = _IN_OPEN | _IN_CLOSE_WRITE | _IN_CLOSE_NOWRITE
        wd = _LIBC.inotify_add_watch(watcher.fd, os.fsencode(port.path), mask)
        if wd < 0:
            log.debug("cannot watch %s: %s", port.path, os.strerror(ctypes.get_errno()))
            watcher._close_if_idle()
            return None
        watcher.ports[wd] = port
        port._wd = wd
        return watcher

    def unwatch(self, port: PtyPort) -> None:
        if self.ports.pop(port._wd, None) is not None and _LIBC is not None:
            _LIBC.inotify_rm_watch(self.fd, port._wd)
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if self.ports or self.fd < 0:
            return
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.fd)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = -1
        if _WATCHERS.get(self.loop) is self:
            del _WATCHERS[self.loop]

    def poll(self) -> None:
        """Hand every pending open / close to its port (also called before a port reads or
        writes, so a close that came first is seen first)."""
        while self.fd >= 0:
            try:
                data = os.read(self.fd, 4096)
            except OSError:  # EAGAIN: nothing new
                return
            at = 0
            while at + _EVENT.size <= len(data):
                wd, mask, _, name_len = _EVENT.unpack_from(data, at)
                at += _EVENT.size + name_len
                if mask & _IN_Q_OVERFLOW:  # events lost: count every port as closed
                    for port in self.ports.values():
                        port._event(_IN_CLOSE_WRITE, overflow=True)
                elif wd in self.ports:
                    self.ports[wd]._event(mask)


class PtyPort:
    """A raw pty whose slave side a program opens as its serial port.

    ``on_data`` gets what the program writes (from the event loop's reader callback).
    :attr:`opened` is True while at least one program holds the port open. Close with
    :meth:`close`.
    """

    def __init__(self, on_data: Callable[[bytes], None]) -> None:
        self._on_data = on_data
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no line discipline: 0x03 is data, not Ctrl-C
        tty.setraw(self.master)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.openers = 0  # programs holding the slave open now (our own fd not counted)
        self.opens = self.closes = 0
        self.discarded_bytes = 0  # queued for the program when it closed the port
        self.lost_bytes = 0  # sent while nobody held the port open
        self.last_close = 0.0  # monotonic time of the last close seen
        self._wd = -1
        asyncio.get_running_loop().add_reader(self.master, self._on_readable)
        self._watcher = _Watcher.watch(self)

    @property
    def watching(self) -> bool:
        """Whether opens and closes are seen (inotify); if not, the port counts as always open."""
        return self._watcher is not None

    @property
    def opened(self) -> bool:
        return self.openers > 0 or not self.watching

    def _on_event(self) -> None:
        if self._watcher is not None:
            self._watcher.poll()

    def _event(self, mask: int, *, overflow: bool = False) -> None:
        if mask & _IN_OPEN:
            self.openers += 1
            self.opens += 1
        if mask & (_IN_CLOSE_WRITE | _IN_CLOSE_NOWRITE):
            self.openers = 0 if overflow else max(0, self.openers - 1)
            self.closes += not overflow
            if self.openers == 0:
                self._closed_by_program()

    def _closed_by_program(self) -> None:
        """The last program closed the port: what it did not read is gone, as on a real tty."""
        self.last_close = time.monotonic()
        with contextlib.suppress(OSError, termios.error):
            queued = _input_queued(self.slave)
            termios.tcflush(self.slave, termios.TCIFLUSH)
            self.discarded_bytes += queued

    def _on_readable(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except OSError:  # EAGAIN, or EIO while nobody has the port open
            return
        if data:
            self._on_event()  # an open or close before these bytes is seen before them
            self._on_data(data)

    def write(self, data: bytes) -> bool:
        """Put ``data`` on the wire towards the program. False if nobody holds the port open
        (the bytes are lost, as with a closed USB-serial port) or the pty is gone."""
        self._on_event()  # a close that came first is seen first
        if not self.opened:
            self.lost_bytes += len(data)
            return False
        try:
            os.write(self.master, data)
        except OSError:
            return False
        return True

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.unwatch(self)
            self._watcher = None
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.master)
        for fd in (self.master, self.slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.master = self.slave = -1


def _input_queued(fd: int) -> int:
    """Bytes waiting in a tty's input queue (TIOCINQ / FIONREAD)."""
    buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", buf)[0])


async def write_paced(port: PtyPort, out: bytes, start: float, timing: LineTiming) -> bool:
    """Write ``out`` at the line's character rate, starting at ``start`` (monotonic time), so its
    last byte lands when it would on the wire. False if bytes fell off the wire because nobody
    held the port open at the moment they arrived."""
    step = max(1, int(CHUNK_S / timing.char_s))
    delivered = True
    for at in range(0, len(out), step):
        chunk = out[at : at + step]
        delay = start + timing.wire_s(at + len(chunk)) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        delivered = port.write(chunk) and delivered
    return delivered
