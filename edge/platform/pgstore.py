"""The readings store in PostgreSQL: what the gateways send, exactly once, queryable.

Schema ``edge`` (docs/platform-store.md describes every table and view):

* ``gateways`` — one row per gateway id (an int key the big tables use);
* ``births`` — each distinct birth received (gateway, boot, site, software, started, next_seq,
  time zone, signing key, the document as jsonb); ``birth_parts`` holds the parts of a birth
  too large for one message until all of them are in (any consumer may get any part);
* ``series`` — (gateway, sid) → device, point, unit, type, kind, from the newest birth (highest
  boot) that lists it; an entry whose ``type`` is ``""`` keeps the type an older birth gave.
  A batch adds the ids it carries with no name (``device`` NULL) when no birth named them yet:
  ``unnamed_series`` lists those, and a birth arriving later names them;
* ``batches`` — each batch or split part stored (gateway, seq, part path, boot, created, n,
  dropped, dropped_why, received, topic); its key (gateway, seq, boot, created, part) is the
  exactly-once key: a re-sent batch keeps its bytes (spec §1), so another boot or created
  under a stored seq is another batch, from a gateway that lost its buffer and numbers again;
* ``renumberings`` — each such restart of a gateway's numbering (the ``created`` from which
  its batches are numbered again), so gaps are counted per numbering;
* ``readings`` — (gateway, sid, ts, tq, type, f, i, s, sb, ts_ms): ``f`` float8 for f32 / f64
  (an f32 widened exactly), ``i`` int8 for i64, u64 (two's complement: the view turns it back
  into an exact numeric), bool (0 / 1) and a NaN's IEEE word, ``s`` text for str (``sb``, the
  UTF-8 bytes, for a str holding U+0000, which PostgreSQL text cannot); ``ts`` is exact to the
  ms, and a timestamp beyond PostgreSQL's range (an int64 ms may be) is stored as ±infinity
  with the exact ms in ``ts_ms``;
* ``malformed`` — batches that failed to decode (docs/batch-format-v1.md §6): topic, gateway
  and seq when the header gives them, the error code, the message, the payload; also those
  the database refused (``not_storable``) and batches whose seq, boot, created and part are
  stored with other counts (``seq_conflict``: forged or corrupt, a re-sent batch keeps its
  bytes); rows ``seq_reused`` are from store schema 1, which kept a renumbered gateway's
  batches there (the consumer stores them at its start: :meth:`PgStore.reused_batches`);
* ``gateway_status`` — each gateway's last ``status`` message (online / offline, its will).

Views: ``readings_named`` (readings with gateway, device, point, unit and the value in its SQL
type), ``batch_gaps`` (missing seq ranges per numbering), ``incomplete_batches`` (split
batches with parts still missing), ``evictions`` (batches reporting readings lost at the gateway),
``unnamed_series``.

**Time index: BRIN, not partitions.** Readings arrive in about the order they were taken (a
gateway sends its buffer oldest first), so a BRIN index on ``ts`` (a few kB per GB) prunes a
time-range scan over the whole city as well as partitions would, with no partition to create
before data arrives: a consumer never runs DDL while it writes, late readings (a gateway back
after a week, a clock that said 1970) need no partition of their own, and competing consumers
never race to create one. The btree on (gateway, sid, ts) is what makes one meter's day fast
(each of its series is one index range). An operator who wants to drop old days cheaply can
partition ``readings`` by month later; the views do not change.

**Exactly once.** One transaction per batch: an advisory lock on (gateway, seq), the batch row
(a part whose ancestor or descendant path is already stored for that seq, boot and created is
a duplicate: spec §4), the series ids it carries, then its readings by COPY (binary: measured
faster than text, see :func:`copy_tuples`). A redelivered batch finds its row and writes
nothing. The source acknowledges the message only after the commit returned.

Migrations: ``edge.schema_version`` holds a version per component (``store`` here, ``ledger``
for edge/platform/pgledger.py); :func:`migrate` applies the missing steps in one transaction
under an advisory lock, so consumers starting together do not race, and refuses a database
newer than this code.

psycopg is imported here at module level: only the consumer loads this module (the gateway
never does; tests/test_architecture.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from protocols.batch import BatchHeader, WirePoint
from protocols.birth import Birth

__all__ = [
    "REFUSED",
    "STORE_VERSION",
    "BatchResult",
    "BirthResult",
    "PgStore",
    "Renamed",
    "StoreSchemaError",
    "copy_tuples",
    "index_safe",
    "is_transient",
    "migrate",
    "pg_text",
]

#: The store schema version this code writes (steps in :data:`_STEPS`).
STORE_VERSION = 2
#: pg_advisory_xact_lock key of the store's migration (the ledger has its own).
_MIGRATE_LOCK = 0x6564_6765_0001  # "edge" 1
#: Seed of the advisory lock per (gateway, seq): hashtextextended('<gw>/<seq>', seed).
_BATCH_LOCK_SEED = 20
#: PostgreSQL's timestamptz range in ms since the epoch: [4714-11-24 BC, 294277-01-01).
TS_MIN_MS, TS_END_MS = -210_866_803_200_000, 9_224_318_016_000_000
#: 2000-01-01 UTC in ms since the Unix epoch (the epoch of binary timestamptz).
_PG_EPOCH_MS = 946_684_800_000

TYPE_CODES = {"f32": 1, "f64": 2, "i64": 3, "u64": 4, "bool": 5, "str": 6}


class StoreSchemaError(Exception):
    """The database's store schema is newer than this consumer: upgrade the consumer."""


