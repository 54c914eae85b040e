"""Time integrity on a machine without a real-time clock.

A Raspberry Pi boots with the last saved time (fake-hwclock) or 1970 and learns the real time
from NTP minutes later, if ever; an operator or the NTP daemon may step the clock at any moment.
Every reading therefore carries, besides its wall-clock time, a time quality:

* ``GOOD`` (0): stamped while the clock was trustworthy;
* ``CORRECTED`` (1): stamped while it was not, and later re-timed from the boot-time clock by
  the offset measured when the clock became trustworthy (same kernel boot, so exact to the
  NTP error);
* ``UNCERTAIN`` (2): stamped while it was not, and could not be corrected (the machine rebooted
  first, or the clock stayed untrusted longer than ``time.max_hold_s``): the value is real,
  its time is the wall clock's best guess.

While the clock is untrusted a reading is ``PENDING`` (3, never sent): it keeps its boot-time
stamp (``CLOCK_BOOTTIME``, which counts from power-on and never steps) and waits in the buffer.

The clock is trustworthy when it is above a plausibility floor (no reading of this software
can predate its build) and, when ``time.trust`` asks for it, the kernel says NTP synchronised it
(``adjtimex``: the same flag ``timedatectl`` shows). A *step* is a jump of the wall clock
against the boot-time clock; a step makes the clock untrusted until the next check finds it
synchronised again (a real ``settimeofday`` clears the kernel's synchronised flag too).

The source of time is injectable (:class:`ClockSource`): tests and the fault harness step a
:class:`FileClock` whose offset and synchronised flag a file holds.

The gateway's *time zone* (``time.zone``, an IANA name; default the system's) only says where
local days and hours begin, for processing windows of an hour or more (edge/agent/processing.py);
every timestamp the gateway sends stays UTC. Zones come from the standard library's
``zoneinfo``: the OS database (/usr/share/zoneinfo), else the ``tzdata`` package.
"""

from __future__ import annotations

import difflib
import io
import json
import logging
import os
import time
import zoneinfo
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from protocols.batch import Reading, Value

__all__ = [
    "CORRECTED",
    "GOOD",
    "PENDING",
    "PLAUSIBLE_FLOOR_MS",
    "UNCERTAIN",
    "ClockSource",
    "FileClock",
    "SystemClock",
    "TimeKeeper",
    "UnknownZone",
    "kernel_boot_id",
    "load_zone",
    "system_zone",
]

log = logging.getLogger(__name__)

GOOD, CORRECTED, UNCERTAIN, PENDING = 0, 1, 2, 3

#: No reading of this software predates this instant (its first release was built after it):
#: a clock below it was never set since power-on.
PLAUSIBLE_FLOOR_MS = 1_763_000_000_000  # 2025-11-13

#: A wall/boot-time offset that moves by more than this (plus 1 ms per second elapsed, well
#: above any NTP slew rate) between two looks is a step.
STEP_THRESHOLD_MS = 1000

_TIME_ERROR = 5  # adjtimex() return value: the clock is not synchronised


