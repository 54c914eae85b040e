"""Modbus RTU master on one serial line (RS-485): the only owner of its port.

Every device on the line goes through one :class:`RtuLink`, one transaction at a time (an
``asyncio.Lock`` queues them in arrival order). For each transaction the link:

1. if the previous request went unanswered, holds the line for its **late-answer window**
   (below), discarding and counting what arrives in it (``late_bytes``, ``late_answers``);
2. waits until the line has been quiet for t3.5 (3.5 characters, or the device's own
   inter-request delay when that is longer): strict slaves need the silence to see a frame end;
3. throws away whatever arrived unasked (noise, an answer later than any window) and counts it
   (``stale_bytes``), so stale bytes are never read as this request's answer;
4. sends the request and collects the answer until the response timeout, accepting only a frame
   with the right unit id, function code (or its exception), byte count or echo, and CRC. It
   looks for that frame at every offset of what arrived, so garbage before an answer costs nothing
   (``garbage_bytes``); a complete frame for this unit with a bad CRC ends the attempt early
   (``crc_errors``) and the request is retried. Bytes that arrive before the request has even
   left the wire (its wire time from the write) cannot answer it: they are a late answer to
   something else and are discarded (``late_bytes``).

Late answers. RTU frames carry no transaction id: an answer says which unit and function it is
from, and how many bytes it holds, nothing more. A slave that answers after the master's timeout
(a meter busy for 450 ms against a 300 ms timeout) puts a well-formed answer on the line while
the master waits for the answer to its next request; when that request has the same unit,
function and size (``voltage_l1`` then ``current_l1`` of an SDM630, two registers each) the late
voltage would be taken for the current. So after a timeout the line is not reused until a late
answer could no longer arrive: for the **late-answer window** (``late_answer_s``; by default as
long as the timeout that ran out, so an answer up to twice the timeout is caught) nothing is
sent, even a retry, and everything that arrives is discarded and counted. A complete answer of
the silent unit to that request ends the window early (t3.5 after it), and is logged once per
unit at WARNING with how late it came, so the timeout can be raised. When the retry that waits
is a try of the same request, that late answer is its answer (as over Modbus TCP an answer to
any try counts): the retry is not sent, and a unit slower than its timeout is still read. The
window costs line time only after timeouts (``late_wait_s``: a silent unit costs its timeout
plus the window per try); an answer later than timeout + window is beyond the guard, which is
why the window is configurable per line (``late_answer_ms`` in the transport).

Errors are the field-bus errors of :mod:`edge.fieldbus.link`, as for Modbus TCP, so pollers
treat both alike. The port is opened with pyserial-asyncio-fast; a port that cannot be opened
(unplugged USB adapter) backs off with jitter like a TCP connection.

pymodbus is not used here on purpose (../shared/reference/library-notes.md §2): it does no
inter-frame timing at all, cannot resynchronise on garbage before a response (any prefix made the
response fail), and gives no control over flushing or per-device delays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import termios
import time
from dataclasses import dataclass, field
from typing import Any

import serial

from edge.fieldbus.link import (
    GATEWAY_NO_ANSWER,
    Backoff,
    LinkDown,
    LinkOps,
    ModbusTimeout,
    exception_error,
)
from edge.fieldbus.link import where as fieldbus_where
from protocols.modbus_frame import (
    FrameError,
    LineTiming,
    Request,
    decode_response,
    decode_rtu,
    encode_request,
    encode_rtu,
    rtu_response_length,
)

__all__ = ["LineStats", "RtuLink"]

log = logging.getLogger(__name__)

_PARITY = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}
_STOPBITS = {1: serial.STOPBITS_ONE, 2: serial.STOPBITS_TWO}


def serial_settings(timing: LineTiming) -> dict[str, Any]:
    """pyserial's settings for a line of this speed and framing (8 data bits)."""
    return {
        "baudrate": timing.baudrate,
        "parity": _PARITY[timing.parity],
        "stopbits": _STOPBITS[timing.stopbits],
        "bytesize": serial.EIGHTBITS,
    }


