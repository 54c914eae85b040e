"""Real engines for the platform tests: a PostgreSQL server on a free loopback port.

The server is Debian's ``postgresql`` package (``/usr/lib/postgresql/<major>/bin``). A fresh
cluster is made with ``initdb`` in a temporary folder; as root the server runs as the
``postgres`` user the package creates (PostgreSQL refuses to run as root). It listens on
127.0.0.1 only, on a free port, with its socket in the same temporary folder, and trusts local
connections (a test machine's throwaway cluster: no password to leak).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["Postgres", "postgres_bindir"]


def postgres_bindir() -> Path | None:
    """The newest installed PostgreSQL server's bin folder, or None."""
    def major(path: str) -> int:
        name = Path(path).parent.parent.name
        return int(name) if name.isdigit() else 0

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=major)
    if found:
        return Path(found[-1]).parent
    which = shutil.which("postgres")
    return Path(which).parent if which else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """One PostgreSQL cluster: ``start()``, ``stop()``, ``new_database()``, ``dsn``.

    ``stop()`` and ``start()`` may be called during a test (a database that goes down and comes
    back); the data survive, the port stays the same.
    """

    def __init__(self, bindir: Path, root: Path | None = None) -> None:
        self.bindir = bindir
        self.root = Path(root or tempfile.mkdtemp(prefix="edge-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._demote: Callable[[], None] | None = None
        self._uid = None
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            self._uid = (pw.pw_uid, pw.pw_gid)

            def demote() -> None:
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)

            self._demote = demote
        self._databases = 0
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        if self._uid:
            os.chown(self.root, *self._uid)
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--locale=C.UTF-8", "--no-instructions",
        )
        conf = self.data / "postgresql.conf"
        with conf.open("a") as f:
            f.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\n"
                "max_connections = 200\nshared_buffers = 128MB\n"
                "log_min_messages = warning\nlogging_collector = off\n"
            )

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.bindir / tool), *args],
            preexec_fn=self._demote,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=check,
            cwd=self.root,
        )

    @property
    def dsn(self) -> str:
        """The ``postgres`` database (the maintenance one; tests use :meth:`new_database`)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def dsn_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        log = self.root / "server.log"
        if self._uid and log.exists():
            os.chown(log, *self._uid)
        self._run("pg_ctl", "-D", str(self.data), "-l", str(log), "-w", "-t", "60", "start")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = self._run(
                "pg_isready", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                check=False,
            )
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"PostgreSQL did not become ready: see {log}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``mode``: smart, fast or immediate, as pg_ctl takes them)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def running(self) -> bool:
        r = self._run("pg_ctl", "-D", str(self.data), "status", check=False)
        return r.returncode == 0

    def new_database(self) -> str:
        """Create an empty database and return its DSN."""
        import psycopg

        self._databases += 1
        name = f"t{os.getpid()}_{self._databases}"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn_for(name)

    def close(self) -> None:
        if self.running():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
