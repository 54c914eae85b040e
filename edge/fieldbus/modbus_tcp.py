"""Modbus TCP master: one connection per host:port, shared by every unit id behind it.

Built on :mod:`protocols.modbus_frame` (the codec the RTU master and the simulators use) instead
of pymodbus, which this gateway used until the footprint work: pymodbus cost 12-13 MB of RSS on
import (a quarter of the memory budget on a 1 GB Pi), closed a shared connection after a few
unanswered requests (one dead unit behind a TCP-to-RTU bridge cut off its neighbours), waited with
``asyncio.wait_for`` (which swallows cancellations on Python 3.11) and changed its API between
minor releases. What this link does:

* requests are serialised (one in flight per connection, as bridges require); a transaction id
  matches each answer to its request. Every try of a request (a retry after a timeout) gets a new
  id, and the ids of all its tries stay valid until the request completes: a slow device's answer
  to the first try that arrives during the retry is the answer. A late answer to an earlier
  request is recognised by its id, thrown away and counted (``stale_answers``), never taken for
  the current one;
* a unit that does not answer costs its own timeout and retries; the connection stays up, so
  the other units behind the bridge keep their rate. A bridge's exception 0x0A / 0x0B is that
  unit not answering (:class:`ModbusGatewayNoAnswer`), not a refusal: like a timeout, it spends
  a retry, and the request fails with it only when every try got no answer;
* a connection that breaks or cannot be opened raises :class:`LinkDown` and is reopened with
  jittered exponential backoff. The backoff starts over only after a completed transaction, not
  after a connect: a bridge that accepts connections and resets them at once is backed off like
  one that refuses them. The connections to one endpoint (``max_connections``) share one
  :class:`Endpoint`: one backoff, and one connection opened at a time, whose first transaction
  runs before the next connection may open, so a broken bridge sees one attempt per backoff
  step, not one per connection or per device. A connection the peer closed while idle is
  reopened quietly before the next request;
* ``gap_s`` keeps a quiet time after the previous answer, for slow bridges.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import time

from edge.fieldbus.link import (
    GATEWAY_NO_ANSWER,
    Backoff,
    LinkDown,
    LinkOps,
    ModbusDeviceError,
    ModbusExceptionResponse,
    ModbusGatewayNoAnswer,
    ModbusTimeout,
    exception_error,
)
from edge.fieldbus.link import where as fieldbus_where
from protocols.modbus_frame import (
    FrameError,
    Request,
    decode_response,
    encode_mbap,
    encode_request,
)

__all__ = [
    "Endpoint",
    "LinkDown",
    "ModbusDeviceError",
    "ModbusExceptionResponse",
    "ModbusGatewayNoAnswer",
    "ModbusTcpLink",
    "ModbusTimeout",
]


class Endpoint:
    """What the connections to one host:port share: one reconnect :class:`Backoff` (a success
    on any connection resets it, a failure on any delays them all), and a lock under which a
    connection is opened and its first transaction runs, so connections open one at a time and
    only after the previous one has proved the endpoint answers."""

    def __init__(self, backoff_min_s: float = 0.5, backoff_max_s: float = 30.0) -> None:
        self.backoff = Backoff(backoff_min_s, backoff_max_s)
        self.opening = asyncio.Lock()


class ModbusTcpLink(LinkOps):
    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout_s: float = 2.0,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 30.0,
        endpoint: Endpoint | None = None,
    ) -> None:
        """``endpoint``: shared by every connection to this host:port (else one of its own)."""
        self.host, self.port = host, port
        self.endpoint = f"{host}:{port}"
        self._lock = asyncio.Lock()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._connect_timeout_s = connect_timeout_s
        self._shared = endpoint or Endpoint(backoff_min_s, backoff_max_s)
        self._backoff = self._shared.backoff
        self._tid = random.randrange(0x10000)
        self._last_done = 0.0
        self.connects = 0
        self.connect_failures = 0
        self.stale_answers = 0  # late answers to earlier requests, thrown away

    @property
    def connected(self) -> bool:
        """A connection is open and the peer has not closed it."""
        return (
            self._writer is not None
            and not self._writer.is_closing()
            and self._reader is not None
            and not self._reader.at_eof()
        )

    async def _ensure_connected(self, where: dict[str, int | str]) -> None:
        if self.connected:
            return
        self._drop()  # closed by the peer while idle (devices close idle clients): reopen
        if left := self._backoff.wait_left():
            raise LinkDown(f"not connected; next attempt in {left:.1f} s", **where)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        except (OSError, TimeoutError) as exc:
            self.connect_failures += 1
            self._backoff.failed()
            if isinstance(exc, TimeoutError):
                reason = f"no answer to the connection in {self._connect_timeout_s:g} s"
            elif isinstance(exc, ConnectionRefusedError):
                reason = "connection refused (nothing listens on that port)"
            else:
                reason = str(exc)
            raise LinkDown(f"cannot connect: {reason}", **where) from None
        self.connects += 1  # not a success yet: only an answer resets the backoff

    def _drop(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    def _broke(self, message: str, where: dict[str, int | str]) -> LinkDown:
        """The connection failed under a request: close it, back off, say why."""
        self._drop()
        self._backoff.broke()
        return LinkDown(message, **where)

    async def transact(
        self, unit: int, req: Request, *, timeout_s: float, retries: int, gap_s: float = 0.0
    ) -> tuple[int, ...]:
        where = fieldbus_where(self.endpoint, unit, req)
        pdu = encode_request(req)
        async with self._lock:
            if gap_s > 0:
                wait = self._last_done + gap_s - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            # A new connection opens, and runs its first transaction, under the endpoint's
            # lock: the next connection to the endpoint opens only after this one has answered
            # (or failed, which delays it by the shared backoff).
            opening = contextlib.nullcontext() if self.connected else self._shared.opening
            async with opening:
                await self._ensure_connected(where)
                tids: list[int] = []  # of every try of this request: any of their answers counts
                no_answer = None  # a bridge's 0x0A / 0x0B: no answer, so the retry is spent
                try:
                    for _ in range(retries + 1):
                        response = await self._attempt(unit, req, pdu, timeout_s, where, tids)
                        if response is not None and response.exception in GATEWAY_NO_ANSWER:
                            no_answer, response = response, None
                        if response is not None:
                            break
                    else:
                        if no_answer is not None:
                            raise exception_error(no_answer.exception, where)
                        raise ModbusTimeout(
                            f"no answer in {timeout_s:.2f} s × {retries + 1} attempts", **where
                        )
                finally:
                    self._last_done = time.monotonic()
        if response.exception is not None:
            raise exception_error(response.exception, where)
        return response.values

    async def _attempt(
        self, unit: int, req: Request, pdu: bytes, timeout_s: float, where, tids: list[int]
    ):
        """One try: send with a new transaction id, then wait up to ``timeout_s`` for an answer
        to any of ``tids`` (this request's tries). None when nothing came in time."""
        assert self._reader is not None and self._writer is not None
        self._tid = (self._tid + 1) & 0xFFFF
        tid = self._tid
        tids.append(tid)
        try:
            self._writer.write(encode_mbap(tid, unit, pdu))
            await self._writer.drain()
            partial = False
            async with asyncio.timeout(timeout_s):
                while True:
                    head = await self._reader.readexactly(7)
                    partial = True
                    got_tid, proto, length, got_unit = struct.unpack(">HHHB", head)
                    if proto != 0 or not 2 <= length <= 254:
                        # the stream is out of step: start afresh
                        raise self._broke(f"not a Modbus TCP answer (length {length})", where)
                    body = await self._reader.readexactly(length - 1)
                    partial = False
                    if got_tid not in tids:
                        self.stale_answers += 1  # a late answer to an earlier request
                        continue
                    self._backoff.succeeded()  # a transaction completed on this connection
                    if got_unit != unit:
                        raise ModbusDeviceError(f"answer from unit {got_unit}", **where)
                    try:
                        return decode_response(req, body)
                    except FrameError as exc:
                        raise ModbusDeviceError(f"bad answer: {exc}", **where) from None
        except TimeoutError:
            if partial:  # cut inside a frame: the stream is out of step
                raise self._broke("answer cut off by the timeout; reconnecting", where) from None
            return None  # this unit is silent; the connection stays for the others
        except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
            reason = exc or type(exc).__name__
            raise self._broke(f"connection lost: {reason}", where) from None

    async def close(self) -> None:
        writer = self._writer
        self._drop()
        if writer is not None:
            with contextlib.suppress(Exception):
                await writer.wait_closed()
