"""Poll one device on a fixed schedule, following its compiled read plan.

Each device has its own task and its own schedule, so a slow or dead device never delays the
others (devices behind one TCP endpoint share that connection, one request at a time). A failed
request only loses the points it carries; the rest of the cycle's readings are kept. An outage is
logged once at ERROR, then at DEBUG while it lasts, and at INFO when the device answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from devices import RegisterType, get_profile
from edge.config import DeviceConfig
from edge.modbus_adapter import LinkDown, ModbusDeviceError, ModbusTcpLink
from edge.plan import ReadPlan
from protocols.batch import Reading
from protocols.modbus import ModbusValueError, decode_value, encode_value

__all__ = ["STATUS_POINT", "DevicePoller", "PollStats"]

#: The series that carries a device's health: "online", "degraded" or "offline" on each change.
STATUS_POINT = "_status"

log = logging.getLogger(__name__)


@dataclass
class PollStats:
    polls: int = 0
    requests: int = 0
    request_errors: int = 0
    readings: int = 0
    overruns: int = 0  # schedule slots skipped because a cycle ran late
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    last_success_ms: int | None = None


class DevicePoller:
    def __init__(
        self,
        device: DeviceConfig,
        plan: ReadPlan,
        link: ModbusTcpLink,
        out: asyncio.Queue[list[Reading]],
    ) -> None:
        self.device = device
        self.plan = plan
        self.link = link
        self.out = out
        self.stats = PollStats()
        self.interval_s = device.poll_interval_s  # a platform command may change it
        self.status: str | None = None  # online / degraded / offline, once known
        self._failing_since: float | None = None
        self._failures_in_outage = 0

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

    async def poll_once(self) -> list[Reading]:
        dev = self.device
        unit = dev.transport.unit
        timeout_s = dev.timeout_ms / 1000.0
        readings: list[Reading] = []
        errors: list[ModbusDeviceError] = []
        self.stats.polls += 1
        for req in self.plan.requests:
            self.stats.requests += 1
            try:
                regs = await self.link.read(
                    unit,
                    req.function_code,
                    req.address,
                    req.count,
                    timeout_s=timeout_s,
                    retries=dev.retries,
                )
            except ModbusDeviceError as exc:
                errors.append(exc)
                self.stats.request_errors += 1
                kind = type(exc).__name__
                self.stats.errors_by_kind[kind] = self.stats.errors_by_kind.get(kind, 0) + 1
                if isinstance(exc, LinkDown):
                    break  # the endpoint is unreachable: the other requests would fail too
                continue
            ts_ms = time.time_ns() // 1_000_000
            for point, value in req.decode(regs):
                readings.append(Reading(dev.id, point.name, ts_ms, value))
        self._report(errors)
        status = "online" if not errors else "degraded" if readings else "offline"
        if status != self.status:
            # The platform sees health changes as readings, in order with the data.
            self.status = status
            readings.append(Reading(dev.id, STATUS_POINT, time.time_ns() // 1_000_000, status))
        if readings:
            self.stats.readings += len(readings)
            self.stats.last_success_ms = readings[-1].ts_ms
            # Backpressure, not loss: if the writer is behind, this poll waits for room.
            await self.out.put(readings)
        return readings

    def point_is_bit(self, point_name: str) -> bool:
        """True when the point is a coil or discrete input (its value is true / false)."""
        try:
            return get_profile(self.device.profile).point(point_name).register_type.is_bits
        except KeyError:
            return False

    async def write(self, point_name: str, value: float | int | bool) -> float | int | bool:
        """Write one writable point (a coil with FC 05, registers with FC 16) and read it back;
        returns the value the device holds."""
        profile = get_profile(self.device.profile)
        try:
            point = profile.point(point_name)
        except KeyError:
            raise ValueError(f"profile {profile.name} has no point {point_name!r}") from None
        if not point.writable:
            raise ValueError(f"{profile.name} point {point_name!r} is not writable")
        if point.limits is not None and not point.limits[0] <= value <= point.limits[1]:
            lo, hi = point.limits
            raise ValueError(
                f"{profile.name} point {point_name!r} accepts {lo:g}..{hi:g}, not {value}"
            )
        try:
            regs = encode_value(value, point.dtype, point.word_order, scale=point.scale)
        except ModbusValueError as exc:
            raise ValueError(str(exc)) from None
        dev = self.device
        unit, timeout_s = dev.transport.unit, dev.timeout_ms / 1000.0
        if point.register_type is RegisterType.COIL:
            await self.link.write_coil(
                unit, point.address, bool(regs[0]), timeout_s=timeout_s, retries=dev.retries
            )
        else:
            await self.link.write(
                unit, point.address, regs, timeout_s=timeout_s, retries=dev.retries
            )
        back = await self.link.read(
            unit,
            point.register_type.read_function,
            point.address,
            point.count,
            timeout_s=timeout_s,
            retries=dev.retries,
        )
        if back != regs:
            raise ModbusDeviceError(
                f"read-back {back} differs from what was written {regs}",
                endpoint=self.link.endpoint,
                unit=unit,
                address=point.address,
                count=point.count,
            )
        return decode_value(back, point.dtype, point.word_order, scale=point.scale)

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
        elif self._failing_since is not None:
            log.info(
                "device %s recovered after %.1f s (%d failed requests)",
                dev.id,
                time.monotonic() - self._failing_since,
                self._failures_in_outage,
            )
            self._failing_since = None
            self._failures_in_outage = 0
