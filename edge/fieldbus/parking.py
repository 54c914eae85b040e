"""The gateway's side of the parking meter link (docs/meter-link-v1.md): poll the meters behind
one link in turn, commit each journal entry durably (signed) before acknowledging it, refuse
what is bad with a counted, logged reason.

The order that makes it exactly-once, per meter:

1. POLL(ack = last committed seq) → the meter answers with its oldest unacknowledged entry.
2. The entry is checked (type, payload) and stored in the buffer together with the meter's new
   last seq, in one transaction (``Buffer.commit_entry``). A crash before the commit: the meter
   still has the entry and sends it again. A crash after it: the meter sends it again, the
   buffer recognises the seq as committed, and it is acknowledged, not stored twice.
3. The next POLL carries the new acknowledgement; only then may the meter mark it delivered.

Two links, one protocol: TCP (a pay station, or a converter) and RS-485 on one of the
gateway's serial ports (pyserial-asyncio-fast; the bus owns the port). A meter has
``timeout_ms`` to start answering; an answer that has started gets its wire time to finish
(a full 1 KiB entry takes 1.1 s at 9600 baud), so a slow line is not mistaken for a dead meter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import termios
import time
from collections import Counter
from dataclasses import dataclass, field

import serial

from edge.fieldbus.rtu import serial_settings
from edge.settings import MeterLinkRs485, ParkingBusConfig
from edge.shared import faults
from edge.shared.signing import Signer
from edge.store.buffer import AsyncBuffer, BufferError
from protocols.meterlink import (
    HEADER,
    MAX_PAYLOAD,
    UPLINK_TYPES,
    Frame,
    FrameDecoder,
    Message,
    MsgType,
    Nak,
    NakReason,
    PayloadError,
    canonical_bytes,
    decode_message,
    encode_frame,
    encode_message,
)
from protocols.modbus_frame import LineTiming

__all__ = ["BusStats", "MeterBus", "MeterCommandError"]

log = logging.getLogger(__name__)

#: Entries taken from one meter before the next meter gets its turn.
BURST = 8
#: Tries of one command (the same number each time: a meter carries a number out once).
COMMAND_TRIES = 3
#: Command numbers skipped at the first command of a run (see Buffer.next_command).
COMMAND_SKIP = 1000
COMMAND_EPOCH_S = 1_704_067_200  # 2024-01-01 UTC: command numbers fit u32 until 2160


class MeterCommandError(Exception):
    """A command did not reach or was refused by the meter; ``code`` says which."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass
class BusStats:
    polls: int = 0
    entries: int = 0  # stored
    duplicates: int = 0  # re-sent after a lost acknowledgement: acknowledged, not stored
    missing: int = 0  # seqs a meter skipped (its journal lost them)
    timeouts: int = 0
    busy: int = 0  # refused for lack of room: the meter keeps them
    refused: Counter = field(default_factory=Counter)  # NAK reason -> count
    unexpected: int = 0  # frames from the wrong address, or not from a meter
    connected: bool = False