@dataclass
class LineStats:
    """What the line saw; never decoded into readings, always counted."""

    transactions: int = 0
    timeouts: int = 0
    exceptions: int = 0
    crc_errors: int = 0  # a whole frame for the addressed unit with a bad CRC
    garbage_bytes: int = 0  # bytes before (or instead of) a valid answer
    stale_bytes: int = 0  # bytes that arrived unasked, flushed before a request
    late_bytes: int = 0  # bytes in a late-answer window or during a request: discarded
    late_answers: int = 0  # whole answers among them, from the unit that had timed out
    late_taken: int = 0  # late answers that came while a retry of their request waited: taken
    late_wait_s: float = 0.0  # line time held for late answers after timeouts
    never_quiet: int = 0  # tries not sent: the line was not quiet for t3.5 within the timeout
    busy_s: float = 0.0  # line time spent in transactions (late-answer windows included)
    by_unit: dict[int, int] = field(default_factory=dict)


@dataclass
class _Owed:
    """A request that went unanswered: its answer may still arrive until ``until``."""

    unit: int
    req: Request
    sent_end: float  # monotonic time the request had left the wire
    deadline: float  # when its timeout ran out
    until: float  # end of its late-answer window
    txn: object  # the transaction it is a try of: a later try of it may take its answer


