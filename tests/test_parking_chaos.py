"""The parking chaos harness, at CI length: fifty gateway kills (at random moments and at the
fail points between receive and commit, commit and acknowledgement, PUBACK and forgetting),
meter power cuts and broker stops, and every transaction reaches the ledger exactly once,
signed, to the đồng."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import mosquitto_binary

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.system, pytest.mark.slow]


def test_parking_chaos__fifty_kills_lose_duplicate_and_forge_nothing():
    if mosquitto_binary() is None:
        pytest.skip("needs Mosquitto (apt-get install -y mosquitto)")
    out = subprocess.run(
        [sys.executable, "bench/parking_chaos.py", "--cycles", "50", "--seed", "11"],
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
    assert got["cycles"] == 50
    assert got["transactions"] > 200, last
    assert got["lost"] == 0 and got["duplicated"] == 0, last
    assert got["bad_signatures"] == 0 and got["vnd_mismatch"] == 0, last
    kills = re.search(r"gateway kills: (\{.*?\})", out.stdout)
    assert kills is not None
    for point in ("random", "parking_received", "parking_committed", "tx_published"):
        assert f"'{point}':" in kills.group(1), kills.group(1)  # each way of dying happened
    assert "left unacknowledged at the meters 0" in out.stdout
