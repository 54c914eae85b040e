"""Commands that must not be carried out: retained ones, and any of the wrong shape.

A retained command is stored by the broker and delivered again at every new subscription, so
at every reconnect of the gateway: carried out, it would switch a relay back on after every
restart. Arguments of the wrong shape (a list where a name belongs, NaN, nesting thousands
deep, duplicate keys, non-UTF-8) get ``bad_args`` / ``bad_request``, never ``internal`` with a
traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edge.agent.commands import MAX_DEPTH, MAX_VND_PER_HOUR
from edge.agent.gateway import Gateway
from edge.config import parse_config
from edge.ops.status import StatusServer
from tests import test_commands
from tests.conftest import gateway_yaml, wait_until
from tests.test_commands import CMD, Platform, cabinet_yaml
from tests.test_system import start_gateway, stop

cabinet = test_commands.cabinet  # the simulated lighting cabinet at night (a fixture)

#: The reply codes the contract lists (docs/asyncapi.yaml), read from the contract itself.
CODES = set(
    yaml.safe_load((Path(__file__).parent.parent / "docs" / "asyncapi.yaml").read_text())[
        "components"
    ]["messages"]["reply"]["payload"]["properties"]["error"]["properties"]["code"]["enum"]
)


def assert_well_formed(raw: bytes, request_id: object) -> dict:
    """A reply the contract allows: the request's id (null if unreadable), ok, and a result
    object or an error with a listed code other than ``internal`` and a message."""
    doc = json.loads(raw)
    assert doc["id"] == request_id
    if doc["ok"] is True:
        assert set(doc) == {"id", "ok", "result"} and isinstance(doc["result"], dict)
    else:
        assert doc["ok"] is False and set(doc) == {"id", "ok", "error"}
        assert set(doc["error"]) == {"code", "message"}
        assert doc["error"]["code"] in CODES - {"internal"}, doc
        assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
    return doc


# --------------------------------------------------------------------------- retained


@pytest.mark.system
async def test_commands__a_retained_write_is_never_carried_out_and_answered_retained(
    mosquitto, tmp_path, cabinet, caplog
):
    server, unit = cabinet
    text = gateway_yaml(
        buffer=tmp_path / "b.sqlite", broker_port=mosquitto.port, sim_port=1, units=()
    )
    text += cabinet_yaml(server.port)
    off = {"device": "cabinet-1", "point": "relay_segment_1", "value": False}
    async with Platform(mosquitto.port) as platform:
        # The platform stores a command on the broker (retain), as a dashboard might.
        retained = json.dumps({"id": "r-ret", "cmd": "write", "args": off}).encode()
        await platform.client.publish(CMD, retained, qos=1, retain=True)
        for start in ("first start", "restart"):
            gateway, task = await start_gateway(tmp_path, text)
            try:
                await wait_until(lambda: "r-ret" in platform.replies, 10, what=f"reply ({start})")
                reply = platform.replies.pop("r-ret")
                assert reply["ok"] is False and reply["error"]["code"] == "retained", reply
                await asyncio.sleep(1.0)  # a poll cycle or three: nothing else happens
                assert unit.writes == 0 and unit.commanded == {}, start  # the relay untouched
                assert gateway.commands.stats.retained == 1
                metrics = await StatusServer(gateway, "127.0.0.1", 0, None).metrics()
                assert 'edge_commands_total{outcome="retained"} 1' in metrics
            finally:
                await stop(task)
        errors = [r for r in caplog.records if "arrived retained" in r.getMessage()]
        assert len(errors) == 2 and all(r.levelno == logging.ERROR for r in errors)
        assert "mosquitto_pub -r -n -t city/v1/test/gw-test/cmd" in errors[0].getMessage()

        # Cleared on the broker (an empty retained message): nothing to answer; and a live
        # command is carried out as ever.
        gateway, task = await start_gateway(tmp_path, text)
        try:
            await platform.client.publish(CMD, b"", qos=1, retain=True)
            await wait_until(
                lambda: gateway.forwarder.stats.commands_subscribed, 10, what="the subscription"
            )
            reply = await platform.send({"id": "live", "cmd": "write", "args": off}, "live")
            assert reply == {"id": "live", "ok": True, "result": off}
            assert unit.writes == 1 and unit.commanded == {"relay_segment_1": False}
            assert None not in platform.replies  # the empty message got no reply
        finally:
            await stop(task)
    assert not [r for r in caplog.records if r.exc_info]


# --------------------------------------------------------------------------- any shape


def gateway_text(tmp_path: Path, port: int) -> str:
    text = gateway_yaml(buffer=tmp_path / "b.sqlite", broker_port=1, sim_port=1, units=())
    return (
        text
        + cabinet_yaml(port)
        + "  meters: [tariff, time_sync, enable]\n"
        + "  max_payload_bytes: 65536\n"  # room for nesting thousands deep
        + """parking:
  buses:
    - id: lane-1
      transport: {type: tcp, host: 127.0.0.1, port: 1}
      meters: [{id: HK-01, address: 1}]
