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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from edge import faults
from edge.buffer import AsyncBuffer
from edge.config import ParkingBusConfig
from edge.signing import Signer
from protocols.meterlink import (
    UPLINK_TYPES,
    Frame,
    FrameDecoder,
    MsgType,
    Nak,
    NakReason,
    PayloadError,
    canonical_bytes,
    decode_message,
    encode_frame,
    encode_message,
)

__all__ = ["BusStats", "MeterBus"]

log = logging.getLogger(__name__)

#: Entries taken from one meter before the next meter gets its turn.
BURST = 8


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

    @property
    def where(self) -> str:
        t = self.cfg.transport
        return f"{t.host}:{t.port}"

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
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(t.host, t.port), self.cfg.timeout_ms / 1000
        )
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
                for _ in range(BURST):
                    more = await self._exchange(meter.id, meter.address, last)
                    if not more:
                        break
                else:
                    continue
                idle += 1
            if idle == len(self.cfg.meters):
                await asyncio.sleep(self.cfg.poll_interval_s)

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
        self._writer.write(encode_frame(frame))
        await self._writer.drain()
        deadline = time.monotonic() + self.cfg.timeout_ms / 1000
        while True:
            for f in self._frames:
                if f.from_meter and f.address == frame.address:
                    return f
                self.stats.unexpected += 1
            self._frames.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                data = await asyncio.wait_for(self._reader.read(4096), left)
            except TimeoutError:
                return None
            if not data:
                raise ConnectionError("the meter link closed the connection")
            self._frames = self.decoder.feed(data)
