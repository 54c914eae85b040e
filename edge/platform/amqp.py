"""RabbitMQ between the gateways and the consumers: the topology, and a consumer source over AMQP.

Gateways publish MQTT (QoS 1) to any node of a RabbitMQ cluster; its MQTT plugin turns the
topic into a routing key on the ``amq.topic`` exchange (``/`` becomes ``.``; in 3.10 a ``.``
stays, see :func:`routing_key_to_topic`) and sends the PUBACK only once the message is
confirmed by every queue it was routed to. For a quorum queue that is a Raft majority of the
nodes, written to disk: a PUBACK then means stored on two nodes of three (measured,
shared/reference/platform-engines.md).

The topology (:func:`declare_topology`, ``edge broker-setup``):

* quorum queue ``edge.platform`` (durable, ``x-queue-type: quorum``) bound to ``amq.topic``
  with ``<prefix>.#.data``, ``.birth``, ``.birth.*``, ``.tx`` and ``.status`` (the prefix's
  ``/`` as ``.``): every message a gateway sends, in one queue that competing consumers share;
* fanout exchange and queue ``edge.unroutable``, the **alternate exchange** of ``amq.topic``:
  a QoS 1 message that matches no binding is acknowledged to the gateway and dropped by
  RabbitMQ (MQTT 3.1.1 has no "no subscribers" reason code), unless an alternate exchange
  catches it. ``amq.topic`` is predeclared and takes no arguments, so the alternate exchange is
  set by a policy (:data:`POLICY_COMMAND`), which AMQP cannot set: :func:`declare_topology`
  checks it with a probe (a mandatory publish that the broker returns when it is missing).

Declare it before any gateway connects: what gateways sent before is gone.

:class:`AmqpSource` consumes the queue (manual acks, a prefetch), hands each message to an async
handler as (MQTT topic, payload) and acknowledges it only after the handler returned. It
connects to the first node that answers; when the connection is lost it goes on with the next
node. Messages it had not acknowledged are delivered again (to it or to another consumer):
handlers must be idempotent.

The password is never in a URL (edge/shared/secrets.py: a URL is shown wherever the broker is
named, and a command line in process lists and shell history): :func:`check_amqp_url` refuses
``amqp://USER:PASSWORD@…``; the user stays in the URL (``amqp://edge@node1:5672/``) and the
password is given apart (``password=``; ``--amqp-password-file`` or :data:`PASSWORD_ENV` on the
command line, :func:`amqp_password`) and applied to every node, as a cluster shares its users.
Without one, the AMQP client offers RabbitMQ's default (user ``guest``, password ``guest``),
which RabbitMQ accepts only for its own guest user from the same machine.

Imports aio-pika (the ``platform`` extra) only when a function needs it: :class:`ExtraMissing`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from edge.shared.secrets import read_secret

__all__ = [
    "DEFAULT_PREFETCH",
    "PASSWORD_ENV",
    "POLICY_COMMAND",
    "QUEUE",
    "UNROUTABLE",
    "AmqpAuthError",
    "AmqpError",
    "AmqpSource",
    "AmqpStats",
    "ExtraMissing",
    "amqp_password",
    "bindings",
    "check_amqp_url",
    "declare_topology",
    "redact",
    "require_extra",
    "routing_key_to_topic",
    "topic_to_routing_key",
]

log = logging.getLogger(__name__)

#: The queue every gateway message is routed to (a quorum queue).
QUEUE = "edge.platform"
#: The alternate exchange of amq.topic, and the queue that keeps what reached it.
UNROUTABLE = "edge.unroutable"
#: Unroutable messages kept at most (the oldest go first): the queue is a counter and a sample,
#: not a store (a misconfigured gateway must not fill the broker's disk).
UNROUTABLE_MAX = 100_000
#: The policy that makes edge.unroutable the alternate exchange of amq.topic (run on one node).
POLICY_NAME = "edge-unroutable"
POLICY_COMMAND = (
    f"rabbitmqctl set_policy --apply-to exchanges {POLICY_NAME} '^amq\\.topic$' "
    f'\'{{"alternate-exchange":"{UNROUTABLE}"}}\''
)
#: Messages a consumer holds unacknowledged at once (AMQP basic.qos prefetch-count).
DEFAULT_PREFETCH = 100
#: The topic suffixes a gateway publishes under ``<prefix>/<site>/<gateway>/`` (docs/asyncapi.yaml).
SUFFIXES = ("data", "birth", "birth.*", "tx", "status")
#: Seconds a connection attempt to one node may take.
CONNECT_TIMEOUT_S = 5.0
#: AMQP heartbeat (s): a node that vanished without closing the TCP connection is noticed
#: after about two of these.
HEARTBEAT_S = 10
#: Seconds between looks at edge.unroutable's depth.
UNROUTABLE_CHECK_S = 30.0
PROBE_KEY = "edge-setup.probe"
#: The environment variable that may hold the AMQP password (else ``--amqp-password-file``).
PASSWORD_ENV = "EDGE_AMQP_PASSWORD"
#: What to do with a password, for messages.
PASSWORD_HINT = f"give it in --amqp-password-file FILE (owner-only) or {PASSWORD_ENV}"


class ExtraMissing(Exception):
    """aio-pika is not installed (the ``platform`` extra)."""

    def __init__(self, command: str = "edge consume --amqp") -> None:
        super().__init__(f"{command} needs the platform extra: pip install 'hanoi-edge[platform]'")


class AmqpError(Exception):
    """A broker problem in our words; the message never holds a password."""


class AmqpAuthError(AmqpError):
    """The broker refused the user or the password (ACCESS_REFUSED). A cluster shares its
    users, so the other nodes would refuse them too: fatal until the credentials are fixed."""


def amqp_password(
    password_file: Path | None, environ: dict[str, str] | os._Environ[str] | None = None
) -> tuple[str | None, str]:
    """The AMQP password and where it came from (for messages), from ``password_file`` (read
    with the rules of every secret file, :func:`edge.shared.secrets.read_secret`) or else the
    environment variable :data:`PASSWORD_ENV`; ``(None, "no password")`` when neither is given.

    The file wins when both are given (the command line names it; the environment may be
    inherited). Raises :class:`edge.shared.secrets.SecretFileError` for a file that cannot be
    used and :class:`ValueError` for an empty or multi-line :data:`PASSWORD_ENV`; neither
    message holds the password."""
    env = os.environ if environ is None else environ
    if password_file is not None:
        return read_secret(password_file, "--amqp-password-file"), str(password_file)
    raw = env.get(PASSWORD_ENV)
    if raw is None:
        return None, "no password"
    value = raw.strip()
    if not value:
        raise ValueError(f"{PASSWORD_ENV} is empty: set the password in it, or unset it")
    if "\n" in value or "\r" in value:
        raise ValueError(f"{PASSWORD_ENV} holds more than one line: the password alone, please")
    return value, PASSWORD_ENV


def require_extra(command: str = "edge consume --amqp") -> None:
    """Raise :class:`ExtraMissing` (naming ``command``) unless aio-pika can be imported."""
    _aio_pika(command)


def _aio_pika(command: str = "edge consume --amqp") -> Any:
    try:
        import aio_pika
    except ImportError:
        raise ExtraMissing(command) from None
    # aiormq logs a refused connection at ERROR with its own words; the caller reports it.
    logging.getLogger("aiormq.connection").setLevel(logging.CRITICAL)
    return aio_pika


def redact(url: str) -> str:
    """``url`` with a password replaced by ``***`` and a query or fragment by ``?***`` (where
    a client may take one), for messages and logs."""
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        parts = parts._replace(query="***", fragment="")
    if parts.password is None:
        return urlunsplit(parts)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    with contextlib.suppress(ValueError):
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def check_amqp_url(url: str) -> str:
    """``url`` if it is an ``amqp://`` or ``amqps://`` URL with a host, a valid port and no
    password (``amqp://[USER@]HOST[:PORT]/``), else :class:`ValueError` saying what is wrong
    (never repeating the password)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"{redact_loose(url)}: not an AMQP URL (amqp://USER@HOST:PORT/)") from None
    if parts.scheme not in ("amqp", "amqps"):
        raise ValueError(
            f"{redact(url)}: an AMQP URL starts with amqp:// or amqps:// "
            f"(got {parts.scheme + '://' if parts.scheme else 'no scheme'})"
        )
    if parts.password is not None or any(
        k.strip().lower() == "password" for k, _ in parse_qsl(parts.query)
    ):
        raise ValueError(
            f"{redact(url)}: carries a password, which a URL must not (it is shown "
            f"wherever the broker is named, and in process lists): {PASSWORD_HINT}; the user "
            "may stay (amqp://USER@HOST:PORT/)"
        )
    if not parts.hostname:
        raise ValueError(f"{redact(url)}: no host (amqp://USER@HOST:PORT/)")
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"{redact(url)}: the port must be from 1 to 65535")
    return url


