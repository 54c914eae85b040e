"""The agent that runs in the cabinet and wires the wings together: the gateway, the Modbus
pollers, the processing stage (windows, deadbands) and the platform's command handler. Data
flows field bus → pollers → processing → store → uplink → broker.

May import every wing below it (``edge.shared``, ``edge.store``, ``edge.config``,
``edge.fieldbus``, ``edge.uplink``, ``edge.ops``); only ``edge.cli`` and ``edge.demo`` import it.
Exposes its modules; importing the package loads none of them.
"""

__all__ = ["commands", "gateway", "poller", "processing"]
