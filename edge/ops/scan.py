"""Find devices: the unit ids that answer on a serial line (at which setting) or behind a gateway.

A unit is *there* when it answers a small read with anything valid, an exception included
(exception 02 means "alive, but I have no register 0"). Exceptions 0x0A / 0x0B come from a
TCP-to-RTU gateway saying the unit is not there. For every unit found, each Modbus profile's
read plan is tried and scored by how many of its requests the unit answers without an exception:
a meter answers a meter's map, a lighting controller its coils. The best score is the guess.
The candidates are the shipped profiles and, given ``profiles`` (``edge scan --profiles``), the
technician's own profile files, ranked alike.

On a serial line the common settings are tried in order of how often devices ship with them; the
first setting at which a unit answers is kept and the line scanned fully at it (devices on one
line share a setting), unless ``all_settings`` asks to try every one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from devices.profile import Profile
from edge.fieldbus.link import LinkDown, ModbusDeviceError, ModbusExceptionResponse
from edge.plan import compile_plan
from edge.profiles import modbus_profiles
from protocols.modbus_frame import LineTiming

__all__ = ["COMMON_SETTINGS", "Found", "guess_profile", "parse_units", "probe_unit", "scan_rtu"]

#: (baud, parity, stop bits), most common first: Eastron and most sensors ship at 9600 8N1;
#: the Modbus spec's default is 8E1; 19200 is common on newer sensors, 2400 on the SDM120.
COMMON_SETTINGS: tuple[tuple[int, str, int], ...] = (
    (9600, "N", 1),
    (9600, "E", 1),
    (19200, "N", 1),
    (19200, "E", 1),
    (2400, "N", 1),
    (4800, "N", 1),
    (38400, "N", 1),
    (115200, "N", 1),
    (9600, "N", 2),
    (19200, "N", 2),
    (9600, "O", 1),
    (19200, "O", 1),
)


@dataclass
class Found:
    unit: int
    where: str  # "9600 8N1" or "host:port"
    #: (profile, requests answered, requests tried, points in the answered requests), best first
    guesses: list[tuple[str, int, int, int]]

    @property
    def guess(self) -> str:
        if not self.guesses or self.guesses[0][1] == 0:
            return "unknown"
        best = _rank(self.guesses[0])
        return " or ".join(g[0] for g in self.guesses if _rank(g) == best)


def _rank(score: tuple[str, int, int, int]) -> tuple[float, int]:
    """Best first: the largest share of its plan answered; among maps answered alike, the one
    that explains the most points (a meter answers every request of a smaller map laid over its
    own: an SDM630 answers all of the SDM230's)."""
    _, answered, tried, points = score
    return (-answered / tried, -points)


def parse_units(text: str, lowest: int = 1, highest: int = 247, where: str = "") -> list[int]:
    """'1-247', '1,2,5-9' -> unit ids, each in ``lowest``..``highest`` (1..247 on a serial
    line; behind TCP 0..255; ``where`` says which in a message). ValueError naming the part
    that is not a unit id or a range."""
    out: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise ValueError(
                f"--units takes unit ids and ranges such as 1-32 or 1,2,10-20, not {part[:40]!r}"
            )
        a, b = int(lo), int(hi or lo)
        if not (lowest <= a <= b <= highest):
            raise ValueError(
                f"--units {part.strip()[:40]}: unit ids{where} are {lowest}..{highest}"
                + (", a range low to high" if a > b else "")
            )
        out.extend(range(a, b + 1))
    return out


async def probe_unit(link, unit: int, timeout_s: float) -> bool:
    """Does anything answer at ``unit``? (a read of one holding register at 0)"""
    try:
        await link.read(unit, 3, 0, 1, timeout_s=timeout_s, retries=0)
    except ModbusExceptionResponse:
        # Something is there and refused the read (0x0A / 0x0B from a bridge are not this:
        # they raise ModbusGatewayNoAnswer, a kind of no answer).
        return True
    except LinkDown:
        raise
    except ModbusDeviceError:
        return False
    return True


async def guess_profile(
    link, unit: int, timeout_s: float, profiles: Mapping[str, Profile] | None = None
) -> list[tuple[str, int, int, int]]:
    """Every candidate profile's score at ``unit``, best first: (name, requests of its read plan
    answered without an exception, requests, points those answers hold). ``profiles``: the
    candidates (default the shipped Modbus profiles; ``edge scan --profiles`` adds the user's)."""
    scores = []
    for name, profile in sorted((modbus_profiles() if profiles is None else profiles).items()):
        plan = compile_plan(profile)
        ok = points = 0
        for req in plan.requests:
            try:
                await link.read(
                    unit, req.function_code, req.address, req.count, timeout_s=timeout_s, retries=1
                )
                ok += 1
                points += len(req.points)
            except ModbusDeviceError:
                pass
        scores.append((name, ok, len(plan.requests), points))
    scores.sort(key=lambda s: (*_rank(s), s[0]))
    return scores


async def scan_rtu(
    port: str,
    units: Sequence[int],
    *,
    settings: Sequence[tuple[int, str, int]] = COMMON_SETTINGS,
    turnaround_s: float = 0.05,
    all_settings: bool = False,
    progress: Callable[[str], None] = lambda _: None,
    profiles: Mapping[str, Profile] | None = None,
) -> list[Found]:
    from edge.fieldbus.rtu import RtuLink

    found: list[Found] = []
    for baud, parity, stop in settings:
        timing = LineTiming(baud, parity, stop)
        label = f"{baud} 8{parity}{stop}"
        timeout_s = timing.transaction_s(8, 7, turnaround_s)
        # The sweep asks each address once: a late answer names its own unit and cannot be
        # taken for the next address's, so it needs no late-answer window (which would double
        # the sweep); reading one unit's registers to guess its profile does (edge/fieldbus/rtu.py).
        link = RtuLink(port, timing, late_answer_s=0.0)
        here: list[int] = []
        started = time.monotonic()
        try:
            for i, unit in enumerate(units):
                if i % 16 == 0:
                    progress(f"{label}: unit {unit}/{units[-1]}, {len(here)} found")
                if await probe_unit(link, unit, timeout_s):
                    here.append(unit)
                    progress(f"{label}: unit {unit} answers")
            link.late_answer_s = None
            for unit in here:
                guesses = await guess_profile(link, unit, max(timeout_s, 0.3), profiles)
                found.append(Found(unit, label, guesses))
        except LinkDown as exc:
            progress(f"{label}: skipped, the port does not take this setting ({exc})")
            continue
        finally:
            await link.close()
        progress(f"{label}: {len(here)} units in {time.monotonic() - started:.1f} s")
        if here and not all_settings:
            break
    return found


async def scan_tcp(
    host: str,
    port: int,
    units: Sequence[int],
    *,
    timeout_s: float = 0.3,
    progress: Callable[[str], None] = lambda _: None,
    profiles: Mapping[str, Profile] | None = None,
) -> list[Found]:
    from edge.fieldbus.modbus_tcp import ModbusTcpLink

    link = ModbusTcpLink(host, port)
    found = []
    try:
        for i, unit in enumerate(units):
            if i % 16 == 0:
                progress(f"{host}:{port}: unit {unit}/{units[-1]}, {len(found)} found")
            if await probe_unit(link, unit, timeout_s):
                progress(f"{host}:{port}: unit {unit} answers")
                guesses = await guess_profile(link, unit, 1.0, profiles)
                found.append(Found(unit, f"{host}:{port}", guesses))
    finally:
        await link.close()
    return found
