"""The consumer that writes into the PostgreSQL store, whatever the messages come from.

:class:`StoreConsumer` takes one message at a time (``await handle(topic, payload)``) and
returns once its effect is committed; the source (:class:`MqttStoreSource` here, the AMQP source
of edge/platform/amqp.py) acknowledges the message to the broker only then. So a consumer
killed at any moment leaves every message either committed (and a redelivery is a no-op: the
batch's row is there) or unacknowledged (and the broker delivers it again).

Topics (``<prefix>/<site>/<gateway>/…``):

* ``data`` — a batch: decoded, then stored in one transaction (edge/platform/pgstore.py). A
  batch that does not decode is kept in ``edge.malformed``, reported on the report stream as
  ``bad batch on <topic> (gateway X, batch N): <code>: …; stored in edge.malformed``, and
  acknowledged. Series ids no birth has named are stored all the same and reported once per
  (gateway, sid) after the commit (WARNING).
* ``birth`` and ``birth/<k>`` — births (parts joined in the database, so competing consumers
  may each get some of them) → ``births`` / ``series``, and the signing key to the ledger
  (``key_announced``).
* ``tx`` — parking meter entries → the ledger's ``add``: any object with
  :class:`~edge.platform.ledger.TxLedger`'s ``key_announced`` and ``add`` (plain or async
  methods), e.g. the SQLite ``TxLedger`` or the PostgreSQL ``PgLedger`` (whose blocking calls
  run in a worker thread, and whose :class:`~edge.platform.pgledger.LedgerUnavailable` is an
  outage like the store's). Give ``ledger_factory`` instead of ``ledger`` to open the ledger
  in :meth:`StoreConsumer.start`, once the database answers.
* ``status`` — the gateway's retained online / offline message → ``gateway_status``.

**Database down or full.** The message stays in hand, unacknowledged: the first failure is
logged at ERROR with the gateway and seq, further attempts (backoff 0.2 s doubling to 5 s)
at DEBUG, and the recovery at INFO. Nothing is acknowledged or dropped meanwhile; the broker
keeps the rest (its in-flight window fills and it stops sending).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import ssl
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import psycopg

from edge.platform.mqtt_source import MqttSubscription, published_by
from edge.platform.pgledger import LedgerSchemaError, LedgerUnavailable, PgLedger
from edge.platform.pgstore import REFUSED, PgStore, is_transient
from protocols.batch import BatchDecodeError, decode_batch_wire
from protocols.birth import Birth, BirthError, birth_part, join_birth_parts
from protocols.meterlink import PayloadError, decode_tx_message

__all__ = ["MqttStoreSource", "StoreConsumer", "StoreCounts", "StoreUnavailable", "dsn_problem"]

log = logging.getLogger(__name__)


class StoreUnavailable(Exception):
    """The store could not take a message and the consumer gave up (``give_up_s``): the
    message was not acknowledged; the source should stop and the broker will redeliver."""


def dsn_problem(dsn: str) -> str | None:
    """Why ``dsn`` may not be given to ``--store``: not a PostgreSQL connection string, or it
    carries a password (a DSN is shown in process lists and shell history). The message never
    repeats the DSN. None if fine."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return (
            "--store must be a PostgreSQL URL (postgresql://USER@HOST:PORT/DATABASE) or "
            "connection string"
        )
    if dsn.startswith(("postgresql://", "postgres://")):
        pass
    elif "=" not in dsn:
        return (
            "--store must be a PostgreSQL URL (postgresql://USER@HOST:PORT/DATABASE) or "
            "connection string"
        )
    if params.get("password"):
        return (
            "--store carries a password: a connection string is shown in process lists and "
            "shell history, so give the password in PGPASSWORD, a PGPASSFILE or ~/.pgpass "
            "instead"
        )
    return None


@dataclass
class StoreCounts:
    """What this consumer did since it started (the summary at stop)."""

    batches: int = 0
    readings: int = 0
    duplicates: int = 0
    malformed: int = 0
    births: int = 0
    statuses: int = 0
    entries: int = 0
    bad_messages: int = 0
    retries: int = 0
    gateways: set[str] = field(default_factory=set)


