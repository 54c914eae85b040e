"""Secrets: given only in owner-only files, refused by ``edge check`` where ``edge run`` would
refuse them, and never printed, logged or served (edge/shared/secrets.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import aiomqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge.config import ConfigError, load_config, parse_config
from edge.shared.signing import Signer
from edge.shared.tls import client_context
from edge.uplink.broker import free_port
from tests.certs import make_pki
from tests.conftest import Mosquitto, gateway_yaml, mosquitto_binary, wait_until
from tests.test_system import start_gateway, stop

ROOT = Path(__file__).resolve().parent.parent
CANARY_PASSWORD = "Canary-pw-5d1e0f3b"
CANARY_TOKEN = "Canary-token-9a7c2e44"


def edge(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


# --------------------------------------------------------------------------- credentials in a URL


@pytest.mark.parametrize(
    "url",
    [
        f"mqtt://gw:{CANARY_PASSWORD}@127.0.0.1:1883",
        f"mqtts://gw:{CANARY_PASSWORD}@broker.example:8883",
        f"mqtt://{CANARY_PASSWORD}@127.0.0.1",  # a token given as the user
        f"mqtt://:{CANARY_PASSWORD}@127.0.0.1",
        f"mqtt://127.0.0.1:1883/?password={CANARY_PASSWORD}",
    ],
    ids=["user-password", "mqtts", "user-only", "password-only", "query"],
)
def test_check__credentials_in_the_broker_url_are_refused_at_its_line_never_shown(tmp_path, url):
    """Credentials in mqtt.url were silently not used, and the password printed by edge check,
    logged and served on /status.json. They are refused at the url's line, unrepeated: the
    URL is shown wherever the broker is named, and secrets live in owner-only files."""
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"gateway: {{id: gw}}\nbuffer: {{path: b.sqlite}}\nmqtt:\n  url: '{url}'\n")
    res = edge("check", str(cfg))
    assert res.returncode == 2, res.stdout
    assert res.stderr.startswith(f"{cfg}:4:8: mqtt.url: broker url "), res.stderr
    assert "mqtt.password_file" in res.stderr or "query" in res.stderr
    assert CANARY_PASSWORD not in res.stdout + res.stderr
    assert "Traceback" not in res.stderr


def test_consume__credentials_in_the_broker_url_are_refused_never_shown():
    """The consumer takes no password; one in --broker was silently dropped, and the URL
    echoed whole in the error for a bad scheme."""
    for url in (f"mqtt://ops:{CANARY_PASSWORD}@127.0.0.1:1", f"ftp://ops:{CANARY_PASSWORD}@x"):
        res = edge("consume", "--broker", url, "--duration", "1")
        assert res.returncode == 2, res
        assert res.stderr.startswith("edge consume: the broker url carries credentials")
        assert CANARY_PASSWORD not in res.stdout + res.stderr


def test_config__a_password_is_never_in_a_repr_or_an_error(tmp_path):
    base = "gateway: {id: gw}\nmqtt:\n  username: gw\n"
    loaded = parse_config(base + f"  password: '{CANARY_PASSWORD}'\n", "gw.yaml", tmp_path)
    assert loaded.mqtt_password() == CANARY_PASSWORD  # the inline password is still used
    assert CANARY_PASSWORD not in repr(loaded) + str(loaded) + repr(loaded.config.mqtt)
    for wrong in (f"[{CANARY_PASSWORD}]", f"{{x: {CANARY_PASSWORD}}}", "5550123", "''"):
        with pytest.raises(ConfigError) as exc:
            parse_config(base + f"  password: {wrong}\n", "gw.yaml", tmp_path)
        [(_src, line, _col, msg)] = exc.value.problems
        assert line == 4 and msg.startswith("mqtt.password: "), msg
        assert CANARY_PASSWORD not in msg and "5550123" not in msg


# --------------------------------------------------------------------------- secret files


SECRETS_YAML = """\
gateway: {id: gw-s, site: test}
buffer: {path: b.sqlite}
mqtt:
  url: mqtts://127.0.0.1:8883
  username: gw-s
  password_file: secrets/mqtt-password
  tls: {ca_file: pki/ca.pem, cert_file: pki/client.pem, key_file: pki/client.key}
status:
  listen: 0.0.0.0:18080
  token_file: secrets/status-token
parking:
  key_file: secrets/gw.key
  buses:
    - id: lane-1
      transport: {type: tcp, host: 127.0.0.1, port: 7700}
      meters: [{id: HK-01, address: 1}]
