"""Consume batches: decode, name through the birth, de-duplicate by batch number, report gaps.

The gateway delivers at least once (a batch whose PUBACK was lost is re-sent with the same
number), so a consumer that drops repeated numbers sees every reading exactly once. Gaps are
reported as they appear and again at the end if they were never filled. Series ids are named
through the gateway's retained birth message, which arrives first on subscription. A birth
larger than the broker's packet limit comes in parts (``.../birth`` and ``.../birth/<k>``,
protocols/birth.py); it is applied once every part of it has arrived.

Use a fixed ``client_id``: the session is then persistent, and a broker with persistence keeps
QoS 1 batches for the consumer while it is away or restarting. A message is acknowledged only
after it was handled (printed and flushed), so a consumer killed mid-batch gets it again.

Scale-out: consumers given the same ``share`` group join an MQTT 5 shared subscription
(``$share/<group>/<prefix>/+/+/data``) and split the batches between them; births are not shared
(every member needs every dictionary). A member that dies keeps its share of the stream queued in
its persistent session until it, or a replacement with the same client id, comes back: run
consumers under a supervisor that restarts them.

Parking meter entries (``<prefix>/+/+/tx``) go to a
:class:`~edge.platform.ledger.TxLedger`: signatures checked against the key each gateway's birth
announces, de-duplicated by (meter, seq) and by transaction id, and reconciled per meter and
day in the summary. Members of a share group each see part of the entries: give them one
shared ledger in PostgreSQL (:class:`~edge.platform.pgledger.PgLedger`), not a file on shared
storage (SQLite's locking is not safe across machines).
"""

from __future__ import annotations

import json
import logging
import math
import ssl
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from edge.platform.ledger import EntryOutcome, TxLedger
from edge.platform.mqtt_source import MqttSubscription, published_by
from protocols.batch import TQ_NAMES, BatchDecodeError, BatchHeader, Reading, decode_batch
from protocols.birth import (
    Birth,
    BirthError,
    SeriesInfo,
    birth_part,
    join_birth_parts,
    resolve,
)
from protocols.meterlink import PayloadError, decode_tx_message

__all__ = [
    "CSV_COLUMNS",
    "BatchConsumer",
    "Delivery",
    "SeqTracker",
    "float_bits",
    "reading_csv",
    "reading_json",
]

log = logging.getLogger(__name__)


class SeqTracker:
    """Which batch numbers of one gateway were seen, in O(gaps) memory.

    Every number from ``start`` to ``floor`` was seen; ``above`` holds numbers seen past a gap.
    """

    def __init__(self) -> None:
        self.start: int | None = None
        self.floor = -1
        self.above: set[int] = set()
        self.highest = -1

    def add(self, seq: int) -> tuple[bool, tuple[int, int] | None]:
        """Record ``seq``. Returns (is_new, newly opened gap as (first, last) or None)."""
        if self.start is None:
            self.start, self.floor, self.highest = seq, seq, seq
            return True, None
        if self.start <= seq <= self.floor or seq in self.above:
            return False, None
        gap = None
        if seq > self.highest + 1:
            gap = (self.highest + 1, seq - 1)
        self.highest = max(self.highest, seq)
        if seq == self.floor + 1:
            self.floor = seq
            while self.floor + 1 in self.above:
                self.floor += 1
                self.above.remove(self.floor)
        else:
            self.above.add(seq)
        return True, gap

    def seen(self, seq: int) -> bool:
        return self.start is not None and (self.start <= seq <= self.floor or seq in self.above)

    def missing(self) -> list[tuple[int, int]]:
        """Gaps still open, as inclusive ranges."""
        out: list[tuple[int, int]] = []
        prev = self.floor
        for s in sorted(x for x in self.above if x > self.floor):
            if s > prev + 1:
                out.append((prev + 1, s - 1))
            prev = s
        return out


@dataclass(frozen=True)
class Delivery:
    """A new batch, its readings named through the gateway's birth."""

    header: BatchHeader
    readings: list[Reading]


