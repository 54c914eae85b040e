"""What every field-bus link (Modbus TCP, Modbus RTU on a serial line) raises, in one place.

Pollers see only these: a failure is always about one request to one unit, so one bad device is
never a reason to give up on its neighbours.
"""

from __future__ import annotations

import random
import time

from protocols.modbus_frame import Function, Request

__all__ = [
    "EXCEPTION_NAMES",
    "GATEWAY_NO_ANSWER",
    "Backoff",
    "LinkDown",
    "LinkOps",
    "ModbusDeviceError",
    "ModbusExceptionResponse",
    "ModbusGatewayNoAnswer",
    "ModbusTimeout",
    "exception_error",
]

#: Exception codes (Modbus Application Protocol §7).
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
#: Exception codes a gateway (TCP-to-RTU bridge) answers in the name of a unit that did not
#: answer it: 0x0A gateway path unavailable, 0x0B gateway target device failed to respond.
GATEWAY_NO_ANSWER = (0x0A, 0x0B)


class ModbusDeviceError(Exception):
    """A request to one device failed. Retry at the next poll; other devices are unaffected."""

    def __init__(self, message: str, *, endpoint: str, unit: int, address: int, count: int):
        self.endpoint, self.unit, self.address, self.count = endpoint, unit, address, count
        super().__init__(f"{endpoint} unit {unit} @{address:#06x}x{count}: {message}")


class ModbusTimeout(ModbusDeviceError):
    """No answer within timeout × (retries + 1)."""


class ModbusExceptionResponse(ModbusDeviceError):
    """The device answered with a Modbus exception (it is alive but refused the request)."""

    def __init__(self, code: int, **kw: int | str):
        self.code = code
        name = EXCEPTION_NAMES.get(code, "unknown")
        super().__init__(f"exception {code:#04x} ({name})", **kw)  # type: ignore[arg-type]


class ModbusGatewayNoAnswer(ModbusTimeout):
    """A gateway answered for the unit with exception 0x0A or 0x0B: the unit itself is absent or
    silent behind it. It is no answer from the device, like a timeout (a poller marks the device
    offline, opens its circuit breaker and backs off), not a refusal by a live device."""

    def __init__(self, code: int, **kw: int | str):
        self.code = code
        name = EXCEPTION_NAMES[code]
        super().__init__(  # type: ignore[arg-type]
            f"no answer from the unit: the gateway answered exception {code:#04x} ({name})", **kw
        )


def exception_error(code: int, where: dict[str, int | str]) -> ModbusDeviceError:
    """The error for a Modbus exception response with ``code`` (from a device or a gateway)."""
    if code in GATEWAY_NO_ANSWER:
        return ModbusGatewayNoAnswer(code, **where)
    return ModbusExceptionResponse(code, **where)


class LinkDown(ModbusDeviceError):
    """The connection (TCP socket or serial port) cannot be opened or broke. The link backs off."""


class LinkOps:
    """Reads and writes on top of a link's ``transact`` (Modbus TCP and RTU share them)."""

    async def transact(
        self, unit: int, req: Request, *, timeout_s: float, retries: int, gap_s: float = 0.0
    ) -> tuple[int, ...]:
        raise NotImplementedError

    async def read(
        self,
        unit: int,
        function_code: int,
        address: int,
        count: int,
        *,
        timeout_s: float,
        retries: int,
        gap_s: float = 0.0,
    ) -> list[int]:
        """Read ``count`` registers (FC 03 / 04) or bits (FC 01 / 02, as 0 / 1)."""
        if function_code not in (1, 2, 3, 4):
            raise ValueError(f"unsupported read function code {function_code}")
        values = await self.transact(
            unit,
            Request(Function(function_code), address, count),
            timeout_s=timeout_s,
            retries=retries,
            gap_s=gap_s,
        )
        return [int(v) for v in values]

    async def write(
        self,
        unit: int,
        address: int,
        registers: list[int],
        *,
        timeout_s: float,
        retries: int,
        gap_s: float = 0.0,
    ) -> None:
        """Write holding registers (FC 16)."""
        req = Request(Function.WRITE_MULTIPLE_REGISTERS, address, len(registers), tuple(registers))
        await self.transact(unit, req, timeout_s=timeout_s, retries=retries, gap_s=gap_s)

    async def write_coil(
        self,
        unit: int,
        address: int,
        value: bool,
        *,
        timeout_s: float,
        retries: int,
        gap_s: float = 0.0,
    ) -> None:
        """Switch one coil (FC 05)."""
        req = Request(Function.WRITE_SINGLE_COIL, address, 1, (bool(value),))
        await self.transact(unit, req, timeout_s=timeout_s, retries=retries, gap_s=gap_s)


class Backoff:
    """Reopening a port or a connection: the delay doubles from ``min_s`` to ``max_s`` after each
    failure, with ±20 % jitter so many links do not retry in step; a success resets it.

    What counts as a success is the caller's to say, and for a field-bus link it is a completed
    transaction, not an open: a bridge that accepts every TCP connection and resets it at once
    (or a USB adapter that opens and drops) must still be backed off. All the connections to
    one endpoint share one ``Backoff``, so its devices wait together."""

    def __init__(self, min_s: float = 0.5, max_s: float = 30.0) -> None:
        self.min_s, self.max_s = min_s, max_s
        self.delay_s = 0.0
        self.next_at = 0.0  # monotonic time before which no attempt is made

    def failed(self) -> float:
        """Record a failure; returns the (jittered) delay until the next attempt."""
        self.delay_s = min(self.max_s, max(self.min_s, self.delay_s * 2))
        wait = self.delay_s * random.uniform(0.8, 1.2)
        self.next_at = time.monotonic() + wait
        return wait

    def broke(self) -> float:
        """A connection that had opened broke: a failure, unless another connection of the
        same endpoint already failed and the next attempt is scheduled (one outage doubles the
        delay once). Returns the delay until the next attempt."""
        if left := self.wait_left():
            return left
        return self.failed()

    def succeeded(self) -> None:
        self.delay_s = 0.0
        self.next_at = 0.0

    def wait_left(self) -> float:
        return max(0.0, self.next_at - time.monotonic())


def where(endpoint: str, unit: int, req: Request) -> dict[str, int | str]:
    """The fields every :class:`ModbusDeviceError` names."""
    return {"endpoint": endpoint, "unit": unit, "address": req.address, "count": req.count}
