"""What an integrator runs on the far side of the broker, not on the gateway: the batch consumer
(QoS 1, duplicates and gaps by ``seq``) and the parking ledger (signatures checked, exactly-once
per meter, the day's reconciliation; in SQLite for one consumer, ``pgledger`` in PostgreSQL for
many), and the PostgreSQL readings store with the consumer that fills it (``pgstore``,
``store_consumer``), fed from an MQTT broker (``mqtt_source``, shared with the batch
consumer) or from a RabbitMQ cluster's quorum queue
(``amqp``). The PostgreSQL and AMQP modules import psycopg and aio-pika, the platform extra.

May import: ``edge.shared`` and ``protocols/``; never the agent, field bus, store, uplink or
tools. Exposes its modules; importing the package loads none of them.
"""

__all__ = ["amqp", "consumer", "ledger", "mqtt_source", "pgledger", "pgstore", "store_consumer"]
