"""TLS to a real Mosquitto that requires client certificates."""

from __future__ import annotations

import asyncio
import logging

import pytest

from edge.config import ConfigError, parse_config
from edge.shared.tls import client_context
from tests.certs import make_pki
from tests.conftest import Mosquitto, gateway_yaml, mosquitto_binary, wait_until
from tests.test_system import Collector, start_gateway, stop

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(mosquitto_binary() is None, reason="no mosquitto binary"),
]


def tls_yaml(tmp_path, broker_port, sim_port, ca, cert, key) -> str:
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite",
        broker_port=broker_port,
        sim_port=sim_port,
        extra_mqtt=f"  tls: {{ca_file: {ca}, cert_file: {cert}, key_file: {key}}}\n",
    )
    return text.replace(f"mqtt://127.0.0.1:{broker_port}", f"mqtts://127.0.0.1:{broker_port}")


@pytest.fixture
def tls_broker(tmp_path):
    pki = make_pki(tmp_path / "pki")
    broker = Mosquitto(tmp_path / "mq", tls=pki)
    broker.start()
    yield broker, pki
    broker.stop()


async def test_tls__client_certificates_work_end_to_end(tls_broker, sim_sdm630, tmp_path):
    broker, pki = tls_broker
    text = tls_yaml(tmp_path, broker.port, sim_sdm630.port, pki.ca, pki.client_cert, pki.client_key)
    col = Collector(f"mqtts://127.0.0.1:{broker.port}")
    col.consumer.tls_context = client_context(pki.ca, pki.client_cert, pki.client_key)
    async with col:
        gateway, task = await start_gateway(tmp_path, text)
        # Delivered, and acknowledged back to the gateway (its buffer records the PUBACK).
        await wait_until(
            lambda: len(col.readings) >= 12 and gateway.forwarder.stats.batches_sent >= 1,
            20,
            what="readings over TLS",
        )
        await stop(task)
    assert gateway.forwarder.stats.births >= 1


async def test_tls__wrong_ca_fails_with_a_clear_error(tls_broker, sim_sdm630, tmp_path, caplog):
    broker, pki = tls_broker
    caplog.set_level(logging.ERROR, logger="edge.uplink.forwarder")
    text = tls_yaml(
        tmp_path, broker.port, sim_sdm630.port, pki.other_ca, pki.client_cert, pki.client_key
    )
    gateway, task = await start_gateway(tmp_path, text)
    await asyncio.sleep(3)
    await stop(task)
    errors = [r.getMessage() for r in caplog.records if r.name == "edge.uplink.forwarder"]
    assert len(errors) == 1, errors
    assert "did not verify against mqtt.tls.ca_file" in errors[0]
    assert gateway.forwarder.stats.batches_sent == 0
    assert gateway.writer_stats.accepted > 0  # polling went on into the buffer


async def test_tls__missing_client_certificate_is_explained(
    tls_broker, sim_sdm630, tmp_path, caplog
):
    broker, pki = tls_broker
    caplog.set_level(logging.ERROR, logger="edge.uplink.forwarder")
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite",
        broker_port=broker.port,
        sim_port=sim_sdm630.port,
        extra_mqtt=f"  tls: {{ca_file: {pki.ca}}}\n",
    )
    text = text.replace("mqtt://127.0.0.1", "mqtts://127.0.0.1")
    gateway, task = await start_gateway(tmp_path, text)
    await asyncio.sleep(3)
    await stop(task)
    errors = [r.getMessage() for r in caplog.records if r.name == "edge.uplink.forwarder"]
    assert len(errors) == 1, errors
    assert gateway.forwarder.stats.batches_sent == 0


def test_tls__config_refuses_tls_on_a_plain_url_and_missing_files(tmp_path):
    base = "gateway: {id: g}\nmqtt:\n  url: mqtt://h:1883\n  tls: {ca_file: nope.pem}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(base, "t.yaml", tmp_path)
    text = str(info.value)
    assert "t.yaml:4:8: mqtt.tls is set but mqtt.url is not mqtts://" in text
    assert "no such file 'nope.pem'" in text
