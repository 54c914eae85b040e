"""The MQTT client of the uplink: aiomqtt 2.x, plus what it leaves out that the forwarder needs.

aiomqtt 2.5 drops two things paho-mqtt hands it (``aiomqtt/client.py``, ``_on_connect`` and
``_on_publish`` ignore their ``properties`` and ``reason_code``):

* the broker's **Maximum Packet Size** from the MQTT 5 CONNACK (MQTT 5.0 §3.2.2.3.6): a client
  must not send a larger packet; Mosquitto closes the connection on one (``max_packet_size``);
* the **PUBACK reason code** (§3.4.2.1): under MQTT 5 a broker acknowledges a message it did
  not take with a code ≥ 0x80 (0x87 not authorized, 0x97 quota exceeded, ...), and aiomqtt's
  ``publish()`` returns as if it were delivered.

:class:`UplinkClient` keeps both. :meth:`UplinkClient.publish_acked` returns the reason code
and raises :class:`PublishRefused` for a code ≥ 0x80. A publish still waiting for its PUBACK
fails as soon as the connection drops, naming the broker's reason (aiomqtt would wait out the
whole timeout and say "Operation timed out").

Measured with Mosquitto 2.0.11 (tests/test_mqtt_limits.py):

* ``max_packet_size N``: the CONNACK carries Maximum Packet Size N; a larger PUBLISH gets
  DISCONNECT 0x95 (packet too large) under MQTT 5, a bare close under 3.1.1.
* ``message_size_limit N`` (payload bytes): the CONNACK carries no limit. A larger QoS 1
  message is dropped and acknowledged with PUBACK 0x95 under MQTT 5, and with a plain PUBACK
  under 3.1.1, which has no way to say "refused": the message is lost without a trace.
  0x95 is not one of the PUBACK reason codes of MQTT 5.0 §3.4.2.1, and paho-mqtt 2.2 takes
  such a PUBACK for a malformed packet and drops the connection (client-side reason 0x82,
  "Protocol error"). :class:`UplinkClient` reads the code before paho does and reports it.
* an ACL that denies the topic: PUBACK 0x87 under MQTT 5, a plain PUBACK under 3.1.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from aiomqtt.exceptions import MqttCodeError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

__all__ = [
    "PACKET_TOO_LARGE",
    "ConnectionLost",
    "NoConnack",
    "PublishRefused",
    "UplinkClient",
    "publish_overhead",
    "reason_name",
]

log = logging.getLogger(__name__)

#: PUBACK reason codes MQTT 5.0 allows (§3.4.2.1); paho-mqtt rejects a PUBACK with any other.
_PUBACK_CODES = frozenset(
    code
    for code, names in ReasonCode.names.items()
    if any(PacketTypes.PUBACK in types for types in names.values())
)
PACKET_TOO_LARGE = 0x95
_UNSPECIFIED_ERROR = 0x80

#: Names of the codes a broker may put in a PUBACK, 0x95 included (Mosquitto sends it).
_NAMES = {
    0x00: "success",
    0x10: "no matching subscribers",
    0x80: "unspecified error",
    0x83: "implementation specific error",
    0x87: "not authorized",
    0x90: "topic name invalid",
    0x91: "packet identifier in use",
    0x95: "packet too large",
    0x97: "quota exceeded",
    0x99: "payload format invalid",
}


def reason_name(code: int) -> str:
    """``0x87 not authorized``: a reason code as a technician reads it in the broker's docs."""
    return f"0x{code:02X} {_NAMES.get(code, 'unknown reason')}"


def publish_overhead(topic: str, *, v5: bool) -> int:
    """Bytes a QoS 1 PUBLISH adds to its payload, at most (MQTT 5.0 §3.3; 3.1.1 §3.3): fixed
    header 1 + remaining length up to 4, topic length 2 + the topic in UTF-8, packet id 2, and
    under MQTT 5 the property length (1: the uplink sends no properties)."""
    return 1 + 4 + 2 + len(topic.encode()) + 2 + (1 if v5 else 0)


class PublishRefused(aiomqtt.MqttError):
    """The broker acknowledged the message with a reason code ≥ 0x80: it did not take it.
    The caller keeps what it sent (it was not delivered)."""

    def __init__(self, code: int, topic: str, size: int) -> None:
        super().__init__(
            f"the broker refused a {size}-byte message on {topic}: {reason_name(code)}"
        )
        self.code, self.topic, self.size = code, topic, size


class NoConnack(aiomqtt.MqttError):
    """The broker took the TCP (TLS) connection but did not answer the CONNECT: it closed the
    connection or stayed silent. A broker that does not speak the MQTT version asked for may
    do either (MQTT 3.1.1 §3.1.2.2 allows the close; amqtt 0.12 waits for the rest of an
    MQTT 5 CONNECT it misreads)."""


