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
With ``mqtt.failover_urls`` (other nodes of one broker cluster), each attempt after a failed
connect or a lost session goes to the next node, round robin, with the same backoff.

Broker limits (edge/uplink/client.py has what Mosquitto was measured to do). The forwarder speaks
MQTT 5 and falls back to 3.1.1, with one WARNING, when the broker refuses 5
(``mqtt.protocol_version``).
Every message stays under the broker's packet limit: the Maximum Packet Size of its CONNACK, or
``mqtt.max_packet_bytes``, whichever is smaller. Batches are sealed under it, and a batch from
before is split; a birth that does not fit goes out in parts (protocols/birth.py). Under MQTT 5
a PUBACK with a reason code of 0x80 or more is not a delivery: the batch stays in the buffer.
After 0x95 (packet too large) the batch is split. After any other code (0x87 not authorized,
0x97 quota exceeded, ...) the same batch is tried again, with backoff, in the same session.
Each refusal is counted by its reason code (``stats.refused``) and logged at ERROR once until
the broker takes messages again.
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
from dataclasses import dataclass, field
from typing import Protocol

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from tenacity.wait import wait_base

from edge.settings import MqttConfig
from edge.shared import faults
from edge.shared.tls import describe_tls_error
from edge.store.buffer import AsyncBuffer, SealedBatch
from edge.uplink.client import (
    PACKET_TOO_LARGE,
    NoConnack,
    PublishRefused,
    UplinkClient,
    publish_overhead,
    reason_name,
)
from protocols.birth import Birth, BirthTooLarge, split_birth
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
    protocol: str = ""  # "5" or "3.1.1" once connected
    broker: str = ""  # the node of mqtt.url / mqtt.failover_urls of the last session
    max_packet_bytes: int | None = None  # the limit messages are kept under (None: no limit)
    birth_parts: int = 0  # parts the last birth went out in (1: whole)
    #: Messages the broker acknowledged with a reason code >= 0x80 (not delivered, kept), by
    #: reason ("0x87 not authorized", ...).
    refused: dict[str, int] = field(default_factory=dict)


#: Sessions in a row that must break with the same batch in flight before it is split.
SPLIT_AFTER_FAILED_SESSIONS = 3
#: Batches are never capped below this many bytes by a refusal (a reading is some 20-100).
MIN_BATCH_BYTES = 256
#: Attempts to fit a birth after the broker refused a part as too large (each halves the part).
BIRTH_SIZE_ATTEMPTS = 8
#: After falling back to 3.1.1 because a v5 CONNECT got no answer, MQTT 5 is tried again after
#: this long (amqtt, which never answers our v5 CONNECT, costs one connect timeout per period).
RETRY_V5_AFTER_SILENCE_S = 600.0
#: Sessions in a row that broke while the command subscription waited for its SUBACK before the
#: gateway goes on without commands for COMMANDS_RETRY_S. RabbitMQ 3.10 closes the connection on
#: that SUBSCRIBE while the node holding the gateway's subscription queue
#: (``mqtt-subscription-<client id>qos1``, durable, on the node of its first connection) is
#: down: with it, telemetry would stop with the node that failed over (tests/test_rabbitmq.py).
SUBSCRIBE_BREAKS = 2
COMMANDS_RETRY_S = 300.0
#: CONNACK codes of a broker that does not speak MQTT 5 (3.1.1 code 1 and its MQTT 5 name 0x84).
_UNSUPPORTED_VERSION = (1, 0x84)


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