def _ids(sids: list[int], shown: int = 20) -> str:
    """Series ids for a log line: all of a few, the first ``shown`` of many."""
    if len(sids) <= shown:
        return str(sids)
    return f"{str(sids[:shown])[:-1]}, … ({len(sids) - shown} more)]"


def _short(text: str, limit: int = 200) -> str:
    """An id or topic for a report line: as it is, or its first ``limit`` characters and
    how many there are (a hostile id may be megabytes)."""
    return text if len(text) <= limit else f"{text[:limit]}…({len(text)} characters)"


def _listed_twice(birth: Birth) -> str | None:
    """Why ``birth`` cannot name its series: an id listed twice with different entries (an id
    means one series, docs/batch-format-v1.md §3). None if fine."""
    seen: dict[int, Any] = {}
    for s in birth.series:
        first = seen.setdefault(s.sid, s)
        if first != s:
            return (
                f"series id {s.sid} is listed twice, as {_short(first.device)}/"
                f"{_short(first.point)} and as {_short(s.device)}/{_short(s.point)}"
            )
    return None


def _one_line(exc: BaseException) -> str:
    """A database error as one line (PostgreSQL adds DETAIL and CONTEXT lines)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _gateway_of(topic: str) -> str:
    parts = topic.split("/")
    return parts[-2] if len(parts) >= 3 else "?"


class StoreConsumer:
    """Routes messages by topic into a :class:`~edge.platform.pgstore.PgStore` (see the
    module docstring). ``handle`` may be called from several tasks: calls are serialized on
    the store's one connection (run more consumer processes to go faster)."""

    def __init__(
        self,
        store: PgStore,
        ledger: Any = None,
        *,
        ledger_factory: Any = None,
        report: TextIO = sys.stderr,
        retry_min_s: float = 0.2,
        retry_max_s: float = 5.0,
        give_up_s: float | None = None,
    ) -> None:
        self.store = store
        if (ledger is None) == (ledger_factory is None):
            raise ValueError("give StoreConsumer a ledger or a ledger_factory, not both")
        self.ledger = ledger
        self.ledger_factory = ledger_factory
        self.report = report
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.give_up_s = give_up_s
        self.counts = StoreCounts()
        self._lock = asyncio.Lock()
        self._unnamed_reported: set[tuple[str, int]] = set()
        self._outage_since: float | None = None
        self._outage_attempts = 0

    def _say(self, msg: str) -> None:
        print(msg, file=self.report, flush=True)

    def _refused(self, kind: str, topic: str, exc: BaseException) -> None:
        """A birth, status or tx message whose values the database refuses: one line."""
        self.counts.bad_messages += 1
        reason = _one_line(exc)
        self._say(f"bad {kind} on {_short(topic)}: the database refused it: {reason}; skipped")

    def _mismatch(self, kind: str, topic: str, gateway: str) -> None:
        """A birth, status or tx message naming another gateway than its topic: one line."""
        self.counts.bad_messages += 1
        self._say(
            f"bad {kind} on {_short(topic)}: it names gateway {_short(gateway)}, not the "
            "topic's: a gateway publishes on its own topic only; skipped"
        )

    async def start(self) -> None:
        """Connect and migrate the schema before the first message. A database that cannot
        be reached (down, starting, refusing the login) is retried as an outage is (ERROR
        once with the reason, INFO when it opens): start the source after this returns, so
        messages wait at the broker meanwhile. Raises
        :class:`~edge.platform.pgstore.StoreSchemaError` for a newer database and what the
        database raises for any other refusal (e.g. no right to create schema ``edge``)."""
        await self._retrying("", self.store.connect)
        await self._store_reused()
        if self.ledger is None:
            self.ledger = await self._retrying("", lambda: asyncio.to_thread(self.ledger_factory))

    async def _store_reused(self) -> None:
        """Store the batches store schema 1 kept in edge.malformed as ``seq_reused`` (a
        gateway numbering again): schema 2 stores them as new batches (docs/platform-store.md).
        Idempotent: a consumer stopped half-way, or two starting together, store each once."""
        rows = await self._retrying("", self.store.reused_batches)
        stored = 0
        for mid, topic, payload in rows:
            code: str | None = None
            message = ""
            try:
                batch = decode_batch_wire(payload)
            except BatchDecodeError as exc:
                code, message = exc.code, str(exc)
            else:
                h = batch.header
                result = await self._retrying(
                    f"batch {h.seq} of gateway {_short(h.gateway)}",
                    functools.partial(self.store.store_batch, topic, h, batch.points),
                )
                stored += result.stored
                if result.conflict is not None:
                    code = "seq_conflict"
                    message = (
                        f"batch {h.seq} (boot {h.boot}, created {h.created_ms}) is stored with "
                        "other counts: a re-sent batch keeps its bytes, so this one is forged "
                        "or corrupt; not stored"
                    )
            await self._retrying(
                "", functools.partial(self.store.settle_reused, mid, code, message)
            )
        if rows:
            log.info(
                "store: %d of %d batches kept as seq_reused by store schema 1 stored now (a "
                "gateway numbering again: new batches)",
                stored,
                len(rows),
            )

    async def _ledger(self, method: str, *args: Any) -> Any:
        """Call the ledger's ``method``: a PostgreSQL ledger in a worker thread (its calls
        block on the network), any other as it is (plain or async)."""
        fn = getattr(self.ledger, method)
        if isinstance(self.ledger, PgLedger):
            return await asyncio.to_thread(fn, *args)
        result = fn(*args)
        return await result if inspect.isawaitable(result) else result

    async def close(self) -> None:
        await self.store.close()

    async def handle(self, topic: str, payload: bytes) -> None:
        """Store one message; returns once it is committed (or, for a message that cannot
        be used, once it is reported and kept where it can be). Retries a store that is down
        or full until it works (or raises :class:`StoreUnavailable` after ``give_up_s``)."""
        head, _, last = topic.rpartition("/")
        async with self._lock:
            try:
                if last == "data":
                    await self._data(topic, payload)
                elif last == "birth" or (head.endswith("/birth") and last.isdigit()):
                    await self._birth(topic, payload)
                elif last == "tx":
                    await self._tx(topic, payload)
                elif last == "status":
                    await self._status(topic, payload)
                else:
                    self.counts.bad_messages += 1
                    log.debug("message on %s is not for the store; ignored", topic)
            except (StoreUnavailable, psycopg.Error, LedgerSchemaError):
                raise  # the database refuses us (not this message): stop, unacknowledged
            except Exception as exc:  # one message never stops the consumer
                await self._not_handled(topic, payload, exc)

    async def _not_handled(self, topic: str, payload: bytes, exc: Exception) -> None:
        """A message this consumer failed on for a reason of its own (a bug, or a case no
        rule foresaw): kept with its bytes in ``edge.malformed`` as ``not_handled`` (nothing
        the gateway sent is lost: replay it from there once fixed), reported in one line, an
        ERROR in the log (the traceback at DEBUG), and acknowledged. Otherwise the broker
        would hand the same message to every consumer in turn and stop them all."""
        reason = f"{type(exc).__name__}: {_one_line(exc)}"
        log.error(
            "store: could not handle the message on %s (%s); kept in edge.malformed as "
            "not_handled",
            _short(topic),
            reason,
        )
        log.debug("the failure on %s", _short(topic), exc_info=exc)
        gateway = _gateway_of(topic)
        await self._retrying(
            f"the message on {_short(topic)}",
            lambda: self.store.store_malformed(
                topic, payload, "not_handled", f"this consumer failed on it: {reason}", gateway,
                None,
            ),
        )
        self.counts.malformed += 1
        self._say(
            f"bad message on {_short(topic)} (gateway {_short(gateway)}): not_handled: "
            f"{reason}; stored in edge.malformed"
        )

    # ------------------------------------------------------------------ retrying

    async def _retrying(self, what: str, step: Any) -> Any:
        """Run ``step()`` (a coroutine function) until it does not fail transiently."""
        delay = self.retry_min_s
        started = time.monotonic()
        while True:
            try:
                result = step()
                if inspect.isawaitable(result):
                    result = await result
            except Exception as exc:
                if not (is_transient(exc) or isinstance(exc, LedgerUnavailable)):
                    raise
                await self.store.close()  # a fresh connection next time
                self.counts.retries += 1
                self._outage_attempts += 1
                reason = " ".join(str(exc).split()) or type(exc).__name__
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                    if what:
                        log.error(
                            "store: cannot store %s: %s; keeping it unacknowledged and retrying",
                            what,
                            reason,
                        )
                    else:
                        log.error("store: cannot open the database: %s; retrying", reason)
                else:
                    log.debug("store: %s still not stored: %s", what or "nothing", reason)
                if self.give_up_s is not None and time.monotonic() - started > self.give_up_s:
                    raise StoreUnavailable(f"the store did not take {what}: {reason}") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            if self._outage_since is not None:
                log.info(
                    "store: the database takes messages again (%s after %.1f s, %d attempts)",
                    f"{what} stored" if what else "opened",
                    time.monotonic() - self._outage_since,
                    self._outage_attempts,
                )
                self._outage_since = None
                self._outage_attempts = 0
            return result

    # ------------------------------------------------------------------ batches

    async def _data(self, topic: str, payload: bytes) -> None:
        try:
            batch = decode_batch_wire(payload)
        except BatchDecodeError as exc:
            await self._malformed(topic, payload, exc.code, str(exc), exc.gateway, exc.seq)
            return
        h = batch.header
        if not published_by(topic, h.gateway):
            await self._malformed(
                topic,
                payload,
                "gateway_mismatch",
                f"the batch names gateway {_short(h.gateway)} but came on another gateway's "
                "topic: not stored as either (a gateway publishes on its own topic only)",
                h.gateway,
                h.seq,
            )
            return
        part = f" part {'.'.join(map(str, h.part))}" if h.part else ""
        what = f"batch {h.seq}{part} of gateway {_short(h.gateway)}"
        try:
            result = await self._retrying(
                what, lambda: self.store.store_batch(topic, h, batch.points)
            )
        except (*REFUSED, psycopg.IntegrityError) as exc:
            # Values the database cannot hold: keep the bytes, say so, go on.
            reason = " ".join(str(exc).split())
            await self._malformed(
                topic,
                payload,
                "not_storable",
                f"the database refused it: {reason}",
                h.gateway,
                h.seq,
            )
            return
        self.counts.gateways.add(h.gateway)
        if result.conflict is not None:
            n, dropped = result.conflict
            await self._malformed(
                topic,
                payload,
                "seq_conflict",
                f"batch {h.seq} (boot {h.boot}, created {h.created_ms}) is stored with {n} "
                f"readings and {dropped} dropped; this one has {h.points} and {h.dropped}: a "
                "re-sent batch keeps its bytes, so this one is forged or corrupt; not stored",
                h.gateway,
                h.seq,
            )
            return
        if result.renumbered is not None:
            seq, boot, created = result.renumbered
            log.warning(
                "gateway %s numbers its batches again from %d (boot %d, created %s): a "
                "gateway that lost its buffer? stored as new batches",
                h.gateway,
                seq,
                boot,
                created,
            )
        if not result.stored:
            self.counts.duplicates += 1
            log.info(
                "gateway %s: %s already stored (a redelivery); acknowledged",
                h.gateway,
                what.split(" of ")[0],
            )
            return
        self.counts.batches += 1
        self.counts.readings += result.readings
        fresh = [sid for sid in result.unnamed if (h.gateway, sid) not in self._unnamed_reported]
        if fresh:
            self._unnamed_reported.update((h.gateway, sid) for sid in fresh)
            log.warning(
                "gateway %s: batch %d refers to series %s that no birth has named yet; its "
                "readings are stored (listed in edge.unnamed_series until a birth names them)",
                h.gateway,
                h.seq,
                _ids(fresh),
            )
        if h.dropped:
            why = ", ".join(f"{n} {k}" for k, n in sorted(h.dropped_why.items()))
            log.warning(
                "gateway %s: batch %d reports %d readings lost at the gateway%s (edge.evictions)",
                h.gateway,
                h.seq,
                h.dropped,
                f" ({why})" if why else "",
            )

    async def _malformed(
        self,
        topic: str,
        payload: bytes,
        code: str,
        message: str,
        gateway: str | None,
        seq: int | None,
    ) -> None:
        names = [f"gateway {_short(gateway)}"] if gateway is not None else []
        names += [f"batch {seq}"] if seq is not None else []
        what = f"the malformed batch on {_short(topic)}" + (
            f" ({', '.join(names)})" if names else ""
        )
        new = await self._retrying(
            what,
            lambda: self.store.store_malformed(topic, payload, code, message, gateway, seq),
        )
        self.counts.malformed += 1
        named = f" ({', '.join(names)})" if names else ""
        self._say(
            f"bad batch on {_short(topic)}{named}: {code}: {message}; "
            + ("stored in edge.malformed" if new else "already in edge.malformed")
        )

    # ------------------------------------------------------------------ births

    async def _birth(self, topic: str, payload: bytes) -> None:
        if not payload:
            return  # a retained birth part deleted by its gateway
        try:
            birth = Birth.decode(payload)
            part = birth_part(birth)
        except BirthError as exc:
            self.counts.bad_messages += 1
            self._say(f"bad birth on {_short(topic)}: {exc}; skipped")
            return
        if not published_by(topic, birth.gateway):
            self._mismatch("birth", topic, birth.gateway)
            return
        if part is not None:
            try:
                payloads = await self._retrying(
                    f"part {part.index} of {part.count} of a birth of gateway "
                    f"{_short(birth.gateway)}",
                    lambda: self.store.store_birth_part(
                        birth, part.index, part.count, part.id, payload
                    ),
                )
            except REFUSED as exc:
                self._refused("birth", topic, exc)
                return
            if payloads is None:
                return  # more parts to come (to this consumer or another)
            try:
                birth = join_birth_parts(Birth.decode(p) for p in payloads)
            except BirthError as exc:
                self.counts.bad_messages += 1
                self._say(f"bad birth parts from gateway {_short(birth.gateway)}: {exc}; skipped")
                return
            doc = json.loads(birth.encode())
        else:
            doc = json.loads(payload)
        twice = _listed_twice(birth)
        if twice is not None:
            self.counts.bad_messages += 1
            self._say(f"bad birth on {_short(topic)}: {twice}; skipped")
            return
        try:
            stored = await self._retrying(
                f"the birth of gateway {_short(birth.gateway)} (boot {birth.boot})",
                lambda: self.store.store_birth(birth, doc),
            )
        except REFUSED as exc:
            self._refused("birth", topic, exc)
            return
        self.counts.births += 1
        self.counts.gateways.add(birth.gateway)
        named = stored.named
        if stored.renamed:
            self._renamed(birth, stored.renamed)
        if named:
            log.info(
                "gateway %s: the birth of boot %d names series %s stored unnamed before",
                birth.gateway,
                birth.boot,
                named,
            )
            for sid in named:
                self._unnamed_reported.discard((birth.gateway, sid))
        public = self._signing_key(birth)
        if public is not None:
            outcomes = await self._retrying(
                f"the signing key of gateway {_short(birth.gateway)}",
                lambda: self._ledger("key_announced", birth.gateway, public),
            )
            self._entries(birth.gateway, outcomes)

    def _renamed(self, birth: Birth, renamed: list[Any]) -> None:
        """One WARNING for a birth naming series ids otherwise than another boot's birth: the
        newest boot's names apply to every reading of an id (edge.readings_named)."""
        shown = "; ".join(
            f"series {r.sid} {r.name} (boot {r.other_boot} named it {r.other_name}, "
            + ("now renamed)" if r.applied else "and stays, being newer)")
            for r in renamed[:10]
        )
        more = f"; and {len(renamed) - 10} more" if len(renamed) > 10 else ""
        log.warning(
            "gateway %s: the birth of boot %d names %s%s: series ids are never reused "
            "(docs/batch-format-v1.md §3); every reading of an id reads under the newest "
            "boot's names",
            birth.gateway,
            birth.boot,
            shown,
            more,
        )

    def _signing_key(self, birth: Birth) -> bytes | None:
        try:
            return birth.signing_public_key()
        except BirthError as exc:
            self.counts.bad_messages += 1
            self._say(f"gateway {_short(birth.gateway)}: birth has an unusable signing key ({exc})")
            return None

    # ------------------------------------------------------------------ tx, status

    async def _tx(self, topic: str, payload: bytes) -> None:
        try:
            gateway, site, entries = decode_tx_message(payload)
        except PayloadError as exc:
            self.counts.bad_messages += 1
            self._say(f"bad tx message on {_short(topic)}: {exc}; skipped")
            return
        if not published_by(topic, gateway):
            self._mismatch("tx message", topic, gateway)
            return
        try:
            outcomes = await self._retrying(
                f"the parking entries of gateway {_short(gateway)}",
                lambda: self._ledger("add", gateway, site, entries),
            )
        except REFUSED as exc:  # e.g. U+0000 in an id: PostgreSQL text cannot
            self._refused("tx message", topic, exc)
            return
        self.counts.entries += len(outcomes)
        self._entries(gateway, outcomes)

    def _entries(self, gateway: str, outcomes: Any) -> None:
        for o in outcomes or ():
            if o.status in ("bad_signature", "untrusted_key", "conflict"):
                e = o.entry
                self._say(
                    f"gateway {_short(gateway)}: meter {e.meter} entry {e.seq} held ({o.status}); "
                    "not counted"
                )

    async def _status(self, topic: str, payload: bytes) -> None:
        if not payload:
            return  # a retained status deleted
        try:
            doc = json.loads(payload)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            json.dumps(doc, ensure_ascii=False).encode()  # a lone surrogate escape is no text
        except RecursionError:
            self.counts.bad_messages += 1
            self._say(f"bad status on {_short(topic)}: JSON nested too deeply to read; skipped")
            return
        except (ValueError, UnicodeError) as exc:
            self.counts.bad_messages += 1
            self._say(f"bad status on {_short(topic)}: {exc}; skipped")
            return
        gateway = doc.get("gateway")
        if not isinstance(gateway, str) or not gateway:
            gateway = _gateway_of(topic)
        elif not published_by(topic, gateway):
            self._mismatch("status", topic, gateway)
            return
        try:
            await self._retrying(
                f"the status of gateway {_short(gateway)}",
                lambda: self.store.store_status(gateway, topic, doc),
            )
        except REFUSED as exc:
            self._refused("status", topic, exc)
            return
        self.counts.statuses += 1

    # ------------------------------------------------------------------ summary

    async def summary(self) -> list[str]:
        """The lines printed at stop: what this consumer stored, and the gaps in the store."""
        c = self.counts
        lines = [
            f"stored {c.batches} batches, {c.readings} readings; {c.duplicates} duplicates "
            f"(already stored), {c.malformed} malformed, {c.births} births, "
            f"{c.entries} parking entries"
            + (f", {c.bad_messages} unusable messages" if c.bad_messages else "")
        ]
        try:
            gaps = await asyncio.wait_for(self.store.gaps(), 10)
        except (psycopg.Error, TimeoutError, OSError) as exc:
            lines.append(f"gaps: unknown (the database did not answer: {exc})")
        else:
            if gaps:
                shown = ", ".join(
                    f"{gw} {a}" if a == b else f"{gw} {a}..{b}" for gw, a, b in gaps[:20]
                )
                more = f" and {len(gaps) - 20} more" if len(gaps) > 20 else ""
                lines.append(f"gaps: {len(gaps)} ({shown}{more}; edge.batch_gaps)")
            else:
                lines.append("gaps: none")
        return lines


class MqttStoreSource(MqttSubscription):
    """MQTT (Mosquitto) into a :class:`StoreConsumer`: QoS 1, acknowledged only after the
    store's commit (edge/platform/mqtt_source.py). Births and statuses are plain subscriptions
    (retained: every member gets them); batches and parking entries join the MQTT 5 shared
    subscription ``share`` when given, so consumers in one group split them. Use a fixed
    ``client_id``: the broker keeps the session's unacknowledged and queued messages while the
    consumer is away."""

    def __init__(
        self,
        broker_url: str,
        consumer: StoreConsumer,
        *,
        prefix: str = "city/v1",
        client_id: str | None = None,
        share: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        session_expiry_s: int = 7 * 86400,
    ) -> None:
        super().__init__(
            broker_url,
            prefix=prefix,
            client_id=client_id,
            share=share,
            tls_context=tls_context,
            session_expiry_s=session_expiry_s,
            status=True,
        )
        self.consumer = consumer

    async def run(self) -> None:  # type: ignore[override]
        """Consume until cancelled, reconnecting to the broker with backoff."""
        await super().run(self.consumer.handle)
