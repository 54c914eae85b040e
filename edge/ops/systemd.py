"""systemd integration without a dependency: sd_notify READY / WATCHDOG / STOPPING.

Under ``Type=notify`` systemd sets ``NOTIFY_SOCKET``; with ``WatchdogSec=`` it also sets
``WATCHDOG_USEC`` and restarts the service if the pings stop. The pings come from a task on the
gateway's event loop, so a loop that hangs (a blocking call, a deadlock) stops them and gets the
gateway restarted. Outside systemd every call here does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

__all__ = ["notify", "watchdog"]

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send one sd_notify message (e.g. ``READY=1``); False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(address)
            s.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify %s failed: %s", state, exc)
        return False
    return True


async def watchdog() -> None:
    """Ping systemd's watchdog at half its interval for as long as the event loop runs."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or not os.environ.get("NOTIFY_SOCKET"):
        return
    pid = os.environ.get("WATCHDOG_PID")
    if pid and int(pid) != os.getpid():
        return
    interval = int(usec) / 1e6 / 2
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