def redact_loose(url: str) -> str:
    """A URL that urlsplit cannot read, with anything between ``://`` and ``@`` hidden."""
    url = url.split("?")[0].split("#")[0]
    head, sep, rest = url.partition("://")
    if sep and "@" in rest:
        return f"{head}://***@{rest.rpartition('@')[2]}"
    return url


def topic_to_routing_key(topic: str) -> str:
    """The routing key RabbitMQ 3.10's MQTT plugin gives a topic: each ``/`` becomes ``.``; a
    ``.`` stays (measured: ``city/v1/s/gw.a/data`` -> ``city.v1.s.gw.a.data``)."""
    return topic.replace("/", ".")


def routing_key_to_topic(key: str, topic_prefix: str = "city/v1") -> str:
    """The MQTT topic a gateway published ``key`` on, as ``<prefix>/<site>/<gateway>/<kind>``.

    RabbitMQ 3.10 turns ``/`` into ``.`` and keeps ``.``, so a ``.`` inside a site or gateway
    id (both may hold one) cannot be told from a level separator. The prefix and the kind
    (``data``, ``birth``, ``birth/<k>``, ``tx``, ``status``, ``cmd/res``) are known; of the words
    between them, the first is taken as the site and the rest as the gateway: give sites ids
    without a ``.`` (batches and meter entries also name their gateway inside the payload).
    A broker that maps ``.`` to ``/`` instead (later plugins) is undone exactly. A key that
    does not start with the prefix comes back with every ``.`` as ``/``.
    """
    if "/" in key:  # a plugin that swaps the two: exact
        return key.translate(_SWAP)
    prefix = topic_prefix.strip("/")
    head = topic_to_routing_key(prefix) + "."
    if not key.startswith(head):
        return key.replace(".", "/")
    words = key[len(head) :].split(".")
    tail = 1
    if len(words) >= 4 and words[-2] == "birth" and words[-1].isdigit():
        tail = 2
    elif len(words) >= 4 and words[-2:] == ["cmd", "res"]:
        tail = 2
    middle, kind = words[:-tail], words[-tail:]
    if len(middle) < 2:
        return key.replace(".", "/")
    return "/".join([prefix, middle[0], ".".join(middle[1:]), *kind])