def is_transient(exc: BaseException) -> bool:
    """A database error that passes: the server is down or restarting (08xxx, 57Pxx), out of
    disk or memory (53xxx), a deadlock or serialization failure (40xxx). Retry the message;
    every other database error is about the data or the code, among them a value beyond the
    database's limits (54xxx, e.g. an id too long for an index), which psycopg also raises as
    an OperationalError but which no retry will ever store."""
    return isinstance(exc, psycopg.OperationalError) and not isinstance(
        exc, psycopg.errors.ProgramLimitExceeded
    )


#: Database errors about a message's values (SQLSTATE 22xxx, 54xxx): the message can never be
#: stored as it is, so it is reported and kept where it can be, not retried.
REFUSED = (psycopg.DataError, psycopg.errors.ProgramLimitExceeded)

#: The most UTF-8 bytes of a gateway id written to an indexed column of edge.malformed (a
#: btree row holds at most 2704 bytes); the payload keeps the whole id.
_MALFORMED_ID_BYTES = 1000


def index_safe(text: str, limit: int = _MALFORMED_ID_BYTES) -> str:
    """``text`` as :func:`pg_text`, cut to ``limit`` UTF-8 bytes (marked with "…") when longer."""
    text = pg_text(text)
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[:limit].decode(errors="ignore") + "…"


def pg_text(s: str) -> str:
    """``s`` as PostgreSQL text holds it: U+0000 written as the six characters ``\\u0000``."""
    return s.replace("\x00", "\\u0000") if "\x00" in s else s


