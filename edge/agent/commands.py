"""Platform commands on ``<prefix>/<site>/<gateway>/cmd``, replies on ``.../cmd/res``.

Request (JSON, at most ``commands.max_payload_bytes``)::

    {"id": "<request id, echoed>", "cmd": "ping" | "rebirth" | "set_poll_interval" | "write"
     | "meter_tariff" | "meter_time_sync" | "meter_enable", "args": {...}}

Reply::

    {"id": ..., "ok": true, "result": {...}}
    {"id": ..., "ok": false, "error": {"code": "...", "message": "..."}}

Anything malformed, oversized, unknown or not allowed gets an error reply and one log line; a
command never raises out of here. The request is strict JSON (UTF-8, no NaN / Infinity, no
duplicate keys, nested at most ``MAX_DEPTH`` deep, keys ``id`` / ``cmd`` / ``args`` only), else
``bad_request``; each command's ``args`` must match its schema (``_ARGS``: the right keys, each of
the right type), else ``bad_args``. A *retained* command (the broker keeps it and delivers it
again at every new subscription, i.e. at every reconnect) is never carried out: it is answered
``retained`` (:meth:`CommandHandler.handle`). ``write`` is refused unless the (device, point) is
on the config's ``commands.writable`` allow-list (checked at load against the profile's writable
points).
``set_poll_interval`` changes the running schedule only; the config file is the lasting truth.
The ``meter_*`` commands go to a parking meter between polls (docs/meter-link-v1.md §3) and are
refused unless named in ``commands.meters``; the reply comes once the meter has acknowledged:

    {"cmd": "meter_tariff", "args": {"meter": "HK-01", "tariff_id": 7, "blocks":
        [[vehicle 0 car / 1 motorbike, from_min, block_min, price_vnd, max_blocks], ...]}}
        (each block at most MAX_VND_PER_HOUR an hour: price_vnd × 60 / block_min ≤ 200,000)
    {"cmd": "meter_time_sync", "args": {"meter": "HK-01"}}   (the gateway's clock, if trusted)
    {"cmd": "meter_enable", "args": {"meter": "HK-01", "enabled": false}}
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

from edge.fieldbus.parking import MeterCommandError
from edge.shared.clock import GOOD
from protocols.meterlink import Enable, Message, Tariff, TariffBlock, TimeSync

if TYPE_CHECKING:
    from collections.abc import Sequence

    from edge.agent.poller import DevicePoller
    from edge.fieldbus.parking import MeterBus
    from edge.fieldbus.uart_sensor import SensorPoller
    from edge.settings import LoadedConfig
    from edge.shared.clock import TimeKeeper
    from edge.store.buffer import AsyncBuffer

__all__ = [
    "MAX_DEPTH",
    "MAX_VND_PER_HOUR",
    "CommandError",
    "CommandHandler",
    "CommandTarget",
    "parse_request",
]

log = logging.getLogger(__name__)


class CommandError(Exception):
    """A command was refused; ``code`` is machine-readable, the message is for people."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass
class CommandStats:
    received: int = 0
    ok: int = 0
    refused: int = 0
    retained: int = 0  # of the refused: delivered retained, never carried out


#: A sanity bound on a tariff's rate, in VND per hour (a block's price_vnd × 60 / block_min):
#: a tariff is money, and a typo (a zero too many, an hourly price given per one-minute block)
#: must not reach a meter. Not a legal rate: several times what on-street parking costs (the
#: simulators' illustrative tariff asks 30,000 VND an hour for a car), so only a mistake meets
#: it. Bounding the price per block instead would let 1,000,000 VND per one-minute block pass.
MAX_VND_PER_HOUR = 200_000
MAX_TARIFF_BLOCKS = 32

#: Deepest nesting of arrays / objects a request may have (a real one has 4).
MAX_DEPTH = 32

# --------------------------------------------------------------------------- argument schemas
#
# Each command's ``args`` is checked against a frozen dataclass whose fields carry their check
# (``_arg``): the right keys, each of the right JSON type, strictly (true is not 1, 1.5 is not an
# integer, "5" is not a number). Written here rather than with pydantic so that the running
# gateway does not load a validator library for six small schemas (about 13 MB of RSS with the
# config's models, issue 16; the config is validated in a child process, see edge/settings.py).

#: Longest device, point or meter name a command may give (ids are at most 64 characters).
MAX_NAME = 128

_JSON_TYPES = {"dict": "an object", "list": "a list", "str": "a string", "NoneType": "null",
               "bool": "true / false", "int": "an integer", "float": "a number"}  # fmt: skip


