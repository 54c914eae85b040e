"""TLS for the broker link: one place that builds the client SSL context."""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["client_context", "describe_tls_error"]


def client_context(
    ca_file: Path | None = None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """Verify the broker against ``ca_file`` (the system store when None), hostname included;
    present ``cert_file``/``key_file`` as the client certificate when given."""
    ctx = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return ctx


def describe_tls_error(text: str) -> str | None:
    """Operator words for the TLS failures that show up as connection errors, else None."""
    if "CERTIFICATE_VERIFY_FAILED" in text:
        if "Hostname mismatch" in text or "IP address mismatch" in text:
            return (
                "TLS: the broker's certificate does not name the host in mqtt.url "
                f"(check its subject alternative names): {text}"
            )
        return (
            "TLS: the broker's certificate did not verify against mqtt.tls.ca_file "
            f"(wrong CA file, or an expired certificate): {text}"
        )
    if "TLSV1_ALERT" in text or "SSLV3_ALERT" in text or "certificate required" in text:
        return (
            "TLS: the broker rejected the handshake (it may require a client certificate: "
            f"check mqtt.tls.cert_file / key_file): {text}"
        )
    return None