class CommandSink(Protocol):
    """What the forwarder needs of whatever answers platform commands
    (:class:`edge.agent.commands.CommandHandler`): the command topic, for its hints, and one
    reply per request, never an exception."""

    topic: str

    async def handle(
        self,
        payload: bytes,
        *,
        rebirth: Callable[[], Awaitable[int]],
        retained: bool = False,
    ) -> bytes: ...


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
        commands: CommandSink | None = None,
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
        # MQTT version: None until a session decided it (auto), then sticky for the process.
        self._v5: bool | None = {"5": True, "3.1.1": False}.get(cfg.protocol_version)
        #: After a fallback because the broker stayed silent (not an explicit refusal), when to
        #: try MQTT 5 again: a v5 broker that was only slow to answer once is not left on 3.1.1,
        #: whose refusals look like deliveries, for the rest of the run.
        self._retry_v5_at: float | None = None
        self._fallback_logged = False
        self._packet_limit: int | None = cfg.max_packet_bytes  # of this session
        self._birth_cap: int | None = None  # payload bytes, learned from refusals
        self._birth_inflight: int | None = None  # bytes of the birth part awaiting its PUBACK
        self._birth_failures = 0  # sessions in a row that broke with a birth in flight
        self._birth_parts_sent = 0  # parts the last birth went out in (to clear stale ones)
        self._birth_logged: tuple[int, int] | None = None  # (size, limit) of the last ERROR
        self._entries_cap = 0  # meter entries per message after a size refusal (0: no cap)
        # Refusals in a row, by topic: reason code -> monotonic time it was first seen.
        self._refusing: dict[str, dict[int, float]] = {}
        self._refusals_in_row: dict[str, int] = {}
        #: mqtt.url, then mqtt.failover_urls: the nodes of one broker cluster, tried in turn.
        self._urls: list[str] = list(cfg.urls)
        self._url_index = 0
        self._last_url = self._urls[0]  # the node the last session tried
        self._subscribing = False  # the command SUBSCRIBE waits for its SUBACK
        self._subscribe_breaks = 0  # sessions in a row that broke meanwhile
        self._commands_off_until: float | None = None  # monotonic time commands are tried again
        self._commands_off_logged = False

    # The writer calls this after every commit.
    def notify_appended(self) -> None:
        if self._pending_since is None:
            self._pending_since = time.monotonic()
        self._wakes += 1
        self._wake.set()

    @property
    def broker_url(self) -> str:
        """The broker node this session uses (or the next one tries)."""
        return self._urls[self._url_index]

    def _next_broker(self) -> None:
        """The next attempt goes to the next node of mqtt.failover_urls (round robin)."""
        if len(self._urls) > 1:
            self._url_index = (self._url_index + 1) % len(self._urls)
            log.debug("uplink: the next attempt goes to %s", self.broker_url)

    def _client(self, boot: int, *, v5: bool) -> UplinkClient:
        cfg = self.cfg
        host, port = cfg.endpoint(self.broker_url)
        session: dict[str, object] = (
            {"protocol": aiomqtt.ProtocolVersion.V5, "clean_start": True}
            if v5
            else {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": True}
        )
        return UplinkClient(
            host,
            port,
            identifier=cfg.client_id or self.gateway_id,
            username=cfg.username,
            password=self.password,
            keepalive=cfg.keepalive_s,
            timeout=cfg.publish_timeout_s,
            tls_context=self._tls_context,
            **session,  # type: ignore[arg-type]
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
                "uplink to %s down: %s; retrying with backoff%s (logged at DEBUG until it "
                "recovers)",
                self._last_url,
                exc,
                f", node after node of {len(self._urls)}" if len(self._urls) > 1 else "",
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

    async def _connect(self, boot: int) -> UplinkClient:
        """A connected client: MQTT 5 unless the broker refuses it (or the config says 3.1.1).
        Raises aiomqtt.MqttError."""
        if self._retry_v5_at is not None and time.monotonic() >= self._retry_v5_at:
            self._v5, self._retry_v5_at = None, None  # probe MQTT 5 once more
        client = self._client(boot, v5=self._v5 is not False)
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            refused_v5 = isinstance(exc, NoConnack) or (
                isinstance(exc, MqttConnectError)
                and getattr(exc.rc, "value", exc.rc) in _UNSUPPORTED_VERSION
            )
            if self._v5 is not None or not refused_v5:
                raise
            client = self._client(boot, v5=False)
            await client.__aenter__()
            self._v5 = False
            silent = isinstance(exc, NoConnack)
            if silent:
                self._retry_v5_at = time.monotonic() + RETRY_V5_AFTER_SILENCE_S
            if self._fallback_logged:
                log.debug(
                    "broker at %s: MQTT 5 still unanswered; MQTT 3.1.1 again", self.broker_url
                )
                return client
            self._fallback_logged = True
            cap = self.cfg.max_packet_bytes
            log.warning(
                "broker at %s does not speak MQTT 5 (%s); using MQTT 3.1.1%s. "
                "Under 3.1.1 a broker cannot refuse a message: one it drops for its size or "
                "its ACL is acknowledged like a delivered one, and lost. %s",
                self.broker_url,
                self._describe(exc),
                f" (MQTT 5 is tried again every {RETRY_V5_AFTER_SILENCE_S / 60:g} min, in case "
                "the broker was only slow)"
                if silent
                else " from now on",
                f"Every message is kept under mqtt.max_packet_bytes ({cap} bytes)."
                if cap
                else "Set mqtt.max_packet_bytes to the broker's packet limit "
                "(Mosquitto: max_packet_size), or use a broker that speaks MQTT 5.",
            )
            return client
        if self._v5 is None:
            self._v5 = True
        return client

    def _session_limits(self, client: UplinkClient) -> None:
        announced = client.maximum_packet_size if self._v5 else None
        limits = [x for x in (self.cfg.max_packet_bytes, announced) if x]
        self._packet_limit = min(limits) if limits else None
        self.stats.protocol = "5" if self._v5 else "3.1.1"
        self.stats.max_packet_bytes = self._packet_limit

    def _describe_limit(self) -> str:
        """Where the packet limit comes from, for log lines."""
        cfg_cap = self.cfg.max_packet_bytes
        if self._packet_limit is not None and self._packet_limit != cfg_cap:
            return "the Maximum Packet Size in the broker's CONNACK"
        return "mqtt.max_packet_bytes"

    def _payload_limit(self, topic: str) -> int | None:
        """The largest payload a QoS 1 message on ``topic`` may carry this session."""
        if self._packet_limit is None:
            return None
        return self._packet_limit - publish_overhead(topic, v5=bool(self._v5))

    def _batch_bytes(self) -> int:
        limit = self._payload_limit(self.topics["data"])
        return self._max_bytes if limit is None else max(1, min(self._max_bytes, limit))

    async def _session(self) -> None:
        started = time.monotonic()
        boot = await self.buffer.boot()
        self._last_url = self.broker_url
        try:
            try:
                client = await self._connect(boot)
            except aiomqtt.MqttError as exc:
                self.stats.connect_failures += 1
                self._next_broker()
                raise _SessionFailed(self._describe(exc)) from None
            try:
                self.stats.sessions += 1
                self.stats.connected = True
                self.stats.broker = self.broker_url
                self._session_limits(client)
                self._birth_inflight = None
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
                        self.broker_url,
                        time.monotonic() - self._outage_since,
                    )
                    self._outage_since = None
                else:
                    limit = self._packet_limit
                    log.info(
                        "uplink to %s connected (MQTT %s, %s)",
                        self.broker_url,
                        self.stats.protocol,
                        f"messages kept under {limit} bytes from {self._describe_limit()}"
                        if limit
                        else "the broker announced no packet limit",
                    )
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
            self._next_broker()
            broke_at_subscribe, self._subscribing = self._subscribing, False
            if broke_at_subscribe:
                self._subscribe_broke()
            await self._after_failed_session(count_inflight=not broke_at_subscribe)
            if time.monotonic() - started >= self.cfg.stable_after_s:
                log.error("uplink lost after a stable session: %s", self._describe(exc))
                self._outage_since = time.monotonic()
                raise _StableSessionEnded() from None
            raise _SessionFailed(self._describe(exc)) from None

    async def _forward_while_up(self, client: UplinkClient, listener: asyncio.Task) -> None:
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

    async def _listen(self, client: UplinkClient) -> None:
        """Answer platform commands for as long as the session lasts; without commands, only
        wait for the connection to end (the message iterator raises MqttError then)."""
        if self._commands is None or self._commands_paused():
            async for _ in client.messages:
                pass
            return
        self._commands.topic = self.topics["cmd"]
        self._subscribing = True
        await client.subscribe(self.topics["cmd"], qos=1)
        self._subscribing = False
        self._subscribe_breaks = 0
        if self._commands_off_logged:
            self._commands_off_logged = False
            log.info("platform commands on %s are taken again", self.topics["cmd"])
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

    def _commands_paused(self) -> bool:
        """Whether this session goes without the command subscription (see SUBSCRIBE_BREAKS)."""
        if self._commands_off_until is None:
            return False
        if time.monotonic() < self._commands_off_until:
            return True
        self._commands_off_until = None  # try the subscription again
        return False

    def _subscribe_broke(self) -> None:
        """The session broke while the command SUBSCRIBE waited for its SUBACK."""
        self._subscribe_breaks += 1
        if self._subscribe_breaks < SUBSCRIBE_BREAKS:
            return
        self._subscribe_breaks = 0
        self._commands_off_until = time.monotonic() + COMMANDS_RETRY_S
        log.log(
            logging.DEBUG if self._commands_off_logged else logging.ERROR,
            "the broker at %s closed the connection %d times in a row when the gateway "
            "subscribed to its commands (%s): telemetry goes on without platform commands, "
            "which are tried again every %g s. RabbitMQ 3.10 does this while the node holding "
            "the gateway's subscription queue is down",
            self._last_url,
            SUBSCRIBE_BREAKS,
            self.topics["cmd"],
            COMMANDS_RETRY_S,
        )
        self._commands_off_logged = True

    async def _after_failed_session(self, *, count_inflight: bool = True) -> None:
        """A broker that refuses a packet's size (MQTT 3.1.1) just drops the connection, and the
        same batch would fail on every reconnect. A batch that was in flight when
        ``SPLIT_AFTER_FAILED_SESSIONS`` sessions in a row broke is split in halves that keep
        its seq, and later batches are capped at half its size: smaller batches, no retry loop.
        (Were it a stall instead, consumers still de-duplicate the parts against the whole.)
        A birth in flight at as many breaks in a row is sent in parts of half its size.
        A session that broke on the command SUBSCRIBE (``count_inflight`` False) says nothing
        about the size of what was in flight: it is not counted."""
        if not count_inflight:
            self._birth_inflight, self._inflight = None, {}
            return
        birth, self._birth_inflight = self._birth_inflight, None
        if birth is not None:
            self._birth_failures += 1
            if self._birth_failures >= SPLIT_AFTER_FAILED_SESSIONS:
                self._birth_failures = 0
                self._birth_cap = max(MIN_BATCH_BYTES, birth // 2)
                log.error(
                    "the birth (%d bytes in its message) was in flight when %d sessions in a "
                    "row broke: the broker may refuse its size. It goes out in parts of at most "
                    "%d bytes from now on; set mqtt.max_packet_bytes to the broker's packet limit",
                    birth,
                    SPLIT_AFTER_FAILED_SESSIONS,
                    self._birth_cap,
                )
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

    def _birth_limit(self) -> int | None:
        """Payload bytes a birth part may take this session (None: no limit known)."""
        # Sized for the longest part topic, <birth>/99999 (protocols.birth caps parts there).
        limit = self._payload_limit(f"{self.topics['birth']}/99999")
        caps = [x for x in (limit, self._birth_cap) if x is not None]
        return min(caps) if caps else None

    async def _publish_birth(self, client: UplinkClient) -> int:
        """Retained birth: the series dictionary every batch refers to (and who we are).
        Returns how many series it named.

        A birth larger than the broker takes goes out in parts, part 1 on ``.../birth`` and
        part k on ``.../birth/k`` (docs/asyncapi.yaml, birthPart), logged at ERROR: consumers
        that do not join parts miss names. A birth that cannot be sent at all is logged at
        ERROR and skipped: batches still flow, their series unnamed until a birth gets through.
        """
        if self._birth is None:
            return 0
        birth = await self._birth()
        named = len(birth.series)
        for _ in range(BIRTH_SIZE_ATTEMPTS):
            limit = self._birth_limit()
            try:
                payloads = [birth.encode()] if limit is None else split_birth(birth, limit)
            except BirthTooLarge as exc:
                self._birth_problem(exc.size, exc.limit, f"it cannot be sent at all: {exc.what}")
                break
            if len(payloads) > 1:
                size = len(birth.encode())
                self._birth_problem(size, limit or 0, f"sent in {len(payloads)} parts")
            try:
                await self._send_birth(client, payloads)
            except PublishRefused as exc:
                self._count_refusal(exc)
                if exc.code != PACKET_TOO_LARGE:
                    what = "the birth (batches still flow, their series unnamed)"
                    self._log_refusal(exc, what, retried=False)
                    break
                self._birth_cap = max(MIN_BATCH_BYTES, exc.size // 2)
                continue
            self._refusal_over(self.topics["birth"])
            self.stats.births += 1
            self.stats.birth_parts = len(payloads)
            break
        self._birth_series = named
        return named

    async def _send_birth(self, client: UplinkClient, payloads: list[bytes]) -> None:
        base = self.topics["birth"]
        for index, payload in enumerate(payloads, 1):
            self._birth_inflight = len(payload)
            await client.publish_acked(
                base if index == 1 else f"{base}/{index}",
                payload,
                retain=True,
                timeout_s=self.cfg.publish_timeout_s,
            )
        self._birth_inflight = None
        self._birth_failures = 0
        # Parts of a larger birth sent earlier by this process: an empty retained message
        # deletes them. (Older ones belong to another birth id; consumers ignore them.)
        for index in range(len(payloads) + 1, self._birth_parts_sent + 1):
            with contextlib.suppress(PublishRefused):
                await client.publish_acked(
                    f"{base}/{index}", b"", retain=True, timeout_s=self.cfg.publish_timeout_s
                )
        self._birth_parts_sent = len(payloads)

    def _birth_problem(self, size: int, limit: int, outcome: str) -> None:
        """ERROR once per (size, limit): the birth does not fit in one message."""
        level = logging.ERROR if self._birth_logged != (size, limit) else logging.DEBUG
        self._birth_logged = (size, limit)
        source = (
            "after the broker refused a larger part"
            if self._birth_cap is not None and self._birth_cap <= limit
            else f"{self._packet_limit} bytes per packet from {self._describe_limit()}"
        )
        log.log(
            level,
            "the birth is %d bytes but a message may carry at most %d (%s): %s. Consumers "
            "that do not join birth parts (docs/asyncapi.yaml) miss names; raise the broker's "
            "packet limit (Mosquitto: max_packet_size) to send it whole",
            size,
            limit,
            source,
            outcome,
        )

    def _count_refusal(self, exc: PublishRefused) -> None:
        key = reason_name(exc.code)
        self.stats.refused[key] = self.stats.refused.get(key, 0) + 1

    def _log_refusal(self, exc: PublishRefused, what: str, *, retried: bool = True) -> None:
        """ERROR the first time a topic is refused with a reason code, then DEBUG until the
        broker takes a message on that topic again."""
        n = self._refusals_in_row[exc.topic] = self._refusals_in_row.get(exc.topic, 0) + 1
        hint = {
            0x87: "check the broker's ACL for this client"
            + (f" (user {self.cfg.username})" if self.cfg.username else "")
            + f" on {exc.topic}",
            0x97: "the broker asks the gateway to send less (a quota); nothing is lost",
            0x90: f"check mqtt.topic_prefix ({self.cfg.topic_prefix})",
        }.get(exc.code, "see the broker's log")
        seen = self._refusing.setdefault(exc.topic, {})
        if exc.code in seen:
            log.debug("%s refused again (%d in a row): %s", what, n, exc)
            return
        seen[exc.code] = time.monotonic()
        log.error(
            "%s: %s; %s. %s (logged at DEBUG until the broker takes it)",
            what,
            exc,
            hint,
            "Nothing is deleted: it is kept and tried again with backoff"
            if retried
            else "It is sent again at the next connection",
        )

    def _refusal_over(self, topic: str) -> None:
        """A message on ``topic`` was taken: INFO if the broker had been refusing them."""
        seen = self._refusing.pop(topic, None)
        n = self._refusals_in_row.pop(topic, 0)
        if seen:
            log.info(
                "the broker takes messages on %s again after %d refusals in %.1f s (%s)",
                topic,
                n,
                time.monotonic() - min(seen.values()),
                ", ".join(reason_name(c) for c in sorted(seen)),
            )

    async def _refused_wait(self, topic: str) -> None:
        cfg, attempt = self.cfg, self._refusals_in_row.get(topic, 1)
        await asyncio.sleep(full_jitter(cfg.reconnect_min_s, cfg.reconnect_max_s, attempt))

    async def _split(self, client: UplinkClient, batch: SealedBatch, why: str) -> None:
        """Replace ``batch`` by its halves (same seq, buffer.split) and publish them."""
        halves = await self.buffer.split(batch.seq, batch.part)
        if not halves:
            # [] is a single reading, or a buffer with no room on its disk to write the halves
            # (logged by the buffer); either way the batch stays whole in the outbox.
            log.error(
                "batch %d part %s (%d bytes, %d readings) %s and %s; it is kept",
                batch.seq,
                batch.part,
                len(batch.payload),
                batch.readings,
                "holds a single reading"
                if batch.readings < 2
                else "cannot be split now (no room on the buffer's disk)",
                why,
            )
            return
        self.stats.split_batches += 1
        log.log(
            logging.ERROR if self.stats.split_batches == 1 else logging.DEBUG,
            "batch %d (%d bytes, %d readings) split in two (same seq): %s; batches are sealed "
            "at most %d bytes from now on",
            batch.seq,
            len(batch.payload),
            batch.readings,
            why,
            self._batch_bytes(),
        )
        for half in halves:
            await self._publish(client, half, birth_checked=True)

    async def _publish(
        self, client: UplinkClient, batch: SealedBatch, *, birth_checked: bool = False
    ) -> None:
        if (
            not birth_checked
            and self._birth is not None
            and self.buffer.sync.series_count > self._birth_series
        ):
            await self._publish_birth(client)  # a new series appeared: name it first
        limit = self._payload_limit(self.topics["data"])
        if limit is not None and len(batch.payload) > limit and batch.readings > 1:
            # Sealed before this session's limit was known (an older outbox batch).
            await self._split(
                client, batch, f"it is larger than {limit} bytes ({self._describe_limit()})"
            )
            return
        # publish_acked returns only after a PUBACK that accepts it; else it raises.
        self._inflight[batch.key] = batch
        while True:
            try:
                await client.publish_acked(
                    self.topics["data"], batch.payload, timeout_s=self.cfg.publish_timeout_s
                )
                break
            except PublishRefused as exc:
                self._count_refusal(exc)
                if exc.code == PACKET_TOO_LARGE:
                    self._inflight.pop(batch.key, None)
                    self._max_bytes = max(
                        MIN_BATCH_BYTES, min(self._max_bytes, len(batch.payload) // 2)
                    )
                    await self._split(client, batch, f"the broker refused it: {exc}")
                    return
                self._log_refusal(exc, f"batch {batch.seq} ({batch.readings} readings)")
                await self._refused_wait(exc.topic)
        self._refusal_over(self.topics["data"])
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

    async def _forward(self, client: UplinkClient) -> None:
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
                        self.gateway_id, self.cfg.batch_max_readings, self._batch_bytes(), part
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

    async def _entries_loop(self, client: UplinkClient) -> None:
        while True:
            await self.entries_stored.wait()
            self.entries_stored.clear()
            await self._send_entries(client)

    async def _send_entries(self, client: UplinkClient) -> None:
        """Publish stored meter entries, oldest first, and forget them only after a PUBACK
        that accepts them. A re-sent message may repeat entries; the platform de-duplicates by
        (meter, seq). A message is kept under the broker's packet limit (fewer entries)."""
        limit = self._payload_limit(self.topics["tx"])
        while rows := await self.buffer.unsent_entries(
            min(self.entries_per_message, self._entries_cap or self.entries_per_message)
        ):
            while True:
                entries = [SignedEntry(*row[1:]) for row in rows]
                payload = encode_tx_message(self.gateway_id, self.site, entries)
                if limit is None or len(payload) <= limit or len(rows) == 1:
                    break
                rows = rows[: len(rows) // 2]
            try:
                await client.publish_acked(
                    self.topics["tx"], payload, timeout_s=self.cfg.publish_timeout_s
                )
            except PublishRefused as exc:
                self._count_refusal(exc)
                if exc.code == PACKET_TOO_LARGE and len(rows) > 1:
                    self._entries_cap = max(1, len(rows) // 2)
                    continue
                self._log_refusal(exc, f"a message of {len(rows)} meter entries")
                await self._refused_wait(exc.topic)
                continue
            self._refusal_over(self.topics["tx"])
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