_SWAP = str.maketrans({"/": ".", ".": "/"})


def bindings(topic_prefix: str) -> list[str]:
    """Routing keys binding ``edge.platform`` to ``amq.topic`` for ``topic_prefix``: ``#``
    between the prefix and the kind, as an id with a ``.`` makes more than two words."""
    base = topic_to_routing_key(topic_prefix.strip("/"))
    return [f"{base}.#.{suffix}" for suffix in SUFFIXES]


def _where(url: str) -> str:
    """HOST:PORT of an AMQP URL for messages (5672, 5671 for amqps, when none is given)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port or (5671 if parts.scheme == 'amqps' else 5672)}"


async def _connect(
    url: str, password: str | None = None, connect_timeout_s: float = CONNECT_TIMEOUT_S
) -> Any:
    """A connection to the node at ``url`` (no password in it) with ``password``. Raises
    :class:`AmqpAuthError` when the broker refuses the credentials, :class:`AmqpError` when
    the node cannot be reached."""
    aio_pika = _aio_pika()
    target: Any = url
    if password is not None:
        from yarl import URL  # aio-pika's own URL type (a dependency of it)

        target = URL(url).with_password(password)
    connection = aio_pika.Connection(aio_pika.connection.make_url(target, heartbeat=HEARTBEAT_S))
    try:
        await connection.connect(timeout=connect_timeout_s)
        return connection
    except Exception as exc:
        # Closed here, in the loop: aio-pika's __del__ would otherwise schedule the close of
        # a connection that never opened, and when the collector runs it outside the loop the
        # coroutine is never awaited (a RuntimeWarning on stderr, seen at a refused login).
        with contextlib.suppress(Exception):
            await connection.close()
        reason = _describe(exc)
        if "ACCESS_REFUSED" in reason:
            user = unquote(urlsplit(url).username or "") or "guest"
            given = "with the password given" if password is not None else "with no password"
            raise AmqpAuthError(
                f"{_where(url)} refused user {user} {given} (ACCESS_REFUSED)"
            ) from None
        raise AmqpError(f"cannot connect to {redact(url)}: {reason}") from None


def _describe(exc: BaseException) -> str:
    name = type(exc).__name__
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "no answer (timed out)"
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    if isinstance(exc, ConnectionRefusedError) or code == errno.ECONNREFUSED:
        return "connection refused (is RabbitMQ running there, on this port?)"
    if code is not None and len(exc.args) > 1:
        return f"{os.strerror(code).lower()} ({code})"
    text = str(exc).strip()
    if "ACCESS_REFUSED" in text or name == "ProbableAuthenticationError":
        return "the broker refused the user or password (ACCESS_REFUSED)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return text or name


async def _declare_queues(channel: Any, topic_prefix: str, name: str = QUEUE) -> list[str]:
    """Declare the topology on ``channel``; return one line per thing declared."""
    aio_pika = _aio_pika()
    lines = []
    queue = await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
    lines.append(
        f"quorum queue {name}: declared ({queue.declaration_result.message_count} messages)"
    )
    for key in bindings(topic_prefix):
        await queue.bind("amq.topic", routing_key=key)
        lines.append(f"binding amq.topic -> {name}: {key}")
    ae = await channel.declare_exchange(UNROUTABLE, aio_pika.ExchangeType.FANOUT, durable=True)
    lines.append(f"fanout exchange {UNROUTABLE}: declared")
    dead = await channel.declare_queue(
        UNROUTABLE,
        durable=True,
        arguments={"x-queue-type": "classic", "x-max-length": UNROUTABLE_MAX},
    )
    await dead.bind(ae)
    lines.append(
        f"queue {UNROUTABLE}: declared, bound to its exchange "
        f"({dead.declaration_result.message_count} unroutable messages kept)"
    )
    return lines


async def _alternate_exchange_set(connection: Any) -> bool:
    """Whether amq.topic has an alternate exchange: a mandatory probe message comes back
    (basic.return) when it has none. The probe expires at once in edge.unroutable."""
    aio_pika = _aio_pika()
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    try:
        exchange = await channel.get_exchange("amq.topic", ensure=False)
        try:
            await exchange.publish(
                aio_pika.Message(b"", expiration=0), routing_key=PROBE_KEY, mandatory=True
            )
        except aio_pika.exceptions.DeliveryError:
            return False
        return True
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


async def declare_topology(
    url: str, topic_prefix: str = "city/v1", queue: str = QUEUE, *, password: str | None = None
) -> tuple[list[str], bool]:
    """Declare the queues, exchange and bindings on the broker at ``url`` (idempotent): the
    quorum queue ``queue`` bound for the gateways under ``topic_prefix``, the alternate
    exchange's queue, and a check of the policy that makes it amq.topic's alternate exchange.

    ``url`` holds no password (:func:`check_amqp_url`); ``password`` is the user's.

    Returns the lines to show (one per thing declared) and whether amq.topic's alternate
    exchange is in place. Raises :class:`AmqpAuthError` (user or password refused),
    :class:`AmqpError` (the broker's refusal in our words; e.g. a queue ``edge.platform``
    declared before with other arguments) or :class:`ExtraMissing`.
    """
    aio_pika = _aio_pika("edge broker-setup")
    connection = await _connect(check_amqp_url(url), password)
    try:
        channel = await connection.channel()
        try:
            lines = await _declare_queues(channel, topic_prefix, queue)
        except aio_pika.exceptions.ChannelPreconditionFailed as exc:
            raise AmqpError(
                f"the broker refused a declaration: {exc}. A queue or exchange of that name "
                "exists with other settings; delete it or use another broker"
            ) from None
        except aio_pika.exceptions.AMQPError as exc:
            raise AmqpError(f"the broker refused a declaration: {_describe(exc)}") from None
        ae = await _alternate_exchange_set(connection)
        if ae:
            lines.append(f"alternate exchange of amq.topic: {UNROUTABLE} (policy in place)")
        else:
            lines.append(
                "alternate exchange of amq.topic: NOT set, so a message matching no binding is "
                "acknowledged to its gateway and lost. Set it once, on any node: " + POLICY_COMMAND
            )
        return lines, ae
    finally:
        with contextlib.suppress(Exception):
            await connection.close()


Handler = Callable[[str, bytes], Awaitable[None]]


class _Stop(Exception):
    """Carries a handler's exception listed in ``stop_on`` out of the consume loop."""

    def __init__(self, exc: Exception) -> None:
        super().__init__(str(exc))
        self.exc = exc