def kernel_boot_id() -> str:
    """This kernel boot's id (changes at every power-on); "" where the OS has none."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _boottime_ns() -> int:
    clock = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
    return time.clock_gettime_ns(clock)


class UnknownZone(ValueError):
    """``time.zone`` names no zone this machine knows. Fatal config error: fix the name."""


#: Files in a zone database that load as a zone but are not IANA zone names a consumer can look
#: up: the machine's own zone (``localtime``, a link to /etc/localtime), the default rules file,
#: and the ``posix/`` and ``right/`` copies (``right/`` counts leap seconds: 27 s off UTC).
_NOT_NAMES = {
    "localtime": "it is this machine's zone, which the birth cannot name for a consumer: "
    "leave time.zone out to follow the system's zone, or give its IANA name",
    "posixrules": "it is the zone database's default rules file, not a zone",
}


def _not_a_name(name: str) -> str | None:
    """Why ``name`` loads from the zone database but is not an IANA zone name, or None."""
    if name in _NOT_NAMES:
        return _NOT_NAMES[name]
    for prefix in ("posix/", "right/"):
        if name.startswith(prefix):
            return (
                f"{prefix} zones are copies of the IANA zones"
                + (" that count leap seconds (27 s off UTC)" if prefix == "right/" else "")
                + f": use {name[len(prefix) :]}"
            )
    return None


def load_zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA zone ``name`` (``Asia/Ho_Chi_Minh``), or :class:`UnknownZone` saying why.

    The name travels in the birth (``time_zone``), so it must be one a consumer can look up:
    files of the zone database that are not zone names (``localtime``, ``posixrules``,
    ``posix/...``, ``right/...``) are refused, saying what to write instead.
    """
    why = _not_a_name(name)
    if why is not None:
        raise UnknownZone(f"time zone {name!r} is not an IANA zone name: {why}")
    try:
        return zoneinfo.ZoneInfo(name)
    except (ValueError, KeyError, OSError, UnicodeError):
        pass
    hint = "an IANA name such as Asia/Ho_Chi_Minh or Europe/Berlin (timedatectl list-timezones)"
    try:
        known = zoneinfo.available_timezones()
    except OSError:
        known = set()
    if not known:
        hint += "; this machine has no time zone database: install tzdata"
    else:
        same_case = [k for k in known if k.lower() == name.lower()]
        close = same_case or difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
        if close:
            hint = f"did you mean {close[0]}?"
    raise UnknownZone(f"unknown time zone {name!r}: {hint}")


def system_zone() -> tuple[zoneinfo.ZoneInfo, str]:
    """The machine's local zone and where it came from (for ``edge check``).

    In order: ``TZ`` when it is an IANA name, the ``/etc/localtime`` link's target (what
    ``timedatectl set-timezone`` writes), ``/etc/timezone`` (Debian), ``/etc/localtime`` read
    as a file, else UTC.
    """
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        try:
            if tz.startswith("/"):
                return _zone_file(Path(tz)), f"TZ={tz}"
            if _not_a_name(tz) is None:
                return zoneinfo.ZoneInfo(tz), "TZ"
        except (ValueError, KeyError, OSError, UnicodeError):
            pass
        log.warning("TZ=%s is not an IANA time zone name; looking at /etc/localtime", tz)
    localtime = Path("/etc/localtime")
    with_key = str(localtime.resolve()) if localtime.is_symlink() else ""
    if "zoneinfo/" in with_key:
        try:
            return zoneinfo.ZoneInfo(with_key.split("zoneinfo/", 1)[1]), "/etc/localtime"
        except (ValueError, KeyError, OSError, UnicodeError):
            pass
    try:
        name = Path("/etc/timezone").read_text().strip()
        return zoneinfo.ZoneInfo(name), "/etc/timezone"
    except (ValueError, KeyError, OSError, UnicodeError):
        pass
    try:
        return _zone_file(localtime), "/etc/localtime"
    except (ValueError, OSError):
        pass
    return zoneinfo.ZoneInfo("UTC"), "no zone configured on this machine"


def _zone_file(path: Path) -> zoneinfo.ZoneInfo:
    """The zone in the TZif file ``path``, named by its IANA name (the birth carries it): the
    name under ``zoneinfo/`` in its real path, else the zone database's zone with the same
    bytes (a copied /etc/localtime). Only when none matches is it keyed ``localtime``, logged.
    """
    real = str(path.resolve())
    if "zoneinfo/" in real:
        name = real.rsplit("zoneinfo/", 1)[1]
        for prefix in ("posix/", "right/"):
            name = name.removeprefix(prefix)
        if _not_a_name(name) is None:
            try:
                return zoneinfo.ZoneInfo(name)
            except (ValueError, KeyError, OSError, UnicodeError):
                pass
    data = path.read_bytes()
    zone = zoneinfo.ZoneInfo.from_file(io.BytesIO(data), key="localtime")  # ValueError if no TZif
    name = _name_of_zone_bytes(data)
    if name is not None:
        return zoneinfo.ZoneInfo(name)
    log.warning(
        "the zone in %s matches no zone of the time zone database; the birth names it "
        "'localtime'. Set time.zone to its IANA name so consumers can read window starts",
        path,
    )
    return zone


