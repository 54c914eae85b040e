"""Platform commands on ``<prefix>/<site>/<gateway>/cmd``, replies on ``.../cmd/res``.

Request (JSON, at most ``commands.max_payload_bytes``)::

    {"id": "<request id, echoed>", "cmd": "ping" | "rebirth" | "set_poll_interval" | "write"
     | "meter_tariff" | "meter_time_sync" | "meter_enable", "args": {...}}

Reply::

    {"id": ..., "ok": true, "result": {...}}
    {"id": ..., "ok": false, "error": {"code": "...", "message": "..."}}

Anything malformed, oversized, unknown or not allowed gets an error reply and one log line; a
command never raises out of here. ``write`` is refused unless the (device, point) is on the
config's ``commands.writable`` allow-list (checked at load against the profile's writable points).
``set_poll_interval`` changes the running schedule only; the config file is the lasting truth.
The ``meter_*`` commands go to a parking meter between polls (docs/meter-link-v1.md §3) and are
refused unless named in ``commands.meters``; the reply comes once the meter has acknowledged:

    {"cmd": "meter_tariff", "args": {"meter": "HK-01", "tariff_id": 7, "blocks":
        [[vehicle 0 car / 1 motorbike, from_min, block_min, price_vnd, max_blocks], ...]}}
    {"cmd": "meter_time_sync", "args": {"meter": "HK-01"}}   (the gateway's clock, if trusted)
    {"cmd": "meter_enable", "args": {"meter": "HK-01", "enabled": false}}
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge.clock import GOOD
from edge.parking import MeterCommandError
from protocols.meterlink import Enable, Message, Tariff, TariffBlock, TimeSync

if TYPE_CHECKING:
    from edge.gateway import Gateway

__all__ = ["CommandError", "CommandHandler"]

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


class CommandHandler:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._rebirth: Callable[[], Awaitable[int]] | None = None
        cfg = gateway.loaded.config.commands
        self.max_payload = cfg.max_payload_bytes
        self.writable = {(w.device, w.point) for w in cfg.writable}
        self.stats = CommandStats()
        self._table: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "ping": self._ping,
            "rebirth": self._rebirth_cmd,
            "set_poll_interval": self._set_poll_interval,
            "write": self._write,
            "meter_tariff": self._meter_tariff,
            "meter_time_sync": self._meter_time_sync,
            "meter_enable": self._meter_enable,
        }
        self.meter_commands = set(cfg.meters)

    async def handle(self, payload: bytes, *, rebirth: Callable[[], Awaitable[int]]) -> bytes:
        """One request in, one reply out. Never raises. ``rebirth`` republishes the birth on
        the live connection and returns how many series it named."""
        self._rebirth = rebirth
        self.stats.received += 1
        request_id: Any = None
        try:
            if len(payload) > self.max_payload:
                raise CommandError(
                    "too_large", f"{len(payload)} bytes; the limit is {self.max_payload}"
                )
            try:
                doc = json.loads(payload)
            except (ValueError, UnicodeDecodeError) as exc:
                raise CommandError("bad_request", f"not JSON: {exc}") from None
            if not isinstance(doc, dict):
                raise CommandError("bad_request", "the request must be a JSON object")
            request_id = doc.get("id")
            if not isinstance(request_id, str | int) or isinstance(request_id, bool):
                request_id = None
                raise CommandError("bad_request", "the request needs an 'id' (string or integer)")
            name, args = doc.get("cmd"), doc.get("args", {})
            if not isinstance(args, dict):
                raise CommandError("bad_args", "'args' must be an object")
            fn = self._table.get(name) if isinstance(name, str) else None
            if fn is None:
                raise CommandError(
                    "unknown_command", f"unknown command {name!r}; known: {sorted(self._table)}"
                )
            result = await fn(args)
        except CommandError as exc:
            self.stats.refused += 1
            log.warning("command %r refused: %s: %s", request_id, exc.code, exc)
            return _reply(request_id, error={"code": exc.code, "message": str(exc)})
        except Exception as exc:  # a bug must not take the uplink down: answer and log it
            self.stats.refused += 1
            log.exception("command %r failed", request_id)
            return _reply(request_id, error={"code": "internal", "message": repr(exc)})
        self.stats.ok += 1
        log.info("command %r (%s) done", request_id, name)
        return _reply(request_id, result=result)

    # ------------------------------------------------------------------ commands

    async def _ping(self, args: dict[str, Any]) -> dict[str, Any]:
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

    async def _rebirth_cmd(self, args: dict[str, Any]) -> dict[str, Any]:
        assert self._rebirth is not None
        return {"series": await self._rebirth()}

    def _device_arg(self, args: dict[str, Any]):
        device = args.get("device")
        for poller in self.gateway.pollers:
            if poller.device.id == device:
                return poller
        raise CommandError("unknown_device", f"no device {device!r} on this gateway")

    async def _set_poll_interval(self, args: dict[str, Any]) -> dict[str, Any]:
        poller = self._device_arg(args)
        value = args.get("poll_interval_s")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise CommandError("bad_args", "poll_interval_s must be a number")
        dev = poller.device
        budget_s = dev.timeout_ms * (dev.retries + 1) / 1000.0
        if not max(0.05, budget_s) <= value <= 86_400:
            raise CommandError(
                "bad_args",
                f"poll_interval_s must be between {max(0.05, budget_s):g} (the device's timeout "
                f"budget) and 86400, got {value}",
            )
        old = poller.interval_s
        poller.interval_s = float(value)
        return {"device": dev.id, "poll_interval_s": float(value), "was": old}

    async def _write(self, args: dict[str, Any]) -> dict[str, Any]:
        device, point = args.get("device"), args.get("point")
        if (device, point) not in self.writable:
            raise CommandError(
                "not_allowed",
                f"writing {device!r}.{point!r} is not allowed: it is not in commands.writable",
            )
        poller = self._device_arg(args)
        value = args.get("value")
        is_bit = poller.point_is_bit(point)
        if is_bit and not isinstance(value, bool):
            raise CommandError("bad_args", f"{point!r} is a switch: value must be true or false")
        if not is_bit and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise CommandError("bad_args", "value must be a number")
        try:
            written = await poller.write(point, value)
        except ValueError as exc:
            raise CommandError("bad_args", str(exc)) from None
        except Exception as exc:
            raise CommandError("device_error", str(exc)) from None
        return {"device": device, "point": point, "value": written}

    # ------------------------------------------------------------------ parking meters

    async def _to_meter(self, args: dict[str, Any], msg: Message) -> dict[str, Any]:
        meter = args["meter"]
        for bus in self.gateway.meter_buses:
            if any(m.id == meter for m in bus.cfg.meters):
                try:
                    number = await bus.command(meter, msg)
                except MeterCommandError as exc:
                    raise CommandError(exc.code, str(exc)) from None
                return {"meter": meter, "command": number}
        raise CommandError("unknown_meter", f"no meter {meter!r} on this gateway")

    def _meter_arg(self, kind: str, args: dict[str, Any]) -> None:
        if kind not in self.meter_commands:
            raise CommandError(
                "not_allowed", f"meter command {kind!r} is not allowed (not in commands.meters)"
            )
        if not isinstance(args.get("meter"), str):
            raise CommandError("bad_args", "'meter' must be a meter id")

    async def _meter_tariff(self, args: dict[str, Any]) -> dict[str, Any]:
        self._meter_arg("tariff", args)
        tariff_id, blocks = args.get("tariff_id"), args.get("blocks")
        if not _is_int(tariff_id) or not 0 <= tariff_id < 2**63:
            raise CommandError("bad_args", "tariff_id must be a non-negative integer")
        if not isinstance(blocks, list) or not 1 <= len(blocks) <= MAX_TARIFF_BLOCKS:
            raise CommandError("bad_args", f"blocks must be a list of 1..{MAX_TARIFF_BLOCKS}")
        parsed = []
        for i, b in enumerate(blocks):
            if not isinstance(b, list) or len(b) != 5 or not all(_is_int(x) for x in b):
                raise CommandError(
                    "bad_args",
                    f"blocks[{i}] must be [vehicle, from_min, block_min, price_vnd, max_blocks]",
                )
            vehicle, from_min, block_min, price, max_blocks = b
            for name, v, lo, hi in (
                ("vehicle", vehicle, 0, 1),
                ("from_min", from_min, 0, 1439),
                ("block_min", block_min, 1, 1440),
                ("price_vnd", price, 0, MAX_PRICE_VND),
                ("max_blocks", max_blocks, 0, 96),
            ):
                if not lo <= v <= hi:
                    raise CommandError(
                        "bad_args", f"blocks[{i}].{name} must be {lo}..{hi}, not {v}"
                    )
            parsed.append(TariffBlock(vehicle, from_min, block_min, price, max_blocks))
        for vehicle in {b.vehicle for b in parsed}:
            starts = [b.from_min for b in parsed if b.vehicle == vehicle]
            if len(starts) != len(set(starts)):
                raise CommandError("bad_args", f"two blocks for vehicle {vehicle} start together")
        result = await self._to_meter(args, Tariff(tariff_id, tuple(parsed)))
        return {**result, "tariff_id": tariff_id}

    async def _meter_time_sync(self, args: dict[str, Any]) -> dict[str, Any]:
        self._meter_arg("time_sync", args)
        stamp = self.gateway.clock.stamp()
        if stamp.tq != GOOD:
            raise CommandError(
                "clock_untrusted",
                "the gateway's own clock is not trusted yet; it would set the meter wrong",
            )
        result = await self._to_meter(args, TimeSync(stamp.ts_ms))
        return {**result, "now_ms": stamp.ts_ms}

    async def _meter_enable(self, args: dict[str, Any]) -> dict[str, Any]:
        self._meter_arg("enable", args)
        enabled = args.get("enabled")
        if not isinstance(enabled, bool):
            raise CommandError("bad_args", "enabled must be true or false")
        result = await self._to_meter(args, Enable(enabled))
        return {**result, "enabled": enabled}


#: A sanity bound on one block's price (VND): a tariff is money, a typo must not reach a meter.
MAX_PRICE_VND = 1_000_000
MAX_TARIFF_BLOCKS = 32


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _reply(
    request_id: Any, *, result: dict[str, Any] | None = None, error: dict[str, str] | None = None
) -> bytes:
    doc: dict[str, Any] = {"id": request_id, "ok": error is None}
    if error is None:
        doc["result"] = result
    else:
        doc["error"] = error
    return json.dumps(doc, separators=(",", ":")).encode()
