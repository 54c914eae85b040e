"""The platform chaos harness at CI length: gateways, a three-node RabbitMQ cluster, three
consumers and PostgreSQL as real processes; a broker node, a consumer and a gateway killed at
random moments every cycle; at the end PostgreSQL holds every reading the gateways accepted
exactly once, with the value the simulated devices served, and the parking reconciliation
equals the meters' journals to the đồng."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engines import postgres_bindir
from tests.rabbitmq import rabbitmq_bin

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.system, pytest.mark.slow]


def test_platform_chaos__node_consumer_and_gateway_kills_lose_and_duplicate_nothing():
    if postgres_bindir() is None or rabbitmq_bin() is None:
        if os.environ.get("EDGE_REQUIRE_RABBITMQ") or os.environ.get("EDGE_REQUIRE_POSTGRES"):
            pytest.fail("the platform chaos test needs PostgreSQL and RabbitMQ, required here")
        pytest.skip("needs PostgreSQL and RabbitMQ (apt-get install -y postgresql rabbitmq-server)")
    out = subprocess.run(
        [
            sys.executable,
            "bench/platform_chaos.py",
            "--cycles", "3",
            "--gateways", "2",
            "--consumers", "3",
            "--cycle-s", "10",
            "--seed", "20",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(out.stdout)
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT"), out.stdout
    got = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", last)}
    assert got["cycles"] == 3
    assert got["readings"] > 1000, last
    assert got["lost"] == 0 and got["duplicated"] == 0, last
    assert got["vnd_mismatch"] == 0 and got["transactions"] > 20, last
    assert got["tx_lost"] == 0 and got["tx_duplicated"] == 0, last
    assert got["wrong_value"] == 0 and got["checked"] > 1000, last
    kills = re.search(r"kills: (\{.*?\})", out.stdout)
    assert kills is not None
    for what in ("node", "consumer", "gateway"):
        assert f"'{what}': 3" in kills.group(1), kills.group(1)  # every kind, every cycle