def _name_of_zone_bytes(data: bytes) -> str | None:
    """The IANA name whose zone file holds exactly ``data`` (a canonical name before a link,
    such as Asia/Ho_Chi_Minh before Asia/Saigon), or None."""
    found = []
    for name in sorted(zoneinfo.available_timezones()):
        if _not_a_name(name) is not None:
            continue
        for root in zoneinfo.TZPATH:
            candidate = Path(root) / name
            try:
                if candidate.stat().st_size == len(data) and candidate.read_bytes() == data:
                    found.append((candidate.is_symlink(), "/" not in name, name))
            except OSError:
                continue
            break
    if not found:
        try:  # the tzdata package: the same zones as resources
            import importlib.resources

            base = importlib.resources.files("tzdata").joinpath("zoneinfo")
            for name in sorted(zoneinfo.available_timezones()):
                if _not_a_name(name) is None:
                    res = base.joinpath(*name.split("/"))
                    if res.is_file() and res.read_bytes() == data:
                        found.append((False, "/" not in name, name))
        except (ImportError, OSError):
            pass
    return min(found)[2] if found else None


class ClockSource(Protocol):
    def wall_ms(self) -> int: ...
    def boot_ms(self) -> int: ...
    def synced(self) -> bool | None: ...  # None: cannot tell
    def boot_id(self) -> str: ...


class SystemClock:
    """The machine's clocks; synchronisation from the kernel (``adjtimex``, read-only)."""

    def __init__(self) -> None:
        self._adjtimex = None
        try:
            import ctypes

            self._adjtimex = ctypes.CDLL(None).adjtimex
            self._timex = ctypes.create_string_buffer(512)  # larger than struct timex anywhere
        except (OSError, AttributeError):
            pass
        self._boot_id = kernel_boot_id()

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def boot_ms(self) -> int:
        return _boottime_ns() // 1_000_000

    def synced(self) -> bool | None:
        if self._adjtimex is None:
            return None
        self._timex.raw = bytes(len(self._timex))  # modes = 0: read only
        state = self._adjtimex(self._timex)
        return None if state < 0 else state != _TIME_ERROR

    def boot_id(self) -> str:
        return self._boot_id


