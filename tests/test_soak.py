"""The fault harness, shortened: kills, broker restarts, partitions, stalls, clock jumps, a full
buffer, a full disk, a broker with a small packet limit, devices serving NaN / inf and an RS-485
meter answering past its timeout, and nothing accepted is lost, duplicated, badly timed or put on
the wrong point."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import mosquitto_binary

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.system, pytest.mark.slow]


def test_soak__twenty_random_faults_lose_duplicate_and_corrupt_nothing():
    if mosquitto_binary() is None:
        pytest.skip("needs Mosquitto (apt-get install -y mosquitto)")
    out = subprocess.run(
        [sys.executable, "bench/soak.py", "--cycles", "20", "--seed", "11"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    got = dict(re.findall(r"(\w+)=(\d+)", last))
    assert last.startswith("RESULT"), out.stdout
    assert int(got["readings"]) > 1000, last
    print(out.stdout)
    assert got["lost"] == "0" and got["duplicated"] == "0" and got["bad_time"] == "0", last
    assert got["uncounted_loss"] == "0", last
    # The two 'full' cycles overflow the 1 MiB buffer: eviction is exercised, and every evicted
    # reading was counted by the gateway and told to the platform (uncounted_loss=0).
    assert int(got["evicted"]) > 0, last
    # Every delivered reading is the value the simulator served for that point at that time,
    # NaN, inf, -0.0 and subnormals included, bit for bit.
    assert got["wrong_value"] == "0", out.stdout[-3000:]
    assert int(got["checked"]) > 1000 and int(got["specials"]) > 0, last