class MeterBus:
    def __init__(
        self,
        cfg: ParkingBusConfig,
        buffer: AsyncBuffer,
        signer: Signer,
        on_stored: asyncio.Event | None = None,
    ) -> None:
        self.cfg = cfg
        self.buffer = buffer
        self.signer = signer
        self.on_stored = on_stored
        self.stats = BusStats()
        self.decoder = FrameDecoder()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._frames: list[Frame] = []
        self._commands: asyncio.Queue[tuple[str, Message, asyncio.Future[int]]] = asyncio.Queue(
            maxsize=16
        )
        self._wake = asyncio.Event()
        self._numbered: set[str] = set()  # meters given a command number in this run
        self._addresses = {m.id: m.address for m in cfg.meters}
        self._strangers: set[int] = set()  # addresses already logged as unexpected
        t = cfg.transport
        self.timing = (
            LineTiming(t.baudrate, t.parity, t.stopbits) if isinstance(t, MeterLinkRs485) else None
        )

    @property
    def where(self) -> str:
        return self.cfg.transport.where

    async def run(self) -> None:
        """Poll until cancelled; reconnect with backoff when the link drops."""
        delay = 0.5
        while True:
            try:
                await self._connect()
                delay = 0.5
                await self._poll_forever()
            except (OSError, asyncio.IncompleteReadError, ConnectionError) as exc:
                if self.stats.connected:
                    log.error("parking bus %s (%s) lost: %s", self.cfg.id, self.where, exc)
                self.stats.connected = False
                await self._close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _connect(self) -> None:
        t = self.cfg.transport
        if isinstance(t, MeterLinkRs485):
            try:
                assert self.timing is not None
                import serial_asyncio_fast  # only a gateway with a serial line loads it

                self._reader, self._writer = await serial_asyncio_fast.open_serial_connection(
                    url=t.port, **serial_settings(self.timing)
                )
            except (serial.SerialException, termios.error) as exc:
                raise OSError(f"cannot open serial port {t.port}: {exc}") from None
        else:
            # asyncio.timeout, not wait_for, throughout: on 3.11 wait_for loses a cancel that
            # comes as the awaited thing completes, and a stopping gateway would poll on.
            async with asyncio.timeout(self.cfg.timeout_ms / 1000):
                self._reader, self._writer = await asyncio.open_connection(t.host, t.port)
        self.decoder.reset()
        self._frames.clear()
        self.stats.connected = True
        log.info("parking bus %s connected to %s", self.cfg.id, self.where)

    async def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    async def _poll_forever(self) -> None:
        last = {m.id: await self.buffer.meter_last_seq(m.id) for m in self.cfg.meters}
        while True:
            idle = 0
            for meter in self.cfg.meters:
                await self._run_commands()
                for _ in range(BURST):
                    more = await self._exchange(meter.id, meter.address, last)
                    if not more:
                        break
                else:
                    continue
                idle += 1
            if idle == len(self.cfg.meters):
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.cfg.poll_interval_s):
                        await self._wake.wait()

    # ------------------------------------------------------------------ commands

    async def command(self, meter: str, msg: Message) -> int:
        """Carry out ``msg`` (TARIFF, TIME_SYNC, ENABLE) at ``meter``, between polls. Returns
        the command number the meter acknowledged; MeterCommandError if it cannot be done."""
        if meter not in self._addresses:
            raise MeterCommandError("unknown_meter", f"no meter {meter!r} on bus {self.cfg.id}")
        if not self.stats.connected:
            raise MeterCommandError("link_down", f"bus {self.cfg.id} ({self.where}) is down")
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        try:
            self._commands.put_nowait((meter, msg, done))
        except asyncio.QueueFull:
            raise MeterCommandError("busy", f"bus {self.cfg.id} has 16 commands waiting") from None
        self._wake.set()
        budget = COMMAND_TRIES * (self.cfg.timeout_ms / 1000 + 1.2) + 2 * self.cfg.poll_interval_s
        try:
            async with asyncio.timeout(budget + 5):
                return await asyncio.shield(done)
        except TimeoutError:
            # Withdrawn: the bus must not carry it out after the platform was told it failed.
            done.cancel()
            raise MeterCommandError(
                "timeout", f"meter {meter} on bus {self.cfg.id}: the bus did not get to it"
            ) from None

    async def _run_commands(self) -> None:
        while not self._commands.empty():
            meter, msg, done = self._commands.get_nowait()
            if done.done():
                continue
            try:
                outcome: int | MeterCommandError = await self._send_command(meter, msg)
            except MeterCommandError as exc:
                outcome = exc
            except (OSError, asyncio.IncompleteReadError, ConnectionError) as exc:
                if not done.done():
                    done.set_exception(
                        MeterCommandError("link_down", f"bus {self.cfg.id} lost mid-command: {exc}")
                    )
                raise
            if done.done():  # its caller gave up while it was on the wire
                log.warning("meter %s: %s finished after its caller gave up", meter, msg.TYPE.name)
            elif isinstance(outcome, MeterCommandError):
                done.set_exception(outcome)
            else:
                done.set_result(outcome)

    async def _send_command(self, meter: str, msg: Message) -> int:
        skip = 0 if meter in self._numbered else COMMAND_SKIP
        # Never below the seconds since 2024: numbers keep rising even over a buffer that lost
        # its counter (a fresh or salvaged file), as long as the clock is roughly right.
        floor = max(0, int(time.time()) - COMMAND_EPOCH_S)
        try:
            number = await self.buffer.next_command(meter, skip, floor)
        except BufferError as exc:  # a number not durably recorded must not be used
            raise MeterCommandError("busy", f"meter {meter}: {exc}; try again later") from None
        self._numbered.add(meter)
        address = self._addresses[meter]
        frame = Frame(address, msg.TYPE, number, encode_message(msg))
        for _ in range(COMMAND_TRIES):
            reply = await self._request(frame)
            if reply is None:
                self.stats.timeouts += 1
                continue
            if reply.seq != number or reply.type not in (MsgType.CMD_ACK, MsgType.CMD_NAK):
                self.stats.unexpected += 1
                continue
            if reply.type == MsgType.CMD_ACK:
                log.info("meter %s carried out %s (command %d)", meter, msg.TYPE.name, number)
                return number
            try:
                reason = NakReason(decode_message(reply.type, reply.payload).reason).name  # type: ignore[attr-defined]
            except (PayloadError, ValueError):
                reason = "unreadable reason"
            raise MeterCommandError(
                "refused", f"meter {meter} refused {msg.TYPE.name} (command {number}): {reason}"
            )
        raise MeterCommandError(
            "no_answer",
            f"meter {meter} did not answer {msg.TYPE.name} (command {number}) in "
            f"{COMMAND_TRIES} tries; it may have carried it out: send it again",
        )

    async def _exchange(self, meter: str, address: int, last: dict[str, int]) -> bool:
        """One POLL and its answer. True when the meter may have more to send."""
        self.stats.polls += 1
        reply = await self._request(Frame(address, MsgType.POLL, last[meter]))
        if reply is None:
            self.stats.timeouts += 1
            return False
        if reply.type == MsgType.IDLE:
            return False
        if reply.type not in UPLINK_TYPES:
            await self._nak(meter, address, reply.seq, NakReason.UNKNOWN_TYPE, f"type {reply.type}")
            return False
        try:
            decode_message(reply.type, reply.payload)
        except PayloadError as exc:
            await self._nak(meter, address, reply.seq, NakReason.MALFORMED, str(exc))
            return False
        faults.point("parking_received")  # received, not committed
        result = await self.buffer.commit_entry(
            meter,
            reply.seq,
            reply.type,
            reply.payload,
            int(time.time() * 1000),
            lambda: self.signer.sign(canonical_bytes(meter, reply.seq, reply.type, reply.payload)),
        )
        if result.outcome == "stored":
            faults.point("parking_committed")  # committed, not acknowledged
            self.stats.entries += 1
            if result.missing:
                self.stats.missing += result.missing
                log.error(
                    "meter %s skipped %d journal entries before seq %d: they are lost at the "
                    "meter (reported to the platform as a gap)",
                    meter,
                    result.missing,
                    reply.seq,
                )
            if self.on_stored is not None:
                self.on_stored.set()
        elif result.outcome == "duplicate":
            self.stats.duplicates += 1
        elif result.outcome == "out_of_window":
            await self._nak(
                meter,
                address,
                reply.seq,
                NakReason.OUT_OF_WINDOW,
                f"seq {reply.seq} is far beyond the last committed {result.last_seq}",
            )
            return False
        else:  # busy
            self.stats.busy += 1
            await self._nak(meter, address, reply.seq, NakReason.BUSY, None)
            return False
        last[meter] = result.last_seq
        return True

    async def _nak(
        self, meter: str, address: int, seq: int, reason: NakReason, why: str | None
    ) -> None:
        self.stats.refused[reason.name] += 1
        if why is not None:
            log.error("meter %s entry %d refused (%s): %s", meter, seq, reason.name, why)
        assert self._writer is not None
        self._writer.write(
            encode_frame(Frame(address, MsgType.NAK, seq, encode_message(Nak(reason))))
        )
        await self._writer.drain()

    async def _request(self, frame: Frame) -> Frame | None:
        """Send one frame; the first frame back from that address, or None on timeout."""
        assert self._reader is not None and self._writer is not None
        self._frames.clear()
        self.decoder.reset()
        raw = encode_frame(frame)
        self._writer.write(raw)
        await self._writer.drain()
        timeout = self.cfg.timeout_ms / 1000
        now = time.monotonic()
        # The meter's time to answer counts from the request's last byte on the wire; an answer
        # that has begun may take its own wire time, up to a whole maximal frame.
        wire = self.timing.wire_s if self.timing is not None else (lambda n: 0.0)
        deadline = now + wire(len(raw)) + timeout
        hard_deadline = deadline + wire(HEADER.size + MAX_PAYLOAD + 2)  # a maximal answer
        while True:
            for f in self._frames:
                if f.from_meter and f.address == frame.address:
                    return f
                self.stats.unexpected += 1
                if f.address not in self._strangers:  # once per address: a bus can be noisy
                    self._strangers.add(f.address)
                    log.warning(
                        "parking bus %s: a frame from address %d (%s) while polling %d; ignored "
                        "(counted in edge_parking_unexpected_total)",
                        self.cfg.id,
                        f.address,
                        "a configured meter answering late"
                        if f.address in self._addresses.values()
                        else "no meter configured there",
                        frame.address,
                    )
            self._frames.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                async with asyncio.timeout(left):
                    data = await self._reader.read(4096)
            except TimeoutError:
                return None
            if not data:
                raise ConnectionError("the meter link closed the connection")
            self._frames = self.decoder.feed(data)
            if self.decoder.pending:  # an answer is on its way: give it its wire time
                deadline = min(hard_deadline, max(deadline, time.monotonic() + timeout))