class _BadArg(Exception):
    """One argument is wrong; the message names it and what it must be."""


def _got(value: Any) -> str:
    """The JSON type of ``value``, never the value itself (it may be megabytes)."""
    name = type(value).__name__
    return _JSON_TYPES.get(name, name)


def _name(value: Any, where: str) -> str:
    """A device, point or meter name: a string (matched against the config afterwards)."""
    if not isinstance(value, str):
        raise _BadArg(f"{where} must be a string, not {_got(value)}")
    if not 1 <= len(value) <= MAX_NAME:
        raise _BadArg(f"{where} must be 1 to {MAX_NAME} characters, not {len(value)}")
    return value


def _number(value: Any, where: str) -> float:
    """A number sent as JSON: an integer or a finite float; never true / false."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _BadArg(f"{where} must be a finite number, not {_got(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise _BadArg(f"{where} must be a finite number")
    return value


def _boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _BadArg(f"{where} must be true or false, not {_got(value)}")
    return value


def _integer(value: Any, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _BadArg(f"{where} must be an integer, not {_got(value)}")
    if not lo <= value <= hi:
        shown = value if abs(value) < 10**18 else "out of range"
        raise _BadArg(f"{where} must be {lo}..{hi}, not {shown}")
    return value


def _write_value(value: Any, where: str) -> bool | int | float:
    """true / false for a coil, a number for a register."""
    if isinstance(value, bool):
        return value
    try:
        return _number(value, where)
    except _BadArg:
        raise _BadArg(f"{where} must be true / false or a finite number") from None


def _tariff_id(value: Any, where: str) -> int:
    return _integer(value, where, 0, 2**63 - 1)


def _blocks(value: Any, where: str) -> tuple[tuple[int, ...], ...]:
    """[[vehicle, from_min, block_min, price_vnd, max_blocks], ...]: 1 to MAX_TARIFF_BLOCKS
    lists of five integers (their ranges are checked by the command, which names each)."""
    if not isinstance(value, list):
        raise _BadArg(f"{where} must be a list, not {_got(value)}")
    if not 1 <= len(value) <= MAX_TARIFF_BLOCKS:
        raise _BadArg(f"{where} must hold 1 to {MAX_TARIFF_BLOCKS} blocks, not {len(value)}")
    out = []
    for i, block in enumerate(value):
        if not isinstance(block, list):
            raise _BadArg(f"{where}[{i}] must be a list, not {_got(block)}")
        if len(block) != 5:
            raise _BadArg(
                f"{where}[{i}] must be 5 integers [vehicle, from_min, block_min, price_vnd, "
                f"max_blocks], not {len(block)} values"
            )
        for j, v in enumerate(block):
            if isinstance(v, bool) or not isinstance(v, int):
                raise _BadArg(f"{where}[{i}][{j}] must be an integer, not {_got(v)}")
        out.append(tuple(block))
    return tuple(out)


def _arg(check: Callable[[Any, str], Any]) -> Any:
    return field(metadata={"check": check})


@dataclass(frozen=True)
class NoArgs:
    """``ping``, ``rebirth``."""


@dataclass(frozen=True)
class SetPollIntervalArgs:
    device: str = _arg(_name)
    poll_interval_s: float = _arg(_number)


@dataclass(frozen=True)
class WriteArgs:
    device: str = _arg(_name)
    point: str = _arg(_name)
    value: bool | int | float = _arg(_write_value)


@dataclass(frozen=True)
class MeterArgs:
    """``meter_time_sync``."""

    meter: str = _arg(_name)


@dataclass(frozen=True)
class MeterTariffArgs:
    meter: str = _arg(_name)
    tariff_id: int = _arg(_tariff_id)
    #: [vehicle, from_min, block_min, price_vnd, max_blocks] each; ranges checked after.
    blocks: tuple[tuple[int, ...], ...] = _arg(_blocks)


@dataclass(frozen=True)
class MeterEnableArgs:
    meter: str = _arg(_name)
    enabled: bool = _arg(_boolean)


_ARGS: dict[str, type] = {
    "ping": NoArgs,
    "rebirth": NoArgs,
    "set_poll_interval": SetPollIntervalArgs,
    "write": WriteArgs,
    "meter_tariff": MeterTariffArgs,
    "meter_time_sync": MeterArgs,
    "meter_enable": MeterEnableArgs,
}


def parse_args(schema: type, raw: dict[str, Any]) -> Any:
    """``raw`` (a JSON object) as an instance of ``schema``; raises :class:`CommandError`
    ``bad_args`` naming the first wrong argument: a misspelt one before a missing one (a typo is
    both, and the unknown name is the one to fix), then each in the schema's order."""
    names = [f.name for f in fields(schema)]
    takes = ", ".join(names) or "no arguments"
    unknown = [k for k in raw if k not in names]
    if unknown:
        raise CommandError("bad_args", f"unknown argument {unknown[0][:64]!r} (takes: {takes})")
    missing = [n for n in names if n not in raw]
    if missing:
        raise CommandError("bad_args", f"missing argument {missing[0]!r} (takes: {takes})")
    try:
        return schema(**{f.name: f.metadata["check"](raw[f.name], f.name) for f in fields(schema)})
    except _BadArg as exc:
        raise CommandError("bad_args", str(exc)) from None