"""


def _other_pem_key(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


BREAK = {
    # case: (how to break it, the line it is reported at, what the message says)
    "password-file-missing": (
        lambda d: (d / "secrets/mqtt-password").unlink(), 6, "does not exist"),
    "password-file-group-readable": (
        lambda d: (d / "secrets/mqtt-password").chmod(0o640), 6, "chmod 600"),
    "password-file-world-readable": (
        lambda d: (d / "secrets/mqtt-password").chmod(0o644), 6, "chmod 600"),
    "password-file-empty": (lambda d: secret(d / "secrets/mqtt-password", ""), 6, "is empty"),
    "token-file-empty": (lambda d: secret(d / "secrets/status-token", ""), 10, "is empty"),
    "token-file-white-space": (
        lambda d: secret(d / "secrets/status-token", " \t\n\n"), 10, "is empty (white space"),
    "token-file-readable-by-others": (
        lambda d: (d / "secrets/status-token").chmod(0o604), 10, "chmod 600"),
    "ca-file-not-pem": (
        lambda d: (d / "pki/ca.pem").write_text("just some text\n"), 7, "not a PEM file"),
    "ca-file-damaged-pem": (
        lambda d: (d / "pki/ca.pem").write_text(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
        7, "cannot be loaded as CA certificates"),
    "tls-key-readable-by-others": (lambda d: (d / "pki/client.key").chmod(0o644), 7, "chmod 600"),
    "tls-key-of-another-certificate": (
        lambda d: _other_pem_key(d / "pki/client.key"), 7, "does not belong"),
    "tls-cert-not-pem": (
        lambda d: (d / "pki/client.pem").write_text("x\n"), 7, "not a PEM certificate"),
    "signing-key-readable-by-others": (
        lambda d: (d / "secrets/gw.key").chmod(0o644), 12, "chmod 600"),
    "signing-key-not-pem": (
        lambda d: secret(d / "secrets/gw.key", "not a key\n"), 12, "not an unencrypted PEM"),
    "signing-key-not-ed25519": (
        lambda d: _other_pem_key(d / "secrets/gw.key"), 12, "not an Ed25519 key"),
}  # fmt: skip


@pytest.fixture
def secrets_dir(tmp_path) -> Path:
    """A config whose every secret is right: the password and token files, TLS, the key."""
    pki = make_pki(tmp_path / "pki")
    assert pki.ca.name == "ca.pem" and pki.client_key.name == "client.key"
    secret(tmp_path / "secrets/mqtt-password", "right password\n")
    secret(tmp_path / "secrets/status-token", "right token\n")
    Signer.load_or_create(tmp_path / "secrets/gw.key")
    (tmp_path / "gw.yaml").write_text(SECRETS_YAML)
    load_config(tmp_path / "gw.yaml")  # valid as written
    return tmp_path


@pytest.mark.parametrize("case", sorted(BREAK))
def test_check__a_secret_file_run_would_refuse_is_refused_at_its_line(secrets_dir, case):
    """Each of these passed edge check, then crashed edge run or was silently taken (an empty
    token turned the page's authentication off)."""
    breaks, line, says = BREAK[case]
    breaks(secrets_dir)
    cfg = secrets_dir / "gw.yaml"
    with pytest.raises(ConfigError) as exc:
        load_config(cfg)
    [(source, at, _col, msg)] = exc.value.problems
    assert (source, at) == (str(cfg), line), exc.value
    assert says in msg, msg
    # The cabinet's files are not this machine's business with --config-only.
    load_config(cfg, check_storage=False)


def test_check_and_run__a_password_file_readable_by_others_exits_2_at_its_line(secrets_dir):
    (secrets_dir / "secrets/mqtt-password").chmod(0o644)
    cfg = secrets_dir / "gw.yaml"
    for command in (["check", str(cfg)], ["run", "-c", str(cfg)]):
        res = edge(*command)
        assert res.returncode == 2, res
        assert f"{cfg}:6:18: mqtt.password_file " in res.stderr, res.stderr
        assert "chmod 600" in res.stderr and "Traceback" not in res.stderr
        assert "right password" not in res.stdout + res.stderr


@pytest.mark.system
async def test_status_page__an_empty_token_file_never_opens_the_page(
    mosquitto, sim_sdm630, tmp_path, caplog
):
    """The token emptied after edge check: edge run never compares against an empty secret
    (the original served every request with 200), it runs without the page and says why."""
    secret(tmp_path / "token", "\n")
    port = free_port()
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite", broker_port=mosquitto.port, sim_port=sim_sdm630.port
    ).replace("devices:", f"status: {{listen: '0.0.0.0:{port}', token_file: token}}\ndevices:")
    caplog.set_level(logging.ERROR, logger="edge.agent.gateway")
    gateway, task = await start_gateway(tmp_path, text)
    try:
        await wait_until(lambda: gateway.forwarder.stats.batches_sent >= 1, 15, what="a batch")
        for path in ("/status.json", "/metrics", "/?token=", "/"):
            with pytest.raises(urllib.error.URLError):  # nothing listens: no page
                await asyncio.to_thread(
                    urllib.request.urlopen, f"http://127.0.0.1:{port}{path}", timeout=5
                )
        assert gateway.status_page is None
        [error] = [r.getMessage() for r in caplog.records if r.name == "edge.agent.gateway"]
        assert "status.token_file" in error and "is empty" in error, error
    finally:
        await stop(task)


