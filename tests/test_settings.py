"""The config as the running gateway holds it: plain records (edge/settings.py), validated in a
child process so pydantic never enters ``edge run``'s memory (issue 16, footprint)."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from edge import settings
from edge.config import load_config, parse_config, runtime_view

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "configs").glob("*.yaml"))


def pairs(model: object, plain: object, where: str = "config"):
    """Every (model value, plain value) of the two trees, with where it is."""
    if isinstance(model, BaseModel):
        record = next(c for c in type(model).__mro__ if c.__module__ == "edge.settings")
        assert type(plain) is record, where
        assert set(vars(plain)) == set(type(model).model_fields), where
        for name in type(model).model_fields:
            yield from pairs(getattr(model, name), getattr(plain, name), f"{where}.{name}")
    elif isinstance(model, list):
        assert isinstance(plain, list) and len(plain) == len(model), where
        for i, (m, p) in enumerate(zip(model, plain, strict=True)):
            yield from pairs(m, p, f"{where}[{i}]")
    else:
        yield where, model, plain


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_runtime_view__every_example_keeps_every_field_value_and_derived_name(path):
    loaded = load_config(path, check_storage=False)
    plain = pickle.loads(pickle.dumps(runtime_view(loaded)))
    seen = 0
    for where, model_value, plain_value in pairs(loaded.config, plain.config):
        assert type(plain_value) is type(model_value) and plain_value == model_value, where
        seen += 1
    assert seen > 40
    assert plain.plans == loaded.plans and plain.base_dir == loaded.base_dir
    assert plain.config.mqtt.port == loaded.config.mqtt.port
    assert plain.config.status.port == loaded.config.status.port
    for dev, model_dev in zip(plain.config.devices, loaded.config.devices, strict=True):
        assert dev.transport.line == model_dev.transport.line
        assert dev.transport.describe() == model_dev.transport.describe()
        assert isinstance(model_dev.transport, type(dev.transport))  # a model is its record too
    for bus, model_bus in zip(plain.config.parking.buses, loaded.config.parking.buses, strict=True):
        assert bus.transport.where == model_bus.transport.where


def test_runtime_view__records_are_read_only_and_their_repr_hides_the_password():
    text = (
        "gateway: {id: gw}\n"
        "mqtt: {url: 'mqtt://127.0.0.1:1883', username: u, password: canary-Zq83}\n"
    )
    plain = runtime_view(parse_config(text, "t.yaml", check_storage=False)).config
    assert "canary-Zq83" not in repr(plain)
    assert "password=***," in repr(plain.mqtt)
    assert plain.mqtt.password == "canary-Zq83"  # the gateway still reads it
    with pytest.raises(AttributeError, match="read-only"):
        plain.mqtt.url = "mqtt://elsewhere"
    with pytest.raises(AttributeError, match="read-only"):
        del plain.gateway.id
    assert isinstance(plain.mqtt, settings.MqttConfig) and not isinstance(plain.mqtt, BaseModel)


def cabinet(tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "cabinet.yaml"
    cfg.write_text(
        f"gateway: {{id: gw, site: s}}\nbuffer: {{path: {tmp_path / 'b.sqlite'}}}\n"
        "devices:\n  - {id: m, profile: eastron_sdm630, "
        "transport: {type: modbus_tcp, host: 127.0.0.1, port: 5020, unit: 1}}\n" + extra
    )
    return cfg


def test_run__the_gateway_is_built_from_plain_records_without_loading_the_validator(tmp_path):
    """``edge run`` validates in a forked child and gets plain records back: the gateway's own
    process never imports pydantic, the YAML parser or edge.config (about 13 MB of RSS)."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from edge.cli import _load_plain\n"
        "from edge.agent.gateway import Gateway\n"
        "loaded = _load_plain(Path(sys.argv[1]))\n"
        "Gateway(loaded)\n"
        "assert type(loaded.config.devices[0].transport).__module__ == 'edge.settings'\n"
        "heavy = [m for m in ('pydantic', 'pydantic_core', 'yaml', 'edge.config',\n"
        "         'importlib.metadata') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print(loaded.config.devices[0].transport.describe())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(cabinet(tmp_path))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "127.0.0.1:5020 unit 1"


def test_run__refuses_a_bad_config_with_the_same_lines_as_check(tmp_path):
    bad = cabinet(tmp_path, "status: {listne: '127.0.0.1:8080'}\nmqtt: {keepalive_s: 1}\n")
    run = subprocess.run(
        [sys.executable, "-m", "edge", "run", "--config", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    check = subprocess.run(
        [sys.executable, "-m", "edge", "check", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == check.returncode == 2
    assert run.stderr == check.stderr and f"{bad}:5:10: unknown key 'listne'" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.system
def test_run__a_user_profile_reaches_the_gateway_without_the_validator_or_yaml(tmp_path):
    """A user profile file is read, extended and overridden in the checking child; the gateway
    gets the device's profile in its records and still imports neither pydantic, the YAML parser
    nor the profile reader (edge.profiles)."""
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "clone.yaml").write_text(
        "name: sdm630_clone\nextends: eastron_sdm630\nsource: a clone's data sheet\n"
        "remove_points: [voltage_thd_l1]\n"
    )
    cfg = (
        cabinet(tmp_path)
        .read_text()
        .replace("profile: eastron_sdm630,", "profile: sdm630_clone, byte_order: CDAB,")
    )
    (tmp_path / "cabinet.yaml").write_text(cfg)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from edge.cli import _load_plain\n"
        "from edge.agent.gateway import Gateway\n"
        "loaded = _load_plain(Path(sys.argv[1]))\n"
        "gateway = Gateway(loaded)\n"
        "profile = gateway.pollers[0].profile\n"
        "assert profile is loaded.profiles['m'] and profile.name == 'sdm630_clone'\n"
        "assert {str(p.byte_order) for p in profile.points} == {'CDAB'}\n"
        "heavy = [m for m in ('pydantic', 'pydantic_core', 'yaml', 'edge.config',\n"
        "         'edge.profiles', 'importlib.metadata') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print(len(profile.points))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "cabinet.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "55"