@dataclass
class GatewayTally:
    tracker: SeqTracker = field(default_factory=SeqTracker)
    batches: int = 0
    readings: int = 0
    duplicates: int = 0
    dropped_reported: int = 0
    #: Of ``dropped_reported``: by the reason the gateway gave (header ``dropped_why``).
    dropped_why: dict[str, int] = field(default_factory=dict)
    birth: Birth | None = None
    series: dict[int, SeriesInfo] = field(default_factory=dict)
    unknown_reported: set[int] = field(default_factory=set)
    #: Split batches: seq -> the part paths delivered (whole batches are not listed here).
    parts: dict[int, set[tuple[int, ...]]] = field(default_factory=dict)
    #: Batches that arrived malformed (docs/batch-format-v1.md §6): how many, and the numbers
    #: of those no good copy has followed yet (they arrived: not missing, not delivered).
    malformed: int = 0
    malformed_seqs: set[int] = field(default_factory=set)
    #: Parts of births not yet complete: birth id -> part index -> part.
    birth_parts: dict[str, dict[int, Birth]] = field(default_factory=dict)


_F32, _F64 = struct.Struct(">f"), struct.Struct(">d")


def float_bits(v: float) -> str:
    """A float's IEEE 754 bits in hex: 8 digits when it is exactly a float32 (sign and NaN
    payload included), else 16. ``7fc00000`` is a float32 quiet NaN (docs/batch-format-v1.md §2)."""
    try:
        as_f32 = _F32.pack(v)
    except OverflowError:
        return _F64.pack(v).hex()
    if _F64.pack(_F32.unpack(as_f32)[0]) == _F64.pack(v):
        return as_f32.hex()
    return _F64.pack(v).hex()


def _nonfinite(v: object) -> tuple[str, str] | None:
    """A float JSON cannot hold as a number: its name (as the protobuf JSON mapping writes it)
    and its IEEE bits, which tell it from a str reading of the same text and keep a NaN's
    payload; None for every other value (docs/batch-format-v1.md §2.9)."""
    if isinstance(v, float) and not math.isfinite(v):
        return ("NaN" if v != v else "Infinity" if v > 0 else "-Infinity"), float_bits(v)
    return None


def reading_json(header: BatchHeader, r: Reading) -> str:
    """One reading as a JSON line that reads back to the same value, bit for bit. A NaN, +inf
    or -inf value is the string ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` with ``"bits"`` (its
    IEEE word, :func:`float_bits`): a line with ``bits`` is a float, a string without is a str
    reading. Every other float is a JSON number that reads back to the same double (-0.0 and
    subnormals included). ``"time"`` is the time quality, absent when good."""
    doc = {
        "gateway": header.gateway,
        "seq": header.seq,
        "device": r.device,
        "point": r.point,
        "ts_ms": r.ts_ms,
        "value": r.value,
    }
    special = _nonfinite(r.value)
    if special is not None:
        doc["value"], doc["bits"] = special
    if r.tq:
        doc["time"] = TQ_NAMES.get(r.tq, str(r.tq))  # absent: good
    return json.dumps(doc, separators=(",", ":"))


#: ``edge consume --format csv`` columns (docs/batch-format-v1.md §2.9).
CSV_COLUMNS = ("gateway", "seq", "device", "point", "ts_ms", "value", "bits", "time")


def reading_csv(header: BatchHeader, r: Reading) -> list[object]:
    """One reading as a CSV row of :data:`CSV_COLUMNS`. A float is the shortest text that
    reads back to the same double; NaN, +inf and -inf are ``NaN``, ``Infinity``, ``-Infinity``
    with their IEEE word in ``bits`` (empty for every other value); ``time`` is the time
    quality (good, corrected, uncertain)."""
    value: object = r.value
    bits = ""
    special = _nonfinite(r.value)
    if special is not None:
        value, bits = special
    quality = TQ_NAMES.get(r.tq, str(r.tq))
    return [header.gateway, header.seq, r.device, r.point, r.ts_ms, value, bits, quality]


#: ``dropped_why`` reasons in words (docs/batch-format-v1.md §1).
_WHY = {"unencodable": "values no batch can carry, set aside"}


def _dropped_words(header: BatchHeader) -> str:
    parts = [f"{n} {_WHY.get(k, k)}" for k, n in sorted(header.dropped_why.items())]
    rest = header.dropped - sum(header.dropped_why.values())
    if rest:
        parts.append(f"{rest} evicted (buffer full) or unreadable in a damaged buffer file")
    return "; ".join(parts)