class _Line(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.arrived = asyncio.Event()
        self.last_rx = 0.0
        self.lost: Exception | None = None
        self.not_before = 0.0  # bytes arriving earlier cannot answer the request being sent
        self.early = 0  # such bytes, discarded on arrival

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        if self.last_rx < self.not_before:
            self.early += len(data)  # the request is still on the wire: not its answer
        else:
            self.buf += data
        self.arrived.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionError("serial port closed")
        self.arrived.set()


class _NeverQuiet(Exception):
    """The line did not fall silent for t3.5 within a request's timeout: the try is not sent."""


class RtuLink(LinkOps):
    """One serial line with any number of unit ids on it."""

    def __init__(
        self,
        port: str,
        timing: LineTiming,
        *,
        late_answer_s: float | None = None,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        """``late_answer_s``: how long the line stays unused after a request timed out, for its
        late answer; None (the default) uses that request's own timeout."""
        self.port = port
        self.endpoint = f"{port}@{timing.baudrate}{timing.parity}{timing.stopbits}"
        self.timing = timing
        self.stats = LineStats()
        self._lock = asyncio.Lock()
        self._line: _Line | None = None
        self._quiet_since = 0.0  # monotonic time the line last went quiet
        self._backoff = Backoff(backoff_min_s, backoff_max_s)
        self.late_answer_s = late_answer_s
        self._owed: _Owed | None = None  # the last request, while its answer may still come
        self._late_logged: set[int] = set()  # units whose late answers were logged
        self.opens = 0

    @property
    def connected(self) -> bool:
        return self._line is not None and self._line.lost is None

    async def _ensure_open(self, where: dict[str, int | str]) -> _Line:
        if self._line is not None and self._line.lost is None:
            return self._line
        self._line = None
        if left := self._backoff.wait_left():
            raise LinkDown(f"serial port not open; next attempt in {left:.1f} s", **where)
        line = _Line()
        try:
            import serial_asyncio_fast  # only a gateway with a serial line loads it

            transport, _ = await serial_asyncio_fast.create_serial_connection(
                asyncio.get_running_loop(),
                lambda: line,
                self.port,
                **serial_settings(self.timing),
            )
        except (OSError, serial.SerialException, termios.error) as exc:
            self._backoff.failed()
            raise LinkDown(f"cannot open serial port: {exc}", **where) from None
        line.transport = transport  # connection_made may come a loop turn later
        self._line = line  # not a success yet: only an answer resets the backoff
        self._quiet_since = time.monotonic()
        self.opens += 1
        return line

    async def transact(
        self, unit: int, req: Request, *, timeout_s: float, retries: int, gap_s: float = 0.0
    ) -> tuple[int, ...]:
        """Send ``req`` to ``unit`` and return its values (read) or () (write)."""
        where = fieldbus_where(self.endpoint, unit, req)
        frame = encode_rtu(unit, encode_request(req))
        txn = object()  # names this transaction's tries in the late-answer window
        async with self._lock:
            line = await self._ensure_open(where)
            started = time.monotonic()
            no_answer = None  # a gateway's 0x0A / 0x0B: no answer, so the retry is spent
            noisy = 0  # tries not sent because the line was never quiet
            try:
                for attempt in range(retries + 1):
                    try:
                        outcome = await self._attempt(line, unit, req, frame, timeout_s, gap_s, txn)
                    except _NeverQuiet:
                        noisy += 1
                        outcome = None
                    if outcome is not None and outcome.exception in GATEWAY_NO_ANSWER:
                        no_answer, outcome = outcome, None
                    if outcome is not None:
                        break
                    if attempt == retries:
                        if no_answer is not None:
                            outcome = no_answer
                            break
                        self.stats.timeouts += 1
                        why = (
                            f"; the line was never quiet for t3.5 in {noisy} of them (bytes "
                            "kept coming: noise on an unbiased line, or a device that talks "
                            "unasked), so they were not sent"
                            if noisy
                            else ""
                        )
                        raise ModbusTimeout(
                            f"no valid answer in {timeout_s:.2f} s × {retries + 1} attempts{why}",
                            **where,
                        )
            finally:
                self.stats.busy_s += time.monotonic() - started
        self._backoff.succeeded()  # a transaction completed: the port works
        self.stats.transactions += 1
        self.stats.by_unit[unit] = self.stats.by_unit.get(unit, 0) + 1
        if outcome.exception is not None:
            self.stats.exceptions += 1
            raise exception_error(outcome.exception, where)
        return outcome.values

    async def _attempt(
        self, line: _Line, unit: int, req: Request, frame: bytes, timeout_s, gap_s, txn: object
    ):
        """One request on the wire; the decoded response, or None (nothing valid in time).
        A late answer to an earlier try of the same transaction that arrives before this try is
        sent is this try's answer, and nothing is sent."""
        t = self.timing
        late = await self._hold(line, max(t.t35_s, gap_s), unit, req, txn, timeout_s)
        if late is not None:
            return late
        if line.lost is not None or line.transport is None:
            raise self._lost(line, unit, req)
        line.arrived.clear()
        # On a real line the request takes its wire time; nothing that arrives before it has
        # left can be its answer, and the timeout runs from its end.
        line.not_before = time.monotonic() + t.wire_s(len(frame))
        line.transport.write(frame)
        sent_at = time.monotonic()
        sent_end = sent_at + t.wire_s(len(frame))
        deadline = sent_end + timeout_s
        window = timeout_s if self.late_answer_s is None else self.late_answer_s
        # Owed until answered: a timeout, an error or a cancellation leaves the window open.
        self._owed = _Owed(unit, req, sent_end, deadline, deadline + window, txn)
        early_end = t.t35_s + 0.02  # silence after a corrupted frame before giving up on it
        try:
            while True:
                found, bad_crc = self._scan(line.buf, unit, req)
                if found is not None:
                    start, end, response = found
                    self._owed = None
                    self.stats.garbage_bytes += start
                    leftover = len(line.buf) - end
                    if leftover:
                        self.stats.stale_bytes += leftover
                    line.buf.clear()
                    return response
                now = time.monotonic()
                if bad_crc and now - line.last_rx >= early_end:
                    self._owed = None  # the answer came, corrupted: nothing more to wait for
                    self.stats.crc_errors += 1
                    self.stats.garbage_bytes += len(line.buf)
                    line.buf.clear()
                    return None
                left = deadline - now
                if left <= 0:
                    self.stats.garbage_bytes += len(line.buf)
                    line.buf.clear()
                    return None
                line.arrived.clear()
                wake = min(left, early_end) if bad_crc else left
                try:
                    async with asyncio.timeout(wake):
                        await line.arrived.wait()
                except TimeoutError:
                    pass
                if line.lost is not None:
                    raise self._lost(line, unit, req)
        finally:
            self.stats.late_bytes += line.early
            line.early = 0
            self._quiet_since = max(time.monotonic(), line.last_rx)

    async def _hold(
        self, line: _Line, quiet_s: float, unit: int, req: Request, txn: object, limit_s: float
    ):
        """Wait until the line may carry a request: the late-answer window of an unanswered
        request is over (or its late answer has come) and the line has been quiet for
        ``quiet_s``. What arrives meanwhile is discarded: ``late_bytes`` in the window,
        ``stale_bytes`` otherwise. Returns the late answer when the unanswered request was an
        earlier try of transaction ``txn`` (the same unit and request, asked moments ago): it
        answers this request; else None. Raises :class:`_NeverQuiet` when, after any window,
        the line has not been quiet for ``quiet_s`` within ``quiet_s`` + ``limit_s`` (the
        request's timeout):
        a line that never falls silent must fail its requests, not hold them forever."""
        held_at = time.monotonic()
        quiet_from = held_at  # since when the hold waits for silence only (no window open)
        while True:
            if line.lost is not None:
                raise self._lost(line, unit, req)
            now = time.monotonic()
            owed = self._owed
            if owed is not None:
                if line.buf:
                    self._quiet_since = max(self._quiet_since, line.last_rx)
                if owed.txn is txn and line.buf:
                    found, _ = self._scan(line.buf, owed.unit, owed.req)
                    if found is not None:
                        start, end, response = found
                        self._owed = None
                        self.stats.garbage_bytes += start
                        self.stats.stale_bytes += len(line.buf) - end
                        line.buf.clear()
                        self.stats.late_wait_s += now - held_at
                        self.stats.late_taken += 1
                        self._log_late(owed, line.last_rx, taken=True)
                        return response
                if now >= owed.until or (line.buf and self._late_answer(line, owed)):
                    self.stats.late_bytes += len(line.buf)
                    line.buf.clear()
                    self._owed = None
                    self.stats.late_wait_s += now - held_at
                    quiet_from = now
                    continue
                wake = owed.until - now
            elif line.buf:
                self.stats.stale_bytes += len(line.buf)
                line.buf.clear()
                self._quiet_since = max(self._quiet_since, line.last_rx)
                continue
            else:
                wake = self._quiet_since + quiet_s - now
                if wake <= 0:
                    return None
                give_up = quiet_from + quiet_s + limit_s  # a quiet line is never held this long
                if now >= give_up:
                    self.stats.never_quiet += 1
                    raise _NeverQuiet
                wake = min(wake, give_up - now)
            line.arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wake):
                    await line.arrived.wait()

    def _late_answer(self, line: _Line, owed: _Owed) -> bool:
        """Whether the answer to the unanswered request is complete in ``line.buf`` (counted,
        logged once per unit; never returned as a value)."""
        found, _ = self._scan(line.buf, owed.unit, owed.req)
        if found is None:
            return False
        self.stats.late_answers += 1
        self._log_late(owed, line.last_rx, taken=False)
        return True

    def _log_late(self, owed: _Owed, arrived: float, *, taken: bool) -> None:
        """Say once per unit that it answers past its timeout, and by how much."""
        if owed.unit in self._late_logged:
            return
        self._late_logged.add(owed.unit)
        took_ms = (arrived - owed.sent_end) * 1000
        timeout_ms = (owed.deadline - owed.sent_end) * 1000
        outcome = (
            "it was taken as the answer to the retry, which cost the line that long"
            if taken
            else "the answer was discarded and the request counted as failed"
        )
        log.warning(
            "%s unit %d answered %.0f ms after the request, past its %.0f ms timeout; %s. Raise "
            "the device's timeout_ms above %.0f ms (logged once; late answers are counted in "
            "edge_line_late_answers_total)",
            self.endpoint,
            owed.unit,
            took_ms,
            timeout_ms,
            outcome,
            took_ms,
        )

    def _lost(self, line: _Line, unit: int, req: Request) -> LinkDown:
        self._backoff.broke()
        return LinkDown(
            f"serial port lost: {line.lost}", **fieldbus_where(self.endpoint, unit, req)
        )

    @staticmethod
    def _scan(buf: bytearray, unit: int, req: Request):
        """Find the answer to ``req`` from ``unit`` anywhere in ``buf``.

        Returns ((start, end, response) or None, whether a complete frame for this unit failed
        its CRC)."""
        bad_crc = False
        fc, efc = int(req.function), int(req.function) | 0x80
        for i in range(len(buf) - 1):
            if buf[i] != unit or buf[i + 1] not in (fc, efc):
                continue
            n = rtu_response_length(bytes(buf[i : i + 3]), req)
            if n is None or len(buf) - i < n:
                continue
            try:
                _, pdu = decode_rtu(bytes(buf[i : i + n]))
            except FrameError:
                bad_crc = True
                continue
            try:
                return (i, i + n, decode_response(req, pdu)), bad_crc
            except FrameError:
                continue
        return None, bad_crc

    async def close(self) -> None:
        if self._line is not None and self._line.transport is not None:
            self._line.transport.close()
        self._line = None
