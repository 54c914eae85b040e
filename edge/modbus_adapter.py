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

from edge.fieldbus import (
    LinkDown,
    ModbusDeviceError,
    ModbusExceptionResponse,
    ModbusTimeout,
)

__all__ = [
    "LinkDown",
    "ModbusDeviceError",
    "ModbusExceptionResponse",
    "ModbusTcpLink",
    "ModbusTimeout",
]

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


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
        self._last_done = 0.0

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
        gap_s: float = 0.0,
    ) -> Any:
        """Run one pymodbus request with our timeout and retries; map its failures to ours.
        ``gap_s``: quiet time the device needs after the previous answer (a slow bridge)."""
        where = {"endpoint": self.endpoint, "unit": unit, "address": address, "count": count}
        async with self._lock:
            if gap_s > 0:
                wait = self._last_done + gap_s - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
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
            finally:
                self._last_done = time.monotonic()
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
        gap_s: float = 0.0,
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
            gap_s=gap_s,
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
        await self._execute(
            unit,
            address,
            len(registers),
            lambda: self._client.write_registers(address, registers, device_id=unit),
            timeout_s=timeout_s,
            retries=retries,
            what="write",
            gap_s=gap_s,
        )

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
        await self._execute(
            unit,
            address,
            1,
            lambda: self._client.write_coil(address, bool(value), device_id=unit),
            timeout_s=timeout_s,
            retries=retries,
            what="write",
            gap_s=gap_s,
        )

    async def close(self) -> None:
        self._client.close()
