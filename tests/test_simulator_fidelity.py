"""The simulators behave like the hardware, as an independent Modbus master sees them.

Case 12 of issue 15: a pty line that kept an answer for the next program to open it, writes
past the mapped registers that were accepted, broadcast writes that nobody applied, and a meter
whose maximum demand read below its demand. The master here is deliberately not the gateway's
RtuLink: a raw file descriptor, no flush when it opens the port (as libmodbus connects).
"""

from __future__ import annotations

import asyncio
import os
import termios
import time
import tty

from protocols.modbus_frame import (
    Function,
    LineTiming,
    Request,
    decode_response,
    decode_rtu,
    encode_request,
    encode_rtu,
)
from simulators import sim_unit
from simulators.rtu_line import serve_rtu

LINE = LineTiming(9600, "N", 1)


class RawMaster:
    """A Modbus RTU master on a raw file descriptor: 9600 8N1, no flush when it opens."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd, termios.TCSANOW)  # TCSAFLUSH would flush: this master does not
        attrs = termios.tcgetattr(self.fd)
        attrs[4] = attrs[5] = termios.B9600
        termios.tcsetattr(self.fd, termios.TCSANOW, attrs)

    def send(self, unit: int, req: Request) -> None:
        os.write(self.fd, encode_rtu(unit, encode_request(req)))

    async def receive(self, within_s: float = 0.5, silence_s: float = 0.03) -> bytes:
        """What arrives within ``within_s``, ended by ``silence_s`` of quiet after a byte."""
        got = bytearray()
        deadline = time.monotonic() + within_s
        last = None
        while time.monotonic() < deadline:
            try:
                chunk = os.read(self.fd, 512)
            except BlockingIOError:
                chunk = b""
            if chunk:
                got += chunk
                last = time.monotonic()
            elif last is not None and time.monotonic() - last > silence_s:
                break
            await asyncio.sleep(0.002)
        return bytes(got)

    async def ask(self, unit: int, req: Request):
        """Send ``req`` and read its answer as masters do: as many bytes as the answer has."""
        self.send(unit, req)
        if req.is_read:
            per = (req.count + 7) // 8 if req.function <= 2 else 2 * req.count
            size = 5 + per
        else:
            size = 8  # a write's echo
        raw = await self.receive_exactly(size)
        got_unit, pdu = decode_rtu(raw)
        assert got_unit == unit
        return decode_response(req, pdu)

    async def receive_exactly(self, size: int, within_s: float = 0.5) -> bytes:
        got = bytearray()
        deadline = time.monotonic() + within_s
        while len(got) < size and time.monotonic() < deadline:
            try:
                got += os.read(self.fd, size - len(got))
            except BlockingIOError:
                await asyncio.sleep(0.002)
            if len(got) >= 2 and got[1] & 0x80:
                size = 5  # an exception answer
        assert len(got) == size, f"{len(got)} of {size} bytes within {within_s} s"
        return bytes(got)

    def close(self) -> None:
        os.close(self.fd)


def _float32(words: tuple[int, ...]) -> float:
    import struct

    return struct.unpack(">f", struct.pack(">HH", *words))[0]


# --------------------------------------------------------------------------- a) close flush


async def test_rtu_line__an_answer_unread_when_the_master_closed_is_not_given_to_the_next_opener():
    meter = sim_unit("eastron_sdm630", 1, seed=1)
    line = await serve_rtu([meter], LINE, turnaround_s=0.005)
    try:
        first = RawMaster(line.path)
        first.send(1, Request(Function.READ_INPUT_REGISTERS, 0x0000, 2))  # voltage_l1
        await asyncio.sleep(0.2)  # its answer is on the line by now; nobody reads it
        first.close()
        await asyncio.sleep(0.05)  # the next program starts
        second = RawMaster(line.path)
        try:
            answer = await second.ask(1, Request(Function.READ_INPUT_REGISTERS, 0x0046, 2))
        finally:
            second.close()
        hz = _float32(answer.values)
        assert 49.5 < hz < 50.5, f"{hz} is not a frequency"  # not the voltage asked for before
        await asyncio.sleep(0.05)
        assert hz == meter.served("frequency")[-1]
        assert line.port.discarded_bytes == 9  # the voltage answer, lost as on a real adapter
    finally:
        await line.close()
