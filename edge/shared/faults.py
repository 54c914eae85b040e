"""Fail points for the fault harnesses: inert unless ``EDGE_FAULTS`` is set.

``EDGE_FAULTS="parking_committed=0.05,tx_published=0.1"`` makes the process SIGKILL itself with
that probability each time it passes the named point, so a harness can kill the gateway at the
exact moments that matter (between receiving and committing a transaction, between committing
and acknowledging it, between a PUBACK and forgetting what it acknowledged) and not only at
random ones. Points: ``parking_received``, ``parking_committed``, ``tx_published``.
"""

from __future__ import annotations

import os
import random
import signal

__all__ = ["point"]


def _parse(spec: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, p = part.partition("=")
        out[name] = float(p)
    return out


_POINTS = _parse(os.environ.get("EDGE_FAULTS", ""))
_rng = random.Random()


def point(name: str) -> None:
    p = _POINTS.get(name)
    if p and _rng.random() < p:
        os.kill(os.getpid(), signal.SIGKILL)
