"""What every wing needs and none owns: the gateway's clock and time quality, parking signatures,
the health series names, secret files, TLS contexts for MQTT clients on both sides of the
broker, fail points.

May import: the standard library, third-party packages and ``protocols/``; nothing else of
``edge`` but its version. Exposes its modules; importing the package loads none of them.
"""

__all__ = ["clock", "faults", "health", "secrets", "signing", "tls"]
