"""What a technician or the operating system sees and runs: the status page and Prometheus
metrics, systemd notifications, ``edge doctor`` and ``edge scan``. Each works on the pieces
(links, store, uplink, config), never on a running gateway: the status page reads a
``status.StatusSource``.

May import: ``edge.shared``, ``edge.plan``, ``edge.store``, ``edge.config``, ``edge.fieldbus``,
``edge.uplink``; never ``edge.agent``. Exposes its modules; importing the package loads none.
"""

__all__ = ["doctor", "probe", "profile_import", "scan", "status", "systemd"]
