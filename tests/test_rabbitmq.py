"""The clustered broker for real: gateways publish MQTT to a three-node RabbitMQ 3.10 cluster
(tests/rabbitmq.py), consumers read the quorum queue over AMQP (edge/platform/amqp.py).

What is promised (shared/reference/platform-engines.md): a QoS 1 message the broker PUBACKed
was stored by a majority, so it reaches a consumer at least once whichever node dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiomqtt
import pytest

from edge.cli import main
from edge.config import ConfigError, parse_config
from edge.platform.amqp import (
    UNROUTABLE,
    AmqpSource,
    bindings,
    declare_topology,
    routing_key_to_topic,
    topic_to_routing_key,
)
from edge.uplink.broker import free_port
from edge.uplink.client import UplinkClient
from protocols.batch import decode_batch
from tests.conftest import gateway_yaml, wait_until

ROOT = Path(__file__).resolve().parent.parent
POLICY = ("set_policy", "--apply-to", "exchanges", "edge-unroutable", r"^amq\.topic$")
POLICY_DEF = '{"alternate-exchange":"edge.unroutable"}'


# -- without a broker ----------------------------------------------------------------------------


def test_routing_key_to_topic__ids_with_dots_and_birth_parts_come_back_as_published():
    cases = [
        ("city/v1/hk/cab-1/data", "city/v1/hk/cab-1/data"),
        ("city/v1/hk/gw.a/data", "city/v1/hk/gw.a/data"),  # 3.10 keeps the '.'
        ("city/v1/hk/gw/birth/3", "city/v1/hk/gw/birth/3"),
        ("city/v1/hk/gw/birth", "city/v1/hk/gw/birth"),
        ("city/v1/hk/gw.b.c/tx", "city/v1/hk/gw.b.c/tx"),
        ("a/b/c/hk/gw/status", "a/b/c/hk/gw/status"),
    ]
    for topic, back in cases:
        prefix = "a/b/c" if topic.startswith("a/") else "city/v1"
        assert routing_key_to_topic(topic_to_routing_key(topic), prefix) == back
    assert topic_to_routing_key("city/v1/hk/gw.a/data") == "city.v1.hk.gw.a.data"
    # A plugin that swaps '.' and '/' (later RabbitMQ) is undone exactly.
    assert routing_key_to_topic("city.v1.hk.gw/a.data", "city/v1") == "city/v1/hk/gw.a/data"
    assert bindings("city/v1/") == [
        "city.v1.#.data",
        "city.v1.#.birth",
        "city.v1.#.birth.*",
        "city.v1.#.tx",
        "city.v1.#.status",
    ]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["broker-setup"], "--amqp"),
        (["broker-setup", "--amqp", "http://ops:s3cret-pw@mq:5672/"], "amqp://"),
        (["broker-setup", "--amqp", "amqp://ops:s3cret-pw@mq:99999/"], "not an AMQP URL"),
        (["broker-setup", "--amqp", "amqp://ops@/"], "no host"),
        (["broker-setup", "--amqp", "amqp://mq/", "--topic-prefix", "city/#"], "topic prefix"),
        (["consume", "--amqp", "amqp://ops@mq/"], "--store"),
        (["consume", "--broker", "mqtt://mq", "--amqp-password-file", "pw"], "is for --amqp"),
    ],
)
def test_broker_setup__bad_arguments_exit_2_in_one_line_without_the_password(argv, says, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own exit (our parser class makes it one line)
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert says in err
    assert "s3cret-pw" not in err
    assert "Traceback" not in err


def test_broker_setup__no_node_answers_exit_1_naming_each_without_the_password(capsys, monkeypatch):
    monkeypatch.setenv("EDGE_AMQP_PASSWORD", "s3cret-pw")
    dead = [f"amqp://ops@127.0.0.1:{free_port()}/" for _ in range(2)]
    code = main(["broker-setup", "--amqp", dead[0], "--amqp", dead[1]])
    out, err = capsys.readouterr()
    assert code == 1
    assert "s3cret-pw" not in out + err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 3, err  # one per node, then the verdict
    assert all("connection refused" in line for line in lines[:2])


CANARY = "Canary-amqp-pw-7f3e"


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    """``edge ARGV`` in this process: exit code and everything it printed."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own exit (our parser class makes it one line)
        code = exc.code
    out, err = capsys.readouterr()
    return code, out + err


