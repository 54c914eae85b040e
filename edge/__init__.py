"""The edge agent: polls field devices, buffers durably, forwards acknowledged batches over MQTT."""

__all__ = ["__version__"]

__version__ = "0.1.0"
