"""Forward sealed batches from the buffer to the broker, QoS 1, deleting only after PUBACK.

One session = one fresh aiomqtt client (a reused client re-sends a timed-out message after the
newer ones, library-notes §4). In a session the forwarder first re-publishes every batch still in
the outbox (same number, same bytes), then seals and publishes new ones, one in flight at a time.
A publish that raises or times out is never counted delivered: the session ends, the batch stays
in the outbox and is re-sent by the next session.

A batch closes when ``batch_max_readings`` are pending, or when the oldest pending reading has
waited ``batch_max_delay_ms``. Everything waits on events or timers; nothing polls.

Reconnects use tenacity: exponential backoff from ``reconnect_min_s`` (the floor) to
``reconnect_max_s`` (the cap) with jitter; the attempt count resets only after a session stayed
up ``stable_after_s``. An outage is logged once at ERROR, then DEBUG, and INFO on recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from tenacity.wait import wait_base

from edge import faults
from edge.buffer import AsyncBuffer, SealedBatch
from edge.commands import CommandHandler
from edge.config import MqttConfig
from edge.tls import describe_tls_error
from protocols.birth import Birth
from protocols.meterlink import SignedEntry, encode_tx_message

__all__ = ["Forwarder", "ForwarderStats", "topics"]

log = logging.getLogger(__name__)

#: What an operator should do about a CONNACK refusal. paho reports MQTT 3.1.1 refusals with
#: their MQTT 5 reason codes (3.1.1 code 4 -> 134, 5 -> 135).
_REFUSAL_HINTS = {
    132: "the broker does not accept this MQTT version",
    133: "the broker rejected the client id (check mqtt.client_id)",
    134: "check mqtt.username and mqtt.password / password_file",
    135: "check mqtt.username, the password and the broker's ACL",
    136: "the broker says it is unavailable",
}


def topics(cfg: MqttConfig, site: str, gateway: str) -> dict[str, str]:
    """The gateway's topics: ``<prefix>/<site>/<gateway>/{birth,data,status}``."""
    base = f"{cfg.topic_prefix.rstrip('/')}/{site}/{gateway}"
    names = {
        "birth": "birth",
        "data": "data",
        "status": "status",
        "cmd": "cmd",
        "cmd_res": "cmd/res",
        "tx": "tx",  # parking meter entries, signed (docs/meter-link-v1.md §5)
    }
    return {key: f"{base}/{suffix}" for key, suffix in names.items()}


def status_payload(state: str, gateway: str, boot: int) -> bytes:
    return json.dumps(
        {"state": state, "gateway": gateway, "boot": boot}, separators=(",", ":")
    ).encode()


@dataclass
class ForwarderStats:
    connected: bool = False
    commands_subscribed: bool = False  # the broker acknowledged the cmd subscription (SUBACK)
    sessions: int = 0
    connect_failures: int = 0
    batches_sent: int = 0
    readings_sent: int = 0
    resent_batches: int = 0
    publish_failures: int = 0
    births: int = 0
    split_batches: int = 0
    last_seq_acked: int | None = None
    entries_sent: int = 0  # parking meter entries acknowledged by the broker


#: Sessions in a row that must break with the same batch in flight before it is split.
SPLIT_AFTER_FAILED_SESSIONS = 3


class _SessionFailed(Exception):
    """The session could not start or ended with an error; retry with backoff."""


class _StableSessionEnded(Exception):
    """A session that had been up long enough ended: reconnect with a fresh backoff."""


def full_jitter(floor: float, cap: float, attempt: int) -> float:
    """Seconds before reconnect ``attempt`` (1, 2, ...): uniform between the floor and
    floor × 2^attempt, capped. The whole range, not a band near its top: after a broker
    restart a city's gateways spread out instead of retrying in lockstep (mosquitto#1035)."""
    return random.uniform(floor, max(floor, min(cap, floor * 2.0**attempt)))


