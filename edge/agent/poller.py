"""Poll one device on a fixed schedule, following its compiled read plan.

Each device has its own task and its own schedule, so a slow or dead device never delays the
others beyond the line time it really uses (devices on one TCP endpoint or serial line share it,
one request at a time). What one bad device may cost its neighbours is bounded:

* **Per-point quality.** A failed request loses only the points it carries; the rest of the
  cycle's readings are kept. The points that could not be read travel as the device's
  ``_bad_points`` series (comma-separated names, ``all``, or empty when every point was read),
  sent on every change, so the platform can tell a missing value from a dead device.
* **Circuit breaker.** A device that answered nothing in a whole cycle is ``offline``: it is
  then probed with its first request only, every interval × 2, 4, 8 ... up to
  ``PROBE_MAX_S``, so a dead device costs the line at most one timeout budget per probe period.
  The first answer closes the breaker and the full plan runs again in the same cycle. A
  gateway's exception 0x0A / 0x0B (a TCP-to-RTU bridge saying the unit behind it is absent or
  silent) is no answer from the device (:class:`~edge.fieldbus.link.ModbusGatewayNoAnswer`, a
  timeout), not a refusal: such a device is offline and probed like a silent one.
* **Learning.** A merged request refused with exception 02 (an address the device does not
  serve, somewhere in a gap) is split into requests that read no gap, read again at once, and
  the plan keeps the split; a single point still refused with 02 is dropped from the plan and
  stays in ``_bad_points``. Each change is logged once at WARNING with the new plan.

An outage is logged once at ERROR, then at DEBUG while it lasts, and at INFO when the device
answers again. Health (``_status``: online / degraded / offline) is a reading on every change.

A point whose registers arrived but give no value (a SunSpec scale factor outside -10..10, or
"not implemented", or a scale factor whose request failed this cycle) is in ``_bad_points`` like
an unread one, counted in ``PollStats.undecodable``, logged once at ERROR while it lasts and at
INFO when it decodes again. It says nothing about the link, so it leaves ``_status`` alone.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Protocol

from devices import Point, Profile, RegisterType
from edge.fieldbus.link import LinkDown, ModbusDeviceError, ModbusExceptionResponse
from edge.plan import CycleDecoder, ReadPlan, ReadRequest, split_request
from edge.settings import DeviceConfig
from edge.shared.clock import Stamp, TimeKeeper
from edge.shared.health import BAD_POINTS, STATUS_POINT
from protocols.batch import Reading

__all__ = ["PROBE_MAX_S", "DevicePoller", "Link", "PollStats"]

#: The longest wait between two probes of an offline device.
PROBE_MAX_S = 60.0
ILLEGAL_DATA_ADDRESS = 2

log = logging.getLogger(__name__)


class Link(Protocol):
    """A Modbus TCP endpoint or an RTU line (edge.fieldbus.modbus_tcp / edge.fieldbus.rtu)."""

    endpoint: str

    async def read(
        self, unit: int, function_code: int, address: int, count: int, **kw: float
    ) -> list[int]: ...

    async def write(self, unit: int, address: int, registers: list[int], **kw: float) -> None: ...

    async def write_coil(self, unit: int, address: int, value: bool, **kw: float) -> None: ...


@dataclass
class PollStats:
    polls: int = 0
    probes: int = 0  # cycles of an offline device that tried one request only
    skipped: int = 0  # cycles an offline device sat out (breaker open)
    requests: int = 0
    request_errors: int = 0
    readings: int = 0
    overruns: int = 0  # schedule slots skipped because a cycle ran late
    splits: int = 0  # merged requests split after exception 02
    undecodable: int = 0  # point readings whose registers gave no value (see the docstring)
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    last_success_ms: int | None = None


class DevicePoller:
    def __init__(
        self,
        device: DeviceConfig,
        plan: ReadPlan,
        link: Link,
        out: asyncio.Queue[list[Reading]],
        clock: TimeKeeper | None = None,
        *,
        profile: Profile | None = None,
    ) -> None:
        """``profile``: the device's profile, overrides applied (``LoadedConfig.profiles``);
        by default the one ``plan`` was compiled from."""
        self.device = device
        source = profile if profile is not None else plan.source
        if source is None:
            raise ValueError(f"device {device.id}: no profile to poll it with")
        self.profile: Profile = source
        self.clock = clock or TimeKeeper(require_sync=False)
        self.plan = plan
        self.requests: list[ReadRequest] = list(plan.requests)  # learning may split them
        self.link = link
        self.out = out
        self.stats = PollStats()
        self.interval_s = device.poll_interval_s  # a platform command may change it
        self.status: str | None = None  # online / degraded / offline, once known
        self.status_since: float | None = None  # wall-clock time of its last change, for the page
        self.bad_points: str | None = None  # last value sent on BAD_POINTS
        self.unserved: set[str] = set()  # points the device refused one by one (exception 02)
        self.undecodable: dict[str, str] = {}  # point -> why its registers gave no value
        self._scale_names = plan.scale_names
        self.last: dict[str, tuple[int, object]] = {}  # point -> (ts_ms, value), for the page
        self._failing_since: float | None = None
        self._failures_in_outage = 0
        self._probe_backoff_s = 0.0
        self._next_probe_at = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        while True:
            interval = self.interval_s
            await self.poll_once()
            next_t += interval
            now = loop.time()
            if next_t <= now:
                missed = int((now - next_t) // interval) + 1
                self.stats.overruns += missed
                next_t += missed * interval
            await asyncio.sleep(next_t - now)

    def _io(self) -> dict[str, float]:
        dev = self.device
        return {
            "timeout_s": dev.timeout_ms / 1000.0,
            "retries": dev.retries,
            "gap_s": dev.inter_request_delay_ms / 1000.0,
        }

    async def _read(self, req: ReadRequest) -> list[int]:
        self.stats.requests += 1
        return await self.link.read(
            self.device.transport.unit, req.function_code, req.address, req.count, **self._io()
        )

    def _count(self, exc: ModbusDeviceError) -> None:
        self.stats.request_errors += 1
        kind = type(exc).__name__
        self.stats.errors_by_kind[kind] = self.stats.errors_by_kind.get(kind, 0) + 1

    async def poll_once(self) -> list[Reading]:
        dev = self.device
        now = time.monotonic()
        probing = self.status == "offline"
        if probing and now < self._next_probe_at:
            self.stats.skipped += 1
            return []
        self.stats.polls += 1
        if probing:
            self.stats.probes += 1
        readings: list[Reading] = []
        errors: list[ModbusDeviceError] = []
        bad: list[str] = sorted(self.unserved)
        queue = list(self.requests)
        answered = False
        cycle: CycleDecoder[Stamp] = CycleDecoder(self._scale_names)
        failed: list[tuple[Point, str]] = []
        decoded: set[str] = set()
        while queue:
            req = queue.pop(0)
            try:
                regs = await self._read(req)
            except ModbusExceptionResponse as exc:
                answered = True  # alive, it refused (a gateway's 0x0A / 0x0B is not this)
                if exc.code == ILLEGAL_DATA_ADDRESS:
                    parts = self._learn(req)
                    if parts:
                        queue[:0] = parts  # read the parts of the split request right away
                        continue
                errors.append(exc)
                self._count(exc)
                bad += [p.name for p in req.points]
                continue
            except ModbusDeviceError as exc:
                errors.append(exc)
                self._count(exc)
                bad += [p.name for p in req.points]
                if isinstance(exc, LinkDown) or (probing and not answered):
                    break  # the line is down, or the probe failed: don't spend more on it
                continue
            answered = True
            if probing:
                probing = False  # the breaker closes: the rest of the plan runs now
            stamp = self.clock.stamp()
            done, why = cycle.feed(req, regs, stamp)
            for at, point, value in done:
                readings.append(at.reading(dev.id, point.name, value))
                decoded.add(point.name)
            failed += why
        failed += cycle.unresolved()
        bad += [p.name for p, _ in failed]
        if failed or self.undecodable:
            self._report_values(failed, decoded)
        if not answered:
            bad = [p.name for r in self.requests for p in r.points] + sorted(self.unserved)
        self._report(errors)
        self._breaker(answered, now)
        stamp = self.clock.stamp()
        status = "online" if not errors else "degraded" if answered else "offline"
        if not self.requests and self.unserved:
            status = "degraded"  # it answers, but serves none of its points: nothing to send
        if status != self.status:
            # The platform sees health changes as readings, in order with the data.
            self.status = status
            self.status_since = time.time()
            readings.append(stamp.reading(dev.id, STATUS_POINT, status))
        n_points = sum(len(r.points) for r in self.requests) + len(self.unserved)
        bad_value = (
            "" if not bad else "all" if len(set(bad)) >= n_points else ",".join(sorted(set(bad)))
        )
        if bad_value != self.bad_points:
            self.bad_points = bad_value
            readings.append(stamp.reading(dev.id, BAD_POINTS, bad_value))
        for r in readings:
            self.last[r.point] = (r.ts_ms, r.value)
        if readings:
            self.stats.readings += len(readings)
            self.stats.last_success_ms = readings[-1].ts_ms
            # Backpressure, not loss: if the writer is behind, this poll waits for room.
            await self.out.put(readings)
        return readings

    def _breaker(self, answered: bool, now: float) -> None:
        if answered:
            self._probe_backoff_s = 0.0
            return
        self._probe_backoff_s = min(
            max(PROBE_MAX_S, self.interval_s), max(self.interval_s * 2, self._probe_backoff_s * 2)
        )
        self._next_probe_at = now + self._probe_backoff_s * random.uniform(0.9, 1.1)

    def _learn(self, req: ReadRequest) -> list[ReadRequest]:
        """Exception 02 to ``req``: the requests to read instead (none if it is one point)."""
        profile = self.profile
        at = self.requests.index(req) if req in self.requests else None
        if len(req.points) == 1:
            (p,) = req.points
            self.unserved.add(p.name)
            if at is not None:
                del self.requests[at]
            log.warning(
                "device %s: %s at %#06x is not served (exception 02); dropped from the plan: "
                "%d requests left",
                self.device.id,
                p.name,
                p.address,
                len(self.requests),
            )
            if not self.requests:
                log.error(
                    "device %s serves none of the %d points its profile %s names (exception 02 "
                    "at every address): it stays degraded and sends no data. A map that counts "
                    "from 1 or writes 30001 / 40001 reads one register off: set address_base "
                    "in the profile, or address_offset on the device (docs/profile-format.md)",
                    self.device.id,
                    len(self.unserved),
                    profile.name,
                )
            return []
        parts = split_request(profile, req)
        self.stats.splits += 1
        if at is not None:
            self.requests[at : at + 1] = parts
        log.warning(
            "device %s: exception 02 to %s @%#06x x%d; reading it as %d requests without the "
            "gaps from now on (%d requests in the plan)",
            self.device.id,
            f"FC{req.function_code:02d}",
            req.address,
            req.count,
            len(parts),
            len(self.requests),
        )
        return parts

    def point_names(self) -> tuple[str, ...]:
        return tuple(p.name for r in self.plan.requests for p in r.points)

    def summary(self) -> str:
        return f"{self.device.transport.describe()}: {self.plan.summary()}"

    def point_is_bit(self, point_name: str) -> bool:
        """True when the point is a coil or discrete input (its value is true / false)."""
        try:
            return self.profile.point(point_name).register_type.is_bits
        except KeyError:
            return False

    def _report_values(self, failed: list[tuple[Point, str]], decoded: set[str]) -> None:
        """Log points whose registers gave no value: once when it starts, INFO when it ends
        (when the point decodes again; a cycle that did not read it says nothing)."""
        now = {p.name: why for p, why in failed}
        self.stats.undecodable += len(failed)
        for name, why in now.items():
            if name not in self.undecodable:
                log.error(
                    "device %s: point %s gives no value: %s; logged at DEBUG until it does",
                    self.device.id,
                    name,
                    why,
                )
            else:
                log.debug("device %s: point %s still gives no value: %s", self.device.id, name, why)
        for name in sorted(self.undecodable.keys() & decoded):
            log.info("device %s: point %s gives values again", self.device.id, name)
        self.undecodable = {
            name: why
            for name, why in self.undecodable.items()
            if name not in decoded and name not in now
        } | now

    async def write(self, point_name: str, value: float | int | bool) -> float | int | bool:
        """Write one writable point (a coil with FC 05, registers with FC 16) and read it back;
        returns the value the device holds."""
        profile = self.profile
        try:
            point = profile.point(point_name)
        except KeyError:
            raise ValueError(f"profile {profile.name} has no point {point_name!r}") from None
        if not point.writable:
            raise ValueError(f"{profile.name} point {point_name!r} is not writable")
        try:
            regs = point.encode_write(value)
        except ValueError as exc:
            raise ValueError(f"{profile.name} point {point_name!r} {exc}") from None
        unit, io = self.device.transport.unit, self._io()
        if point.register_type is RegisterType.COIL:
            await self.link.write_coil(unit, point.address, bool(regs[0]), **io)
        else:
            await self.link.write(unit, point.address, regs, **io)
        back = await self.link.read(
            unit, point.register_type.read_function, point.address, point.count, **io
        )
        if back != regs:
            raise ModbusDeviceError(
                f"read-back {back} differs from what was written {regs}",
                endpoint=self.link.endpoint,
                unit=unit,
                address=point.address,
                count=point.count,
            )
        value_back = point.decode(back)
        assert not isinstance(value_back, str)  # a string is never writable
        return value_back

    def _report(self, errors: list[ModbusDeviceError]) -> None:
        dev = self.device
        if errors:
            self.stats.last_error = str(errors[0])
            self._failures_in_outage += len(errors)
            if self._failing_since is None:
                self._failing_since = time.monotonic()
                log.error(
                    "device %s: %s%s; logged at DEBUG until it recovers",
                    dev.id,
                    errors[0],
                    f" (+{len(errors) - 1} more requests failed)" if len(errors) > 1 else "",
                )
            else:
                for exc in errors:
                    log.debug("device %s: still failing: %s", dev.id, exc)
        elif self._failing_since is not None and (self.requests or not self.unserved):
            log.info(
                "device %s recovered after %.1f s (%d failed requests)",
                dev.id,
                time.monotonic() - self._failing_since,
                self._failures_in_outage,
            )
            self._failing_since = None
            self._failures_in_outage = 0
