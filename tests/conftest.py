"""Shared fixtures: a real Mosquitto on a free loopback port, a real PostgreSQL server (one per
session, a database per test), simulators, config writing."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from edge.uplink.broker import free_port
from tests.batch_decoders import ensure_js_decoder
from tests.engines import Postgres, postgres_bindir


@pytest.fixture(scope="session", autouse=True)
def _js_decoder_installed() -> None:
    """`npm ci` in protocols/js once when its node_modules is missing (a new clone), so the
    contract tests run the JavaScript decoder beside ours (tests/batch_decoders.py)."""
    ensure_js_decoder()


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


class Mosquitto:
    """A real Mosquitto broker on 127.0.0.1:<free port>, with persistence in a temp dir, so
    persistent sessions and their queued QoS 1 messages survive a stop/start."""

    def __init__(
        self,
        workdir: Path,
        *,
        password_file: Path | None = None,
        tls: object | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        binary = mosquitto_binary()
        assert binary
        self.binary = binary
        self.port = free_port()
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            # Started as root, mosquitto drops to user 'mosquitto', which cannot write pytest's
            # private temp dirs: persistence and the password file would silently not work.
            f"user {getpass.getuser()}",
            "persistence true",
            f"persistence_location {self.dir}/",
            "autosave_interval 1",
            "max_queued_messages 100000",
            f"log_dest file {self.dir}/mosquitto.log",
        ]
        if tls is not None:  # a tests.certs.Pki: TLS only, client certificates required
            lines += [
                f"cafile {tls.ca}",
                f"certfile {tls.server_cert}",
                f"keyfile {tls.server_key}",
                "require_certificate true",
            ]
        lines += extra
        if password_file is None:
            lines.append("allow_anonymous true")
        else:
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while not _port_open(self.port):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited: {err}")
            if time.monotonic() > deadline:
                raise RuntimeError("mosquitto did not start listening")
            time.sleep(0.05)

    def reload(self) -> None:
        """SIGHUP: Mosquitto reloads its configuration, the acl_file and password_file too."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: mosquitto saves its persistence file
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    if mosquitto_binary() is None:
        if os.environ.get("EDGE_REQUIRE_MOSQUITTO"):
            pytest.fail("EDGE_REQUIRE_MOSQUITTO is set but no mosquitto binary was found")
        pytest.skip("no mosquitto binary on this machine (apt-get install mosquitto; CI does)")
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    """One PostgreSQL server for the session (Debian's ``postgresql``; started in ~2 s)."""
    bindir = postgres_bindir()
    if bindir is None:
        if os.environ.get("EDGE_REQUIRE_POSTGRES"):
            pytest.fail("EDGE_REQUIRE_POSTGRES is set but no PostgreSQL server was found")
        pytest.skip("no PostgreSQL server on this machine (apt-get install postgresql; CI does)")
    server = Postgres(bindir)
    server.start()
    yield server
    server.close()


@pytest.fixture
def postgres(postgres_server: Postgres) -> Iterator[Postgres]:
    """The session's PostgreSQL server, running when the test starts (a test may stop it)."""
    if not postgres_server.running():
        postgres_server.start()
    yield postgres_server
    if not postgres_server.running():
        postgres_server.start()


@pytest.fixture
def pg_dsn(postgres: Postgres) -> str:
    """The DSN of a new, empty database on the session's server: tests never share tables."""
    return postgres.new_database()


@pytest.fixture
def mosquitto_with(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """Start Mosquittos with extra config lines, e.g. ``mosquitto_with("max_packet_size 1500")``
    or ``"message_size_limit 1500"``; each is stopped at the end of the test."""
    if mosquitto_binary() is None:
        if os.environ.get("EDGE_REQUIRE_MOSQUITTO"):
            pytest.fail("EDGE_REQUIRE_MOSQUITTO is set but no mosquitto binary was found")
        pytest.skip("no mosquitto binary on this machine (apt-get install mosquitto; CI does)")
    started: list[Mosquitto] = []

    def start(*extra: str) -> Mosquitto:
        broker = Mosquitto(tmp_path / f"mosquitto-{len(started)}", extra=extra)
        started.append(broker)
        broker.start()
        return broker

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture
async def sim_sdm630() -> AsyncIterator:
    """A simulated TCP-to-RTU bridge with two SDM630s (units 1 and 2)."""
    from simulators import serve_modbus_tcp, sim_unit

    units = [sim_unit("eastron_sdm630", 1, seed="a"), sim_unit("eastron_sdm630", 2, seed="b")]
    server = await serve_modbus_tcp(units)
    yield server
    await server.close()


SOME_POINTS = "[voltage_l1, voltage_l2, voltage_l3, frequency, total_power, import_energy]"


def gateway_yaml(
    *,
    buffer: Path,
    broker_port: int,
    sim_port: int,
    units: tuple[int, ...] = (1, 2),
    poll_interval_s: float = 0.5,
    extra_mqtt: str = "",
    gateway_id: str = "gw-test",
    timeout_ms: int = 200,
    points: str | None = SOME_POINTS,
) -> str:
    devices = "".join(
        f"""
  - id: meter-{u}
    profile: eastron_sdm630
    transport: {{type: modbus_tcp, host: 127.0.0.1, port: {sim_port}, unit: {u}}}
    poll_interval_s: {poll_interval_s}
    timeout_ms: {timeout_ms}
    retries: 0
"""
        + (f"    points: {points}\n" if points else "")
        for u in units
    )
    return f"""
gateway: {{id: {gateway_id}, site: test}}
buffer: {{path: {buffer}, commit_interval_ms: 100}}
mqtt:
  url: mqtt://127.0.0.1:{broker_port}
  batch_max_readings: 200
  batch_max_delay_ms: 300
  publish_timeout_s: 2
  reconnect_min_s: 0.2
  reconnect_max_s: 1
  keepalive_s: 5
{extra_mqtt}
devices:{devices}"""


async def wait_until(predicate, within_s: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s} s waiting for {what}")
        await asyncio.sleep(interval)


def password_broker(tmp_path: Path, user: str, password: str) -> Mosquitto:
    """A started Mosquitto that accepts only ``user`` / ``password`` (blocking: use a thread)."""
    pw = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(pw), user, password], check=True, capture_output=True
    )
    os.chmod(pw, 0o600)
    broker = Mosquitto(tmp_path / "mq", password_file=pw)
    broker.start()
    return broker


@pytest.fixture(scope="session")
def rabbit_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A three-node RabbitMQ cluster with the MQTT plugin (tests/rabbitmq.py), one per session:
    ``rabbit_cluster.node(i).amqp_url`` / ``.mqtt_url``, ``kill(i)``, ``start(i)``."""
    from tests.rabbitmq import INSTALL_HINT, RabbitCluster, rabbitmq_bin

    if rabbitmq_bin() is None:
        if os.environ.get("EDGE_REQUIRE_RABBITMQ"):
            pytest.fail(f"EDGE_REQUIRE_RABBITMQ is set but RabbitMQ is missing: {INSTALL_HINT}")
        pytest.skip(f"RabbitMQ is not installed on this machine ({INSTALL_HINT})")
    cluster = RabbitCluster(tmp_path_factory.mktemp("rabbitmq"))
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.stop_all()