@pytest.mark.parametrize(
    "url",
    [
        f"amqp://edge:{CANARY}@mq:5672/",
        f"amqps://edge:{CANARY}@mq.city.example/",
        f"amqp://:{CANARY}@mq/",
        f"amqp://mq:5672/?password={CANARY}",
    ],
    ids=["user-password", "amqps", "password-only", "query"],
)
@pytest.mark.parametrize("command", ["broker-setup", "consume"])
def test_amqp_url__a_password_is_refused_at_its_argument_never_echoed(command, url, capsys):
    """``--amqp amqp://USER:PASSWORD@…`` was taken, the password then in process lists and
    shell history; it is refused at the argument (exit 2, one line) with where it goes."""
    store = (
        ["--store", "postgresql://edge@127.0.0.1:1/city", "--duration", "5"]
        if command == "consume"
        else []
    )
    code, said = _cli([command, "--amqp", url, *store], capsys)
    assert code == 2
    assert said.startswith(f"edge {command}: --amqp "), said
    assert len(said.strip().splitlines()) == 1, said
    assert "carries a password" in said and "--amqp-password-file" in said, said
    assert "EDGE_AMQP_PASSWORD" in said, said
    assert CANARY not in said
    # The user alone is fine: the same command gets past the URL.
    assert "carries a password" not in _cli([command, "--amqp", "amqp://edge@mq/x"], capsys)[1]


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


BAD_PASSWORD_FILES = {
    "group-readable": (lambda d: _write(d / "pw", CANARY.encode(), 0o640), "chmod 600"),
    "world-readable": (lambda d: _write(d / "pw", CANARY.encode(), 0o644), "chmod 600"),
    "missing": (lambda d: d / "pw", "does not exist"),
    "a-folder": (lambda d: (d / "pw").mkdir(mode=0o700) or d / "pw", "is not a file"),
    "empty": (lambda d: _write(d / "pw", b"\n"), "is empty"),
    "two-lines": (lambda d: _write(d / "pw", f"{CANARY}\n{CANARY}\n".encode()), "more than one"),
    "not-utf8": (lambda d: _write(d / "pw", b"\xff" + CANARY.encode()), "not UTF-8"),
    "too-large": (lambda d: _write(d / "pw", CANARY.encode() * 400), "more than a secret"),
}


@pytest.mark.parametrize("case", list(BAD_PASSWORD_FILES))
@pytest.mark.parametrize("command", ["broker-setup", "consume"])
def test_amqp_password_file__a_bad_file_exits_2_naming_it_never_its_content(
    command, case, tmp_path, capsys, monkeypatch
):
    """--amqp-password-file is held to every secret file's rules (edge/shared/secrets.py),
    checked before any connection; the message names the file, never what is in it."""
    monkeypatch.setenv("EDGE_AMQP_PASSWORD", "from-the-environment")  # the file wins: no escape
    make, says = BAD_PASSWORD_FILES[case]
    path = make(tmp_path)
    store = (
        ["--store", "postgresql://edge@127.0.0.1:1/city", "--duration", "5"]
        if command == "consume"
        else []
    )
    url = f"amqp://edge@127.0.0.1:{free_port()}/"
    code, said = _cli([command, "--amqp", url, *store, "--amqp-password-file", str(path)], capsys)
    assert code == 2, said
    assert said.startswith(f"edge {command}: --amqp-password-file {path} "), said
    assert says in said, said
    assert len(said.strip().splitlines()) == 1, said
    assert CANARY not in said and "from-the-environment" not in said


