"""The gateway's side of the broker: the forwarder (sealed batches out over MQTT QoS 1, deleted
only after the PUBACK; platform commands in, handed to whatever answers them), the MQTT client
it drives, and the embedded broker for the demo and machines without Mosquitto.

May import: ``edge.shared``, ``edge.store``, ``edge.config`` and ``protocols/``; never the field
bus, the agent or the tools: the command handler reaches it through ``forwarder.CommandSink``.
Exposes its modules; importing the package loads none of them.
"""

__all__ = ["broker", "client", "forwarder"]