_SCHEMA_V1 = """
CREATE TABLE edge.gateways (
    id serial PRIMARY KEY,
    gateway text NOT NULL UNIQUE,
    site text,
    first_seen timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE edge.births (
    id bigserial PRIMARY KEY,
    gateway_id int NOT NULL REFERENCES edge.gateways (id),
    boot bigint NOT NULL,
    site text NOT NULL,
    software text NOT NULL,
    started_ms bigint NOT NULL,
    next_seq bigint NOT NULL,
    time_zone text,
    signing_key text,
    received timestamptz NOT NULL DEFAULT now(),
    last_received timestamptz NOT NULL DEFAULT now(),
    digest bytea NOT NULL,
    doc jsonb NOT NULL,
    UNIQUE (gateway_id, boot, digest)
);
CREATE TABLE edge.birth_parts (
    gateway_id int NOT NULL REFERENCES edge.gateways (id),
    birth text NOT NULL,
    index int NOT NULL,
    count int NOT NULL,
    payload bytea NOT NULL,
    received timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway_id, birth, index)
);
CREATE TABLE edge.series (
    gateway_id int NOT NULL REFERENCES edge.gateways (id),
    sid bigint NOT NULL,
    device text,
    point text,
    unit text,
    type text,
    kind text,
    wrap double precision,
    labels jsonb,
    boot bigint,
    birth_id bigint REFERENCES edge.births (id),
    first_seen timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway_id, sid)
);
CREATE TABLE edge.batches (
    gateway_id int NOT NULL REFERENCES edge.gateways (id),
    seq bigint NOT NULL,
    part smallint[] NOT NULL DEFAULT '{}',
    boot bigint NOT NULL,
    created_ms bigint NOT NULL,
    n int NOT NULL,
    dropped bigint NOT NULL,
    dropped_why jsonb,
    received timestamptz NOT NULL DEFAULT now(),
    topic text NOT NULL,
    PRIMARY KEY (gateway_id, seq, part)
);
CREATE TABLE edge.readings (
    gateway_id int NOT NULL,
    tq smallint NOT NULL,
    type smallint NOT NULL,
    sid bigint NOT NULL,
    ts timestamptz NOT NULL,
    f double precision,
    i bigint,
    s text,
    sb bytea,
    ts_ms bigint
);
CREATE INDEX readings_series_ts ON edge.readings (gateway_id, sid, ts);
CREATE INDEX readings_ts_brin ON edge.readings USING brin (ts);
CREATE TABLE edge.malformed (
    id bigserial PRIMARY KEY,
    received timestamptz NOT NULL DEFAULT now(),
    topic text NOT NULL,
    gateway text,
    seq bigint,
    code text NOT NULL,
    message text NOT NULL,
    payload bytea NOT NULL,
    digest bytea NOT NULL UNIQUE
);
CREATE INDEX malformed_gateway_seq ON edge.malformed (gateway, seq);
CREATE TABLE edge.gateway_status (
    gateway_id int PRIMARY KEY REFERENCES edge.gateways (id),
    state text,
    boot bigint,
    doc jsonb NOT NULL,
    topic text NOT NULL,
    received timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION edge.ms_time(ms bigint) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN CASE WHEN ms < -210866803200000 THEN '-infinity'::timestamptz
                WHEN ms >= 9224318016000000 THEN 'infinity'::timestamptz
                ELSE to_timestamp(ms / 1000.0) END;

CREATE VIEW edge.readings_named AS
SELECT g.gateway,
       s.device,
       s.point,
       s.unit,
       s.kind,
       r.sid,
       r.ts,
       coalesce(r.ts_ms, (extract(epoch FROM r.ts) * 1000)::bigint) AS ts_ms,
       (ARRAY['good', 'corrected', 'uncertain'])[r.tq + 1] AS time_quality,
       (ARRAY['f32', 'f64', 'i64', 'u64', 'bool', 'str'])[r.type] AS type,
       CASE WHEN r.type <= 2 THEN r.f
            WHEN r.type = 3 THEN r.i::double precision
            WHEN r.type = 4 THEN (CASE WHEN r.i < 0 THEN r.i::numeric + 18446744073709551616
                                       ELSE r.i::numeric END)::double precision
            WHEN r.type = 5 THEN r.i::double precision END AS value,
       CASE WHEN r.type <= 2 THEN r.f END AS value_float,
       CASE WHEN r.type = 3 THEN r.i::numeric
            WHEN r.type = 4 THEN CASE WHEN r.i < 0 THEN r.i::numeric + 18446744073709551616
                                      ELSE r.i::numeric END END AS value_int,
       CASE WHEN r.type = 5 THEN r.i <> 0 END AS value_bool,
       CASE WHEN r.type = 6 THEN r.s END AS value_text,
       CASE WHEN r.type = 6 THEN coalesce(r.sb, convert_to(r.s, 'UTF8')) END AS value_utf8,
       CASE WHEN r.type = 1 AND r.i IS NOT NULL THEN lpad(to_hex(r.i), 8, '0')
            WHEN r.type = 1 THEN encode(float4send(r.f::real), 'hex')
            WHEN r.type = 2 AND r.i IS NOT NULL THEN lpad(to_hex(r.i), 16, '0')
            WHEN r.type = 2 THEN encode(float8send(r.f), 'hex') END AS bits,
       r.gateway_id
FROM edge.readings r
JOIN edge.gateways g ON g.id = r.gateway_id
LEFT JOIN edge.series s ON s.gateway_id = r.gateway_id AND s.sid = r.sid;

CREATE VIEW edge.batch_gaps AS
WITH seen AS (
    SELECT gateway_id, seq FROM edge.batches
    UNION
    SELECT g.id, m.seq FROM edge.malformed m JOIN edge.gateways g ON g.gateway = m.gateway
    WHERE m.seq IS NOT NULL
), ordered AS (
    SELECT gateway_id, seq, lead(seq) OVER (PARTITION BY gateway_id ORDER BY seq) AS next
    FROM seen
)
SELECT g.gateway, o.seq + 1 AS first_missing, o.next - 1 AS last_missing,
       o.next - o.seq - 1 AS missing
FROM ordered o JOIN edge.gateways g ON g.id = o.gateway_id
WHERE o.next > o.seq + 1;

CREATE VIEW edge.incomplete_batches AS
SELECT g.gateway, b.seq,
       string_agg(array_to_string(b.part, '.'), ', ' ORDER BY b.part) AS parts,
       sum(power(2::numeric, -cardinality(b.part))) AS covered
FROM edge.batches b JOIN edge.gateways g ON g.id = b.gateway_id
WHERE cardinality(b.part) > 0
GROUP BY g.gateway, b.seq
HAVING sum(power(2::numeric, -cardinality(b.part))) < 1;

CREATE VIEW edge.evictions AS
SELECT g.gateway, b.seq, b.part, b.boot, edge.ms_time(b.created_ms) AS created, b.dropped,
       coalesce(b.dropped_why, '{}'::jsonb) AS dropped_why,
       b.dropped - coalesce((SELECT sum(value::bigint) FROM jsonb_each_text(b.dropped_why)), 0)
           AS evicted_or_unreadable,
       b.received
FROM edge.batches b JOIN edge.gateways g ON g.id = b.gateway_id
WHERE b.dropped > 0;

CREATE VIEW edge.unnamed_series AS
SELECT g.gateway, s.sid, s.first_seen
FROM edge.series s JOIN edge.gateways g ON g.id = s.gateway_id
WHERE s.device IS NULL;
"""

