"""The series that carry a device's health, beside its readings, on every change.

Every poller writes them (Modbus, serial sensors); the platform and the status page read them.
"""

from __future__ import annotations

__all__ = ["BAD_POINTS", "STATUS_POINT"]

#: The series that carries a device's health: "online", "degraded" or "offline" on each change.
STATUS_POINT = "_status"
#: The points a cycle could not read: "" (none), "all", or names joined by commas; on change.
BAD_POINTS = "_bad_points"
