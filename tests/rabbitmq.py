"""A real three-node RabbitMQ cluster on loopback for the platform tests (``rabbit_cluster``).

Measured facts it follows are in shared/reference/platform-engines.md: each node has its own
name (``r1@localhost`` ...), AMQP, MQTT and Erlang distribution ports, data and log folders; the
three share one random Erlang cookie in a private ``HOME`` (mode 400). Erlang's port mapper
(epmd) is started here on a free port bound to 127.0.0.1 (``ERL_EPMD_PORT``,
``ERL_EPMD_ADDRESS``), so it never meets another epmd on the machine, and is stopped by its PID
at the end. Nodes find each other by ``classic_config`` peer discovery; node 1 starts first,
then 2 and 3 join it. Readiness is ``rabbitmqctl await_startup`` (polled: it fails until the
node has registered with epmd).

As root, the server script under ``/usr/lib/rabbitmq/bin`` is run directly (Debian's
``/usr/sbin`` wrapper switches to the rabbitmq user, who cannot read pytest's folders). Each
node runs in its own process group: :meth:`RabbitCluster.kill` SIGKILLs the whole group (the
Erlang VM and its helpers), as a crashed machine would.

The clients' user is :data:`USER` with a random password made per cluster (``add_user`` once
the nodes are up; users are cluster-wide): node URLs hold the user only
(``amqp://edge@127.0.0.1:PORT/``), as ``edge consume --amqp`` takes them, and the password
is given apart: :meth:`RabbitCluster.password_file` (``--amqp-password-file``),
:meth:`RabbitCluster.password_env` (``EDGE_AMQP_PASSWORD``), ``password=`` of the library, or
:meth:`RabbitCluster.client_url` for a test's own aio-pika client. The MQTT plugin still lets
gateways in anonymously (as its default user, guest).

A cluster takes about 25 s to start on a 2-core machine: one per test session.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from edge.uplink.broker import free_port

__all__ = ["USER", "RabbitCluster", "RabbitNode", "rabbitmq_bin"]

#: Where Debian's rabbitmq-server package keeps the scripts that run as the calling user.
DEBIAN_BIN = Path("/usr/lib/rabbitmq/bin")
INSTALL_HINT = "apt-get install rabbitmq-server (Debian; CI's .ci/run does)"
#: Seconds a node may take to boot (measured 8-25 s on a loaded 2-core machine).
START_TIMEOUT_S = 120.0
#: Seconds a clean stop may take before the node is killed.
STOP_TIMEOUT_S = 30.0
#: The AMQP user of the tests' clients (its password: RabbitCluster.password).
USER = "edge"


def rabbitmq_bin() -> Path | None:
    """The folder holding rabbitmq-server and rabbitmqctl, or None when RabbitMQ is missing."""
    if (DEBIAN_BIN / "rabbitmq-server").exists():
        return DEBIAN_BIN
    found = shutil.which("rabbitmq-server")
    return Path(found).parent if found else None


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


@dataclass
class RabbitNode:
    index: int  # 1, 2, 3
    name: str  # r1@localhost
    amqp_port: int
    mqtt_port: int
    dist_port: int
    base: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def amqp_url(self) -> str:
        """The node for ``edge consume --amqp``: the user, no password."""
        return f"amqp://{USER}@127.0.0.1:{self.amqp_port}/"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log_file(self) -> Path:
        return self.base / "log" / f"{self.name}.log"


class RabbitCluster:
    """Three RabbitMQ nodes on 127.0.0.1 (``node(1)`` … ``node(3)``), MQTT plugin enabled."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        bin_dir = rabbitmq_bin()
        assert bin_dir is not None, INSTALL_HINT
        self.bin = bin_dir
        self.dir = workdir
        self.home = workdir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20).upper())
        os.chmod(cookie, 0o400)
        self.epmd_port = free_port()
        # Characters a URL must escape, to show the password is carried whole.
        self.password = f"pw@:/%{secrets.token_urlsafe(12)}"
        self.epmd: subprocess.Popen[bytes] | None = None
        self.empty_env_file = workdir / "rabbitmq-env.conf"
        self.empty_env_file.write_text("")
        self.plugins_file = workdir / "enabled_plugins"
        self.plugins_file.write_text("[rabbitmq_mqtt].\n")
        self.nodes = [
            RabbitNode(i, f"r{i}@localhost", *(free_port() for _ in range(3)), workdir / f"r{i}")
            for i in range(1, size + 1)
        ]
        peers = "\n".join(
            f"cluster_formation.classic_config.nodes.{n.index} = {n.name}" for n in self.nodes
        )
        for n in self.nodes:
            (n.base / "log").mkdir(parents=True, exist_ok=True)
            (n.base / "rabbitmq.conf").write_text(
                f"listeners.tcp.default = 127.0.0.1:{n.amqp_port}\n"
                f"mqtt.listeners.tcp.default = 127.0.0.1:{n.mqtt_port}\n"
                "mqtt.allow_anonymous = true\n"
                "cluster_formation.peer_discovery_backend = classic_config\n"
                f"{peers}\n"
                "log.console = false\n"
                "log.file.level = info\n"
                # The tests' disks are small and shared: do not block publishers at 50 MB free.
                "disk_free_limit.absolute = 10MB\n"
            )

    # -- environment -------------------------------------------------------------------------

    def _env(self, node: RabbitNode | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        dist_iface = "-kernel inet_dist_use_interface {127,0,0,1}"
        env.update(
            # Marks every process of this cluster (.ci/run's exit trap kills what carries it).
            EDGE_TEST_RABBITMQ=str(self.dir),
            HOME=str(self.home),
            ERL_EPMD_ADDRESS="127.0.0.1",
            ERL_EPMD_PORT=str(self.epmd_port),
            RABBITMQ_CONF_ENV_FILE=str(self.empty_env_file),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.plugins_file),
            RABBITMQ_CTL_ERL_ARGS=dist_iface,
            # rabbitmqctl's own distribution port: any free one (its default 35672-35682 would
            # meet other clusters' tools on this machine).
            RABBITMQ_CTL_DIST_PORT_MIN="0",
            RABBITMQ_CTL_DIST_PORT_MAX="0",
        )
        if node is not None:
            env.update(
                RABBITMQ_NODENAME=node.name,
                RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
                RABBITMQ_NODE_PORT=str(node.amqp_port),
                RABBITMQ_DIST_PORT=str(node.dist_port),
                RABBITMQ_CONFIG_FILE=str(node.base / "rabbitmq.conf"),
                RABBITMQ_ADVANCED_CONFIG_FILE=str(node.base / "advanced.config"),
                RABBITMQ_MNESIA_BASE=str(node.base / "mnesia"),
                RABBITMQ_MNESIA_DIR=str(node.base / "mnesia" / node.name),
                RABBITMQ_PLUGINS_EXPAND_DIR=str(node.base / "plugins-expand"),
                RABBITMQ_LOG_BASE=str(node.base / "log"),
                RABBITMQ_PID_FILE=str(node.base / "pid"),
                RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=dist_iface,
            )
        return env

    def ctl(self, node: int, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl -n <node> ARGS`` (text output; never raises on a non-zero exit)."""
        n = self.node(node)
        return subprocess.run(
            [str(self.bin / "rabbitmqctl"), "-n", n.name, *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    # -- life cycle --------------------------------------------------------------------------

    def node(self, index: int) -> RabbitNode:
        return self.nodes[index - 1]

    def start_all(self) -> float:
        """Start every node: node 1, then the others together. Returns the seconds it took."""
        began = time.monotonic()
        self._start_epmd()
        self._spawn(self.nodes[0])
        self._await(self.nodes[0])
        for n in self.nodes[1:]:
            self._spawn(n)
        for n in self.nodes[1:]:
            self._await(n)
        self._await_members(len(self.nodes))
        self._add_user()
        return time.monotonic() - began

    def _add_user(self) -> None:
        for args in (
            ("add_user", USER, self.password),
            ("set_permissions", "-p", "/", USER, ".*", ".*", ".*"),
        ):
            r = self.ctl(1, *args)
            if r.returncode != 0 and "already exists" not in r.stdout + r.stderr:
                raise RuntimeError(f"rabbitmqctl {args[0]} {USER} failed: {r.stdout}{r.stderr}")

    def password_file(self, path: Path) -> Path:
        """Write the clients' password into ``path`` (mode 600, as ``--amqp-password-file``
        asks) and return it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.password + "\n")
        path.chmod(0o600)
        return path

    def password_env(self) -> dict[str, str]:
        """This process's environment with ``EDGE_AMQP_PASSWORD`` set to the password."""
        return {**os.environ, "EDGE_AMQP_PASSWORD": self.password}

    def client_url(self, index: int) -> str:
        """Node ``index``'s URL with the password in it, for a test's own aio-pika client only
        (never handed to ``edge``, which refuses it)."""
        from urllib.parse import quote

        return (
            f"amqp://{USER}:{quote(self.password, safe='')}@127.0.0.1:{self.node(index).amqp_port}/"
        )

    def start(self, index: int) -> None:
        """Start a stopped or killed node again; returns once it runs and is a member again."""
        n = self.node(index)
        if n.running:
            return
        self._spawn(n)
        self._await(n)
        self._await_members(sum(1 for x in self.nodes if x.running))

    def kill(self, index: int) -> None:
        """SIGKILL node ``index`` with its helpers (the Erlang VM's whole process group)."""
        n = self.node(index)
        if n.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(n.proc.pid, signal.SIGKILL)
        n.proc.wait(10)
        n.proc = None

    def stop(self, index: int) -> None:
        """A clean stop (SIGTERM: the server script runs ``rabbitmqctl stop``), else SIGKILL."""
        n = self.node(index)
        if n.proc is None:
            return
        if n.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(n.proc.pid, signal.SIGTERM)
            try:
                n.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the group (the VM's port programs): gone.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(n.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            n.proc.wait(10)
        n.proc = None

    def stop_all(self) -> None:
        """Stop every node and the epmd started for them (by PID; also any epmd that answers
        on this cluster's port, should one have been started by a node instead)."""
        for n in reversed(self.nodes):
            self.stop(n.index)
        if self.epmd is not None:
            with contextlib.suppress(ProcessLookupError):
                self.epmd.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.epmd.wait(10)
            self.epmd = None
        for pid in _listeners(self.epmd_port):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def leader(self, queue: str) -> int | None:
        """The node index leading quorum queue ``queue`` (None if unknown)."""
        out = self.ctl(
            next(n.index for n in self.nodes if n.running),
            "list_queues",
            "name",
            "leader",
            "--quiet",
            "--no-table-headers",
        )
        for line in out.stdout.splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[0] == queue:
                for n in self.nodes:
                    if fields[1] == n.name:
                        return n.index
        return None

    def _start_epmd(self) -> None:
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        self.epmd = subprocess.Popen(
            [epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            env=self._env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not _port_open(self.epmd_port):
            if self.epmd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"epmd did not start on 127.0.0.1:{self.epmd_port}")
            time.sleep(0.05)

    def _spawn(self, n: RabbitNode) -> None:
        out = open(n.base / "stdout.log", "ab")
        try:
            n.proc = subprocess.Popen(
                [str(self.bin / "rabbitmq-server")],
                env=self._env(n),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=n.base,
            )
        finally:
            out.close()

    def _await(self, n: RabbitNode) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if n.proc is None or n.proc.poll() is not None:
                raise RuntimeError(f"RabbitMQ node {n.name} exited while starting: {self._tail(n)}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"RabbitMQ node {n.name} did not start: {self._tail(n)}")
            done = self.ctl(n.index, "await_startup", "--timeout", str(int(max(5, left))))
            if done.returncode == 0 and _port_open(n.mqtt_port):
                return
            time.sleep(0.5)

    def _await_members(self, running: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        first = next(n for n in self.nodes if n.running)
        while True:
            out = self.ctl(first.index, "eval", "length(rabbit_nodes:all_running()).")
            if out.stdout.strip() == str(running):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster has not {running} running nodes: {out.stdout}")
            time.sleep(0.5)

    @staticmethod
    def _tail(n: RabbitNode) -> str:
        text = ""
        for f in (n.base / "stdout.log", n.log_file):
            with contextlib.suppress(OSError):
                text += f.read_text(errors="replace")[-1500:]
        return text or "(no log)"


def _listeners(port: int) -> list[int]:
    """PIDs of processes listening on TCP ``port`` (from /proc/net/tcp; Linux only)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f, None)
            for line in f:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    pids = []
    if not inodes:
        return pids
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{entry}/fd/{fd}")
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        pids.append(int(entry))
                        break
    return pids