#: Step 2: a batch is identified by (gateway, seq, boot, created, part), not (gateway, seq, part):
#: a gateway that lost its buffer numbers from 1 again, and those are other batches (spec §1:
#: a re-sent batch keeps its bytes, so its boot and created). ``renumberings`` marks each such
#: restart; ``batch_gaps`` and ``incomplete_batches`` work per numbering (docs/platform-store.md).
_SCHEMA_V2 = """
ALTER TABLE edge.batches DROP CONSTRAINT batches_pkey;
ALTER TABLE edge.batches ADD PRIMARY KEY (gateway_id, seq, boot, created_ms, part);
CREATE TABLE edge.renumberings (
    gateway_id int NOT NULL REFERENCES edge.gateways (id),
    created_ms bigint NOT NULL,
    seq bigint NOT NULL,
    boot bigint NOT NULL,
    detected timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway_id, created_ms)
);
CREATE FUNCTION edge.numbering(gw int, created bigint) RETURNS int
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
    RETURN (SELECT count(*)::int FROM edge.renumberings r
            WHERE r.gateway_id = gw AND r.created_ms <= created);
DROP VIEW edge.batch_gaps;
CREATE VIEW edge.batch_gaps AS
WITH numbered AS (
    SELECT DISTINCT gateway_id, edge.numbering(gateway_id, created_ms) AS numbering, seq
    FROM edge.batches
), numberings AS (
    SELECT DISTINCT gateway_id, numbering FROM numbered
), seen AS (
    SELECT gateway_id, numbering, seq FROM numbered
    UNION
    SELECT g.id, coalesce(n.numbering, 0), m.seq
    FROM edge.malformed m
    JOIN edge.gateways g ON g.gateway = m.gateway
    LEFT JOIN numberings n ON n.gateway_id = g.id
    WHERE m.seq IS NOT NULL
), ordered AS (
    SELECT gateway_id, numbering, seq,
           lead(seq) OVER (PARTITION BY gateway_id, numbering ORDER BY seq) AS next
    FROM seen
)
SELECT g.gateway, o.seq + 1 AS first_missing, o.next - 1 AS last_missing,
       o.next - o.seq - 1 AS missing, o.numbering
FROM ordered o JOIN edge.gateways g ON g.id = o.gateway_id
WHERE o.next > o.seq + 1;
DROP VIEW edge.incomplete_batches;
CREATE VIEW edge.incomplete_batches AS
SELECT g.gateway, b.seq,
       string_agg(array_to_string(b.part, '.'), ', ' ORDER BY b.part) AS parts,
       sum(power(2::numeric, -cardinality(b.part))) AS covered,
       b.boot, edge.ms_time(b.created_ms) AS created
FROM edge.batches b JOIN edge.gateways g ON g.id = b.gateway_id
WHERE cardinality(b.part) > 0
GROUP BY g.gateway, b.seq, b.boot, b.created_ms
HAVING sum(power(2::numeric, -cardinality(b.part))) < 1;
"""

#: Migration steps: version n is reached by running _STEPS[n - 1].
_STEPS = (_SCHEMA_V1, _SCHEMA_V2)
assert len(_STEPS) == STORE_VERSION


async def migrate(conn: psycopg.AsyncConnection) -> int:
    """Bring the store schema to :data:`STORE_VERSION` (one transaction, under an advisory
    lock); returns the version found before. Raises :class:`StoreSchemaError` for a newer
    database."""
    for attempt in range(3):
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
                await conn.execute("CREATE SCHEMA IF NOT EXISTS edge")
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS edge.schema_version "
                    "(component text PRIMARY KEY, version int NOT NULL)"
                )
                row = await (
                    await conn.execute(
                        "SELECT version FROM edge.schema_version WHERE component = 'store'"
                    )
                ).fetchone()
                found = row[0] if row else 0
                if found > STORE_VERSION:
                    raise StoreSchemaError(
                        f"the database's store schema is version {found}, newer than this "
                        f"consumer knows ({STORE_VERSION}): upgrade the consumer"
                    )
                for step in _STEPS[found:]:
                    await conn.execute(step)
                await conn.execute(
                    "INSERT INTO edge.schema_version VALUES ('store', %s) ON CONFLICT "
                    "(component) DO UPDATE SET version = excluded.version",
                    (STORE_VERSION,),
                )
            return found
        except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateObject):
            # The ledger created schema edge or schema_version at the same moment (it takes
            # its own lock): the next attempt sees them.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- COPY rows

_F32 = struct.Struct(">f")
_W32 = struct.Struct(">I")
_D = struct.Struct(">d")
_Q = struct.Struct(">Q")
_TYPE = TYPE_CODES


#: psycopg's binary dumpers for the readings' columns. ``ts`` goes as int8: a binary
#: timestamptz is an int64 of µs since 2000-01-01 (±2**63-1 the infinities), byte for byte.
COPY_TYPES = ["int4", "int2", "int2", "int8", "int8", "float8", "int8", "text", "bytea", "int8"]


