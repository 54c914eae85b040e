"""The field side: the links that speak each bus to the devices in the cabinet. Modbus TCP and
Modbus RTU masters (one request at a time per line, what every link raises, reconnect backoff),
the serial particulate sensors, and the parking meters' link (journal entries, committed to the
store before they are acknowledged).

May import: ``edge.shared``, ``edge.plan``, ``edge.store``, ``edge.config`` and ``protocols/``;
never the uplink, the agent or the tools. Exposes its modules; importing the package loads none.
"""

__all__ = ["link", "modbus_tcp", "parking", "rtu", "uart_sensor"]
