"""The gateway's local status page and Prometheus metrics, read-only, over plain HTTP/1.1.

    /              a page for a phone at the cabinet: uplink, buffer, every device's health and
                   last values, recent problems; it refreshes itself every 2 s and needs nothing
                   from the internet (no CDN, no fonts, no framework)
    /status.json   what the page shows, for scripts
    /metrics       Prometheus text format: polls, errors, readings, drops by reason, batches,
                   buffer depth and bytes, reconnects, RS-485 line counters

Loopback by default; another address needs ``status.token_file``, and every request must then
carry the token (``?token=`` or ``Authorization: Bearer``). The server is a few dozen lines on
asyncio streams instead of a web framework: three read-only GET routes do not justify the memory
of one on a 1 GB Pi. Requests are bounded (8 KiB of headers, 5 s to send them).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import json
import logging
import math
import time
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from edge.fieldbus.parking import MeterBus
    from edge.settings import LoadedConfig
    from edge.shared.clock import TimeKeeper
    from edge.store.buffer import AsyncBuffer
    from edge.uplink.forwarder import Forwarder

__all__ = ["StatusServer", "StatusSource"]

log = logging.getLogger(__name__)

MAX_HEAD = 8192
LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: The page's languages; the first is the default when the browser asks for none of them.
LANGUAGES = ("en", "vi")
#: A key point's trend: one value every TREND_EVERY_S, the last TREND_SIZE of them (5 minutes),
#: kept by the page's server whether or not anyone looks (bounded: 60 floats, about 2 KiB, per
#: key point).
TREND_EVERY_S = 5.0
TREND_SIZE = 60


#: Loggers whose warnings come from outside the gateway's own work, each kept in a budget of
#: its own on the page: the platform's refused commands (edge/agent/commands.py). However many
#: arrive, they never push a device's, a link's or the uplink's problems off the page.
OUTSIDE_CATEGORIES = {"edge.agent.commands": "command"}


class _Recent(logging.Handler):
    """The last warnings and errors, for the page: ``size`` of the gateway's own (devices,
    links, uplink, buffer), and ``outside_size`` of each category in
    :data:`OUTSIDE_CATEGORIES`."""

    def __init__(self, size: int = 30, outside_size: int = 10) -> None:
        super().__init__(logging.WARNING)
        self.records: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=size)
        self.outside: dict[str, collections.deque[tuple[float, str, str]]] = {
            c: collections.deque(maxlen=outside_size) for c in OUTSIDE_CATEGORIES.values()
        }

    def emit(self, record: logging.LogRecord) -> None:
        try:
            category = OUTSIDE_CATEGORIES.get(record.name)
            kept = self.records if category is None else self.outside[category]
            kept.append((record.created, record.levelname, record.getMessage()))
        except Exception:  # never let the page break logging
            pass

    def newest_first(self) -> list[dict[str, Any]]:
        """Every kept record, newest first, each with its category (``gateway``, ``command``)."""
        rows = [(t, lvl, m, "gateway") for t, lvl, m in list(self.records)[::-1]]
        for category, kept in self.outside.items():
            rows += [(t, lvl, m, category) for t, lvl, m in list(kept)[::-1]]
        rows.sort(key=lambda r: r[0], reverse=True)  # stable: equal times stay newest first
        return [{"time": t, "level": lvl, "message": m, "category": c} for t, lvl, m, c in rows]


class StatusSource(Protocol):
    """What the page reads of the running gateway (:class:`edge.agent.gateway.Gateway`): its
    config, store, uplink, clock and counters; the pollers, the command handler (``stats``) and
    the links are read by attribute only, whatever their kind."""

    @property
    def loaded(self) -> LoadedConfig: ...
    @property
    def buffer(self) -> AsyncBuffer: ...
    @property
    def forwarder(self) -> Forwarder: ...
    @property
    def clock(self) -> TimeKeeper: ...
    @property
    def pollers(self) -> Sequence[Any]: ...
    @property
    def meter_buses(self) -> Sequence[MeterBus]: ...
    @property
    def links(self) -> Mapping[str, Sequence[Any]]: ...
    @property
    def commands(self) -> Any: ...
    @property
    def time_stats(self) -> Any: ...
    @property
    def writer_stats(self) -> Any: ...


class StatusServer:
    """The page's HTTP server. ``token``: the secret every request must carry (None: none is
    asked, allowed on a loopback address only). ValueError for an empty or white-space token,
    or none on an address beyond this machine: the page is never served unguarded."""

    def __init__(self, gateway: StatusSource, host: str, port: int, token: str | None) -> None:
        if token is not None and not token.strip():
            raise ValueError("the token is empty: it would let every request in")
        if token is None and host not in LOOPBACK:
            raise ValueError(f"{host} is beyond this machine and no token is set")
        self.gateway = gateway
        self.host, self.port = host, port
        self.token = token
        self.recent = _Recent()
        self._server: asyncio.Server | None = None
        self._sampler: asyncio.Task[None] | None = None
        #: (device, series) -> the last TREND_SIZE values of each key point, oldest first.
        self.trends: dict[tuple[str, str], collections.deque[float]] = {}
        self._sampled: dict[tuple[str, str], int] = {}  # the time (ms) of each newest sample
        #: line -> (monotonic s, busy s) at the previous look, for the busy share since then.
        self._busy: dict[str, tuple[float, float, float]] = {}
        self.zone = gateway.loaded.time_zone()[0]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        logging.getLogger().addHandler(self.recent)
        self._sampler = asyncio.create_task(self._sample_forever(), name="status-trends")

    async def close(self) -> None:
        logging.getLogger().removeHandler(self.recent)
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # ------------------------------------------------------------------ HTTP

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method = "GET"
        try:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > MAX_HEAD:
                raise ValueError("headers too large")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (h.partition(":") for h in lines[1:] if h)
            }
            status, ctype, body = await self._route(method, target, headers)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            status, ctype, body = 400, "text/plain", b"bad request\n"
        except Exception:
            log.exception("status page failed")
            status, ctype, body = 500, "text/plain", b"internal error\n"
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
                  405: "Method Not Allowed", 500: "Internal Server Error"}[status]  # fmt: skip
        try:
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
                "X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n".encode()
            )
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _route(
        self, method: str, target: str, headers: dict[str, str]
    ) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"read-only\n"
        url = urlsplit(target)
        if self.token is not None:
            given = parse_qs(url.query).get("token", [""])[0]
            auth = headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                given = auth[7:]
            # An empty secret is never compared (the constructor refuses one; defence in depth)
            if not (self.token and hmac.compare_digest(given.encode(), self.token.encode())):
                return 401, "text/plain", b"token required\n"
        if url.path == "/":
            return 200, "text/html; charset=utf-8", PAGE.encode()
        if url.path == "/status.json":
            state = await self.snapshot()
            state["language"] = self.language(headers.get("accept-language", ""))
            body = json.dumps(state, allow_nan=False)  # strict JSON for scripts
            return 200, "application/json", body.encode()
        if url.path == "/metrics":
            return 200, "text/plain; version=0.0.4", (await self.metrics()).encode()
        return 404, "text/plain", b"not found\n"

    def language(self, accept: str) -> str:
        """The page's language: ``status.language``, or the first of the browser's
        ``Accept-Language`` (RFC 9110 §12.5.4, by q) the page speaks, or English."""
        chosen = getattr(self.gateway.loaded.config.status, "language", "auto")
        if chosen in LANGUAGES:
            return chosen
        ranked = []
        for i, part in enumerate(accept.split(",")):
            tag, _, params = part.strip().partition(";")
            q = 1.0
            if params.strip().startswith("q="):
                try:
                    q = float(params.strip()[2:])
                except ValueError:
                    q = 0.0
            ranked.append((-q, i, tag.strip().lower().split("-")[0]))
        for neg_q, _, tag in sorted(ranked):
            if tag in LANGUAGES and neg_q < 0:
                return tag
        return LANGUAGES[0]

    # ------------------------------------------------------------------ trends

    async def _sample_forever(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:  # never let the page stop the gateway
                log.debug("status trends: sampling failed", exc_info=True)
            await asyncio.sleep(TREND_EVERY_S)

    def sample(self) -> None:
        """Keep each key point's newest value in its trend (once per new reading)."""
        for p in self.gateway.pollers:
            profile = self.gateway.loaded.profiles.get(p.device.id)
            keys = {pt.name for pt in getattr(profile, "points", ()) if pt.key}
            for name, (ts_ms, v) in list(p.last.items()):
                if name.split(".")[0] not in keys or not _finite(v):
                    continue
                series = (p.device.id, name)
                if self._sampled.get(series, -1) >= ts_ms:
                    continue  # no new reading since the last sample
                self._sampled[series] = ts_ms
                ring = self.trends.setdefault(series, collections.deque(maxlen=TREND_SIZE))
                ring.append(float(v))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ content

    def when(self, ts: float | None, now: float) -> dict[str, str | None] | None:
        """A moment in the gateway's zone (LoadedConfig.time_zone): 24 h ``time``, and the
        ``date`` (ISO) when it is not today there; the page writes the date its language's way."""
        if ts is None:
            return None
        at = datetime.fromtimestamp(ts, self.zone)
        today = datetime.fromtimestamp(now, self.zone).date()
        return {
            "time": at.strftime("%H:%M:%S"),
            "date": None if at.date() == today else at.date().isoformat(),
        }

    def _values(self, p: Any) -> list[dict[str, Any]]:
        """The device's last values with their units: the profile's key points first, then
        the rest, each group in profile order (a series ``x.mean`` where its point ``x`` is)."""
        profile = self.gateway.loaded.profiles.get(p.device.id)
        points = list(getattr(profile, "points", ()))
        order = {pt.name: i for i, pt in enumerate(points)}
        by_name = {pt.name: pt for pt in points}
        rows = []
        for name, (_, v) in p.last.items():
            if name.startswith("_"):
                continue
            pt = by_name.get(name.split(".")[0])
            key = bool(pt is not None and pt.key)
            row: dict[str, Any] = {
                "name": name,
                "value": _show(v),
                "unit": pt.unit if pt is not None else "",
                "key": key,
            }
            ring = self.trends.get((p.device.id, name))
            if key and ring is not None and len(ring) >= 2:
                row["trend"] = [_show(x) for x in ring]
            rows.append((not key, order.get(name.split(".")[0], len(order)), name, row))
        rows.sort(key=lambda r: r[:3])
        return [r[3] for r in rows]

    def _lines(self) -> list[dict[str, Any]]:
        """Each RS-485 line's share of time busy since the page last looked (or since it
        started), and its error counters (edge/fieldbus/rtu.py LineStats)."""
        out = []
        mono = time.monotonic()
        for name, links in self.gateway.links.items():
            for i, link in enumerate(links):
                st = getattr(link, "stats", None)
                if st is None or not hasattr(st, "busy_s"):
                    continue
                label = name if len(links) == 1 else f"{name}#{i}"
                then, busy_then, share = self._busy.get(label, (mono, 0.0, 0.0))
                if mono - then >= 1.0:
                    share = min(1.0, max(0.0, (st.busy_s - busy_then) / (mono - then)))
                    self._busy[label] = (mono, st.busy_s, share)
                elif label not in self._busy:
                    self._busy[label] = (mono, st.busy_s, 0.0)
                out.append(
                    {
                        "line": label,
                        "busy_share": round(share, 3),
                        "transactions": st.transactions,
                        "timeouts": st.timeouts,
                        "crc_errors": st.crc_errors,
                        "garbage_bytes": st.garbage_bytes,
                    }
                )
        return out

    async def snapshot(self) -> dict[str, Any]:
        g = self.gateway
        cfg = g.loaded.config
        b = await g.buffer.stats()
        f = g.forwarder.stats
        now = time.time()
        devices = []
        for p in g.pollers:
            last = {k: v for k, v in p.last.items() if not k.startswith("_")}
            newest = max((ts for ts, _ in last.values()), default=None)
            points = self._values(p)
            devices.append(
                {
                    "id": p.device.id,
                    "profile": p.device.profile,
                    "where": p.device.transport.describe(),
                    "status": p.status or "starting",
                    "bad_points": p.bad_points or "",
                    "polls": p.stats.polls,
                    "readings": p.stats.readings,
                    "errors": sum(p.stats.errors_by_kind.values()),
                    "last_error": getattr(p.stats, "last_error", None),
                    "age_s": None if newest is None else round(now - newest / 1000, 1),
                    "since": self.when(getattr(p, "status_since", None), now),
                    # name -> value, for scripts (as before); the page reads "points"
                    "values": {v["name"]: v["value"] for v in points},
                    "points": points,
                }
            )
        oldest = b.oldest_pending_ms
        return {
            "gateway": cfg.gateway.id,
            "site": cfg.gateway.site,
            "time": now,
            "now": self.when(now, now),
            "zone": str(self.zone),
            "lines": self._lines(),
            "uplink": {
                # The node in use (mqtt.url or one of mqtt.failover_urls).
                "broker": getattr(f, "broker", "") or cfg.mqtt.url,
                "connected": f.connected,
                "sessions": f.sessions,
                "batches_sent": f.batches_sent,
                "readings_sent": f.readings_sent,
                "last_seq_acked": f.last_seq_acked,
            },
            "buffer": {
                "pending_readings": b.pending_readings,
                "outbox_batches": b.outbox_batches,
                "used_bytes": b.used_bytes,
                "max_bytes": b.max_bytes,
                "oldest_unsent_age_s": None if oldest is None else round(now - oldest / 1000, 1),
                "evicted_total": b.evicted_total,
                "corrupt_lost_total": b.corrupt_lost_total,
                "unencodable_total": b.unencodable_total,
            },
            "clock": {
                "trusted": g.clock.trusted,
                "why": g.clock.why,
                "steps": g.clock.steps,
                "held_readings": g.buffer.sync.held,
                "corrected_total": g.time_stats.corrected,
                "uncertain_total": g.time_stats.uncertain,
            },
            "devices": devices,
            "recent": [
                {**e, "when": self.when(e["time"], now)} for e in self.recent.newest_first()
            ],
        }

    async def metrics(self) -> str:
        g = self.gateway
        b = await g.buffer.stats()
        f = g.forwarder.stats
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP edge_{name} {help_}")
            out.append(f"# TYPE edge_{name} {kind}")
            out.extend(f"edge_{name}{labels} {value:g}" for labels, value in samples)

        def dev(p: Any, **extra: str) -> str:
            labels = {"device": p.device.id, **extra}
            return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items()) + "}"

        polls = g.pollers
        metric(
            "polls_total", "counter", "Poll cycles run.", [(dev(p), p.stats.polls) for p in polls]
        )
        metric(
            "readings_polled_total",
            "counter",
            "Readings produced by polling, health readings included.",
            [(dev(p), p.stats.readings) for p in polls],
        )
        metric(
            "request_errors_total",
            "counter",
            "Failed requests or samples, by kind.",
            [(dev(p, kind=k), n) for p in polls for k, n in sorted(p.stats.errors_by_kind.items())],
        )
        metric(
            "device_up",
            "gauge",
            "1 online, 0.5 degraded, 0 offline.",
            [(dev(p), {"online": 1, "degraded": 0.5}.get(p.status or "", 0)) for p in polls],
        )
        metric("uplink_connected", "gauge", "MQTT session up.", [("", int(f.connected))])
        metric(
            "clock_trusted",
            "gauge",
            "1 when readings are stamped with a trusted wall clock.",
            [("", int(g.clock.trusted))],
        )
        metric("clock_steps_total", "counter", "Clock steps detected.", [("", g.clock.steps)])
        metric(
            "readings_held",
            "gauge",
            "Readings waiting in the buffer for a trusted clock.",
            [("", g.buffer.sync.held)],
        )
        metric(
            "readings_retimed_total",
            "counter",
            "Held readings sent with a corrected or uncertain time, by quality.",
            [('{quality="corrected"}', g.time_stats.corrected),
             ('{quality="uncertain"}', g.time_stats.uncertain)],
        )  # fmt: skip
        metric("uplink_sessions_total", "counter", "MQTT sessions opened.", [("", f.sessions)])
        metric(
            "uplink_connect_failures_total",
            "counter",
            "Failed connects.",
            [("", f.connect_failures)],
        )
        metric(
            "uplink_refused_total",
            "counter",
            "Messages the broker refused (PUBACK code >= 0x80; kept, sent again), by reason.",
            [(f'{{reason="{_esc(r)}"}}', n) for r, n in sorted(f.refused.items())],
        )
        metric(
            "batches_sent_total",
            "counter",
            "Batches acknowledged by the broker.",
            [("", f.batches_sent)],
        )
        metric(
            "readings_sent_total",
            "counter",
            "Readings in acknowledged batches.",
            [("", f.readings_sent)],
        )
        metric(
            "batches_resent_total",
            "counter",
            "Batches sent again after a broken session.",
            [("", f.resent_batches)],
        )
        metric(
            "buffer_pending_readings",
            "gauge",
            "Accepted readings not yet in a batch.",
            [("", b.pending_readings)],
        )
        metric(
            "buffer_outbox_batches",
            "gauge",
            "Sealed batches awaiting acknowledgement.",
            [("", b.outbox_batches)],
        )
        metric("buffer_bytes", "gauge", "Bytes used by the buffer file.", [("", b.used_bytes)])
        metric("buffer_max_bytes", "gauge", "The buffer's size limit.", [("", b.max_bytes)])
        oldest = b.oldest_pending_ms
        age = 0.0 if oldest is None else max(0.0, time.time() - oldest / 1000)
        metric(
            "buffer_oldest_unsent_seconds",
            "gauge",
            "Age of the oldest unsent reading.",
            [("", age)],
        )
        metric(
            "readings_dropped_total",
            "counter",
            "Readings lost at the gateway, by reason.",
            [('{reason="buffer_full_evicted"}', b.evicted_total),
             ('{reason="disk_full_rejected"}', g.writer_stats.rejected),
             ('{reason="buffer_corrupt_lost"}', b.corrupt_lost_total),
             ('{reason="unencodable_value"}', b.unencodable_total)],
        )  # fmt: skip
        handler = g.commands
        if handler is not None:
            c = handler.stats
            metric(
                "commands_total",
                "counter",
                "Platform commands received, by outcome (retained: delivered from the broker's "
                "stored copy, refused, never carried out).",
                [('{outcome="ok"}', c.ok),
                 ('{outcome="refused"}', c.refused - c.retained),
                 ('{outcome="retained"}', c.retained)],
            )  # fmt: skip
        buses = g.meter_buses
        if buses:

            def bus(b: Any, **extra: str) -> str:
                labels = {"bus": b.cfg.id, **extra}
                return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items()) + "}"

            for field, help_ in (
                ("entries", "Meter journal entries committed (exactly once)."),
                ("duplicates", "Meter entries re-sent after a lost acknowledgement."),
                ("missing", "Meter entries a meter skipped (lost in its journal)."),
                ("busy", "Meter entries refused for lack of room (kept by the meter)."),
                ("timeouts", "Meter polls with no valid answer."),
                ("unexpected", "Frames from an address not polled, or not from a meter."),
            ):
                metric(
                    f"parking_{field}_total",
                    "counter",
                    help_,
                    [(bus(b), getattr(b.stats, field)) for b in buses],
                )
            metric(
                "parking_refused_total",
                "counter",
                "Meter entries NAKed, by reason.",
                [(bus(b, reason=r), n) for b in buses for r, n in sorted(b.stats.refused.items())],
            )
            metric(
                "parking_entries_unsent",
                "gauge",
                "Committed meter entries not yet acknowledged by the broker.",
                [("", await g.buffer.entries_pending())],
            )
        sensors = [p for p in polls if hasattr(p.stats, "stale_frames")]  # serial sensors
        for field, help_ in (
            ("stale_frames", "Sensor frames discarded because they were older than the request."),
            ("mode_resets", "Reporting-mode commands re-sent to a sensor in the wrong mode."),
        ):
            metric(
                f"sensor_{field}_total",
                "counter",
                help_,
                [(dev(p), getattr(p.stats, field)) for p in sensors],
            )
        lines = [
            (name, link)
            for name, links in g.links.items()
            for link in links
            if hasattr(link, "stats")
        ]
        for field, name, help_ in (
            ("transactions", "transactions", "RS-485 transactions completed."),
            ("timeouts", "timeouts", "RS-485 requests with no valid answer."),
            ("crc_errors", "crc_errors", "RS-485 answers with a bad CRC."),
            ("garbage_bytes", "garbage_bytes", "RS-485 bytes that were not the expected answer."),
            ("stale_bytes", "stale_bytes", "RS-485 bytes that arrived unasked."),
            (
                "late_bytes",
                "late_bytes",
                "RS-485 bytes discarded after a timeout (late-answer window) or during a request.",
            ),
            (
                "late_answers",
                "late_answers",
                "RS-485 answers that came after their request timed out, discarded.",
            ),
            (
                "late_taken",
                "late_taken",
                "RS-485 late answers taken as the answer to the retry of their request.",
            ),
            (
                "late_wait_s",
                "late_wait_seconds",
                "Seconds the RS-485 line was held for late answers after timeouts.",
            ),
            (
                "never_quiet",
                "never_quiet",
                "RS-485 tries not sent: bytes kept coming, the line was never quiet for t3.5.",
            ),
            ("busy_s", "busy_seconds", "Seconds the RS-485 line spent in transactions."),
        ):
            metric(
                f"line_{name}_total",
                "counter",
                help_,
                [(f'{{line="{_esc(n)}"}}', getattr(link.stats, field)) for n, link in lines],
            )
        endpoints = [
            (f'{{endpoint="{_esc(name)}",connection="{i}"}}', link)
            for name, links in g.links.items()
            for i, link in enumerate(links)
            if hasattr(link, "stale_answers")
        ]
        if endpoints:
            metric(
                "tcp_connects_total",
                "counter",
                "Modbus TCP connections opened, by endpoint (connection).",
                [(labels, link.connects) for labels, link in endpoints],
            )  # fmt: skip
            metric(
                "tcp_stale_answers_total",
                "counter",
                "Modbus TCP answers to requests already completed or given up, thrown away.",
                [(labels, link.stale_answers) for labels, link in endpoints],
            )  # fmt: skip
        return "\n".join(out) + "\n"


def _esc(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _finite(v: object) -> bool:
    return (
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)  # type: ignore[arg-type]
    )


def _show(v: object) -> object:
    """A last value for the page and /status.json: strict JSON has no NaN or infinity, so those
    are shown by name, as the consumer's JSON lines name them."""
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "Infinity" if v > 0 else "-Infinity"
        return round(v, 3)
    return v


#: The page: one self-contained file (inline CSS and JS), shipped as package data.
PAGE = (resources.files("edge") / "data" / "status.html").read_text(encoding="utf-8")