def copy_tuples(gateway_id: int, points: Iterable[WirePoint]) -> Iterable[tuple]:
    """The readings of a batch as rows for ``write_row`` with :data:`COPY_TYPES` (binary
    COPY): the fastest way measured (bench/pg_copy_format.py)."""
    unpack_f32, pack_w32 = _F32.unpack, _W32.pack
    unpack_d, pack_q = _D.unpack, _Q.pack
    for p in points:
        code = _TYPE[p.type]
        ts_ms = p.ts_ms
        if TS_MIN_MS <= ts_ms < TS_END_MS:
            ts, beyond = (ts_ms - _PG_EPOCH_MS) * 1000, None
        else:
            ts, beyond = (-(2**63) if ts_ms < 0 else 2**63 - 1), ts_ms
        v = p.value
        f = i = s = sb = None
        if code == 1:
            f = unpack_f32(pack_w32(v))[0]
            if f != f:
                i = v
        elif code == 2:
            f = unpack_d(pack_q(v))[0]
            if f != f:
                i = v - (1 << 64) if v >> 63 else v
        elif code == 3:
            i = v
        elif code == 4:
            i = v - (1 << 64) if v >> 63 else v
        elif code == 5:
            i = 1 if v else 0
        elif "\x00" in v:
            sb = v.encode("utf-8")
        else:
            s = v
        yield (gateway_id, p.tq, code, p.sid, ts, f, i, s, sb, beyond)


COPY_READINGS = (
    "COPY edge.readings (gateway_id, tq, type, sid, ts, f, i, s, sb, ts_ms) "
    "FROM STDIN (FORMAT BINARY)"
)


# ----------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class Renamed:
    """A series id a birth names otherwise than a stored birth of another boot did (ids are
    never reused, docs/batch-format-v1.md §3): ``applied`` when this birth's names now hold
    (its boot is the newer), so every reading of the id reads under them."""

    sid: int
    name: str  # "device/point" in this birth
    other_boot: int
    other_name: str
    applied: bool


@dataclass(frozen=True)
class BirthResult:
    """What storing a whole birth did: ``named`` the series ids batches had brought unnamed;
    ``renamed`` the ids it names otherwise than a birth of another boot."""

    named: list[int]
    renamed: list[Renamed]


@dataclass(frozen=True)
class BatchResult:
    """What storing one batch did: ``stored`` False for a duplicate (already stored whole, or
    a part covered by a stored ancestor or descendant); ``unnamed`` the series ids of the
    batch no birth has named yet (after the commit)."""

    stored: bool
    readings: int
    unnamed: tuple[int, ...] = ()
    #: Set when this seq, boot, created and part are stored with other counts: the stored
    #: (n, dropped). A forged or corrupt batch: nothing of it was written.
    conflict: tuple[int, int] | None = None
    #: Set when this batch showed that the gateway numbers its batches again (it lost its
    #: buffer): (seq, boot, created_ms) of the restart's batch; set for one batch per restart.
    renumbered: tuple[int, int, int] | None = None


def _covers(a: Sequence[int], b: Sequence[int]) -> bool:
    """Parts ``a`` and ``b`` of one seq overlap: one path is a prefix of the other (the whole
    batch, path (), overlaps every part)."""
    n = min(len(a), len(b))
    return tuple(a[:n]) == tuple(b[:n])