# --------------------------------------------------------------------------- strict JSON

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def _nesting(text: str) -> int:
    """How deep arrays and objects nest in ``text`` (strings skipped), stopping past
    ``MAX_DEPTH``; measured before parsing, so a hostile payload cannot exhaust the stack."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub('""', text)):
        depth += 1 if m.group() in "[{" else -1
        if depth > deepest:
            deepest = depth
            if deepest > MAX_DEPTH:
                break
    return deepest


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object, refusing a key given twice (json.loads would silently keep the last)."""
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise ValueError(f"duplicate key {key[:64]!r}")
        doc[key] = value
    return doc


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:32]} is out of range")
    return value


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (numbers must be finite)")


def parse_request(payload: bytes) -> Any:
    """The JSON document in ``payload``, strictly (RFC 8259 and a nesting bound); raises
    :class:`CommandError` ``bad_request`` saying what is wrong."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CommandError("bad_request", f"not UTF-8 text (byte {exc.start})") from None
    if _nesting(text) > MAX_DEPTH:
        raise CommandError("bad_request", f"nested deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_not_json,
            parse_float=_finite,
        )
    except (ValueError, RecursionError) as exc:
        raise CommandError("bad_request", f"not JSON: {str(exc)[:200]}") from None


class CommandTarget(Protocol):
    """What the command handler reads and calls on the running gateway
    (:class:`edge.agent.gateway.Gateway`), and nothing more."""

    @property
    def loaded(self) -> LoadedConfig: ...
    @property
    def buffer(self) -> AsyncBuffer: ...
    @property
    def started_ms(self) -> int: ...
    @property
    def clock(self) -> TimeKeeper: ...
    @property
    def pollers(self) -> Sequence[DevicePoller | SensorPoller]: ...
    @property
    def meter_buses(self) -> Sequence[MeterBus]: ...


class CommandHandler:
    def __init__(self, gateway: CommandTarget) -> None:
        self.gateway = gateway
        self._rebirth: Callable[[], Awaitable[int]] | None = None
        cfg = gateway.loaded.config.commands
        self.max_payload = cfg.max_payload_bytes
        self.writable = {(w.device, w.point) for w in cfg.writable}
        self.stats = CommandStats()
        self._table: dict[str, Callable[[Any], Awaitable[dict[str, Any]]]] = {
            "ping": self._ping,
            "rebirth": self._rebirth_cmd,
            "set_poll_interval": self._set_poll_interval,
            "write": self._write,
            "meter_tariff": self._meter_tariff,
            "meter_time_sync": self._meter_time_sync,
            "meter_enable": self._meter_enable,
        }
        self.meter_commands = set(cfg.meters)
        self._retained_seen: set[bytes] = set()
        self.topic = ""  # the command topic, for the operator's hint (set by the forwarder)

    async def handle(
        self,
        payload: bytes,
        *,
        rebirth: Callable[[], Awaitable[int]],
        retained: bool = False,
    ) -> bytes:
        """One request in, one reply out. Never raises. ``rebirth`` republishes the birth on
        the live connection and returns how many series it named. ``retained``: the broker
        delivered the message with the retain flag (a stored copy, sent again at every new
        subscription): it is answered ``retained`` and never carried out."""
        self._rebirth = rebirth
        self.stats.received += 1
        request_id: Any = None
        try:
            if retained:
                request_id = self._request_id(payload)
                self._refuse_retained(payload, request_id)
            if len(payload) > self.max_payload:
                raise CommandError(
                    "too_large", f"{len(payload)} bytes; the limit is {self.max_payload}"
                )
            doc = parse_request(payload)
            if not isinstance(doc, dict):
                raise CommandError("bad_request", "the request must be a JSON object")
            request_id = doc.get("id")
            if not isinstance(request_id, str | int) or isinstance(request_id, bool):
                request_id = None
                raise CommandError("bad_request", "the request needs an 'id' (string or integer)")
            extra = sorted(set(doc) - {"id", "cmd", "args"})
            if extra:
                raise CommandError(
                    "bad_request", f"unknown key {extra[0][:64]!r}; a request has id, cmd, args"
                )
            name, raw_args = doc.get("cmd"), doc.get("args", {})
            fn = self._table.get(name) if isinstance(name, str) else None
            if fn is None:
                shown = name[:64] if isinstance(name, str) else type(name).__name__
                raise CommandError(
                    "unknown_command", f"unknown command {shown!r}; known: {sorted(self._table)}"
                )
            if not isinstance(raw_args, dict):
                raise CommandError("bad_args", "'args' must be an object")
            args = parse_args(_ARGS[name], raw_args)
            result = await fn(args)
        except CommandError as exc:
            self.stats.refused += 1
            if exc.code != "retained":
                log.warning("command %r refused: %s: %s", request_id, exc.code, exc)
            return _reply(request_id, error={"code": exc.code, "message": str(exc)})
        except Exception as exc:  # a bug must not take the uplink down: answer and log it
            self.stats.refused += 1
            log.exception("command %r failed", request_id)
            return _reply(request_id, error={"code": "internal", "message": repr(exc)})
        self.stats.ok += 1
        log.info("command %r (%s) done", request_id, name)
        return _reply(request_id, result=result)

    def _request_id(self, payload: bytes) -> Any:
        """The request's id when it can be read, else None (for a reply that is sent anyway)."""
        if len(payload) > self.max_payload:
            return None
        try:
            doc = parse_request(payload)
        except CommandError:
            return None
        rid = doc.get("id") if isinstance(doc, dict) else None
        return rid if isinstance(rid, str | int) and not isinstance(rid, bool) else None

    def _refuse_retained(self, payload: bytes, request_id: Any) -> None:
        """A retained command is never carried out: it would be carried out again at every
        reconnect (a relay switched back on after a restart). Logged at ERROR once per
        distinct message (someone must clear it on the broker), then DEBUG."""
        self.stats.retained += 1
        digest = hashlib.sha256(payload).digest()
        topic = f"{self.topic} " if self.topic else ""
        if digest not in self._retained_seen:
            if len(self._retained_seen) >= 1024:
                self._retained_seen.clear()
            self._retained_seen.add(digest)
            log.error(
                "command %r arrived retained and is not carried out (a retained command runs "
                "again at every reconnect); publish commands without the retain flag, and clear "
                "this one: mosquitto_pub -r -n -t %s(logged at DEBUG while it stays)",
                request_id,
                topic,
            )
        else:
            log.debug("retained command %r refused again", request_id)
        raise CommandError(
            "retained",
            "a retained command is never carried out: publish commands with retain=0 "
            "(the broker's stored copy is refused at every reconnect until cleared)",
        )

    # ------------------------------------------------------------------ commands

    async def _ping(self, args: NoArgs) -> dict[str, Any]:
        st = await self.gateway.buffer.stats()
        return {
            "pong": True,
            "gateway": self.gateway.loaded.config.gateway.id,
            "boot": await self.gateway.buffer.boot(),
            "uptime_s": round(time.time() - self.gateway.started_ms / 1000, 3),
            "buffer": {
                "pending_readings": st.pending_readings,
                "unacked_batches": st.outbox_batches,
                "next_seq": st.next_seq,
            },
        }

    async def _rebirth_cmd(self, args: NoArgs) -> dict[str, Any]:
        assert self._rebirth is not None
        return {"series": await self._rebirth()}

    def _poller(self, device: str):
        for poller in self.gateway.pollers:
            if poller.device.id == device:
                return poller
        raise CommandError("unknown_device", f"no device {device!r} on this gateway")

    async def _set_poll_interval(self, args: SetPollIntervalArgs) -> dict[str, Any]:
        poller = self._poller(args.device)
        value = args.poll_interval_s
        dev = poller.device
        budget_s = dev.timeout_ms * (dev.retries + 1) / 1000.0
        if not max(0.05, budget_s) <= value <= 86_400:
            raise CommandError(
                "bad_args",
                f"poll_interval_s must be between {max(0.05, budget_s):g} (the device's timeout "
                f"budget) and 86400, got {value:g}",
            )
        old = poller.interval_s
        poller.interval_s = float(value)
        return {"device": dev.id, "poll_interval_s": float(value), "was": old}

    async def _write(self, args: WriteArgs) -> dict[str, Any]:
        device, point, value = args.device, args.point, args.value
        if (device, point) not in self.writable:
            raise CommandError(
                "not_allowed",
                f"writing {device!r}.{point!r} is not allowed: it is not in commands.writable",
            )
        poller = self._poller(device)
        is_bit = poller.point_is_bit(point)
        if is_bit and not isinstance(value, bool):
            raise CommandError("bad_args", f"{point!r} is a switch: value must be true or false")
        if not is_bit and isinstance(value, bool):
            raise CommandError("bad_args", "value must be a number")
        try:
            written = await poller.write(point, value)
        except (ValueError, OverflowError) as exc:
            raise CommandError("bad_args", str(exc)) from None
        except Exception as exc:
            raise CommandError("device_error", str(exc)) from None
        return {"device": device, "point": point, "value": written}

    # ------------------------------------------------------------------ parking meters

    async def _to_meter(self, meter: str, msg: Message) -> dict[str, Any]:
        for bus in self.gateway.meter_buses:
            if any(m.id == meter for m in bus.cfg.meters):
                try:
                    number = await bus.command(meter, msg)
                except MeterCommandError as exc:
                    raise CommandError(exc.code, str(exc)) from None
                return {"meter": meter, "command": number}
        raise CommandError("unknown_meter", f"no meter {meter!r} on this gateway")

    def _allowed(self, kind: str) -> None:
        if kind not in self.meter_commands:
            raise CommandError(
                "not_allowed", f"meter command {kind!r} is not allowed (not in commands.meters)"
            )

    async def _meter_tariff(self, args: MeterTariffArgs) -> dict[str, Any]:
        self._allowed("tariff")
        parsed = []
        for i, b in enumerate(args.blocks):
            vehicle, from_min, block_min, price, max_blocks = b
            for name, v, lo, hi in (
                ("vehicle", vehicle, 0, 1),
                ("from_min", from_min, 0, 1439),
                ("block_min", block_min, 1, 1440),
                ("max_blocks", max_blocks, 0, 96),
            ):
                if not lo <= v <= hi:
                    shown = v if abs(v) < 10**18 else "out of range"
                    raise CommandError(
                        "bad_args", f"blocks[{i}].{name} must be {lo}..{hi}, not {shown}"
                    )
            if price < 0:
                raise CommandError("bad_args", f"blocks[{i}].price_vnd must be 0 or more")
            if price * 60 > MAX_VND_PER_HOUR * block_min:
                hourly = f"{price * 60 // block_min:,} VND" if price < 10**15 else "beyond reason"
                raise CommandError(
                    "bad_args",
                    f"blocks[{i}].price_vnd: {block_min}-minute blocks at that price are "
                    f"{hourly} an hour; a tariff may ask at most {MAX_VND_PER_HOUR:,} VND an "
                    "hour (price_vnd × 60 / block_min)",
                )
            parsed.append(TariffBlock(vehicle, from_min, block_min, price, max_blocks))
        for vehicle in {b.vehicle for b in parsed}:
            starts = [b.from_min for b in parsed if b.vehicle == vehicle]
            if len(starts) != len(set(starts)):
                raise CommandError("bad_args", f"two blocks for vehicle {vehicle} start together")
        result = await self._to_meter(args.meter, Tariff(args.tariff_id, tuple(parsed)))
        return {**result, "tariff_id": args.tariff_id}

    async def _meter_time_sync(self, args: MeterArgs) -> dict[str, Any]:
        self._allowed("time_sync")
        stamp = self.gateway.clock.stamp()
        if stamp.tq != GOOD:
            raise CommandError(
                "clock_untrusted",
                "the gateway's own clock is not trusted yet; it would set the meter wrong",
            )
        result = await self._to_meter(args.meter, TimeSync(stamp.ts_ms))
        return {**result, "now_ms": stamp.ts_ms}

    async def _meter_enable(self, args: MeterEnableArgs) -> dict[str, Any]:
        self._allowed("enable")
        result = await self._to_meter(args.meter, Enable(args.enabled))
        return {**result, "enabled": args.enabled}


def _reply(
    request_id: Any, *, result: dict[str, Any] | None = None, error: dict[str, str] | None = None
) -> bytes:
    doc: dict[str, Any] = {"id": request_id, "ok": error is None}
    if error is None:
        doc["result"] = result
    else:
        doc["error"] = error
    return json.dumps(doc, separators=(",", ":")).encode()
