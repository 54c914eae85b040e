"""A Modbus TCP server for simulated units, on :mod:`protocols.modbus_frame` (no pymodbus).

One server is one device with a TCP port, or a TCP-to-RTU bridge with several unit ids behind
it. Every request is parsed and answered byte for byte as the Modbus spec says; the units decide
the content (:class:`SimUnit`). Faults on demand: ``silent_units`` (a dead device behind a
bridge: no answer at all), ``silent_all`` (the whole endpoint stalls), ``delay_s`` (a slow
device; ``unit_delay_s``: one slow unit behind a bridge). A unit id nobody serves gets exception
0x0B, as a bridge answers when its target does not respond. A connection that sends something
that is not Modbus TCP is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Protocol

from protocols.modbus_frame import (
    ExceptionCode,
    FrameError,
    MbapStream,
    RequestError,
    decode_request,
    encode_exception,
    encode_mbap,
    encode_response,
)

__all__ = ["ModbusSim", "SimServer", "SimUnit", "serve_tcp"]

log = logging.getLogger(__name__)

GATEWAY_TARGET_FAILED = 0x0B


class SimUnit(Protocol):
    """One simulated unit id: answers reads and writes, or names the exception to answer."""

    unit_id: int

    def read(self, function_code: int, address: int, count: int) -> list[int] | int:
        """Registers (FC 3/4) or bits as 0/1 (FC 1/2), or a Modbus exception code."""
        ...

    def write(self, function_code: int, address: int, values: list[int]) -> int | None:
        """Apply a write (FC 5/6/15/16); None, or a Modbus exception code."""
        ...


@dataclass
class ModbusSim:
    """Units behind one endpoint (a TCP port or a serial line) and the faults switched on."""

    units: dict[int, SimUnit]
    silent_units: set[int] = field(default_factory=set)
    silent_all: bool = False
    #: unit -> exception code it answers to every request (02, 04, 06: a device in trouble)
    exception_units: dict[int, int] = field(default_factory=dict)
    #: units that do not apply broadcast writes (Eastron says its meters ignore them, §1.1)
    no_broadcast_units: set[int] = field(default_factory=set)
    requests: int = 0
    broadcasts: int = 0  # broadcast writes applied (by one unit or more)
    ignored_broadcasts: int = 0  # broadcast reads and malformed broadcasts: nobody acts

    def answer(self, unit: int, pdu: bytes) -> bytes | None:
        """The response PDU to one request PDU, or None for no answer."""
        self.requests += 1
        if self.silent_all or unit in self.silent_units:
            return None
        sim = self.units.get(unit)
        try:
            req = decode_request(pdu)
        except RequestError as exc:
            return encode_exception(exc.function, exc.code)
        except FrameError:
            return None
        if sim is None:
            return self.unknown_unit(req.function)
        if unit in self.exception_units:
            return encode_exception(req.function, self.exception_units[unit])
        try:
            if req.is_read:
                result = sim.read(req.function, req.address, req.count)
                if isinstance(result, int):
                    return encode_exception(req.function, result)
                return encode_response(req, result)
            code = sim.write(req.function, req.address, list(req.values))
            if code:
                return encode_exception(req.function, code)
            return encode_response(req)
        except Exception:  # a simulator bug must look like a device failure, not kill the port
            log.exception("simulated unit %d failed on %s", unit, req)
            return encode_exception(req.function, ExceptionCode.SERVER_DEVICE_FAILURE)

    def broadcast(self, pdu: bytes) -> int:
        """A request to address 0 on a serial line: every unit applies a write (FC 5/6/15/16)
        and none answers; a read or a malformed request is ignored (Modbus over Serial Line
        V1.02 §2.1: "broadcast requests are necessarily writing commands", "no response is
        returned to broadcast requests"). A unit whose map refuses the write, a dead unit
        (``silent_units``) or one answering only exceptions does nothing. Returns how many
        units applied it."""
        self.requests += 1
        try:
            req = decode_request(pdu)
        except FrameError:  # RequestError included: nobody answers a broadcast, not even 01
            self.ignored_broadcasts += 1
            return 0
        if req.is_read:
            self.ignored_broadcasts += 1
            return 0
        applied = 0
        for unit_id, sim in self.units.items():
            if (
                self.silent_all
                or unit_id in self.silent_units
                or unit_id in self.exception_units
                or unit_id in self.no_broadcast_units
            ):
                continue
            try:
                refused = sim.write(req.function, req.address, list(req.values))
            except Exception:
                log.exception("simulated unit %d failed on broadcast %s", unit_id, req)
                continue
            applied += not refused
        self.broadcasts += applied > 0
        return applied

    def unknown_unit(self, function: int) -> bytes | None:
        """A TCP-to-RTU bridge answers 0x0B for a unit that is not there."""
        return encode_exception(function, GATEWAY_TARGET_FAILED)


@dataclass
class SimServer(ModbusSim):
    """A running Modbus TCP endpoint; the fault switches apply from the next request on."""

    host: str = "127.0.0.1"
    port: int = 0
    delay_s: float = 0.0
    unit_delay_s: dict[int, float] = field(default_factory=dict)  # unit -> its answers' delay
    _server: asyncio.Server | None = None
    _conns: dict[asyncio.Task[None], asyncio.StreamWriter] = field(default_factory=dict)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns[task] = writer
        stream = MbapStream()
        try:
            while data := await reader.read(4096):
                for tid, unit, pdu in stream.feed(data):
                    reply = self.answer(unit, pdu)
                    delay = self.unit_delay_s.get(unit, self.delay_s)
                    if delay:
                        await asyncio.sleep(delay)
                    if reply is not None:
                        writer.write(encode_mbap(tid, unit, reply))
                await writer.drain()
        except FrameError as exc:
            log.info("closing a connection that is not Modbus TCP: %s", exc)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._conns.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        # Close the sockets rather than cancel the handlers: on Python 3.11 a cancelled
        # client_connected_cb is reported as an unhandled exception by asyncio's streams.
        for writer in list(self._conns.values()):
            writer.close()
        if self._conns:
            await asyncio.wait(list(self._conns), timeout=2.0)
        if self._server is not None:
            await self._server.wait_closed()


async def serve_tcp(units: list[SimUnit], host: str = "127.0.0.1", port: int = 0) -> SimServer:
    """Serve ``units`` on ``host:port`` (0 picks a free port); returns the running server."""
    sim = SimServer({u.unit_id: u for u in units}, host=host)
    server = await asyncio.start_server(sim._serve, host, port)
    sim._server = server
    sim.port = server.sockets[0].getsockname()[1]
    return sim