@dataclass
class AmqpStats:
    """What an :class:`AmqpSource` did (counts since it started)."""

    delivered: int = 0  # messages handed to the handler
    acked: int = 0  # of them acknowledged after the handler returned
    redelivered: int = 0  # delivered with the redelivered flag (seen before by some consumer)
    handler_failures: int = 0  # the handler raised: the message went back to the queue
    connections: int = 0  # connections opened (1 + reconnects)
    node: str = ""  # the node it consumes from now (URL without password), "" while down
    unroutable: int | None = None  # messages in edge.unroutable at the last look


class AmqpSource:
    """Consume ``queue`` on a RabbitMQ cluster and hand every message to ``handler``.

    ``urls``: the cluster's nodes (``amqp://USER@HOST:PORT/``, no password: any order; the first
    that answers is used, then the next after a connection loss, round robin). ``password``:
    the user's, for every node (a cluster shares its users). ``queue``: the
    queue to consume (:data:`QUEUE`). ``prefetch``: messages the broker sends ahead
    unacknowledged (basic.qos), which bounds what a killed consumer leaves to be redelivered.
    ``handler(topic, payload)``: an async callable; ``topic`` is the MQTT topic the gateway
    published on. The message is acknowledged only after the handler returned, so the handler
    must make its effect durable before it returns (a database commit) and must be idempotent:
    a message whose ack was lost (a connection loss, a consumer killed) comes again. When the
    handler raises, the message is returned to the queue (nack, requeue), logged at ERROR once
    (DEBUG while it goes on), and the source waits ``retry_s`` seconds before taking more;
    an exception of a type in ``stop_on`` is raised from :meth:`run` instead, once the message
    is back in the queue (for a handler that retries outages itself and raises only when it
    gives up).

    ``declare``: declare the topology first (idempotent; ``topic_prefix`` names the
    bindings). Messages are handled one at a time, in the order the queue delivers them.

    :meth:`run` runs until cancelled; it raises :class:`AmqpAuthError` when a node refuses the
    user or password before any connection succeeded (a cluster shares its users: retrying
    cannot help), and :class:`AmqpError` when no node has ever answered within ``give_up_s``
    seconds (None: never gives up). Connection losses are logged
    at ERROR once, then DEBUG while the cluster stays unreachable, and INFO on recovery.
    """

    def __init__(
        self,
        urls: Sequence[str],
        queue: str = QUEUE,
        prefetch: int = DEFAULT_PREFETCH,
        handler: Handler | None = None,
        *,
        topic_prefix: str = "city/v1",
        declare: bool = True,
        reconnect_min_s: float = 0.2,
        reconnect_max_s: float = 10.0,
        retry_s: float = 1.0,
        give_up_s: float | None = None,
        stop_on: tuple[type[BaseException], ...] = (),
        password: str | None = None,
    ) -> None:
        if not urls:
            raise ValueError("give at least one AMQP URL (--amqp amqp://USER@HOST:PORT/)")
        if handler is None:
            raise ValueError("AmqpSource needs a handler")
        if not 1 <= prefetch <= 65535:
            raise ValueError(f"prefetch must be from 1 to 65535 (got {prefetch})")
        self.urls = [check_amqp_url(u) for u in urls]
        self._password = password
        self.queue = queue
        self.prefetch = prefetch
        self.handler = handler
        self.topic_prefix = topic_prefix
        self.declare = declare
        self.reconnect_min_s, self.reconnect_max_s = reconnect_min_s, reconnect_max_s
        self.retry_s = retry_s
        self.give_up_s = give_up_s
        self.stop_on = stop_on
        self.stats = AmqpStats()
        self._next = 0  # index of the node to try next
        self._down_since: float | None = None
        self._handler_failing = False
        self._unroutable_logged = 0

    async def run(self) -> None:
        started = time.monotonic()
        rounds = 0
        while True:
            connection = await self._connect_any()
            if connection is None:
                rounds += 1
                if (
                    self.stats.connections == 0
                    and self.give_up_s is not None
                    and time.monotonic() - started >= self.give_up_s
                ):
                    raise AmqpError(
                        "no node of the cluster answered within "
                        f"{self.give_up_s:g} s: " + ", ".join(redact(u) for u in self.urls)
                    )
                cap = min(self.reconnect_max_s, self.reconnect_min_s * 2.0 ** min(rounds, 10))
                await asyncio.sleep(random.uniform(self.reconnect_min_s, max(cap, 0.01)))
                continue
            rounds = 0
            try:
                await self._consume(connection)
            except asyncio.CancelledError:
                raise
            except _Stop as stop:
                raise stop.exc from None
            except Exception as exc:  # the connection or channel ended: go on with another node
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # aiormq turns a cancellation inside its calls into its own errors.
                    raise asyncio.CancelledError() from None
                self._lost(exc)
            finally:
                self.stats.node = ""
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(connection.close(), 2)

    async def _connect_any(self) -> Any | None:
        """A connection to the next node that answers, trying each once; None if none did."""
        for _ in range(len(self.urls)):
            url = self.urls[self._next]
            self._next = (self._next + 1) % len(self.urls)
            try:
                connection = await _connect(url, self._password)
            except AmqpAuthError:
                if self.stats.connections == 0:
                    raise  # never in: wrong credentials, not an outage
                self._down(f"{redact(url)} refused the user or password (ACCESS_REFUSED)")
                continue
            except AmqpError as exc:
                self._down(str(exc))
                continue
            self.stats.connections += 1
            self.stats.node = redact(url)
            if self._down_since is not None:
                log.info(
                    "consuming %s again, from %s, after %.1f s",
                    self.queue,
                    redact(url),
                    time.monotonic() - self._down_since,
                )
                self._down_since = None
            else:
                log.info("consuming %s from %s", self.queue, redact(url))
            return connection
        return None

    def _down(self, what: str) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.error("%s; trying the other nodes (logged at DEBUG until it recovers)", what)
        else:
            log.debug("%s", what)

    def _lost(self, exc: BaseException) -> None:
        self._down(f"lost the connection to {self.stats.node}: {_describe(exc)}")

    async def _consume(self, connection: Any) -> None:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=self.prefetch)
        if self.declare:
            await _declare_queues(channel, self.topic_prefix, self.queue)
            queue = await channel.get_queue(self.queue, ensure=False)
        else:
            queue = await channel.get_queue(self.queue, ensure=True)
        checker = asyncio.create_task(self._watch_unroutable(connection), name="amqp-unroutable")
        try:
            async with queue.iterator() as messages:
                async for message in messages:
                    await self._deliver(message)
        finally:
            checker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await checker
        raise AmqpError("the broker ended the consumer")

    async def _deliver(self, message: Any) -> None:
        self.stats.delivered += 1
        if message.redelivered:
            self.stats.redelivered += 1
        topic = routing_key_to_topic(message.routing_key or "", self.topic_prefix)
        try:
            await self.handler(topic, message.body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stats.handler_failures += 1
            if isinstance(exc, self.stop_on):
                with contextlib.suppress(Exception):
                    await message.nack(requeue=True)
                raise _Stop(exc) from exc
            level = logging.DEBUG if self._handler_failing else logging.ERROR
            self._handler_failing = True
            log.log(
                level,
                "a message on %s was not handled (%s); it goes back to the queue and is "
                "tried again (logged at DEBUG while this lasts)",
                topic,
                exc,
            )
            await message.nack(requeue=True)
            await asyncio.sleep(self.retry_s)
            return
        if self._handler_failing:
            self._handler_failing = False
            log.info("messages are handled again")
        await message.ack()
        self.stats.acked += 1

    async def _watch_unroutable(self, connection: Any) -> None:
        """Look at edge.unroutable's depth now and every UNROUTABLE_CHECK_S seconds; ERROR when
        it grew (messages no consumer will ever see)."""
        channel = await connection.channel()
        while True:
            try:
                q = await channel.declare_queue(UNROUTABLE, passive=True)
            except Exception:
                self.stats.unroutable = None
                return  # no such queue (declare=False and never set up): nothing to count
            depth = q.declaration_result.message_count
            self.stats.unroutable = depth
            if depth > self._unroutable_logged:
                log.error(
                    "%d messages in %s: gateways published on topics no binding of %s covers "
                    "(check mqtt.topic_prefix against the consumers' --topic-prefix)",
                    depth,
                    UNROUTABLE,
                    self.queue,
                )
                self._unroutable_logged = depth
            await asyncio.sleep(UNROUTABLE_CHECK_S)
