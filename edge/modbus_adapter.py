"""The only module that imports pymodbus (its API churns between minor releases).

:class:`ModbusTcpLink`: one TCP connection per host:port, shared by every unit id behind it,
with per-request timeout and retries set explicitly (never pymodbus's 3 s × 4). It reads the four
tables (FC 01-04) and writes coils (FC 05) and holding registers (FC 16). The simulators serve
with our own server (simulators/modbus_server.py): pymodbus's simulator cannot mute a unit, hand
bits to a behaviour model cleanly or inject byte-level faults.

pymodbus behaviours this module neutralises (see ../shared/reference/library-notes.md §1):

* it closes the TCP connection after ``retries + 3`` unanswered requests in a row, which would
  let one dead unit behind a TCP-to-RTU bridge cut off its healthy neighbours: the limit is
  raised, and the link is dropped only when the socket itself fails;
* it reconnects on its own with a delay doubling to 300 s: switched off, the link reconnects
  with its own capped backoff;
* it logs an ERROR per timeout plus a frame dump: its logger is quietened; callers log once per
  outage;
* it waits for responses with ``asyncio.wait_for``, which on Python 3.11 can swallow a
  cancellation that lands as the response arrives (CPython gh-86296, fixed in 3.12): a poller
  would then ignore shutdown and the gateway would hang. Every call restores it
  (:func:`_restore_cancel`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

__all__ = [
    "LinkDown",
    "ModbusDeviceError",
    "ModbusExceptionResponse",
    "ModbusTcpLink",
    "ModbusTimeout",
]

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

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


class LinkDown(ModbusDeviceError):
    """The TCP connection to the endpoint cannot be opened or broke. The link backs off."""


def _restore_cancel() -> None:
    """Re-raise a cancellation that pymodbus's wait_for swallowed (Python 3.11)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()


class ModbusTcpLink:
    """One connection to a Modbus TCP endpoint (a device, or a bridge with many unit ids).

    Requests are serialised: one in flight per connection, as pymodbus and most bridges require.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout_s: float = 2.0,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.host, self.port = host, port
        self.endpoint = f"{host}:{port}"
        self._client = AsyncModbusTcpClient(
            host, port=port, timeout=connect_timeout_s, retries=0, reconnect_delay=0
        )
        # A silent unit must not make pymodbus drop the connection shared with other units.
        self._client.set_max_no_responses(2**31)
        self._lock = asyncio.Lock()
        self._connect_timeout_s = connect_timeout_s
        self._backoff_min_s, self._backoff_max_s = backoff_min_s, backoff_max_s
        self._backoff_s = 0.0
        self._next_connect_at = 0.0
        self.connects = 0
        self.connect_failures = 0

    @property
    def connected(self) -> bool:
        return bool(self._client.connected)

    async def _ensure_connected(self, unit: int, address: int, count: int) -> None:
        if self._client.connected:
            return
        now = time.monotonic()
        where = {"endpoint": self.endpoint, "unit": unit, "address": address, "count": count}
        if now < self._next_connect_at:
            raise LinkDown(
                f"not connected; next attempt in {self._next_connect_at - now:.1f} s", **where
            )
        self._client.ctx.comm_params.timeout_connect = self._connect_timeout_s
        ok = await self._client.connect()
        _restore_cancel()
        if not ok:
            self.connect_failures += 1
            self._backoff_s = min(
                self._backoff_max_s, max(self._backoff_min_s, self._backoff_s * 2)
            )
            self._next_connect_at = now + self._backoff_s * random.uniform(0.8, 1.2)
            raise LinkDown("connection refused or timed out", **where)
        self.connects += 1
        self._backoff_s = 0.0

    async def _execute(
        self,
        unit: int,
        address: int,
        count: int,
        call: Callable[[], Awaitable[Any]],
        *,
        timeout_s: float,
        retries: int,
        what: str,
    ) -> Any:
        """Run one pymodbus request with our timeout and retries; map its failures to ours."""
        where = {"endpoint": self.endpoint, "unit": unit, "address": address, "count": count}
        async with self._lock:
            await self._ensure_connected(unit, address, count)
            ctx = self._client.ctx
            ctx.comm_params.timeout_connect = timeout_s
            ctx.retries = retries
            try:
                rr = await call()
                _restore_cancel()
            except ModbusIOException:
                _restore_cancel()
                raise ModbusTimeout(
                    f"no answer to a {what} in {timeout_s:.2f} s × {retries + 1} attempts",
                    **where,
                ) from None
            except ConnectionException as exc:
                self._client.close()
                raise LinkDown(f"connection lost: {exc}", **where) from None
            except ModbusException as exc:
                raise ModbusDeviceError(f"bad response: {exc}", **where) from None
        if rr.isError():
            raise ModbusExceptionResponse(int(rr.exception_code), **where)
        return rr

    async def read(
        self,
        unit: int,
        function_code: int,
        address: int,
        count: int,
        *,
        timeout_s: float,
        retries: int,
    ) -> list[int]:
        """Read ``count`` items: registers (FC 03 / 04) as words, or bits (FC 01 / 02) as 0 / 1."""
        fn = {
            1: self._client.read_coils,
            2: self._client.read_discrete_inputs,
            3: self._client.read_holding_registers,
            4: self._client.read_input_registers,
        }.get(function_code)
        if fn is None:
            raise ValueError(f"unsupported read function code {function_code}")
        rr = await self._execute(
            unit,
            address,
            count,
            lambda: fn(address, count=count, device_id=unit),
            timeout_s=timeout_s,
            retries=retries,
            what="read",
        )
        if function_code <= 2:
            # pymodbus pads bits to whole bytes
            regs = [int(b) for b in rr.bits[:count]] if len(rr.bits) >= count else []
        else:
            regs = list(rr.registers)
        if len(regs) != count:
            raise ModbusDeviceError(
                f"asked {count} items, got {len(regs)}",
                endpoint=self.endpoint,
                unit=unit,
                address=address,
                count=count,
            )
        return regs

    async def write(
        self, unit: int, address: int, registers: list[int], *, timeout_s: float, retries: int
    ) -> None:
        """Write holding registers (FC 16)."""
        await self._execute(
            unit,
            address,
            len(registers),
            lambda: self._client.write_registers(address, registers, device_id=unit),
            timeout_s=timeout_s,
            retries=retries,
            what="write",
        )

    async def write_coil(
        self, unit: int, address: int, value: bool, *, timeout_s: float, retries: int
    ) -> None:
        """Switch one coil (FC 05)."""
        await self._execute(
            unit,
            address,
            1,
            lambda: self._client.write_coil(address, bool(value), device_id=unit),
            timeout_s=timeout_s,
            retries=retries,
            what="write",
        )

    async def close(self) -> None:
        self._client.close()
