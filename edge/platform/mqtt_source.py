"""The consumers' MQTT side: one broker, QoS 1 subscriptions, each message acknowledged only
after it was handled.

Both consumers use it, the one that prints readings (edge/platform/consumer.py) and the one that
stores them (edge/platform/store_consumer.py). Births (and their parts, and the status when
asked) are plain subscriptions: they are retained and every consumer needs every one. Batches
and parking entries join the MQTT 5 shared subscription ``$share/<group>/…`` when a ``share``
group is given, so the members of a group split them; a member's session (fixed ``client_id``,
``session_expiry_s``) keeps its share queued at the broker while it is away.

The acknowledgement goes after ``handle`` returns: paho's own manual-ack switch, since aiomqtt
has no public API for it yet (empicano/aiomqtt#345). A consumer killed while handling a message
gets it again.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from edge.shared.secrets import url_secret_problem

__all__ = ["MqttSubscription", "published_by"]

log = logging.getLogger(__name__)

def published_by(topic: str, gateway: str) -> bool:
    """Whether ``topic`` is one of ``gateway``'s own (``<prefix>/<site>/<gateway>/<kind>``,
    ``<kind>`` being ``data``, ``tx``, ``status``, ``birth`` or ``birth/<k>``). A broker's ACL
    lets a gateway publish under its own id only; the payload's id is the gateway's word. A
    message whose payload names another gateway than its topic is not trusted: it could put
    readings, births or payments under another gateway's name (and take its batch numbers).
    Compared as RabbitMQ's routing keys are (every ``/`` as ``.``), since a ``.`` inside an id
    cannot be told from a level there (edge/platform/amqp.py)."""
    head, _, last = topic.rpartition("/")
    if last.isdigit() and head.endswith("/birth"):
        head, _, last = head.rpartition("/")
    return head.replace("/", ".").endswith("." + gateway.replace("/", "."))


#: What a subscription hands each message to: plain or async; its return value is ignored.
Handler = Callable[[str, bytes], Awaitable[Any] | Any]


class MqttSubscription:
    """Where to connect and what to subscribe to, and :meth:`run`, the loop.
    ``receive_maximum``: unacknowledged messages the broker may send at once (MQTT 5).

    Raises ValueError (in our words, never repeating a password) for a broker url with
    credentials, a scheme other than ``mqtt://`` / ``mqtts://``, or a share group without a
    fixed client id or with a topic character in its name.
    """

    def __init__(
        self,
        broker_url: str,
        *,
        prefix: str = "city/v1",
        client_id: str | None = None,
        share: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        session_expiry_s: int = 7 * 86400,
        status: bool = False,
        receive_maximum: int = 1000,
    ) -> None:
        problem = url_secret_problem(broker_url, "the broker url")  # before it is shown
        if problem is not None:
            raise ValueError(problem)
        parts = urlsplit(broker_url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"broker must look like mqtt[s]://HOST:PORT, got {broker_url!r}")
        tls = parts.scheme == "mqtts"
        if tls and tls_context is None:
            from edge.shared.tls import client_context

            tls_context = client_context()
        self.tls_context = tls_context if tls else None
        self.host, self.port = parts.hostname, parts.port or (8883 if tls else 1883)
        if share is not None:
            if not client_id:
                raise ValueError("a shared subscription needs a fixed client id (--client-id)")
            if not share or any(c in share for c in "/+#"):
                raise ValueError(f"share group {share!r} must be a plain name")
        base = prefix.rstrip("/")
        shared = f"$share/{share}/" if share else ""
        self.topics = [
            f"{base}/+/+/birth",
            f"{shared}{base}/+/+/data",
            f"{shared}{base}/+/+/tx",
            f"{base}/+/+/birth/+",  # the parts of a birth too large for one message
        ]
        if status:
            self.topics.append(f"{base}/+/+/status")
        self.client_id = client_id
        self.share = share
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        self.subscribed = asyncio.Event()
        #: Messages acknowledged to the broker after handling.
        self.acked = 0

    def client(self) -> Any:
        """A new aiomqtt client: MQTT 5 with a session expiry for a share group; otherwise a
        persistent 3.1.1 session when ``client_id`` is fixed, a clean one when it is not."""
        import aiomqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        common = {
            "identifier": self.client_id,
            # No limit here: a message aiomqtt discarded from a full queue would never be
            # acknowledged, stay in flight at the broker and stall the session until it
            # reconnects. How many are in hand is the broker's window: its
            # max_inflight_messages (MQTT 3.1.1; Mosquitto's default is 20), or the Receive
            # Maximum (MQTT 5).
            "max_queued_incoming_messages": None,
            "tls_context": self.tls_context,
        }
        if self.share is None:
            return aiomqtt.Client(self.host, self.port, clean_session=not self.client_id, **common)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s
        props.ReceiveMaximum = self.receive_maximum
        return aiomqtt.Client(
            self.host,
            self.port,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=props,
            **common,
        )

    async def run(self, handle: Handler) -> None:
        """Subscribe and hand every message to ``handle(topic, payload)``, acknowledging it
        after ``handle`` returns; until cancelled, reconnecting with backoff (0.5 s doubling
        to 5 s, a WARNING each time). An exception from ``handle`` ends the loop with the
        message unacknowledged (the broker delivers it again)."""
        import aiomqtt

        delay = 0.5
        while True:
            client = self.client()
            try:
                async with client:
                    paho = client._client
                    manual = hasattr(paho, "manual_ack_set")
                    if manual:
                        paho.manual_ack_set(True)
                    for topic in self.topics:
                        await client.subscribe(topic, qos=1)
                    self.subscribed.set()
                    delay = 0.5
                    async for msg in client.messages:
                        payload = msg.payload
                        if isinstance(payload, bytes | bytearray):
                            done = handle(str(msg.topic), bytes(payload))
                            if inspect.isawaitable(done):
                                await done
                        if manual and msg.qos > 0:
                            paho.ack(msg.mid, msg.qos)
                            self.acked += 1
            except aiomqtt.MqttError as exc:
                self.subscribed.clear()
                log.warning(
                    "consumer: broker connection failed: %s; retrying in %.1f s", exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
