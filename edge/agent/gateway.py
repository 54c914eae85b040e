"""The gateway: poll -> writer -> buffer -> forwarder, as named tasks in one TaskGroup.

    DevicePoller x N --(bounded queue: pollers wait when full)--> writer --(group commit)-->
    SQLite buffer --(seal / PUBACK / ack)--> Forwarder --> MQTT broker

Readings are *accepted* when the writer's transaction commits. On shutdown (SIGTERM, SIGINT,
cancellation) the writer commits whatever it holds and whatever is queued before the buffer
closes, so a clean stop loses nothing that was read.

The buffer is opened (and locked: one gateway per buffer) before anything else runs. A disk with
no room to open it, or to create the parking signing key, is waited out, logged once, never a
crash loop; another gateway holding the buffer, or a path that cannot work, ends the run with
:class:`BufferUnavailable` saying why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from devices import Profile, SensorProfile
from edge import __version__
from edge.agent.commands import CommandHandler
from edge.agent.poller import DevicePoller
from edge.agent.processing import LOCAL_WINDOW_MIN_S, Processor, output_series
from edge.fieldbus.modbus_tcp import Endpoint, ModbusTcpLink
from edge.fieldbus.parking import MeterBus
from edge.fieldbus.rtu import RtuLink
from edge.fieldbus.uart_sensor import SensorPoller
from edge.ops import systemd
from edge.ops.status import StatusServer
from edge.settings import LoadedConfig, ModbusRtuTransport, ProcessingRule, UartTransport
from edge.shared.clock import CORRECTED, PENDING, keeper_for
from edge.shared.health import BAD_POINTS, STATUS_POINT
from edge.shared.secrets import SecretFileError, read_secret
from edge.shared.signing import Signer, SigningKeyError
from edge.store.buffer import AsyncBuffer, BufferError, BufferInUse, BufferUnavailable
from edge.store.storage import Episode
from edge.uplink.forwarder import Forwarder
from protocols.batch import Reading
from protocols.birth import Birth, SeriesInfo

__all__ = ["Gateway", "WriterStats"]

log = logging.getLogger(__name__)

#: Poll results waiting for the writer. Each item is one poll cycle of one device.
QUEUE_CYCLES = 1024
#: Readings per transaction at most (a backlog after a stall is committed in chunks).
MAX_ROWS_PER_COMMIT = 20_000
#: Waiting for room on the disk at start: the first retry, and the longest wait between tries.
OPEN_RETRY_S = (1.0, 30.0)


@dataclass
class WriterStats:
    commits: int = 0
    accepted: int = 0
    rejected: int = 0  # the buffer refused them (disk full after eviction)


@dataclass
class TimeStats:
    corrected: int = 0  # held readings re-timed once the clock was trusted (this run)
    uncertain: int = 0  # held too long, or across a reboot: sent with the wall clock's guess


class Gateway:
    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        cfg = loaded.config
        self.clock = keeper_for(cfg.time.trust)
        self.buffer = AsyncBuffer(
            loaded.buffer_path,
            max_bytes=cfg.buffer.max_bytes,
            synchronous=cfg.buffer.synchronous,
            boot_id=self.clock.boot_id,
        )
        self.queue: asyncio.Queue[list[Reading]] = asyncio.Queue(maxsize=QUEUE_CYCLES)
        # One owner per line: a serial port, or a TCP endpoint (a device or a TCP-to-RTU bridge)
        # with up to max_connections connections; a link serialises the requests of the unit
        # ids on it, and a device always uses the same connection. The connections to one
        # endpoint share one reconnect backoff and open one at a time.
        self.links: dict[str, list[ModbusTcpLink | RtuLink]] = {}
        self.pollers: list[DevicePoller | SensorPoller] = []
        on_line: dict[str, int] = {}
        for dev in cfg.devices:
            t = dev.transport
            if isinstance(t, UartTransport):
                sensor = loaded.profiles[dev.id]
                assert isinstance(sensor, SensorProfile)
                self.pollers.append(SensorPoller(dev, sensor, self.queue, self.clock))
                continue
            links = self.links.get(t.line)
            if links is None:
                if isinstance(t, ModbusRtuTransport):
                    links = [RtuLink(t.port, t.timing(), late_answer_s=t.late_answer_s)]
                else:
                    endpoint = Endpoint()  # its connections share one backoff, open one at a time
                    links = [
                        ModbusTcpLink(t.host, t.port, endpoint=endpoint)
                        for _ in range(t.max_connections)
                    ]
                self.links[t.line] = links
            n = on_line[t.line] = on_line.get(t.line, -1) + 1
            link = links[n % len(links)]
            profile = loaded.profiles[dev.id]  # the device's, its overrides applied
            assert isinstance(profile, Profile)
            self.pollers.append(
                DevicePoller(
                    dev, loaded.plans[dev.id], link, self.queue, self.clock, profile=profile
                )
            )
        self.zone, zone_from = loaded.time_zone()
        self.processor = Processor(
            cfg.devices, {p.device.id: list(p.point_names()) for p in self.pollers}, self.zone
        )
        if any(
            r.window_s and r.window_s >= LOCAL_WINDOW_MIN_S
            for d in cfg.devices
            for r in d.processing
        ):
            log.info("windows of an hour or more follow time zone %s (%s)", self.zone, zone_from)
        park = cfg.parking
        self.signer: Signer | None = None
        self.meter_buses: list[MeterBus] = []
        self._key_file = loaded.resolve(park.key_file) if park.buses else None
        if self._key_file is not None:
            # A key that cannot be used is a config error: exit 2 before anything runs. One the
            # disk has no room to create yet is made when the buffer opens (run() waits).
            try:
                self.signer = Signer.load_or_create(self._key_file)
            except SigningKeyError as exc:
                if not exc.disk_full:
                    raise
        #: Answers the platform's commands (None: commands disabled in the config).
        self.commands = CommandHandler(self) if cfg.commands.enabled else None
        self.forwarder = Forwarder(
            self.buffer,
            cfg.mqtt,
            gateway_id=cfg.gateway.id,
            site=cfg.gateway.site,
            password=loaded.mqtt_password(),
            birth=self.birth,
            tls_context=loaded.tls_context(),
            commands=self.commands,
            entries_per_message=park.max_entries_per_message if park.buses else 0,
        )
        self._make_meter_buses()
        self.started_ms = int(time.time() * 1000)
        self.writer_stats = WriterStats()
        self.time_stats = TimeStats()
        self._holding: list[Reading] = []  # taken from the queue, not yet committed
        self.poll_tasks: list[asyncio.Task[None]] = []
        self.started = asyncio.Event()
        self.status_page: StatusServer | None = None

    def _make_meter_buses(self) -> None:
        if self.signer is not None and not self.meter_buses:
            self.meter_buses = [
                MeterBus(bus, self.buffer, self.signer, self.forwarder.entries_stored)
                for bus in self.loaded.config.parking.buses
            ]

    def _rule(self, device: str, point: str) -> ProcessingRule | None:
        dev = next(d for d in self.loaded.config.devices if d.id == device)
        return next((r for r in dev.processing if point in (r.points or [point])), None)

    def _outputs(self, device: str, point: str) -> list[str]:
        """The series a point becomes after processing (itself, when raw)."""
        rule = self._rule(device, point)
        return [point] if rule is None else output_series(rule, point)

    def _aggregates(self, device: str, point: str) -> list[str]:
        rule = self._rule(device, point)
        return rule.aggregates if rule is not None and rule.window_s is not None else []

    async def birth(self) -> Birth:
        """The birth message: who this gateway is and what every series id means."""
        cfg = self.loaded.config
        meta: dict[tuple[str, str], tuple[Any, ...]] = {}  # SeriesInfo after (sid, dev, point)
        devices = []
        for dev in cfg.devices:
            profile = self.loaded.profiles[dev.id]
            for p in profile.points:
                # How to aggregate it, a counter's modulus, an enumeration's labels.
                how = (str(p.kind), p.wrap, dict(p.labels) or None)
                meta[(dev.id, p.name)] = (p.unit, str(p.dtype), *how)
                for agg in self._aggregates(dev.id, p.name):
                    if agg in ("min", "max", "first", "last"):  # values of the point itself
                        meta[(dev.id, f"{p.name}.{agg}")] = (p.unit, str(p.dtype), *how)
                    elif agg == "count":
                        meta[(dev.id, f"{p.name}.{agg}")] = ("", "int64", "gauge")
                    else:  # mean, percentiles
                        meta[(dev.id, f"{p.name}.{agg}")] = (p.unit, "float64", "gauge")
            meta[(dev.id, STATUS_POINT)] = ("", "status")
            meta[(dev.id, BAD_POINTS)] = ("", "bad_points")
            t = dev.transport
            devices.append(
                {
                    "id": dev.id,
                    "profile": profile.name,
                    "vendor": profile.vendor,
                    "model": profile.model,
                    "endpoint": t.line,
                    "unit": t.unit,
                    "poll_interval_s": dev.poll_interval_s,
                }
            )
        series = tuple(
            SeriesInfo(sid, d, p, *meta.get((d, p), ("", "")))
            for sid, d, p in await self.buffer.series()
        )
        stats = await self.buffer.stats()
        # Where the gateway's local days begin: windows of an hour or more align to it.
        extra: dict[str, object] = {"time_zone": str(self.zone)}
        if self.signer is not None:
            extra |= {
                "signing_key": {"alg": "ed25519", "public": self.signer.public_b64},
                "meters": [
                    {"id": m.id, "bus": b.id, "address": m.address}
                    for b in cfg.parking.buses
                    for m in b.meters
                ],
            }
        return Birth(
            gateway=cfg.gateway.id,
            site=cfg.gateway.site,
            boot=await self.buffer.boot(),
            software=f"hanoi-edge {__version__}",
            started_ms=self.started_ms,
            next_seq=stats.next_seq,
            devices=tuple(devices),
            series=series,
            extra=extra,
        )

    async def run(self) -> None:
        """Run until cancelled; on the way out commit everything already read.
        :class:`BufferUnavailable` (:class:`BufferInUse`) when the buffer cannot be used."""
        try:
            await self._open_storage()
        except BaseException:
            await self.buffer.close()
            raise
        stats = await self.buffer.stats()
        log.info(
            "gateway %s: buffer %s holds %d readings and %d unacknowledged batches; next batch %d",
            self.loaded.config.gateway.id,
            self.loaded.buffer_path,
            stats.pending_readings,
            stats.outbox_batches,
            stats.next_seq,
        )
        for p in self.pollers:
            log.info("device %s (%s) %s", p.device.id, p.device.profile, p.summary())
        await self._start_status_page()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._writer(), name="writer")
                tg.create_task(self.forwarder.run(), name="forwarder")
                self.poll_tasks = [
                    tg.create_task(p.run(), name=f"poll:{p.device.id}") for p in self.pollers
                ]
                for bus in self.meter_buses:
                    tg.create_task(bus.run(), name=f"parking:{bus.cfg.id}")
                tg.create_task(systemd.watchdog(), name="watchdog")
                tg.create_task(self._clock_watch(), name="clock")
                self.started.set()
                systemd.notify("READY=1")
        finally:
            systemd.notify("STOPPING=1")
            if self.status_page is not None:
                await self.status_page.close()
            await self._flush_on_exit()

    async def _open_storage(self) -> None:
        """Open the buffer and create the signing key, waiting while the disk has no room for
        them (ERROR once, DEBUG while it lasts, INFO when open). Anything waiting cannot help
        with is raised."""
        pairs = [
            (p.device.id, name)
            for p in self.pollers
            for name in [
                STATUS_POINT,
                BAD_POINTS,
                *(out for n in p.point_names() for out in self._outputs(p.device.id, n)),
            ]
        ]
        waiting = Episode(log)
        delay = OPEN_RETRY_S[0]
        while True:
            try:
                await self.buffer.open()
                await self.buffer.register_series(pairs)
                if self._key_file is not None and self.signer is None:
                    self.signer = await asyncio.to_thread(Signer.load_or_create, self._key_file)
                    self._make_meter_buses()
                break
            except (BufferUnavailable, SigningKeyError) as exc:
                retry = exc.retry if isinstance(exc, BufferUnavailable) else exc.disk_full
                if not retry or isinstance(exc, BufferInUse):
                    raise
                waiting.start(
                    "%s. The gateway waits for it and tries again, every %g s at most", exc,
                    OPEN_RETRY_S[1],
                )  # fmt: skip
                # Under systemd (Type=notify) the start may take this long: no restart loop.
                systemd.notify(f"EXTEND_TIMEOUT_USEC={int((delay + 30) * 1e6)}")
                systemd.notify("STATUS=waiting for room on the disk to open the buffer")
                await asyncio.sleep(delay)
                delay = min(delay * 2, OPEN_RETRY_S[1])
        waiting.end("buffer %s open", self.loaded.buffer_path)

    async def _start_status_page(self) -> None:
        """The page is a help, not a duty: if it cannot listen, say why and run without it."""
        st = self.loaded.config.status
        if not st.enabled:
            return
        token = None
        try:
            if st.token_file:
                # Checked by edge check; read again here, as it may have changed since.
                token = read_secret(self.loaded.resolve(st.token_file), "status.token_file")
            page = StatusServer(self, st.host, st.port, token)
        except (SecretFileError, ValueError) as exc:
            # Never a page without its token: it would be open to anyone who can reach it.
            log.error("status page: %s; running without it", exc)
            return
        try:
            await page.start()
        except OSError as exc:
            log.error("status page: cannot listen on %s (%s); running without it", st.listen, exc)
            return
        self.status_page = page
        log.info("status page on %s%s", page.url, " (token required)" if token else "")

    def stop_polling(self) -> None:
        """Stop reading devices; the writer and forwarder go on until the buffer drains."""
        for task in self.poll_tasks:
            task.cancel()

    async def _commit(self, rows: list[Reading]) -> None:
        if self.clock.trusted:
            # Stamped before the clock was trusted, committed after: re-timed on the way in.
            offset = self.clock.offset_ms
            rows = [
                r._replace(ts_ms=r.boot_ms + offset, tq=CORRECTED, boot_ms=None)
                if r.tq == PENDING and r.boot_ms is not None
                else r
                for r in rows
            ]
        try:
            n = await self.buffer.append(rows)
        except BufferError as exc:
            # Counted here and in the next batch's dropped; the buffer logs the cause once.
            self.writer_stats.rejected += len(rows)
            log.debug("%s", exc)
            return
        self.writer_stats.commits += 1
        self.writer_stats.accepted += n
        self.forwarder.notify_appended()

    async def _clock_watch(self) -> None:
        """Once a second: settle readings held for a good time (corrected once the clock is
        trusted, uncertain once held longer than ``time.max_hold_s``)."""
        max_hold_ms = int(self.loaded.config.time.max_hold_s * 1000)
        while True:
            self.clock.look()
            buf = self.buffer.sync
            if buf.held:
                if self.clock.trusted:
                    n = await self.buffer.settle_held(self.clock.offset_ms)
                    self.time_stats.corrected += n
                    log.info("clock trusted: %d held readings re-timed and sent as corrected", n)
                else:
                    limit = self.clock.source.boot_ms() - max_hold_ms
                    n = await self.buffer.settle_held(None, older_than_boot_ms=limit)
                    if n:
                        self.time_stats.uncertain += n
                        log.warning(
                            "clock untrusted for over %g s (%s): %d readings go out with time "
                            "quality 'uncertain'",
                            max_hold_ms / 1000,
                            self.clock.why,
                            n,
                        )
                if n:
                    self.forwarder.notify_appended()
            await asyncio.sleep(1.0)

    async def _writer(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.loaded.config.buffer.commit_interval_ms / 1000.0
        processor = self.processor
        while True:
            if processor.active:
                # Wake at least once a second to close the windows of devices that fell silent.
                try:
                    async with asyncio.timeout(1.0):
                        cycle = await self.queue.get()
                except TimeoutError:
                    cycle = []
                self._holding.extend(processor.process(cycle))
                self._holding.extend(processor.flush(self.clock.stamp().ts_ms))
                if not self._holding:
                    continue
            else:
                self._holding.extend(await self.queue.get())
            deadline = loop.time() + interval
            while len(self._holding) < MAX_ROWS_PER_COMMIT:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel.
                    async with asyncio.timeout(remaining):
                        cycle = await self.queue.get()
                except TimeoutError:
                    break
                self._holding.extend(processor.process(cycle))
            rows, self._holding = self._holding, []
            # The commit runs on the buffer thread and cannot be stopped half-way: once started,
            # a cancellation waits for it instead of handing the rows back (which would commit
            # them a second time on the way out).
            commit = asyncio.ensure_future(self._commit(rows))
            try:
                await asyncio.shield(commit)
            except asyncio.CancelledError:
                await commit
                raise

    async def _flush_on_exit(self) -> None:
        rows = self._holding
        self._holding = []
        while not self.queue.empty():
            rows.extend(self.processor.process(self.queue.get_nowait()))
        # open windows go out as they are (their count says how many samples they hold)
        rows.extend(self.processor.flush(self.clock.stamp().ts_ms, everything=True))
        try:
            if rows:
                commit = asyncio.ensure_future(self._commit(rows))
                try:
                    await asyncio.shield(commit)
                except asyncio.CancelledError:
                    await commit  # a second cancel still waits for the hand-over to finish
                    raise
                log.info("shutdown: committed %d readings still in memory", len(rows))
        finally:
            for links in self.links.values():
                for link in links:
                    await link.close()
            await self.buffer.close()
