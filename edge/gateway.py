"""The gateway: poll -> writer -> buffer -> forwarder, as named tasks in one TaskGroup.

    DevicePoller x N --(bounded queue: pollers wait when full)--> writer --(group commit)-->
    SQLite buffer --(seal / PUBACK / ack)--> Forwarder --> MQTT broker

Readings are *accepted* when the writer's transaction commits. On shutdown (SIGTERM, SIGINT,
cancellation) the writer commits whatever it holds and whatever is queued before the buffer
closes, so a clean stop loses nothing that was read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from devices import get_profile
from edge import __version__
from edge.buffer import AsyncBuffer, BufferError
from edge.commands import CommandHandler
from edge.config import LoadedConfig, ModbusRtuTransport
from edge.forwarder import Forwarder
from edge.modbus_adapter import ModbusTcpLink
from edge.poller import BAD_POINTS, STATUS_POINT, DevicePoller
from edge.rtu import RtuLink
from protocols.batch import Reading
from protocols.birth import Birth, SeriesInfo

__all__ = ["Gateway", "WriterStats"]

log = logging.getLogger(__name__)

#: Poll results waiting for the writer. Each item is one poll cycle of one device.
QUEUE_CYCLES = 1024
#: Readings per transaction at most (a backlog after a stall is committed in chunks).
MAX_ROWS_PER_COMMIT = 20_000


@dataclass
class WriterStats:
    commits: int = 0
    accepted: int = 0
    rejected: int = 0  # the buffer refused them (disk full after eviction)


class Gateway:
    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        cfg = loaded.config
        self.buffer = AsyncBuffer(
            loaded.buffer_path, max_bytes=cfg.buffer.max_bytes, synchronous=cfg.buffer.synchronous
        )
        self.queue: asyncio.Queue[list[Reading]] = asyncio.Queue(maxsize=QUEUE_CYCLES)
        # One owner per line: a serial port, or a TCP endpoint (a device or a TCP-to-RTU bridge)
        # with up to max_connections connections; a link serialises the requests of the unit
        # ids on it, and a device always uses the same connection.
        self.links: dict[str, list[ModbusTcpLink | RtuLink]] = {}
        self.pollers: list[DevicePoller] = []
        on_line: dict[str, int] = {}
        for dev in cfg.devices:
            t = dev.transport
            links = self.links.get(t.line)
            if links is None:
                if isinstance(t, ModbusRtuTransport):
                    links = [RtuLink(t.port, t.timing())]
                else:
                    links = [ModbusTcpLink(t.host, t.port) for _ in range(t.max_connections)]
                self.links[t.line] = links
            n = on_line[t.line] = on_line.get(t.line, -1) + 1
            link = links[n % len(links)]
            self.pollers.append(DevicePoller(dev, loaded.plans[dev.id], link, self.queue))
        self.forwarder = Forwarder(
            self.buffer,
            cfg.mqtt,
            gateway_id=cfg.gateway.id,
            site=cfg.gateway.site,
            password=loaded.mqtt_password(),
            birth=self.birth,
            tls_context=loaded.tls_context(),
            commands=CommandHandler(self) if cfg.commands.enabled else None,
        )
        self.started_ms = int(time.time() * 1000)
        self.writer_stats = WriterStats()
        self._holding: list[Reading] = []  # taken from the queue, not yet committed
        self.poll_tasks: list[asyncio.Task[None]] = []
        self.started = asyncio.Event()

    async def birth(self) -> Birth:
        """The birth message: who this gateway is and what every series id means."""
        cfg = self.loaded.config
        meta: dict[tuple[str, str], tuple[str, str]] = {}
        devices = []
        for dev in cfg.devices:
            profile = get_profile(dev.profile)
            for p in profile.points:
                meta[(dev.id, p.name)] = (p.unit, str(p.dtype))
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
        return Birth(
            gateway=cfg.gateway.id,
            site=cfg.gateway.site,
            boot=await self.buffer.boot(),
            software=f"hanoi-edge {__version__}",
            started_ms=self.started_ms,
            next_seq=stats.next_seq,
            devices=tuple(devices),
            series=series,
        )

    async def run(self) -> None:
        """Run until cancelled; on the way out commit everything already read."""
        await self.buffer.open()
        await self.buffer.register_series(
            [
                (p.device.id, name)
                for p in self.pollers
                for name in [
                    STATUS_POINT,
                    BAD_POINTS,
                    *(pt.name for r in p.plan.requests for pt in r.points),
                ]
            ]
        )
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
            log.info(
                "device %s (%s @ %s): %s",
                p.device.id,
                p.device.profile,
                p.device.transport.describe(),
                p.plan.summary(),
            )
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._writer(), name="writer")
                tg.create_task(self.forwarder.run(), name="forwarder")
                self.poll_tasks = [
                    tg.create_task(p.run(), name=f"poll:{p.device.id}") for p in self.pollers
                ]
                self.started.set()
        finally:
            await self._flush_on_exit()

    def stop_polling(self) -> None:
        """Stop reading devices; the writer and forwarder go on until the buffer drains."""
        for task in self.poll_tasks:
            task.cancel()

    async def _commit(self, rows: list[Reading]) -> None:
        try:
            n = await self.buffer.append(rows)
        except BufferError as exc:
            self.writer_stats.rejected += len(rows)
            log.error("%s", exc)
            return
        self.writer_stats.commits += 1
        self.writer_stats.accepted += n
        self.forwarder.notify_appended()

    async def _writer(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.loaded.config.buffer.commit_interval_ms / 1000.0
        while True:
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
                self._holding.extend(cycle)
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
            rows.extend(self.queue.get_nowait())
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
