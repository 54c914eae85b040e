"""What an integrator runs on the far side of the broker, not on the gateway: the batch consumer
(QoS 1, duplicates and gaps by ``seq``) and the parking ledger (signatures checked, exactly-once
per meter, the day's reconciliation), and the PostgreSQL readings store with the consumer that
fills it (``pgstore``, ``store_consumer``: they import psycopg, the platform extra).

May import: ``edge.shared`` and ``protocols/``; never the agent, field bus, store, uplink or
tools. Exposes its modules; importing the package loads none of them.
"""

__all__ = ["consumer", "ledger", "pgstore", "store_consumer"]