@pytest.mark.parametrize(
    ("value", "says"),
    [("", "is empty"), (" \n", "is empty"), (f"{CANARY}\nx", "holds more than one line")],
)
def test_amqp_password_env__empty_or_several_lines_exits_2_never_shown(
    value, says, capsys, monkeypatch
):
    monkeypatch.setenv("EDGE_AMQP_PASSWORD", value)
    url = f"amqp://edge@127.0.0.1:{free_port()}/"
    code, said = _cli(["broker-setup", "--amqp", url], capsys)
    assert code == 2, said
    assert said.startswith(f"edge broker-setup: EDGE_AMQP_PASSWORD {says}"), said
    assert len(said.strip().splitlines()) == 1 and CANARY not in said, said


def _config(tmp_path: Path, mqtt: str) -> str:
    return f"""
gateway: {{id: gw-1}}
buffer: {{path: {tmp_path / "b.sqlite"}}}
mqtt:
{mqtt}
devices: []
"""


def test_failover_urls__credentials_or_another_scheme_refused_at_their_line(tmp_path):
    text = _config(
        tmp_path,
        """  url: mqtts://mq1.city.example
  failover_urls:
    - mqtts://mq2.city.example:8883
    - mqtts://ops:s3cret-pw@mq3.city.example
    - mqtt://mq4.city.example
    - mqtts://mq5.city.example:0
""",
    )
    with pytest.raises(ConfigError) as err:
        parse_config(text, "gw.yaml", tmp_path)
    msg = str(err.value)
    assert "s3cret-pw" not in msg
    assert "gw.yaml:8:" in msg and "credentials" in msg
    assert "gw.yaml:9:" in msg and "mqtt://mq4.city.example is mqtt://" in msg
    assert "gw.yaml:10:" in msg and "port" in msg
    assert "gw.yaml:7:" not in msg


def test_failover_urls__the_gateway_sees_every_node_in_order(tmp_path):
    text = _config(
        tmp_path,
        "  url: mqtt://mq1:1884\n  failover_urls: [mqtt://mq2, 'mqtt://mq3:1999']\n",
    )
    from edge.config import runtime_view
    from edge.settings import LoadedConfig

    loaded = parse_config(text, "gw.yaml", tmp_path)
    assert isinstance(loaded, LoadedConfig)
    plain = runtime_view(loaded).config.mqtt
    assert plain.urls == ["mqtt://mq1:1884", "mqtt://mq2", "mqtt://mq3:1999"]
    assert [plain.endpoint(u) for u in plain.urls] == [("mq1", 1884), ("mq2", 1883), ("mq3", 1999)]


# -- with the cluster ----------------------------------------------------------------------------


def _mqtt_port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def _unroutable(amqp_url: str) -> int:
    """Messages in edge.unroutable; ``amqp_url`` with its password (RabbitCluster.client_url)."""
    import aio_pika

    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(UNROUTABLE, passive=True)
        return queue.declaration_result.message_count
    finally:
        await connection.close()


