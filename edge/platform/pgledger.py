"""One parking ledger for every consumer, in PostgreSQL (docs/meter-link-v1.md §5,
docs/platform-store.md "Parking ledger").

:class:`PgLedger` keeps the rules of :class:`~edge.platform.ledger.TxLedger` (the same code,
:class:`~edge.platform.ledger.LedgerRules`), with the same methods, outcomes and
:class:`~edge.platform.ledger.Reconciliation`, so a consumer takes either. Any number of
consumers on any number of machines add to one ledger:

* The database enforces what must never happen twice: an entry is unique by (meter, seq)
  (primary key), a counted payment or receipt by transaction id (primary key, referring to the
  entry it comes from), a held copy by its bytes.
* Every write (a ``tx`` message's entries, a birth's key and the entries it releases, an
  operator's trust) is one transaction that first takes advisory transaction locks: its
  gateway's, then its meters' and its transaction ids'. Writes that touch the same gateway,
  meter or transaction are applied one after another, the others side by side: an entry and
  the birth that announces its key, handled by two consumers at the same moment, cannot miss
  each other (the entry is either checked with the key, or held and then released by the
  birth), and two copies of one seq or of one transaction id are judged one after the other.
* The end state depends on the copies received, not on who saw which first (see
  :class:`~edge.platform.ledger.LedgerRules`).

Every method commits before it returns. The tables live in schema ``edge`` with the prefix
``ledger_``; the component ``ledger`` in ``edge.schema_version`` says which version of them the
database holds, migrated under an advisory lock by whichever consumer starts first.

psycopg 3 is needed (the ``platform`` extra); this module is loaded only by the consumer and
``edge reconcile --store``, never by the gateway.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import date
from typing import Any, ClassVar

import psycopg

from edge.platform.ledger import EntryOutcome, LedgerRules, local_day
from edge.shared.secrets import dsn_where

__all__ = [
    "SCHEMA_VERSION",
    "LedgerSchemaError",
    "LedgerUnavailable",
    "PgLedger",
]

#: The version of the ledger tables this code writes (``edge.schema_version``, component
#: ``ledger``).
SCHEMA_VERSION = 1

#: Advisory lock key of the ledger's migrations ("edge-ldm" as a big-endian integer).
MIGRATE_LOCK = int.from_bytes(b"edge-ldm", "big")
#: How often a write rolled back by a deadlock or a serialization failure is run again.
_RETRIES = 8


def _lock_key(kind: str, name: str) -> int:
    """The advisory lock (a signed 64-bit key) of a gateway, meter or transaction id."""
    digest = hashlib.blake2b(f"edge-ledger/{kind}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


_STEPS: list[list[str]] = [
    # version 1
    [
        """CREATE TABLE edge.ledger_keys (
            gateway text NOT NULL, public bytea NOT NULL CHECK (length(public) = 32),
            trusted boolean NOT NULL, first_ms bigint NOT NULL,
            PRIMARY KEY (gateway, public))""",
        """CREATE TABLE edge.ledger_entries (
            meter text NOT NULL, seq bigint NOT NULL CHECK (seq >= 0), gateway text NOT NULL,
            site text NOT NULL, type smallint NOT NULL, payload bytea NOT NULL,
            sig bytea NOT NULL, received_ms bigint NOT NULL, tx text,
            PRIMARY KEY (meter, seq))""",
        "CREATE INDEX ledger_entries_tx ON edge.ledger_entries (tx) WHERE tx IS NOT NULL",
        """CREATE TABLE edge.ledger_payments (
            transaction_id text PRIMARY KEY, meter text NOT NULL, seq bigint NOT NULL,
            session_id text NOT NULL, amount_vnd bigint NOT NULL CHECK (amount_vnd >= 0),
            method smallint NOT NULL, collected_ms bigint NOT NULL, day date NOT NULL,
            FOREIGN KEY (meter, seq) REFERENCES edge.ledger_entries (meter, seq)
                DEFERRABLE INITIALLY DEFERRED)""",
        "CREATE INDEX ledger_payments_meter_day ON edge.ledger_payments (meter, day)",
        """CREATE TABLE edge.ledger_receipts (
            transaction_id text PRIMARY KEY, meter text NOT NULL, seq bigint NOT NULL,
            number bigint NOT NULL, amount_vnd bigint NOT NULL CHECK (amount_vnd >= 0),
            vat_vnd bigint NOT NULL, lookup_code text NOT NULL,
            FOREIGN KEY (meter, seq) REFERENCES edge.ledger_entries (meter, seq)
                DEFERRABLE INITIALLY DEFERRED)""",
        """CREATE TABLE edge.ledger_held (
            id bigserial PRIMARY KEY,
            reason text NOT NULL
                CHECK (reason IN ('no_key', 'bad_signature', 'untrusted_key', 'conflict')),
            gateway text NOT NULL, site text NOT NULL, meter text NOT NULL, seq bigint NOT NULL,
            type smallint NOT NULL, payload bytea NOT NULL, sig bytea NOT NULL,
            received_ms bigint NOT NULL, at_ms bigint NOT NULL,
            UNIQUE (gateway, meter, seq, type, payload, sig))""",
        "CREATE INDEX ledger_held_meter_seq ON edge.ledger_held (meter, seq)",
        """CREATE TABLE edge.ledger_anomalies (
            id bigserial PRIMARY KEY, kind text NOT NULL, gateway text NOT NULL, meter text,
            seq bigint, detail text NOT NULL, at_ms bigint NOT NULL)""",
        """CREATE TABLE edge.ledger_counters (
            name text NOT NULL, shard text NOT NULL, value bigint NOT NULL,
            PRIMARY KEY (name, shard))""",
    ],
]
assert len(_STEPS) == SCHEMA_VERSION


class LedgerUnavailable(Exception):
    """The database cannot be reached or went away; the message names host:port (never a
    password). Retry later: nothing was committed by the call that raised it."""


class LedgerSchemaError(Exception):
    """The database holds ledger tables newer than this code knows: upgrade edge."""


def _reason(exc: BaseException) -> str:
    """libpq's reason, one line: 'Connection refused', 'database "x" does not exist', ..."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.rsplit("failed: ", 1)[-1].strip()