class FileClock(SystemClock):
    """The system clock shifted by an offset that a JSON file holds, for tests and the harness.

    File: ``{"offset_ms": <int>, "synced": true|false}``, re-read at every look (a missing or
    half-written file keeps the last values). Set with ``EDGE_CLOCK_FILE``.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._offset = 0
        self._synced: bool | None = True
        self._mtime = -1.0

    def _load(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
            if mtime == self._mtime:
                return
            doc = json.loads(self.path.read_text())
            self._offset = int(doc.get("offset_ms", 0))
            self._synced = doc.get("synced", True)
            self._mtime = mtime
        except (OSError, ValueError, TypeError, AttributeError):
            pass

    def wall_ms(self) -> int:
        self._load()
        return super().wall_ms() + self._offset

    def synced(self) -> bool | None:
        self._load()
        return self._synced

    @staticmethod
    def write(path: str | Path, offset_ms: int, synced: bool) -> None:
        """Set the clock atomically (what the harness calls)."""
        p = Path(path)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps({"offset_ms": offset_ms, "synced": synced}))
        os.replace(tmp, p)


#: Process names (as /proc/<pid>/comm shows them, 15 characters at most) of NTP clients.
NTP_CLIENTS = frozenset({"chronyd", "ntpd", "openntpd", "systemd-timesyn", "ntpsec", "timesyncd"})


def ntp_client_running() -> bool:
    """Whether anything on this machine is synchronising the clock right now.

    Installed is not enough: a container or a VM often has systemd-timesyncd on disk and no
    systemd to run it, and its kernel then never reports the clock synchronised.
    """
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() in NTP_CLIENTS:
                return True
        except OSError:
            continue
    return False


@dataclass(frozen=True, slots=True)
class Stamp:
    ts_ms: int  # wall-clock time (trusted or not)
    tq: int  # GOOD or PENDING
    boot_ms: int  # boot-time clock, meaningful within ``TimeKeeper.boot_id``

    def reading(self, device: str, point: str, value: Value) -> Reading:
        if self.tq == GOOD:
            return Reading(device, point, self.ts_ms, value)
        return Reading(device, point, self.ts_ms, value, self.tq, self.boot_ms)


def keeper_for(trust: str) -> TimeKeeper:
    """The gateway's keeper for ``time.trust``; ``EDGE_CLOCK_FILE`` swaps in a :class:`FileClock`
    (the fault harness steps the clock of a gateway it runs as a process)."""
    path = os.environ.get("EDGE_CLOCK_FILE")
    source: ClockSource = FileClock(path) if path else SystemClock()
    if trust == "auto":
        trust = "ntp" if ntp_client_running() else "plausible"
        if trust == "plausible":
            log.warning(
                "no NTP client runs on this machine: the clock is trusted when plausible "
                "(set time.trust: ntp to require synchronisation)"
            )
    return TimeKeeper(source, require_sync=trust == "ntp")


class TimeKeeper:
    """Stamps readings and decides when the clock can be trusted.

    ``require_sync``: trust needs the kernel's synchronised flag (``time.trust: ntp``); without
    it (``plausible``) a clock above the floor is trusted until it steps.
    """

    def __init__(
        self,
        source: ClockSource | None = None,
        *,
        require_sync: bool = True,
        floor_ms: int = PLAUSIBLE_FLOOR_MS,
    ) -> None:
        self.source = source or SystemClock()
        self.require_sync = require_sync
        self.floor_ms = floor_ms
        self.boot_id = self.source.boot_id()
        self.steps = 0
        self._last_offset: int | None = None
        self._last_boot: int | None = None
        self._step_untrusted = False  # a step happened; trust again only after a sync
        self.trusted = False
        self.offset_ms = 0
        self.why = "not looked yet"
        self.look()

    def _judge(self, wall: int, synced: bool | None) -> tuple[bool, str]:
        if wall < self.floor_ms:
            return False, f"the clock says {time.strftime('%Y-%m-%d', time.gmtime(wall / 1000))}"
        if self._step_untrusted:
            if synced:
                self._step_untrusted = False
            else:
                return False, "the clock stepped and is not synchronised again yet"
        if self.require_sync and not synced:
            return False, "not synchronised by NTP yet" if synced is False else "sync unknown"
        return True, "synchronised" if synced else "plausible (sync not required)"

    def look(self) -> bool:
        """Read the clocks; return True when the clock has just become trustworthy."""
        wall, boot = self.source.wall_ms(), self.source.boot_ms()
        offset = wall - boot
        if self._last_offset is not None and self._last_boot is not None:
            allowed = STEP_THRESHOLD_MS + max(0, boot - self._last_boot) // 1000
            if abs(offset - self._last_offset) > allowed:
                self.steps += 1
                self._step_untrusted = True
                log.warning(
                    "clock step of %+.3f s detected (wall clock against boot time)",
                    (offset - self._last_offset) / 1000,
                )
        self._last_offset, self._last_boot = offset, boot
        before = self.trusted
        self.trusted, self.why = self._judge(wall, self.source.synced())
        self.offset_ms = offset
        if self.trusted and not before:
            log.info("clock trusted (%s); offset to boot time %d ms", self.why, offset)
            return True
        if before and not self.trusted:
            log.warning("clock no longer trusted: %s; readings wait for a good time", self.why)
        return False

    def stamp(self) -> Stamp:
        """The time of a reading taken now."""
        self.look()
        boot = self._last_boot or 0
        return Stamp(self.offset_ms + boot, GOOD if self.trusted else PENDING, boot)
