"""The durable store between the field and the uplink: the SQLite buffer (readings, sealed
batches, the outbox, committed meter entries), its file lock and disk checks, and the salvage of
a damaged buffer file.

May import: ``edge.shared`` and ``protocols/``; nothing that polls, forwards or configures.
Exposes its modules; importing the package loads none of them.
"""

__all__ = ["buffer", "salvage", "storage"]