# --------------------------------------------------------------------------- the canary


def _pem_body(path: Path) -> list[str]:
    """The base64 lines of a PEM file (what a leaked key would show)."""
    return [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("-----")]


def _http(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, str(r.headers) + r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, str(e.headers) + e.read().decode()


@pytest.mark.slow
@pytest.mark.system
@pytest.mark.skipif(mosquitto_binary() is None, reason="no mosquitto binary")
async def test_gateway__canary_secrets_never_appear_in_any_output(sim_sdm630, tmp_path):
    """A canary password and token, set in every place a secret can be given (the password
    file and inline, the broker URL, the status token, the TLS key, the signing key), never
    appear in edge check / run / doctor output, the log, the status page, /status.json,
    /metrics, the birth or any other message, a repr, or the report of a run that fails."""
    from simulators.parking_meter import Journal, Meter, MeterServer

    pki = make_pki(tmp_path / "pki")
    passwd = tmp_path / "passwd"
    for i, (user, pw) in enumerate((("gw-test", CANARY_PASSWORD), ("watcher", "watcher-pw"))):
        await asyncio.to_thread(
            subprocess.run,
            ["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(passwd), user, pw],
            check=True,
            capture_output=True,
        )
    passwd.chmod(0o600)
    broker = Mosquitto(tmp_path / "mq", password_file=passwd, tls=pki)
    broker.start()
    meters = {1: Meter("HK-01", Journal(tmp_path / "m1.sqlite"), speed=7200, seed=1)}
    meter_server = await MeterServer(meters).start(business_interval_s=0.2)
    page = free_port()
    secret(tmp_path / "secrets/mqtt-password", CANARY_PASSWORD + "\n")
    secret(tmp_path / "secrets/status-token", CANARY_TOKEN + "\n")
    body = gateway_yaml(
        buffer=tmp_path / "b.sqlite",
        broker_port=broker.port,
        sim_port=sim_sdm630.port,
        extra_mqtt=(
            "  username: gw-test\n  password_file: secrets/mqtt-password\n"
            f"  tls: {{ca_file: {pki.ca}, cert_file: {pki.client_cert}, "
            f"key_file: {pki.client_key}}}\n"
        ),
    ).replace("mqtt://", "mqtts://")
    body = body.replace(
        "devices:",
        f"status: {{listen: '127.0.0.1:{page}', token_file: secrets/status-token}}\n"
        "commands: {meters: [enable]}\n"
        f"parking:\n  key_file: secrets/gw.key\n  buses:\n    - id: lane-1\n"
        f"      transport: {{type: tcp, host: 127.0.0.1, port: {meter_server.port}}}\n"
        "      poll_interval_s: 0.1\n      meters: [{id: HK-01, address: 1}]\n"
        "devices:",
    )
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(body)
    out: dict[str, str | bytes] = {}  # every output, by where it came from

    async def run_tool(name: str, *args: str, code: int | None = 0) -> str:
        res = await asyncio.to_thread(edge, *args)  # the simulators here go on answering
        out[f"{name} stdout"], out[f"{name} stderr"] = res.stdout, res.stderr
        assert code is None or res.returncode == code, (name, res)
        return res.stdout + res.stderr

    assert "valid" in await run_tool("check", "check", str(cfg))
    out["repr"] = repr(load_config(cfg))

    messages: list[tuple[str, bytes]] = []
    watcher_tls = client_context(pki.ca, pki.client_cert, pki.client_key)
    stdout, stderr = tmp_path / "run.out", tmp_path / "run.err"
    with stdout.open("wb") as o, stderr.open("wb") as e:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge", "--log-level", "debug", "run", "-c", str(cfg),
            cwd=ROOT, stdout=o, stderr=e, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
    try:
        async with aiomqtt.Client(
            "127.0.0.1", broker.port, username="watcher", password="watcher-pw",
            tls_context=watcher_tls,
        ) as watcher:  # fmt: skip
            await watcher.subscribe("#", qos=1)

            async def listen() -> None:
                async for msg in watcher.messages:
                    messages.append((str(msg.topic), bytes(msg.payload)))

            listener = asyncio.create_task(listen())
            topics = lambda: {t.rsplit("/", 1)[-1] for t, _ in messages}  # noqa: E731
            await wait_until(
                lambda: {"birth", "data", "tx"} <= topics(), 60, what="birth, data and tx"
            )
            cmd = "city/v1/test/gw-test/cmd"
            await watcher.publish(cmd, b'{"id": "c1", "cmd": "ping"}', qos=1)
            await watcher.publish(cmd, b'{"id": "c2", "cmd": "no-such-command"}', qos=1)
            await wait_until(
                lambda: sum(t.endswith("/cmd/res") for t, _ in messages) >= 2, 15, what="replies"
            )
            base = f"http://127.0.0.1:{page}"
            bearer = {"Authorization": f"Bearer {CANARY_TOKEN}"}
            for path in ("/", "/status.json", "/metrics"):
                status, text = await asyncio.to_thread(_http, base + path, bearer)
                assert status == 200, (path, text)
                out[f"GET {path}"] = text
                status, text = await asyncio.to_thread(_http, base + path)
                assert status == 401
                out[f"GET {path} without the token"] = text
            status, text = await asyncio.to_thread(
                _http, f"{base}/status.json?token={CANARY_TOKEN}"
            )
            assert status == 200 and '"gateway": "gw-test"' in text and "mqtts://" in text
            out["GET /status.json?token="] = text
            status, text = await asyncio.to_thread(_http, f"{base}/metrics?token=wrong")
            assert status == 401
            out["GET /metrics with a wrong token"] = text
            assert "edge_polls_total" in out["GET /metrics"]
            await run_tool("doctor", "doctor", "--config", str(cfg), code=None)
            assert "accepts this gateway over TLS as gw-test" in out["doctor stdout"]
            listener.cancel()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        await meter_server.close()
    out["run stdout"], out["run stderr"] = stdout.read_text(), stderr.read_text()
    assert "status page on" in out["run stderr"] and "(token required)" in out["run stderr"]
    for topic, payload in messages:
        out[f"message on {topic}"] = payload

    # The other places a secret can be given, and runs that fail: the inline password (doctor
    # connects with it), the URL, a wrongly typed password, a password file that went
    # world-readable after the check (edge run's refusal is its crash report).
    inline = body.replace("password_file: secrets/mqtt-password", f"password: '{CANARY_PASSWORD}'")
    (tmp_path / "inline.yaml").write_text(inline)
    await run_tool("doctor inline", "doctor", "--config", str(tmp_path / "inline.yaml"), code=None)
    assert "accepts this gateway over TLS as gw-test" in out["doctor inline stdout"]
    out["repr inline"] = repr(load_config(tmp_path / "inline.yaml"))
    for name, text in (
        ("url", body.replace("mqtts://", f"mqtts://gw-test:{CANARY_PASSWORD}@")),
        ("typed", inline.replace(f"'{CANARY_PASSWORD}'", f"[{CANARY_PASSWORD}]")),
    ):
        (tmp_path / f"{name}.yaml").write_text(text)
        await run_tool(f"check {name}", "check", str(tmp_path / f"{name}.yaml"), code=2)
        await run_tool(f"run {name}", "run", "-c", str(tmp_path / f"{name}.yaml"), code=2)
        await run_tool(
            f"doctor {name}", "doctor", "--config", str(tmp_path / f"{name}.yaml"), code=1
        )
    (tmp_path / "secrets/mqtt-password").chmod(0o644)
    await run_tool("run refused", "run", "-c", str(cfg), code=2)
    assert "chmod 600" in out["run refused stderr"]
    broker.stop()

    canaries = [CANARY_PASSWORD, CANARY_TOKEN]
    canaries += _pem_body(tmp_path / "secrets/gw.key") + _pem_body(pki.client_key)
    assert len(out) > 30
    for where, text in out.items():
        raw = text if isinstance(text, bytes) else text.encode()
        for canary in canaries:
            assert canary.encode() not in raw, f"a secret in {where}"