class ConnectionLost(MqttCodeError):
    """The connection dropped while a message waited for its PUBACK (it may or may not have
    reached the broker: it is kept and sent again)."""

    def __str__(self) -> str:
        return f"connection to the broker lost ({self.rc}) while waiting for a PUBACK"


class UplinkClient(aiomqtt.Client):
    """An :class:`aiomqtt.Client` that keeps the CONNACK limits and PUBACK reason codes.

    Use one per connection attempt, as the forwarder does (library-notes §4).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Maximum Packet Size from the CONNACK (bytes), None if the broker set none.
        self.maximum_packet_size: int | None = None
        #: The broker's Receive Maximum (QoS 1 messages it takes unacknowledged at once).
        self.receive_maximum: int | None = None
        self._acks: dict[int, asyncio.Future[int]] = {}
        self._raw_codes: dict[int, int] = {}  # mid -> PUBACK code paho could not name
        self._connecting = False
        self._socket_opened = False
        paho = self._client
        original = getattr(paho, "_handle_pubackcomp", None)
        if callable(original) and hasattr(paho, "_in_packet"):

            def tolerant(cmd: str) -> Any:
                # paho raises MalformedPacket on a PUBACK code it cannot name (Mosquitto's 0x95)
                # and drops the connection. Keep the code, hand paho a valid one (0x80).
                packet = paho._in_packet.get("packet", b"")
                if (
                    cmd == "PUBACK"
                    and paho._protocol == mqtt.MQTTv5
                    and len(packet) > 2
                    and packet[2] not in _PUBACK_CODES
                ):
                    mid = int.from_bytes(packet[:2], "big")
                    self._raw_codes[mid] = packet[2]
                    paho._in_packet["packet"] = bytearray(packet[:2]) + bytes([_UNSPECIFIED_ERROR])
                return original(cmd)

            paho._handle_pubackcomp = tolerant

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Any = None,
    ) -> None:
        if properties is not None:
            self.maximum_packet_size = getattr(properties, "MaximumPacketSize", None)
            self.receive_maximum = getattr(properties, "ReceiveMaximum", None)
        super()._on_connect(client, userdata, flags, reason_code, properties)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Any = None,
    ) -> None:
        if self._connecting and not self._connected.done():
            # Closed before any CONNACK (a broker that hangs up on an MQTT version it does not
            # speak): fail the connect now instead of after the whole timeout.
            self._connected.set_exception(
                NoConnack(f"the broker closed the connection before its CONNACK ({reason_code})")
            )
        lost = ConnectionLost(reason_code)
        for fut in self._acks.values():
            if not fut.done():
                fut.set_exception(lost)
        super()._on_disconnect(client, userdata, flags, reason_code, properties)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._socket_opened = True
        super()._on_socket_open(client, userdata, sock)

    async def __aenter__(self) -> UplinkClient:
        self._connecting, self._socket_opened = True, False
        try:
            return await super().__aenter__()
        except (MqttCodeError, NoConnack):
            raise  # a CONNACK that refused, or a connection closed before one
        except aiomqtt.MqttError:
            if not self._socket_opened:
                raise  # no connection at all (refused, unreachable, TLS)
            with contextlib.suppress(Exception):
                self._client.disconnect()  # do not leave the silent connection open
            raise NoConnack(
                f"the broker did not answer the CONNECT within {self.timeout:g} s"
            ) from None
        finally:
            self._connecting = False

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._disconnected.done() and not self._disconnected.cancelled():
            self._disconnected.exception()  # the session reported how it ended: not "unretrieved"
        await super().__aexit__(*exc_info)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        code = self._raw_codes.pop(mid, None)
        if code is None:
            code = int(getattr(reason_code, "value", reason_code) or 0)
        fut = self._acks.get(mid)
        if fut is not None and not fut.done():
            fut.set_result(code)
        super()._on_publish(client, userdata, mid, reason_code, properties)

    async def publish_acked(
        self, topic: str, payload: bytes, *, timeout_s: float, retain: bool = False
    ) -> int:
        """Publish with QoS 1 and wait for the PUBACK; return its reason code (0x00, or 0x10
        "no matching subscribers", both a delivery; always 0 under MQTT 3.1.1).

        Raises :class:`PublishRefused` for a code ≥ 0x80, :class:`aiomqtt.MqttError` when the
        connection drops first or no PUBACK comes within ``timeout_s`` seconds.
        """
        info = self._client.publish(topic, payload, 1, retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise MqttCodeError(info.rc, "could not publish")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._acks[info.mid] = fut
        try:
            async with asyncio.timeout(timeout_s):
                code = await fut
        except TimeoutError:
            raise aiomqtt.MqttError(f"no PUBACK within {timeout_s:g} s") from None
        finally:
            self._acks.pop(info.mid, None)
        if code >= 0x80:
            raise PublishRefused(code, topic, len(payload))
        return code