"""
    )


@pytest.fixture
async def handler(tmp_path, cabinet):
    """The command handler of a real gateway (buffer open, a simulated lighting cabinet on
    loopback TCP, a meter bus whose link is down), called directly: no broker needed."""
    server, unit = cabinet
    gateway = Gateway(parse_config(gateway_text(tmp_path, server.port), "g.yaml", tmp_path))
    await gateway.buffer.open()

    async def rebirth() -> int:
        return len((await gateway.birth()).series)

    async def handle(payload: bytes) -> bytes:
        return await gateway.commands.handle(payload, rebirth=rebirth)

    try:
        yield handle, unit
    finally:
        for links in gateway.links.values():
            for link in links:
                await link.close()
        await gateway.buffer.close()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

#: Each command's fields, each with values that are right (so the successes run too).
FIELDS: dict[str, dict[str, st.SearchStrategy]] = {
    "ping": {},
    "rebirth": {},
    "set_poll_interval": {
        "device": st.sampled_from(["cabinet-1", "meter-9"]),
        "poll_interval_s": st.integers(1, 3600) | st.floats(0.01, 100_000),
    },
    "write": {
        "device": st.just("cabinet-1"),
        "point": st.sampled_from(["relay_segment_1", "dim_level_segment_2", "total_power"]),
        "value": st.booleans() | st.integers(-5, 120) | st.floats(0, 100),
    },
    "meter_tariff": {
        "meter": st.sampled_from(["HK-01", "XX"]),
        "tariff_id": st.integers(0, 2**64),
        "blocks": st.lists(
            st.tuples(
                st.integers(0, 1),
                st.integers(0, 1439),
                st.integers(1, 1440),
                st.integers(0, 2_000_000),
                st.integers(0, 96),
            ).map(list),
            max_size=3,
        ),
    },
    "meter_time_sync": {"meter": st.sampled_from(["HK-01", "XX"])},
    "meter_enable": {"meter": st.sampled_from(["HK-01", "XX"]), "enabled": st.booleans()},
}


@st.composite
def requests(draw) -> tuple[dict, object]:
    """A request whose every field is mostly right, sometimes any JSON value, sometimes
    missing (weights keep enough requests whole for the successes to run too)."""
    known = draw(st.integers(0, 9)) < 8
    cmd = draw(st.sampled_from(sorted(FIELDS)) if known else json_values)
    args: dict = {}
    for name, right in FIELDS.get(cmd, {}).items() if isinstance(cmd, str) else []:
        choice = draw(st.integers(0, 9))
        if choice < 6:
            args[name] = draw(right)
        elif choice < 9:
            args[name] = draw(json_values)
    if draw(st.integers(0, 5)) == 0:
        args[draw(st.text(max_size=8))] = draw(json_values)  # an argument no command takes
    request_id = draw(st.sampled_from(["c1", 7]) if draw(st.integers(0, 9)) < 8 else json_values)
    doc = {"id": request_id, "cmd": cmd, "args": args}
    if draw(st.integers(0, 9)) == 0:
        doc["args"] = draw(json_values)  # args itself of any shape
    valid_id = isinstance(request_id, str | int) and not isinstance(request_id, bool)
    return doc, request_id if valid_id else None


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(requests())
async def test_commands__any_json_in_any_field_gets_a_well_formed_reply_and_no_traceback(
    handler, caplog, request_and_id
):
    handle, _unit = handler
    doc, request_id = request_and_id
    caplog.clear()
    reply = assert_well_formed(await handle(json.dumps(doc).encode()), request_id)
    event("ok" if reply["ok"] else reply["error"]["code"])  # --hypothesis-show-statistics
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


# --------------------------------------------------------------------------- hostile bytes


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b'{"id": "n", "cmd": "set_poll_interval", "args": {"device": "cabinet-1", '
         b'"poll_interval_s": NaN}}', "bad_request"),
        (b'{"id": "n", "cmd": "write", "args": {"device": "cabinet-1", '
         b'"point": "dim_level_segment_2", "value": Infinity}}', "bad_request"),
        (b'{"id": "n", "cmd": "write", "args": {"device": "cabinet-1", '
         b'"point": "dim_level_segment_2", "value": 1e999}}', "bad_request"),
        (b'{"id": "n", "cmd": "ping", "cmd": "rebirth"}', "bad_request"),
        (b'{"id": "n", "cmd": "write", "args": {"device": "cabinet-1", "device": "x", '
         b'"point": "relay_segment_1", "value": true}}', "bad_request"),
        (b'{"id": "n", "cmd": "write", "args": {"device": ' + b"[" * 3000 + b"]" * 3000
         + b"}}", "bad_request"),
        (b'{"id": "n", "cmd": "ping", "args": {"x": ' + b'{"a": ' * 40 + b"1" + b"}" * 40
         + b"}}", "bad_request"),
        (b'{"id": "n", "cmd": "ping", "args": {"x": "' + b"[" * 3000 + b'"}}', "bad_args"),
        ('{"id": "n", "cmd": "ping"}'.encode("utf-16"), "bad_request"),
        (b'{"id": "n", "cmd": "write", "args": {"device": "\xff\xfe"}}', "bad_request"),
        (b'{"id": "n", "cmd": "ping", "args": {}, "expires": 1}', "bad_request"),
        (b'{"id": "n", "cmd": "ping", "args": {"x": "' + b"x" * 70_000 + b'"}}', "too_large"),
        (b'{"id": "n", "cmd": "meter_tariff", "args": {"meter": "HK-01", "tariff_id": '
         + b"9" * 5000 + b', "blocks": []}}', "bad_request"),
        (b'{"id": "n", "cmd": "meter_tariff", "args": {"meter": "HK-01", "tariff_id": '
         + b"9" * 4000 + b', "blocks": []}}', "bad_args"),
        (b'{"id": "n", "cmd": ["write"]}', "unknown_command"),
        (b'{"id": "n", "cmd": "write", "args": {"device": ["cabinet-1"], '
         b'"point": {"p": 1}, "value": true}}', "bad_args"),
        (b'{"id": "n", "cmd": "write", "args": {"device": 5, "point": "relay_segment_1", '
         b'"value": true}}', "bad_args"),
    ],
    ids=[
        "nan", "infinity", "float-overflow", "duplicate-key", "duplicate-arg",
        "nested-3000-deep", f"nested-past-{MAX_DEPTH}", "brackets-in-a-string-are-text",
        "utf-16", "not-utf-8", "unknown-request-key", "huge-payload", "5000-digit-number",
            "4000-digit-number",
        "cmd-a-list", "names-a-list-and-an-object", "name-a-number",
    ],
)  # fmt: skip
async def test_commands__hostile_bytes_get_bad_request_or_bad_args_without_a_traceback(
    handler, caplog, payload, code
):
    handle, unit = handler
    reply = json.loads(await handle(payload))
    assert reply["ok"] is False and reply["error"]["code"] == code, reply
    assert reply["id"] in ("n", None)
    assert not [r for r in caplog.records if r.exc_info]
    assert unit.writes == 0


async def test_commands__the_right_shapes_still_work(handler):
    handle, unit = handler

    async def send(doc: dict) -> dict:
        return assert_well_formed(await handle(json.dumps(doc).encode()), doc["id"])

    assert (await send({"id": 1, "cmd": "ping"}))["result"]["pong"] is True
    assert (await send({"id": 2, "cmd": "rebirth", "args": {}}))["ok"]
    dim = {"device": "cabinet-1", "point": "dim_level_segment_2", "value": 30}
    assert (await send({"id": 3, "cmd": "write", "args": dim}))["result"] == dim
    assert unit.commanded == {"dim_level_segment_2": 30}
    interval = {"device": "cabinet-1", "poll_interval_s": 2}
    assert (await send({"id": 4, "cmd": "set_poll_interval", "args": interval}))["ok"]
    down = await send({"id": 5, "cmd": "meter_enable", "args": {"meter": "HK-01", "enabled": True}})
    assert down["error"]["code"] == "link_down"  # the shape was right: it went to the bus
    typo = await send(
        {"id": 6, "cmd": "set_poll_interval", "args": {"device": "cabinet-1", "poll_interval": 2}}
    )
    assert typo["error"] == {
        "code": "bad_args",
        "message": "unknown argument 'poll_interval' (takes: device, poll_interval_s)",
    }
    wrong = await send({"id": 7, "cmd": "write", "args": {**dim, "device": ["cabinet-1"]}})
    assert wrong["error"] == {"code": "bad_args", "message": "device must be a string, not a list"}


async def test_commands__a_write_between_an_integer_points_steps_is_refused_not_rounded(handler):
    """A dimming level is a whole percent: 50.5 or 5e-324 would be written as 50 or 0 and
    answered ok, a value nobody asked for. They are refused (bad_args) and nothing is written;
    a whole value given as a float (30.0) is taken."""
    handle, unit = handler
    for i, value in enumerate((50.5, 5e-324, 99.999)):
        args = {"device": "cabinet-1", "point": "dim_level_segment_2", "value": value}
        reply = assert_well_formed(
            await handle(json.dumps({"id": i, "cmd": "write", "args": args}).encode()), i
        )
        assert not reply["ok"] and reply["error"]["code"] == "bad_args", (value, reply)
        assert "whole steps" in reply["error"]["message"]
    assert unit.writes == 0 and unit.commanded == {}
    args = {"device": "cabinet-1", "point": "dim_level_segment_2", "value": 30.0}
    reply = assert_well_formed(
        await handle(json.dumps({"id": 9, "cmd": "write", "args": args}).encode()), 9
    )
    assert reply["ok"] and unit.commanded == {"dim_level_segment_2": 30}


@pytest.mark.parametrize(
    ("cmd", "args", "message"),
    [
        ("set_poll_interval", {"device": "", "poll_interval_s": 2},
         "device must be 1 to 128 characters, not 0"),
        ("set_poll_interval", {"device": "d" * 129, "poll_interval_s": 2},
         "device must be 1 to 128 characters, not 129"),
        ("set_poll_interval", {"device": "d", "poll_interval_s": True},
         "poll_interval_s must be a finite number, not true / false"),
        ("set_poll_interval", {"device": "d", "poll_interval_s": "2"},
         "poll_interval_s must be a finite number, not a string"),
        ("write", {"device": "d", "point": "p", "value": "5"},
         "value must be true / false or a finite number"),
        ("write", {"device": "d", "point": "p", "value": None},
         "value must be true / false or a finite number"),
        ("meter_tariff", {"meter": "m", "tariff_id": -1, "blocks": [[0, 0, 60, 5000, 1]]},
         "tariff_id must be 0..9223372036854775807, not -1"),
        ("meter_tariff", {"meter": "m", "tariff_id": 1.0, "blocks": [[0, 0, 60, 5000, 1]]},
         "tariff_id must be an integer, not a number"),
        ("meter_tariff", {"meter": "m", "tariff_id": 1, "blocks": []},
         "blocks must hold 1 to 32 blocks, not 0"),
        ("meter_tariff", {"meter": "m", "tariff_id": 1, "blocks": [[0, 0, 60, 5000]]},
         "blocks[0] must be 5 integers [vehicle, from_min, block_min, price_vnd, max_blocks], "
         "not 4 values"),
        ("meter_tariff", {"meter": "m", "tariff_id": 1, "blocks": [[0, 0, 60, 5000, 1.5]]},
         "blocks[0][4] must be an integer, not a number"),
        ("meter_tariff", {"meter": "m", "tariff_id": 1, "blocks": {"a": 1}},
         "blocks must be a list, not an object"),
        ("meter_enable", {"meter": "m", "enabled": 1},
         "enabled must be true or false, not an integer"),
        ("meter_enable", {"meter": "m"}, "missing argument 'enabled' (takes: meter, enabled)"),
        ("ping", {"x": 1}, "unknown argument 'x' (takes: no arguments)"),
    ],
)  # fmt: skip
def test_commands__each_wrong_argument_is_named_with_what_it_must_be(cmd, args, message):
    """The argument schemas (edge/agent/commands.py, no pydantic in the running gateway) say
    which argument is wrong and what it must be, in our words, never echoing the value."""
    from edge.agent.commands import _ARGS, CommandError, parse_args

    with pytest.raises(CommandError) as info:
        parse_args(_ARGS[cmd], args)
    assert (info.value.code, str(info.value)) == ("bad_args", message)


# --------------------------------------------------------------------------- tariff bound


@pytest.mark.parametrize(
    ("block", "carried"),
    [
        ([0, 360, 1, 1_000_000, 0], False),  # 60,000,000 VND an hour: the issue's tariff
        ([0, 360, 1, 3_334, 0], False),  # 200,040 an hour
        ([0, 360, 15, 50_001, 0], False),  # 200,004 an hour
        ([0, 360, 60, 200_001, 0], False),
        ([0, 360, 1, 3_333, 0], True),  # 199,980 an hour
        ([0, 360, 60, 200_000, 0], True),  # the bound itself
        ([0, 360, 60, 30_000, 0], True),  # the illustrative car rate
        ([1, 360, 1440, 4_800_000, 1], True),  # a day's block at the bound
        ([1, 360, 1440, 5_000, 1], True),  # a motorbike's turn
    ],
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, list) else ("sent" if v else "refused"),
)
async def test_commands__a_tariff_is_bounded_per_hour_not_per_block(handler, block, carried):
    """The cap was per block (1,000,000 VND), so 1,000,000 VND per one-minute block passed.
    The rate is bounded per hour (price_vnd × 60 / block_min), as the contract says."""
    contract = yaml.safe_load((Path(__file__).parent.parent / "docs" / "asyncapi.yaml").read_text())
    args = contract["components"]["messages"]["command"]["payload"]["properties"]["args"]
    assert args["x-max-vnd-per-hour"] == MAX_VND_PER_HOUR == 200_000
    handle, _unit = handler
    request = {"meter": "HK-01", "tariff_id": 3, "blocks": [[0, 0, 60, 30_000, 0], block]}
    reply = assert_well_formed(
        await handle(json.dumps({"id": "t", "cmd": "meter_tariff", "args": request}).encode()),
        "t",
    )
    if carried:  # it went to the meter bus (whose link is down here)
        assert reply["error"]["code"] == "link_down", reply
    else:
        assert reply["error"]["code"] == "bad_args", reply
        message = reply["error"]["message"]
        assert message.startswith("blocks[1].price_vnd: ") and "200,000 VND an hour" in message