class BatchConsumer:
    def __init__(
        self,
        broker_url: str,
        *,
        prefix: str = "city/v1",
        client_id: str | None = None,
        on_batch: Callable[[Delivery], None] | None = None,
        keep_duplicates: bool = False,
        report: TextIO = sys.stderr,
        tls_context: ssl.SSLContext | None = None,
        share: str | None = None,
        session_expiry_s: int = 7 * 86400,
        ledger: TxLedger | None = None,
        on_entry: Callable[[str, str, EntryOutcome], None] | None = None,
    ) -> None:
        self.subscription = MqttSubscription(
            broker_url,
            prefix=prefix,
            client_id=client_id,
            share=share,
            tls_context=tls_context,
            session_expiry_s=session_expiry_s,
            receive_maximum=10_000,
        )
        self.topics = self.subscription.topics
        self.subscribed = self.subscription.subscribed
        self.client_id = client_id
        self.on_batch = on_batch
        self.keep_duplicates = keep_duplicates
        self.report = report
        self.tallies: dict[str, GatewayTally] = {}
        self.ledger = ledger if ledger is not None else TxLedger()
        self.on_entry = on_entry
        self.bad_payloads = 0

    def _say(self, msg: str) -> None:
        print(msg, file=self.report, flush=True)

    def _birth(self, topic: str, payload: bytes) -> None:
        if not payload:
            return  # a retained birth part deleted by its gateway
        try:
            birth = Birth.decode(payload)
            part = birth_part(birth)
        except BirthError as exc:
            self.bad_payloads += 1
            self._say(f"bad birth on {topic}: {exc}")
            return
        if not published_by(topic, birth.gateway):
            self._mismatch("birth", topic, birth.gateway)
            return
        tally = self.tallies.setdefault(birth.gateway, GatewayTally())
        if part is not None:
            parts = tally.birth_parts.setdefault(part.id, {})
            parts[part.index] = birth
            if len(tally.birth_parts) > 4:  # parts of births that never completed (stale)
                del tally.birth_parts[next(iter(tally.birth_parts))]
            if len(parts) < part.count or part.id not in tally.birth_parts:
                return
            del tally.birth_parts[part.id]
            try:
                birth = join_birth_parts(parts.values())
            except BirthError as exc:
                self.bad_payloads += 1
                self._say(f"bad birth parts from gateway {birth.gateway}: {exc}")
                return
        tally.birth, tally.series = birth, birth.index()
        tally.unknown_reported.clear()
        try:
            public = birth.signing_public_key()
        except BirthError as exc:
            self.bad_payloads += 1
            self._say(f"gateway {birth.gateway}: birth has an unusable signing key ({exc})")
            return
        if public is None:
            return
        self._entries(birth.gateway, birth.site, self.ledger.key_announced(birth.gateway, public))

    def _tx(self, topic: str, payload: bytes) -> None:
        try:
            gateway, site, entries = decode_tx_message(payload)
        except PayloadError as exc:
            self.bad_payloads += 1
            self._say(f"bad tx message on {topic}: {exc}; skipped")
            return
        if not published_by(topic, gateway):
            self._mismatch("tx message", topic, gateway)
            return
        self._entries(gateway, site, self.ledger.add(gateway, site, entries))

    def _mismatch(self, kind: str, topic: str, gateway: str) -> None:
        """A message naming another gateway than its topic (mqtt_source.published_by)."""
        self.bad_payloads += 1
        self._say(
            f"bad {kind} on {topic}: it names gateway {gateway}, not the topic's: a gateway "
            "publishes on its own topic only; skipped"
        )

    def _entries(self, gateway: str, site: str, outcomes: list[EntryOutcome]) -> None:
        for o in outcomes:
            e = o.entry
            if o.status in ("bad_signature", "untrusted_key", "conflict"):
                self._say(
                    f"gateway {gateway}: meter {e.meter} entry {e.seq} held ({o.status}); "
                    "not counted"
                )
            elif o.status == "accepted" and self.on_entry is not None:
                self.on_entry(gateway, site, o)

    def handle(self, topic: str, payload: bytes) -> Delivery | None:
        """Process one message; returns the delivery if it is a new batch (or duplicates are
        kept). A birth updates its gateway's series dictionary."""
        head, _, last = topic.rpartition("/")
        if last == "birth" or (head.endswith("/birth") and last.isdigit()):
            self._birth(topic, payload)  # a whole birth, or a part (.../birth/<k>)
            return None
        if topic.endswith("/tx"):
            self._tx(topic, payload)
            return None
        try:
            batch = decode_batch(payload)
        except BatchDecodeError as exc:
            self._malformed(topic, exc)
            return None
        header = batch.header
        if not published_by(topic, header.gateway):
            self._mismatch(f"batch {header.seq}", topic, header.gateway)
            return None
        tally = self.tallies.setdefault(header.gateway, GatewayTally())
        # A number that only arrived malformed so far was never delivered: this copy is new.
        first_good = header.seq in tally.malformed_seqs
        tally.malformed_seqs.discard(header.seq)
        seen_before = tally.tracker.seen(header.seq) and not first_good
        is_new, gap = tally.tracker.add(header.seq)
        is_new = is_new or first_good
        if header.part or header.seq in tally.parts:
            is_new = self._new_part(tally, header.seq, header.part, seen_before)
        if gap is not None:
            first, last = gap
            span = f"{first}" if first == last else f"{first}..{last}"
            self._say(f"gateway {header.gateway}: missing batch {span} (got {header.seq})")
        if not is_new:
            tally.duplicates += 1
            self._say(f"gateway {header.gateway}: duplicate batch {header.seq}")
            if not self.keep_duplicates:
                return None
        elif header.seq < tally.tracker.highest:
            self._say(f"gateway {header.gateway}: late batch {header.seq} arrived")
        readings, unknown = resolve(batch, tally.series)
        fresh = unknown - tally.unknown_reported
        if fresh:
            tally.unknown_reported |= fresh
            self._say(
                f"gateway {header.gateway}: batch {header.seq} refers to series "
                f"{sorted(fresh)} that no birth has named (shown as '#id')"
            )
        tally.batches += 1
        tally.readings += len(readings)
        if header.dropped and is_new:  # a repeat (kept with keep_duplicates) was counted
            tally.dropped_reported += header.dropped
            for why, n in header.dropped_why.items():
                tally.dropped_why[why] = tally.dropped_why.get(why, 0) + n
            self._say(
                f"gateway {header.gateway}: batch {header.seq} reports {header.dropped} "
                f"readings lost at the gateway ({_dropped_words(header)})"
            )
        delivery = Delivery(header, readings)
        if self.on_batch is not None:
            self.on_batch(delivery)
        return delivery

    def _malformed(self, topic: str, exc: BatchDecodeError) -> None:
        """Report a malformed batch by gateway and seq whenever its header gives them, and
        count its number as arrived, so it is not also reported missing (a gap)."""
        self.bad_payloads += 1
        gateway, seq = exc.gateway, exc.seq
        names = [f"gateway {gateway}"] if gateway is not None else []
        names += [f"batch {seq}"] if seq is not None else []
        named = f" ({', '.join(names)})" if names else ""
        self._say(f"bad batch on {topic}{named}: {exc.code}: {exc}; skipped")
        if gateway is None:
            return
        tally = self.tallies.setdefault(gateway, GatewayTally())
        tally.malformed += 1
        if seq is None:
            return
        was_seen = tally.tracker.seen(seq)
        _, gap = tally.tracker.add(seq)
        if not was_seen:
            tally.malformed_seqs.add(seq)
        if gap is not None:
            first, last = gap
            span = f"{first}" if first == last else f"{first}..{last}"
            self._say(f"gateway {gateway}: missing batch {span} (got {seq}, malformed)")

    @staticmethod
    def _new_part(tally: GatewayTally, seq: int, path: tuple[int, ...], seen_before: bool) -> bool:
        """De-duplicate split batches: a part is new unless the whole batch, a part containing
        it, or a part it contains was already delivered."""
        delivered = tally.parts.get(seq)
        if delivered is None:
            if seen_before:  # delivered whole before it was split
                return False
            delivered = tally.parts[seq] = set()
        for d in delivered:
            if path[: len(d)] == d or d[: len(path)] == path:
                return False
        delivered.add(path)
        return True

    def summary(self) -> list[str]:
        lines = []
        for gw, t in sorted(self.tallies.items()):
            missing = t.tracker.missing()
            gaps = ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in missing) or "none"
            lines.append(
                f"gateway {gw}: {t.batches} batches, {t.readings} readings, "
                f"{t.duplicates} duplicates, missing: {gaps}, "
                + (f"malformed: {t.malformed}, " if t.malformed else "")
                + f"lost at gateway: {t.dropped_reported}"
                + "".join(f", {_WHY.get(k, k)}: {n}" for k, n in sorted(t.dropped_why.items()))
            )
        if self.bad_payloads:
            lines.append(f"{self.bad_payloads} undecodable messages")
        rec = self.ledger.reconcile()
        if rec.days or rec.meters:
            lines += rec.lines()
        return lines

    @property
    def tls_context(self) -> ssl.SSLContext | None:
        return self.subscription.tls_context

    @tls_context.setter
    def tls_context(self, context: ssl.SSLContext | None) -> None:
        self.subscription.tls_context = context

    async def run(self) -> None:
        """Consume until cancelled, reconnecting with backoff; each message acknowledged after
        it was handled (edge/platform/mqtt_source.py)."""
        await self.subscription.run(self.handle)
