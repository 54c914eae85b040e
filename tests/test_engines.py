"""The engine fixtures themselves: a test that relies on them can trust what they give."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.system


def test_postgres_fixture__a_new_database_is_empty_and_survives_a_restart(postgres, pg_dsn):
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    postgres.stop()
    assert not postgres.running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_dsn, connect_timeout=2)
    postgres.start()
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT x FROM kept").fetchall() == [(42,)]
    other = postgres.new_database()
    assert other != pg_dsn