class _JitteredExponential(wait_base):
    def __init__(self, floor: float, cap: float) -> None:
        self.floor, self.cap = floor, cap

    def __call__(self, retry_state: RetryCallState) -> float:
        # After the first failed attempt: up to 8 x floor, then 16 x, ... (a broker that just
        # failed is not hammered; its returning clients spread over several seconds).
        return full_jitter(self.floor, self.cap, retry_state.attempt_number + 2)


def describe_mqtt_error(exc: Exception) -> str:
    """An MQTT connect failure in words an operator can act on."""
    if isinstance(exc, MqttConnectError):
        code = getattr(exc.rc, "value", exc.rc)
        hint = _REFUSAL_HINTS.get(code) if isinstance(code, int) else None
        return f"broker refused the connection: {exc.rc}" + (f" ({hint})" if hint else "")
    text = str(exc) or type(exc).__name__
    return describe_tls_error(text) or text


class Forwarder:
    def __init__(
        self,
        buffer: AsyncBuffer,
        cfg: MqttConfig,
        *,
        gateway_id: str,
        site: str,
        password: str | None = None,
        birth: Callable[[], Awaitable[Birth]] | None = None,
        tls_context: ssl.SSLContext | None = None,
        commands: CommandHandler | None = None,
        entries_per_message: int = 0,
    ) -> None:
        self.buffer = buffer
        self.site = site
        # Parking entries: 0 when the gateway has no meters. Set by MeterBus on a commit.
        self.entries_per_message = entries_per_message
        self.entries_stored = asyncio.Event()
        self.cfg = cfg
        self.gateway_id = gateway_id
        self.topics = topics(cfg, site, gateway_id)
        self.password = password
        self.stats = ForwarderStats()
        self._wake = asyncio.Event()
        self._wakes = 0  # notifications so far
        self._blocked_at = -1  # _wakes when a seal last found nothing sealable
        self._pending_since: float | None = None  # monotonic time the oldest live one arrived
        self._next_drain = 0.0  # monotonic time the next backlog batch may be sealed
        self._max_bytes = cfg.batch_max_bytes  # lowered if the broker refuses a batch's size
        self._inflight: dict[tuple[int, tuple[int, ...]], SealedBatch] = {}
        self._failed_sessions: dict[tuple[int, tuple[int, ...]], int] = {}
        self._outage_since: float | None = None
        self._birth = birth
        self._tls_context = tls_context
        self._commands = commands
        self._birth_series = -1  # how many series the last published birth listed

    # The writer calls this after every commit.
    def notify_appended(self) -> None:
        if self._pending_since is None:
            self._pending_since = time.monotonic()
        self._wakes += 1
        self._wake.set()

    def _client(self, boot: int) -> aiomqtt.Client:
        cfg = self.cfg
        return aiomqtt.Client(
            cfg.host,
            cfg.port,
            identifier=cfg.client_id or self.gateway_id,
            username=cfg.username,
            password=self.password,
            keepalive=cfg.keepalive_s,
            timeout=cfg.publish_timeout_s,
            clean_session=True,
            tls_context=self._tls_context,
            will=aiomqtt.Will(
                self.topics["status"],
                status_payload("offline", self.gateway_id, boot),
                qos=1,
                retain=True,
            ),
        )

    async def run(self) -> None:
        """Forward forever (until cancelled)."""
        while True:
            try:
                async for attempt in AsyncRetrying(
                    wait=_JitteredExponential(self.cfg.reconnect_min_s, self.cfg.reconnect_max_s),
                    retry=retry_if_exception_type(_SessionFailed),
                    before_sleep=self._before_sleep,
                ):
                    with attempt:
                        await self._session()
            except _StableSessionEnded:
                # The backoff starts over (the session was up for stable_after_s), jittered too.
                await asyncio.sleep(
                    full_jitter(self.cfg.reconnect_min_s, self.cfg.reconnect_max_s, 2)
                )

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.error(
                "uplink to %s down: %s; retrying with backoff (logged at DEBUG until it recovers)",
                self.cfg.url,
                exc,
            )
        else:
            log.debug(
                "uplink still down (attempt %d): %s; next try in %.1f s",
                state.attempt_number,
                exc,
                delay,
            )

    def _describe(self, exc: Exception) -> str:
        return describe_mqtt_error(exc)

    async def _session(self) -> None:
        started = time.monotonic()
        boot = await self.buffer.boot()
        client = self._client(boot)
        try:
            try:
                await client.__aenter__()
            except aiomqtt.MqttError as exc:
                self.stats.connect_failures += 1
                raise _SessionFailed(self._describe(exc)) from None
            try:
                self.stats.sessions += 1
                self.stats.connected = True
                await self._publish_birth(client)
                await client.publish(
                    self.topics["status"],
                    status_payload("online", self.gateway_id, boot),
                    qos=1,
                    retain=True,
                )
                if self._outage_since is not None:
                    log.info(
                        "uplink to %s restored after %.1f s",
                        self.cfg.url,
                        time.monotonic() - self._outage_since,
                    )
                    self._outage_since = None
                else:
                    log.info("uplink to %s connected", self.cfg.url)
                # The listener ends when the connection does: an idle gateway (nothing to
                # publish) notices a lost broker at once, not at its next publish.
                listener = asyncio.create_task(self._listen(client), name="uplink-listen")
                try:
                    await self._forward_while_up(client, listener)
                except asyncio.CancelledError:
                    # A clean stop: the Last Will only fires on an unclean disconnect, so say
                    # "offline" ourselves (best effort), or the retained status stays "online".
                    with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                        await client.publish(
                            self.topics["status"],
                            status_payload("offline", self.gateway_id, boot),
                            qos=1,
                            retain=True,
                            timeout=2.0,
                        )
                    raise
                finally:
                    listener.cancel()
                    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                        await listener
            finally:
                self.stats.connected = False
                self.stats.commands_subscribed = False
                try:
                    await client.__aexit__(None, None, None)
                except aiomqtt.MqttError:
                    pass
        except aiomqtt.MqttError as exc:
            self.stats.publish_failures += 1
            await self._after_failed_session()
            if time.monotonic() - started >= self.cfg.stable_after_s:
                log.error("uplink lost after a stable session: %s", self._describe(exc))
                self._outage_since = time.monotonic()
                raise _StableSessionEnded() from None
            raise _SessionFailed(self._describe(exc)) from None

    async def _forward_while_up(self, client: aiomqtt.Client, listener: asyncio.Task) -> None:
        forward = asyncio.create_task(self._forward(client), name="uplink-forward")
        try:
            await asyncio.wait({forward, listener}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not forward.done():
                forward.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await forward
        if forward.done() and not forward.cancelled() and forward.exception() is not None:
            raise forward.exception()  # type: ignore[misc]
        exc = listener.exception() if listener.done() and not listener.cancelled() else None
        raise exc if exc is not None else aiomqtt.MqttError("connection to the broker lost")

    async def _listen(self, client: aiomqtt.Client) -> None:
        """Answer platform commands for as long as the session lasts; without commands, only
        wait for the connection to end (the message iterator raises MqttError then)."""
        if self._commands is None:
            async for _ in client.messages:
                pass
            return
        self._commands.topic = self.topics["cmd"]
        await client.subscribe(self.topics["cmd"], qos=1)
        self.stats.commands_subscribed = True

        async def rebirth() -> int:
            return await self._publish_birth(client)

        async for msg in client.messages:
            if str(msg.topic) != self.topics["cmd"]:
                continue
            payload = msg.payload
            raw = payload.encode() if isinstance(payload, str) else bytes(payload or b"")
            if not raw:  # how a retained command is cleared on the broker: not a request
                log.debug("empty message on %s ignored", self.topics["cmd"])
                continue
            # A message the broker stored with the retain flag arrives with it set when a new
            # subscription (every session: clean start) receives it; forwarded live to this
            # subscription it arrives without. So the flag marks exactly the stored copy that
            # would otherwise be carried out again at every reconnect.
            reply = await self._commands.handle(raw, rebirth=rebirth, retained=bool(msg.retain))
            await client.publish(
                self.topics["cmd_res"], reply, qos=1, timeout=self.cfg.publish_timeout_s
            )

    async def _after_failed_session(self) -> None:
        """A broker that refuses a packet's size (MQTT 3.1.1) just drops the connection, and the
        same batch would fail on every reconnect. A batch that was in flight when
        ``SPLIT_AFTER_FAILED_SESSIONS`` sessions in a row broke is split in halves that keep
        its seq, and later batches are capped at half its size: smaller batches, no retry loop.
        (Were it a stall instead, consumers still de-duplicate the parts against the whole.)"""
        inflight, self._inflight = self._inflight, {}
        for key, batch in inflight.items():
            failures = self._failed_sessions.get(key, 0) + 1
            self._failed_sessions[key] = failures
            if failures < SPLIT_AFTER_FAILED_SESSIONS:
                continue
            del self._failed_sessions[key]
            halves = await self.buffer.split(batch.seq, batch.part)
            if not halves:
                log.error("batch %d holds a single reading and still fails to publish", batch.seq)
                continue
            self._max_bytes = max(1024, min(self._max_bytes, len(batch.payload) // 2))
            self.stats.split_batches += 1
            log.error(
                "batch %d (%d bytes) was in flight when %d sessions in a row broke: the broker "
                "may refuse its size. Split it in two (same seq) and capped batches at %d bytes; "
                "set mqtt.batch_max_bytes below the broker's maximum packet size",
                batch.seq,
                len(batch.payload),
                failures,
                self._max_bytes,
            )

    async def _publish_birth(self, client: aiomqtt.Client) -> int:
        """Retained birth: the series dictionary every batch refers to (and who we are).
        Returns how many series it named."""
        if self._birth is None:
            return 0
        birth = await self._birth()
        await client.publish(
            self.topics["birth"],
            birth.encode(),
            qos=1,
            retain=True,
            timeout=self.cfg.publish_timeout_s,
        )
        self._birth_series = len(birth.series)
        self.stats.births += 1
        return len(birth.series)

    async def _publish(self, client: aiomqtt.Client, batch: SealedBatch) -> None:
        if self._birth is not None and self.buffer.sync.series_count > self._birth_series:
            await self._publish_birth(client)  # a new series appeared: name it first
        # publish(qos=1) returns only after the PUBACK; on timeout it raises MqttError.
        self._inflight[batch.key] = batch
        await client.publish(
            self.topics["data"], batch.payload, qos=1, timeout=self.cfg.publish_timeout_s
        )
        await self.buffer.ack(batch.seq, batch.part)
        log.debug(
            "batch %d part %s acknowledged (%d readings, %d bytes)",
            batch.seq,
            batch.part,
            batch.readings,
            len(batch.payload),
        )
        self._inflight.pop(batch.key, None)
        self._failed_sessions.pop(batch.key, None)
        self.stats.batches_sent += 1
        self.stats.readings_sent += batch.readings
        self.stats.last_seq_acked = batch.seq

    async def _forward(self, client: aiomqtt.Client) -> None:
        """Publish until the session breaks: the outbox first, then live and backlog batches.

        Up to ``max_inflight_batches`` publishes wait for their PUBACK at once. The first one
        that fails ends the session; every batch not acknowledged stays in the outbox.
        """
        window = asyncio.Semaphore(self.cfg.max_inflight_batches)

        async def send(batch: SealedBatch) -> None:
            try:
                await self._publish(client, batch)
            finally:
                window.release()

        try:
            async with asyncio.TaskGroup() as tg:
                if self.entries_per_message:
                    # Money first: every stored meter entry before any telemetry, then as
                    # they come, beside the batches.
                    await self._send_entries(client)
                    tg.create_task(self._entries_loop(client), name="uplink-entries")
                for batch in await self.buffer.unacked():
                    self.stats.resent_batches += 1
                    log.info(
                        "re-sending unacknowledged batch %d (%d readings)",
                        batch.seq,
                        batch.readings,
                    )
                    await window.acquire()
                    tg.create_task(send(batch))
                backlog = await self.buffer.start_live()
                if backlog:
                    log.info(
                        "draining a backlog of %d readings at up to %g batches/s while "
                        "fresh data goes first",
                        backlog,
                        self.cfg.drain_max_batches_per_s,
                    )
                while True:
                    part = await self._next_part()
                    await window.acquire()
                    batch = await self.buffer.seal(
                        self.gateway_id, self.cfg.batch_max_readings, self._max_bytes, part
                    )
                    if part == "live":
                        live_left = self.buffer.sync.live_pending
                        self._pending_since = (
                            self._pending_since or time.monotonic() if live_left else None
                        )
                    if batch is None:
                        # Nothing sealable (readings held for a good time, or evicted since
                        # they were counted): wait for the buffer to change, never spin.
                        window.release()
                        self._blocked_at = self._wakes
                        continue
                    tg.create_task(send(batch))
        except* aiomqtt.MqttError as group:
            raise group.exceptions[0] from None

    async def _entries_loop(self, client: aiomqtt.Client) -> None:
        while True:
            await self.entries_stored.wait()
            self.entries_stored.clear()
            await self._send_entries(client)

    async def _send_entries(self, client: aiomqtt.Client) -> None:
        """Publish stored meter entries, oldest first, and forget them only after the PUBACK.
        A re-sent message may repeat entries; the platform de-duplicates by (meter, seq)."""
        while rows := await self.buffer.unsent_entries(self.entries_per_message):
            entries = [SignedEntry(*row[1:]) for row in rows]
            await client.publish(
                self.topics["tx"],
                encode_tx_message(self.gateway_id, self.site, entries),
                qos=1,
                timeout=self.cfg.publish_timeout_s,
            )
            faults.point("tx_published")  # acknowledged by the broker, not yet forgotten
            await self.buffer.entries_sent(rows[-1][0])
            self.stats.entries_sent += len(rows)

    async def _next_part(self) -> str:
        """Wait until a batch should be sealed; say from which part ("live" or "backlog").

        Live readings go first: as soon as ``batch_max_readings`` are pending, or the oldest has
        waited ``batch_max_delay_ms``. Backlog batches are sealed no faster than
        ``drain_max_batches_per_s`` (0: no limit).
        """
        rate = self.cfg.drain_max_batches_per_s
        delay = self.cfg.batch_max_delay_ms / 1000.0
        if self._blocked_at == self._wakes:
            self._wake.clear()
            await self._wake.wait()
        self._blocked_at = -1
        while True:
            self._wake.clear()
            buf = self.buffer.sync
            live, backlog = buf.live_pending, buf.backlog_pending
            now = time.monotonic()
            if live >= self.cfg.batch_max_readings:
                return "live"
            if live > 0 and (self._pending_since is None or now >= self._pending_since + delay):
                return "live"
            if backlog > 0 and now >= self._next_drain:
                self._next_drain = now + (1.0 / rate if rate > 0 else 0.0)
                return "backlog"
            deadlines = []
            if live > 0 and self._pending_since is not None:
                deadlines.append(self._pending_since + delay)
            if backlog > 0:
                deadlines.append(self._next_drain)
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel.
                async with asyncio.timeout(min(deadlines) - now if deadlines else None):
                    await self._wake.wait()
            except TimeoutError:
                pass