class Received:
    """What an AmqpSource handed over: (topic, payload) in order."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []

    async def __call__(self, topic: str, payload: bytes) -> None:
        self.items.append((topic, payload))


@contextlib.asynccontextmanager
async def consuming(source: AmqpSource):
    task = asyncio.create_task(source.run())
    try:
        await wait_until(lambda: source.stats.connections > 0, 30, what="the consumer to connect")
        yield source
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _publisher(url: str, client_id: str) -> UplinkClient:
    client = UplinkClient(
        "127.0.0.1",
        _mqtt_port(url),
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V311,
        clean_session=True,
        timeout=10,
    )
    await client.__aenter__()
    return client


def _status_json(port: int) -> dict:
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=10) as r:
        return json.loads(r.read())


async def _ensure_all_running(cluster) -> None:
    for n in cluster.nodes:
        if not n.running:
            await asyncio.to_thread(cluster.start, n.index)


async def _edge(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``python -m edge ARGS`` as its own process: exit code, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    raw_out, raw_err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, raw_out.decode(), raw_err.decode()


@pytest.mark.system
async def test_broker_setup__the_password_by_file_or_environment_is_used_never_printed(
    rabbit_cluster, tmp_path
):
    """The password comes apart from the URL, from --amqp-password-file or EDGE_AMQP_PASSWORD,
    for every node (a cluster shares its users); the file wins when both are given."""
    c = rabbit_cluster
    await _ensure_all_running(c)
    nodes = ["--amqp", c.node(2).amqp_url, "--amqp", c.node(3).amqp_url]
    prefix = ["--topic-prefix", "te/v1"]
    right = str(c.password_file(tmp_path / "right"))
    wrong_env = {**os.environ, "EDGE_AMQP_PASSWORD": "not-" + c.password[:8]}
    runs = {
        "file": await _edge("broker-setup", *nodes, *prefix, "--amqp-password-file", right),
        "environment": await _edge("broker-setup", *nodes, *prefix, env=c.password_env()),
        "file over environment": await _edge(
            "broker-setup", *nodes, *prefix, "--amqp-password-file", right, env=wrong_env
        ),
    }
    for how, (code, out, err) in runs.items():
        # 1 = declared, but the alternate exchange's policy is not set (this test does not)
        assert code in (0, 1), (how, err)
        assert "quorum queue edge.platform: declared" in out, (how, out, err)
        assert f"broker {c.node(2).amqp_url}: topology" in out, (how, out)
        assert c.password not in out + err, how
        assert "Traceback" not in err, (how, err)


@pytest.mark.system
async def test_broker_setup__a_wrong_or_missing_password_exits_1_in_one_line_naming_node_and_user(
    rabbit_cluster, tmp_path
):
    """The broker's refusal was a line per node then 'no node answered'; it is one line naming
    HOST:PORT and the user and where the password came from (never the password itself)."""
    c = rabbit_cluster
    await _ensure_all_running(c)
    node = c.node(1)
    wrong = _write(tmp_path / "wrong", f"{CANARY}\n".encode())
    env = {k: v for k, v in os.environ.items() if k != "EDGE_AMQP_PASSWORD"}
    cases = {
        "file": (["--amqp-password-file", str(wrong)], env, str(wrong)),
        "environment": ([], {**env, "EDGE_AMQP_PASSWORD": CANARY}, "in EDGE_AMQP_PASSWORD"),
        "none": ([], env, "with no password (ACCESS_REFUSED): give it in --amqp-password-file"),
    }
    for how, (extra, environ, says) in cases.items():
        code, out, err = await _edge(
            "broker-setup",
            "--amqp",
            node.amqp_url,
            "--amqp",
            c.node(2).amqp_url,
            *extra,
            env=environ,
        )
        assert code == 1, (how, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and out == "", (how, out, err)
        assert lines[0].startswith(
            f"edge broker-setup: 127.0.0.1:{node.amqp_port} refused user edge"
        ), (how, err)
        assert says in lines[0], (how, err)
        assert CANARY not in err and c.password not in err, (how, err)


@pytest.mark.system
async def test_consume_amqp__a_wrong_password_exits_1_in_one_line_without_it(
    rabbit_cluster, pg_dsn, tmp_path
):
    c = rabbit_cluster
    await _ensure_all_running(c)
    env = {**os.environ, "EDGE_AMQP_PASSWORD": CANARY}
    code, out, err = await _edge(
        "consume",
        "--amqp",
        c.node(3).amqp_url,
        "--amqp",
        c.node(1).amqp_url,
        "--store",
        pg_dsn,
        "--duration",
        "30",
        env=env,
    )
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(
        f"edge consume: 127.0.0.1:{c.node(3).amqp_port} refused user edge with the password "
        "given (ACCESS_REFUSED): check the user and the password in EDGE_AMQP_PASSWORD"
    ), err
    assert CANARY not in out + err


@pytest.mark.system
async def test_rabbitmq__qos1_over_mqtt_reaches_the_amqp_consumer_and_unroutable_is_counted(
    rabbit_cluster, tmp_path
):
    c = rabbit_cluster
    await _ensure_all_running(c)
    assert c.ctl(1, *POLICY, POLICY_DEF).returncode == 0
    urls = [n.amqp_url for n in c.nodes]
    code, out, err = await _edge(
        "broker-setup",
        "--amqp",
        urls[1],
        "--topic-prefix",
        "ta/v1",
        "--amqp-password-file",
        str(c.password_file(tmp_path / "amqp-password")),
    )
    assert code == 0, err
    assert c.password not in out + err
    assert "quorum queue edge.platform: declared" in out
    assert "binding amq.topic -> edge.platform: ta.v1.#.data" in out
    assert "alternate exchange of amq.topic: edge.unroutable (policy in place)" in out
    before = await _unroutable(c.client_url(1))

    sent = {
        "ta/v1/hk/cab-1/data": b"batch-1",
        "ta/v1/hk/cab-1/birth": b"birth",
        "ta/v1/hk/cab-1/birth/2": b"birth part 2",
        "ta/v1/hk/gw.dotted/tx": b"entries",
        "ta/v1/hk/cab-1/status": b'{"state":"online"}',
    }
    publisher = await _publisher(c.node(1).mqtt_url, "ta-pub")
    try:
        for topic, payload in sent.items():
            assert await publisher.publish_acked(topic, payload, timeout_s=10) == 0
        # No binding for these: PUBACKed anyway (3.1.1 cannot refuse), caught and counted.
        await publisher.publish_acked("ta/v1/hk/cab-1/unknown", b"x", timeout_s=10)
        await publisher.publish_acked("elsewhere/hk/cab-1/data", b"y", timeout_s=10)
    finally:
        await publisher.__aexit__(None, None, None)

    got = Received()
    source = AmqpSource(
        urls[::-1], handler=got, prefetch=10, topic_prefix="ta/v1", password=c.password
    )
    async with consuming(source):
        await wait_until(lambda: len(got.items) >= len(sent), 30, what="the messages")
        await asyncio.sleep(0.5)  # nothing more comes
    assert sorted(got.items) == sorted(sent.items())
    assert source.stats.acked == len(sent)
    assert await _unroutable(c.client_url(3)) == before + 2
    assert source.stats.unroutable is not None and source.stats.unroutable >= before + 2


@pytest.mark.system
@pytest.mark.slow
async def test_rabbitmq__leader_killed_mid_stream_every_pubacked_message_arrives(rabbit_cluster):
    c = rabbit_cluster
    await _ensure_all_running(c)
    queue, prefix = "t-leader", "tb/v1"
    urls = [n.amqp_url for n in c.nodes]
    await declare_topology(urls[0], prefix, queue=queue, password=c.password)
    leader = await asyncio.to_thread(c.leader, queue)
    assert leader is not None
    others = [n.index for n in c.nodes if n.index != leader]
    # The consumer starts on the leader, so it must move; the publisher on another node.
    got = Received()
    order = [c.node(leader).amqp_url] + [c.node(i).amqp_url for i in others]
    source = AmqpSource(
        order, queue=queue, handler=got, prefetch=50, topic_prefix=prefix, password=c.password
    )
    total, kill_at = 900, 250
    acked: set[int] = set()
    attempts = 0
    async with consuming(source):
        assert source.stats.node.endswith(f":{c.node(leader).amqp_port}/")
        publisher_node = others[0]
        client = await _publisher(c.node(publisher_node).mqtt_url, "tb-pub")
        n = 0
        try:
            while n < total:
                if n == kill_at and leader is not None:
                    c.kill(leader)
                    killed, leader = leader, None
                attempts += 1
                try:
                    await client.publish_acked(
                        f"{prefix}/hk/gw/data", str(n).encode(), timeout_s=15
                    )
                except aiomqtt.MqttError:
                    # No PUBACK: not promised; send it again (a duplicate if it was stored).
                    with contextlib.suppress(Exception):
                        await client.__aexit__(None, None, None)
                    client = await _publisher(c.node(publisher_node).mqtt_url, "tb-pub")
                    continue
                acked.add(n)
                n += 1
        finally:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)
        seen = lambda: {int(p) for _, p in got.items}  # noqa: E731
        await wait_until(lambda: acked <= seen(), 60, what="every PUBACKed message")
        duplicates = len(got.items) - len(seen())
    print(
        f"leader r{killed} killed after {kill_at} of {total}: {attempts} publishes, "
        f"{len(got.items)} deliveries, {duplicates} duplicates, "
        f"{source.stats.connections} consumer connections, {source.stats.redelivered} redelivered"
    )
    assert source.stats.connections >= 2  # it moved off the killed node
    assert not source.stats.node.endswith(f":{c.node(killed).amqp_port}/")
    await asyncio.to_thread(c.start, killed)


@pytest.mark.system
@pytest.mark.slow
async def test_rabbitmq__gateway_fails_over_when_its_node_dies_and_loses_no_batch(
    rabbit_cluster, sim_sdm630, tmp_path
):
    c = rabbit_cluster
    await _ensure_all_running(c)
    queue, prefix = "t-gateway", "tc/v1"
    urls = [n.amqp_url for n in c.nodes]
    await declare_topology(urls[1], prefix, queue=queue, password=c.password)
    buffer = tmp_path / "b.sqlite"
    status_port = free_port()
    extra = (
        f"  topic_prefix: {prefix}\n"
        f"  failover_urls: [{c.node(2).mqtt_url}, {c.node(3).mqtt_url}]\n"
        f"status: {{listen: '127.0.0.1:{status_port}'}}\n"
    )
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        gateway_yaml(
            buffer=buffer,
            broker_port=c.node(1).mqtt_port,
            sim_port=sim_sdm630.port,
            poll_interval_s=0.2,
            extra_mqtt=extra,
        )
    )
    seqs: list[int] = []

    async def handle(topic: str, payload: bytes) -> None:
        if topic.endswith("/data"):
            seqs.append(decode_batch(payload).header.seq)

    source = AmqpSource(
        urls[1:], queue=queue, handler=handle, topic_prefix=prefix, password=c.password
    )
    async with consuming(source):
        proc = subprocess.Popen(  # noqa: ASYNC220 (started once; waited for in a thread)
            [sys.executable, "-m", "edge", "run", "--config", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        failed = None
        try:
            await wait_until(lambda: len(set(seqs)) >= 10, 30, what="batches via node 1")
            c.kill(1)
            killed_at = max(seqs)
            began = time.monotonic()
            await wait_until(
                lambda: max(seqs) >= killed_at + 10, 60, what="batches after node 1 died"
            )
            failover_s = time.monotonic() - began
            status = await asyncio.to_thread(_status_json, status_port)
            assert status["uplink"]["broker"] in (c.node(2).mqtt_url, c.node(3).mqtt_url)
        except AssertionError as exc:
            failed = exc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
            stderr = proc.stderr.read().decode()
            proc.stderr.close()
        if failed is not None:
            raise AssertionError(f"{failed}; the gateway said:\n{stderr[-4000:]}")
        # What the gateway holds as acknowledged: every number below next_seq not in the outbox.
        db = sqlite3.connect(buffer)
        next_seq = db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0]
        unacked = {decode_batch(p).header.seq for (p,) in db.execute("SELECT payload FROM outbox")}
        db.close()
        acked = set(range(1, int(next_seq))) - unacked
        await wait_until(lambda: acked <= set(seqs), 30, what="every acknowledged batch")
    assert "Traceback" not in stderr, stderr
    assert "uplink to" in stderr and "restored" in stderr, stderr
    print(
        f"gateway failover: {failover_s:.1f} s to 10 more batches; {len(acked)} batches "
        f"acknowledged, {len(seqs) - len(set(seqs))} duplicates"
    )
    await asyncio.to_thread(c.start, 1)


@pytest.mark.system
async def test_consume_amqp__real_gateway_through_the_cluster_into_postgresql_named_once(
    rabbit_cluster, sim_sdm630, pg_dsn, tmp_path
):
    """``edge consume --amqp … --store …`` (a process) stores what a gateway publishes to
    another node: every reading once, named through the birth that came the same way."""
    from tests.test_pgstore import count
    from tests.test_system import start_gateway, stop

    c = rabbit_cluster
    await _ensure_all_running(c)
    prefix = "td/v1"
    # before the gateway publishes
    await declare_topology(c.node(1).amqp_url, prefix, password=c.password)
    consume = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge",
        "consume",
        "--amqp",
        c.node(2).amqp_url,
        "--amqp",
        c.node(3).amqp_url,
        "--store",
        pg_dsn,
        "--prefix",
        prefix,
        "--amqp-password-file",
        str(c.password_file(tmp_path / "amqp-password")),
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        text = gateway_yaml(
            buffer=tmp_path / "b.sqlite",
            broker_port=c.node(1).mqtt_port,
            sim_port=sim_sdm630.port,
            poll_interval_s=0.2,
            extra_mqtt=f"  topic_prefix: {prefix}\nstatus: {{listen: '127.0.0.1:{free_port()}'}}\n",
        )
        gateway, gw_task = await start_gateway(tmp_path, text)
        await asyncio.sleep(3)
        gateway.stop_polling()

        def drained() -> bool:
            s = gateway.buffer.sync.stats()
            return gateway.queue.empty() and s.pending_readings == 0 and s.outbox_batches == 0

        await wait_until(drained, 30, what="the gateway to drain")
        accepted = gateway.writer_stats.accepted
        await stop(gw_task)
        await wait_until(
            lambda: count(pg_dsn, "SELECT count(*) FROM edge.readings") >= accepted,
            30,
            what="the store to catch up",
        )
    finally:
        if consume.returncode is None:
            consume.send_signal(signal.SIGTERM)
        _, raw_err = await asyncio.wait_for(consume.communicate(), 30)
    err = raw_err.decode()
    assert consume.returncode == 0, err
    assert "Traceback" not in err and c.password not in err, err
    assert "amqp: " in err and " messages acknowledged" in err, err
    assert count(pg_dsn, "SELECT count(*) FROM edge.readings") == accepted
    assert count(pg_dsn, "SELECT count(*) FROM edge.unnamed_series") == 0
    assert count(pg_dsn, "SELECT count(*) FROM edge.readings_named WHERE device = 'meter-2'") > 0


@pytest.mark.system
async def test_doctor__each_failover_node_checked_a_dead_one_fails_by_its_url(
    mosquitto, sim_sdm630, tmp_path
):
    from tests.test_doctor import doctor, fails

    dead = f"mqtt://127.0.0.1:{free_port()}"
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite",
        broker_port=mosquitto.port,
        sim_port=sim_sdm630.port,
        extra_mqtt=f"  failover_urls: [{mosquitto.url}, {dead}]\n",
    )
    code, out = await doctor(tmp_path, text)
    assert code != 0, out
    assert out.count(f"PASS  broker {mosquitto.url} accepts this gateway") == 2, out
    assert [line for line in fails(out) if "broker" in line] == [
        next(line for line in fails(out) if line.startswith(f"FAIL  broker {dead}:"))
    ], out


@pytest.mark.system
def test_amqp_connect__a_refused_login_leaves_nothing_to_close_after_the_loop(rabbit_cluster):
    """A login the node refuses: the half-made connection is closed inside the event loop. Left
    to aio-pika's __del__, the collector closed it outside the loop and printed "coroutine
    'Connection.close' was never awaited" under `edge consume`'s one-line refusal."""
    import gc
    import warnings

    from edge.platform.amqp import AmqpAuthError, _connect

    url = rabbit_cluster.node(1).amqp_url
    refused: list[BaseException] = []

    async def go() -> None:
        try:
            await _connect(url, "not-the-password")
        except AmqpAuthError as exc:
            refused.append(exc)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # as asyncio.run does in the main thread
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            loop.run_until_complete(go())
            assert refused
            # The last reference, collected between two steps of asyncio.run's clean-up (the
            # loop set but not running, not yet closed), as the collector may do it.
            refused.clear()
            gc.collect()
            loop.close()  # a task scheduled by __del__ now is destroyed, never run
            gc.collect()
    finally:
        asyncio.set_event_loop(None)
        if not loop.is_closed():
            loop.close()
    texts = [str(w.message) for w in seen]
    assert not [t for t in texts if "never awaited" in t], texts