def _digest(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.digest()


def _json_safe(doc: Any) -> Any:
    """A document jsonb takes: U+0000 in strings written out, non-finite floats as strings."""
    if isinstance(doc, str):
        return pg_text(doc)
    if isinstance(doc, float) and not math.isfinite(doc):
        return repr(doc)
    if isinstance(doc, dict):
        return {pg_text(str(k)): _json_safe(v) for k, v in doc.items()}
    if isinstance(doc, list | tuple):
        return [_json_safe(v) for v in doc]
    return doc


class PgStore:
    """One connection to the store database. Every method is one transaction, committed when
    it returns; a transient failure (:func:`is_transient`) propagates with nothing committed
    and the connection is re-opened on the next call. Not for concurrent use: the caller
    serializes (edge/platform/store_consumer.py does)."""

    def __init__(self, dsn: str, *, connect_timeout_s: float = 5.0) -> None:
        self.dsn = dsn
        self.connect_timeout_s = connect_timeout_s
        self._conn: psycopg.AsyncConnection | None = None
        self._gateway_ids: dict[str, int] = {}
        self.migrated_from: int | None = None

    async def connect(self) -> psycopg.AsyncConnection:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        await self.close()
        conn = await psycopg.AsyncConnection.connect(
            self.dsn,
            connect_timeout=max(1, int(self.connect_timeout_s)),
            application_name="edge consume",
        )
        try:
            if self.migrated_from is None:
                self.migrated_from = await migrate(conn)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        return conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except psycopg.Error:
                pass

    async def _gateway_id(
        self, conn: psycopg.AsyncConnection, gateway: str, site: str | None = None
    ) -> int:
        gid = self._gateway_ids.get(gateway)
        if gid is not None:
            return gid
        async with conn.transaction():
            row = await (
                await conn.execute(
                    "INSERT INTO edge.gateways (gateway, site) VALUES (%s, %s) "
                    "ON CONFLICT (gateway) DO UPDATE SET site = coalesce(edge.gateways.site, "
                    "excluded.site) RETURNING id",
                    (pg_text(gateway), None if site is None else pg_text(site)),
                )
            ).fetchone()
        assert row is not None
        self._gateway_ids[gateway] = row[0]
        return row[0]

    async def store_batch(
        self, topic: str, header: BatchHeader, points: Sequence[WirePoint]
    ) -> BatchResult:
        """Store one decoded batch (or split part) once: see the module docstring."""
        conn = await self.connect()
        gid = await self._gateway_id(conn, header.gateway)
        part = list(header.part)
        async with conn.transaction():
            cur = conn.cursor()
            await cur.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, %s))",
                (f"{pg_text(header.gateway)}/{header.seq}", _BATCH_LOCK_SEED),
            )
            await cur.execute(
                "SELECT part, boot, created_ms, n, dropped FROM edge.batches "
                "WHERE gateway_id = %s AND seq = %s",
                (gid, header.seq),
            )
            stored = await cur.fetchall()
            this = (header.boot, header.created_ms)
            others: set[tuple[int, int]] = set()
            for stored_part, boot, created_ms, n, dropped in stored:
                if (boot, created_ms) != this:
                    # Another batch under this seq: a re-sent batch keeps its bytes, so its
                    # boot and created (spec §1, §4). The gateway numbers again.
                    others.add((boot, created_ms))
                elif list(stored_part) == part and (n, dropped) != (
                    header.points,
                    header.dropped,
                ):
                    # The same seq, boot, created and part with other counts: not a re-sent
                    # batch (its bytes would be the same) but a forged or corrupt one.
                    return BatchResult(False, len(points), conflict=(n, dropped))
                elif _covers(stored_part, part):
                    return BatchResult(False, len(points))
            renumbered = None
            if others:
                renumbered = await self._renumbering(cur, gid, header, others)
            await cur.execute(
                "INSERT INTO edge.batches (gateway_id, seq, part, boot, created_ms, n, dropped,"
                " dropped_why, topic) VALUES (%s, %s, %s::smallint[], %s, %s, %s, %s, %s, %s)",
                (
                    gid,
                    header.seq,
                    part,
                    header.boot,
                    header.created_ms,
                    header.points,
                    header.dropped,
                    Jsonb(_json_safe(header.dropped_why)) if header.dropped_why else None,
                    pg_text(topic),
                ),
            )
            sids = sorted({p.sid for p in points})
            unnamed: tuple[int, ...] = ()
            if sids:
                await cur.execute(
                    "INSERT INTO edge.series (gateway_id, sid) SELECT %s, x "
                    "FROM unnest(%s::bigint[]) AS x ORDER BY x ON CONFLICT DO NOTHING",
                    (gid, sids),
                )
                async with cur.copy(COPY_READINGS) as copy:
                    copy.set_types(COPY_TYPES)
                    for row in copy_tuples(gid, points):
                        await copy.write_row(row)
                await cur.execute(
                    "SELECT sid FROM edge.series WHERE gateway_id = %s "
                    "AND sid = ANY(%s::bigint[]) AND device IS NULL ORDER BY sid",
                    (gid, sids),
                )
                unnamed = tuple(r[0] for r in await cur.fetchall())
        return BatchResult(True, len(points), unnamed, renumbered=renumbered)

    async def _renumbering(
        self,
        cur: psycopg.AsyncCursor,
        gid: int,
        header: BatchHeader,
        others: Iterable[tuple[int, int]],
    ) -> tuple[int, int, int] | None:
        """Record that the gateway numbers its batches again: ``header``'s batch and the
        stored ``others`` (boot, created_ms) share its seq. A restart is placed between the
        older and the newer of each pair (by ``created``), once: one row in
        ``edge.renumberings`` per restart, moved earlier when an earlier batch of the same
        numbering turns up (no boot above the restart's: boots only grow within a
        numbering). Returns (seq, boot, created_ms) of a restart recorded now, else None."""
        await cur.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, %s))",
            (f"{pg_text(header.gateway)}/numbering", _BATCH_LOCK_SEED),
        )
        new = None
        for boot, created_ms in sorted(others):
            this = (header.created_ms, header.boot)
            lo, hi = sorted([(created_ms, boot), this])
            await cur.execute(
                "SELECT edge.numbering(%s, %s) = edge.numbering(%s, %s)",
                (gid, lo[0], gid, hi[0]),
            )
            row = await cur.fetchone()
            if row is None or not row[0]:
                continue  # a restart already lies between them
            await cur.execute(
                "SELECT created_ms, boot FROM edge.renumberings WHERE gateway_id = %s "
                "AND created_ms > %s ORDER BY created_ms LIMIT 1",
                (gid, lo[0]),
            )
            after = await cur.fetchone()
            if after is not None and hi[1] <= after[1]:
                await cur.execute(
                    "UPDATE edge.renumberings SET created_ms = %s, seq = %s, boot = %s "
                    "WHERE gateway_id = %s AND created_ms = %s",
                    (hi[0], header.seq, hi[1], gid, after[0]),
                )
                continue
            await cur.execute(
                "INSERT INTO edge.renumberings (gateway_id, created_ms, seq, boot) "
                "VALUES (%s, %s, %s, %s)",
                (gid, hi[0], header.seq, hi[1]),
            )
            new = (header.seq, hi[1], hi[0])
        return new

    async def store_birth_part(
        self, birth: Birth, index: int, count: int, pid: str, payload: bytes
    ) -> list[bytes] | None:
        """Keep one part of a split birth; returns every part's payload (in index order) once
        all ``count`` are stored, else None. Any consumer may hold the last part: the check
        runs under a lock per birth, so one of them always sees the whole."""
        conn = await self.connect()
        gid = await self._gateway_id(conn, birth.gateway, birth.site)
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, %s))",
                (pg_text(f"{birth.gateway}/birth/{pid}"), _BATCH_LOCK_SEED),
            )
            await conn.execute(
                "INSERT INTO edge.birth_parts (gateway_id, birth, index, count, payload) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (gid, pg_text(pid), index, count, payload),
            )
            rows = await (
                await conn.execute(
                    "SELECT index, payload FROM edge.birth_parts WHERE gateway_id = %s AND "
                    "birth = %s AND count = %s ORDER BY index",
                    (gid, pg_text(pid), count),
                )
            ).fetchall()
        if [r[0] for r in rows] != list(range(1, count + 1)):
            return None
        return [bytes(r[1]) for r in rows]

    async def store_birth(self, birth: Birth, doc: dict[str, Any]) -> BirthResult:
        """Store a whole birth and name its series (newest boot wins; an empty ``type`` keeps
        the older one). Returns the series ids it named that batches had brought unnamed, and
        those it names otherwise than the stored birth of another boot."""
        conn = await self.connect()
        gid = await self._gateway_id(conn, birth.gateway, birth.site)
        safe = _json_safe(doc)
        encoded = json.dumps(safe, sort_keys=True, separators=(",", ":")).encode()
        key = birth.extra.get("signing_key")
        public = key.get("public") if isinstance(key, dict) else None
        tz = birth.extra.get("time_zone")
        # One row per id (an entry listed twice alike is one entry; the consumer refuses a
        # birth listing an id twice with different names).
        series = sorted({s.sid: s for s in birth.series}.values(), key=lambda s: s.sid)
        async with conn.transaction():
            row = await (
                await conn.execute(
                    "INSERT INTO edge.births (gateway_id, boot, site, software, started_ms, "
                    "next_seq, time_zone, signing_key, digest, doc) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (gateway_id, boot, digest) DO UPDATE SET last_received = now() "
                    "RETURNING id",
                    (
                        gid,
                        birth.boot,
                        pg_text(birth.site),
                        pg_text(birth.software),
                        birth.started_ms,
                        birth.next_seq,
                        pg_text(tz) if isinstance(tz, str) else None,
                        pg_text(public) if isinstance(public, str) else None,
                        _digest(encoded),
                        Jsonb(safe),
                    ),
                )
            ).fetchone()
            assert row is not None
            birth_id = row[0]
            await conn.execute(
                "UPDATE edge.gateways SET site = %s WHERE id = %s AND site IS DISTINCT FROM %s",
                (pg_text(birth.site), gid, pg_text(birth.site)),
            )
            if not series:
                return BirthResult([], [])
            named = await (
                await conn.execute(
                    "SELECT sid FROM edge.series WHERE gateway_id = %s AND device IS NULL "
                    "AND sid = ANY(%s::bigint[])",
                    (gid, [s.sid for s in series]),
                )
            ).fetchall()
            others = await (
                await conn.execute(
                    "SELECT o.sid, x.device, x.point, o.boot, o.device, o.point FROM edge.series o"
                    " JOIN unnest(%s::bigint[], %s::text[], %s::text[]) AS x (sid, device, point)"
                    " ON x.sid = o.sid WHERE o.gateway_id = %s AND o.device IS NOT NULL"
                    " AND o.boot IS DISTINCT FROM %s"
                    " AND (o.device, o.point) IS DISTINCT FROM (x.device, x.point) ORDER BY o.sid",
                    (
                        [s.sid for s in series],
                        [pg_text(s.device) for s in series],
                        [pg_text(s.point) for s in series],
                        gid,
                        birth.boot,
                    ),
                )
            ).fetchall()
            renamed = [
                Renamed(sid, f"{dev}/{pt}", boot, f"{odev}/{opt}", boot < birth.boot)
                for sid, dev, pt, boot, odev, opt in others
            ]
            await conn.execute(
                """
                INSERT INTO edge.series AS o (gateway_id, sid, device, point, unit, type, kind,
                                              wrap, labels, boot, birth_id)
                SELECT %s, x.sid, x.device, x.point, x.unit, x.type, nullif(x.kind, ''),
                       x.wrap, x.labels::jsonb, %s, %s
                FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[],
                            %s::text[], %s::float8[], %s::text[])
                     AS x (sid, device, point, unit, type, kind, wrap, labels)
                ORDER BY x.sid
                ON CONFLICT (gateway_id, sid) DO UPDATE SET
                    device = excluded.device, point = excluded.point, unit = excluded.unit,
                    type = CASE WHEN excluded.type = '' AND o.type IS NOT NULL THEN o.type
                                ELSE excluded.type END,
                    kind = coalesce(excluded.kind, o.kind),
                    wrap = excluded.wrap, labels = excluded.labels,
                    boot = excluded.boot, birth_id = excluded.birth_id
                WHERE o.boot IS NULL OR o.boot <= excluded.boot
                """,
                (
                    gid,
                    birth.boot,
                    birth_id,
                    [s.sid for s in series],
                    [pg_text(s.device) for s in series],
                    [pg_text(s.point) for s in series],
                    [pg_text(s.unit) for s in series],
                    [pg_text(s.type) for s in series],
                    [pg_text(s.kind) for s in series],
                    [s.wrap for s in series],
                    [
                        None
                        if not s.labels
                        else json.dumps({str(k): pg_text(v) for k, v in s.labels.items()})
                        for s in series
                    ],
                ),
            )
        return BirthResult(sorted(r[0] for r in named), renamed)

    async def store_status(self, gateway: str, topic: str, doc: dict[str, Any]) -> None:
        """The gateway's last status message (a different one replaces it; ``received`` is
        when the current one first arrived)."""
        conn = await self.connect()
        gid = await self._gateway_id(conn, gateway)
        state = doc.get("state")
        boot = doc.get("boot")
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO edge.gateway_status (gateway_id, state, boot, doc, topic) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (gateway_id) DO UPDATE SET "
                "state = excluded.state, boot = excluded.boot, doc = excluded.doc, "
                "topic = excluded.topic, received = now() "
                # The same status again (retained: every consumer start gets it) keeps the
                # time it first came: "offline since".
                "WHERE edge.gateway_status.doc IS DISTINCT FROM excluded.doc",
                (
                    gid,
                    pg_text(state) if isinstance(state, str) else None,
                    boot
                    if isinstance(boot, int)
                    and not isinstance(boot, bool)
                    and -(2**63) <= boot < 2**63
                    else None,
                    Jsonb(_json_safe(doc)),
                    pg_text(topic),
                ),
            )

    async def store_malformed(
        self,
        topic: str,
        payload: bytes,
        code: str,
        message: str,
        gateway: str | None,
        seq: int | None,
    ) -> bool:
        """Keep a batch that could not be stored as readings; False if this very message
        (topic and bytes) was kept before (a redelivery)."""
        conn = await self.connect()
        async with conn.transaction():
            cur = await conn.execute(
                "INSERT INTO edge.malformed (topic, gateway, seq, code, message, payload, "
                "digest) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (digest) DO NOTHING",
                (
                    pg_text(topic),
                    None if gateway is None else index_safe(gateway),
                    seq,
                    code,
                    pg_text(message),
                    payload,
                    _digest(topic.encode(), payload),
                ),
            )
            return cur.rowcount == 1

    async def reused_batches(self) -> list[tuple[int, str, bytes]]:
        """Batches store schema 1 kept in ``edge.malformed`` as ``seq_reused`` (a gateway
        numbering again), to be stored now: (id, topic, payload), oldest first."""
        conn = await self.connect()
        async with conn.transaction():
            rows = await (
                await conn.execute(
                    "SELECT id, topic, payload FROM edge.malformed WHERE code = 'seq_reused' "
                    "ORDER BY id"
                )
            ).fetchall()
        return [(r[0], r[1], bytes(r[2])) for r in rows]

    async def settle_reused(self, malformed_id: int, code: str | None, message: str) -> None:
        """The ``seq_reused`` row ``malformed_id`` after its batch was stored again: deleted
        (``code`` None: its readings are in the store), or given ``code`` and ``message``."""
        conn = await self.connect()
        async with conn.transaction():
            if code is None:
                await conn.execute("DELETE FROM edge.malformed WHERE id = %s", (malformed_id,))
            else:
                await conn.execute(
                    "UPDATE edge.malformed SET code = %s, message = %s WHERE id = %s",
                    (code, pg_text(message), malformed_id),
                )

    async def gaps(self) -> list[tuple[str, int, int]]:
        """Missing seq ranges (gateway, first, last), from ``edge.batch_gaps``."""
        conn = await self.connect()
        async with conn.transaction():
            rows = await (
                await conn.execute(
                    "SELECT gateway, first_missing, last_missing FROM edge.batch_gaps "
                    "ORDER BY gateway, first_missing"
                )
            ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]