class PgLedger(LedgerRules):
    """The parking ledger in PostgreSQL at ``dsn`` (``postgresql://USER@HOST:PORT/DATABASE``;
    the password from PGPASSWORD or ~/.pgpass). Creates or migrates its tables on open.

    Raises :class:`LedgerUnavailable` when the database cannot be reached (at open, or when a
    call finds the connection lost: the next call connects again), :class:`LedgerSchemaError`
    when the database's ledger is newer than this code. ``pinned``: gateway -> the only
    Ed25519 public key (32 bytes) trusted for it.
    """

    TABLES: ClassVar[dict[str, str]] = {
        name: f"edge.ledger_{name}"
        for name in ("keys", "entries", "payments", "receipts", "held", "anomalies", "counters")
    }

    def __init__(
        self,
        dsn: str,
        *,
        pinned: dict[str, bytes] | None = None,
        connect_timeout_s: float = 10,
    ) -> None:
        self.dsn = dsn
        self.pinned = dict(pinned or {})
        self.connect_timeout_s = connect_timeout_s
        self._sql: dict[str, str] = {}
        self._db: psycopg.Connection[Any] | None = None
        self._in_tx = False  # inside a transaction: never connect anew halfway
        self._connect()
        self._migrate()

    # ------------------------------------------------------------------ connection

    def _connect(self) -> psycopg.Connection[Any]:
        if self._db is not None and not self._db.closed and not self._db.broken:
            return self._db
        try:
            self._db = psycopg.connect(
                self.dsn, autocommit=True, connect_timeout=max(1, round(self.connect_timeout_s))
            )
        except psycopg.OperationalError as exc:
            raise LedgerUnavailable(
                f"cannot reach PostgreSQL at {dsn_where(self.dsn)}: {_reason(exc)}"
            ) from None
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def _version(self, db: psycopg.Connection[Any]) -> int:
        """The ledger's schema version in the database (0: none yet)."""
        exists = db.execute("SELECT to_regclass('edge.schema_version') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return 0
        row = db.execute(
            "SELECT version FROM edge.schema_version WHERE component = 'ledger'"
        ).fetchone()
        have = int(row[0]) if row else 0
        if have > SCHEMA_VERSION:
            raise LedgerSchemaError(
                f"the ledger in {dsn_where(self.dsn)} is schema version {have}, newer than "
                f"this edge knows ({SCHEMA_VERSION}): upgrade edge"
            )
        return have

    def _migrate(self) -> None:
        """Bring the ledger tables to :data:`SCHEMA_VERSION`, under an advisory lock so that
        consumers starting together migrate once. A ledger already up to date is only read (a
        role that may only read can reconcile). The readings store may create schema ``edge``
        at the same moment: a lost race to create it is tried again."""
        with self._guard():
            if self._version(self._connect()) == SCHEMA_VERSION:
                return
        for attempt in range(5):
            try:
                with self._guard(), self._db_tx(MIGRATE_LOCK) as db:
                    db.execute("CREATE SCHEMA IF NOT EXISTS edge")
                    db.execute(
                        "CREATE TABLE IF NOT EXISTS edge.schema_version "
                        "(component text PRIMARY KEY, version int NOT NULL)"
                    )
                    have = self._version(db)
                    for steps in _STEPS[have:]:
                        for sql in steps:
                            db.execute(sql)
                    db.execute(
                        "INSERT INTO edge.schema_version (component, version) VALUES "
                        "('ledger', %s) ON CONFLICT (component) DO UPDATE SET version = "
                        "excluded.version",
                        (SCHEMA_VERSION,),
                    )
                return
            except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateObject):
                if attempt == 4:
                    raise LedgerSchemaError(
                        f"cannot create the ledger tables in {dsn_where(self.dsn)}: another "
                        "program keeps creating schema edge at the same moment"
                    ) from None
            except psycopg.errors.InsufficientPrivilege as exc:
                raise LedgerSchemaError(
                    f"cannot create the ledger tables in {dsn_where(self.dsn)}: {_reason(exc)} "
                    "(run a consumer once with a role that may create them)"
                ) from None

    @contextmanager
    def _db_tx(self, lock: int) -> Iterator[psycopg.Connection[Any]]:
        db = self._connect()
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
            yield db

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """A lost connection becomes :class:`LedgerUnavailable` (the transaction was rolled
        back: nothing of the call is kept)."""
        try:
            yield
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
            raise  # rolled back; _write runs it again
        except psycopg.errors.ProgramLimitExceeded:
            raise  # a value beyond the database's limits (54xxx): the data, not an outage
        except psycopg.OperationalError as exc:
            state = getattr(exc, "sqlstate", None) or ""
            what = "is out of resources" if state.startswith("53") else "was lost"
            raise LedgerUnavailable(
                f"PostgreSQL at {dsn_where(self.dsn)} {what}: {_reason(exc)}"
            ) from None

    # ------------------------------------------------------------------ LedgerRules

    def _x(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        text = self._sql.get(sql)
        if text is None:
            text = self._sql[sql] = sql.format(**self.TABLES).replace("?", "%s")
        with self._guard():
            db = self._db if self._in_tx and self._db is not None else self._connect()
            return db.execute(text, params)

    def _write(
        self,
        work: Callable[[], list[EntryOutcome]],
        gateway: str,
        meters: Iterable[str] = (),
        txs: Iterable[str] = (),
    ) -> list[EntryOutcome]:
        """One transaction holding the gateway's lock, then the meters' and transaction ids'
        in a fixed order (no two writers wait on each other in a circle). A lock found only on
        the way (a withdrawn entry's transaction) can still meet another writer's: PostgreSQL
        then rolls one back, and it is run again."""
        first = _lock_key("gateway", gateway)
        rest = sorted(
            {_lock_key("meter", m) for m in meters} | {_lock_key("transaction", t) for t in txs}
        )
        reconnected = False
        for attempt in range(_RETRIES):
            try:
                with self._guard(), self._inside() as db:
                    db.execute("SELECT pg_advisory_xact_lock(%s)", (first,))
                    self._hold_locks(rest)
                    return work()
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                time.sleep(random.uniform(0.005, 0.05) * (attempt + 1))
            except LedgerUnavailable:
                # A connection found dead (the server restarted, an idle connection cut): its
                # transaction was rolled back, so it is run once more on a new one. Were it the
                # COMMIT's answer that was lost, the rules take the work again as a re-delivery.
                if reconnected or self._db is None or not self._db.broken:
                    raise
                reconnected = True
        raise LedgerUnavailable(
            f"PostgreSQL at {dsn_where(self.dsn)}: the write met other writers' locks "
            f"{_RETRIES} times in a row; nothing of it is kept"
        )

    @contextmanager
    def _inside(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction on the connection (opened anew if it was lost before it began)."""
        db = self._connect()
        self._in_tx = True
        try:
            with db.transaction():
                yield db
        finally:
            self._in_tx = False

    def _lock(self, meters: Iterable[str] = (), txs: Iterable[str] = ()) -> None:
        self._hold_locks(
            sorted(
                {_lock_key("meter", m) for m in meters} | {_lock_key("transaction", t) for t in txs}
            )
        )

    def _hold_locks(self, keys: list[int]) -> None:
        if keys:
            self._x("SELECT pg_advisory_xact_lock(k) FROM unnest(?::bigint[]) AS u(k)", (keys,))

    def _count(self, name: str, shard: str, n: int = 1) -> None:
        self._x(
            "INSERT INTO {counters} AS c (name, shard, value) VALUES (?, ?, ?) "
            "ON CONFLICT (name, shard) DO UPDATE SET value = c.value + excluded.value",
            (name, shard, n),
        )

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        with self._guard(), self._inside() as db:
            db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield

    def _read(self) -> AbstractContextManager[None]:
        return self._snapshot()

    def _day(self, ms: int) -> Any:
        return date.fromisoformat(local_day(ms))
