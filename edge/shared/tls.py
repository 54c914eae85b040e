"""TLS for the broker link: one place that builds the client SSL context.

Each file is checked on its own, so a problem is reported against the file that has it
(:class:`TlsFileError`): the CA file must hold PEM certificates, the client certificate a PEM
certificate, and the private key (``key_file``, or ``cert_file`` when the key is inside it)
must be an unencrypted PEM key that only its owner can read (as ssh asks of a key), and must
belong to the certificate. ``edge check`` builds the same context ``edge run`` does.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path

from edge.shared.secrets import owner_only_problem

__all__ = ["TlsFileError", "client_context", "describe_tls_error"]


class TlsFileError(ValueError):
    """A TLS file cannot be used. ``kind``: ``ca_file``, ``cert_file`` or ``key_file`` (the
    setting that names it); the message is the file's path and what is wrong with it, never
    its content.
    Fatal: fix the file."""

    def __init__(self, kind: str, path: Path, reason: str) -> None:
        super().__init__(f"{path} {reason}")
        self.kind, self.path, self.reason = kind, path, reason


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key's
    # passphrase; a service has no terminal. An empty one makes the load fail instead.
    return b""


def _why(exc: Exception) -> str:
    """OpenSSL's reason without the source position ("[X509] PEM lib (_ssl.c:4154)")."""
    return re.sub(r"\s*\(_ssl\.c:\d+\)", "", str(exc)) or type(exc).__name__


def _head(path: Path, kind: str) -> bytes:
    try:
        return path.read_bytes()[:1_000_000]
    except FileNotFoundError:
        raise TlsFileError(kind, path, "does not exist") from None
    except IsADirectoryError:
        raise TlsFileError(kind, path, "is a folder, not a file") from None
    except OSError as exc:
        raise TlsFileError(kind, path, f"cannot be read ({exc.strerror})") from None


def client_context(
    ca_file: Path | None = None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """Verify the broker against ``ca_file`` (the system store when None), hostname included;
    present ``cert_file``/``key_file`` as the client certificate when given. Raises
    :class:`TlsFileError` naming the file that cannot be used."""
    if ca_file is not None:
        text = _head(ca_file, "ca_file")
        if b"-----BEGIN CERTIFICATE-----" not in text:
            raise TlsFileError("ca_file", ca_file, "is not a PEM file of CA certificates")
    try:
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None
        )
    except (ssl.SSLError, OSError) as exc:
        raise TlsFileError(
            "ca_file", ca_file or Path("(system store)"),
            f"cannot be loaded as CA certificates ({_why(exc)})",
        ) from None  # fmt: skip
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        cert = _head(cert_file, "cert_file")
        if b"-----BEGIN CERTIFICATE-----" not in cert:
            raise TlsFileError("cert_file", cert_file, "is not a PEM certificate")
        kind, key_path = ("key_file", key_file) if key_file else ("cert_file", cert_file)
        key = _head(key_path, kind) if key_file else cert
        if b"PRIVATE KEY-----" not in key:
            raise TlsFileError(
                kind, key_path,
                "holds no PEM private key" + ("" if key_file else ": give key_file too"),
            )  # fmt: skip
        problem = owner_only_problem(key_path)
        if problem is not None:
            raise TlsFileError(kind, key_path, problem)
        if b"ENCRYPTED" in key:
            raise TlsFileError(
                kind, key_path,
                "holds an encrypted private key, and a service cannot ask for its passphrase: "
                "give an unencrypted key (owner-only)",
            )  # fmt: skip
        try:
            ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None, _no_passphrase)
        except (ssl.SSLError, OSError) as exc:
            reason = _why(exc)
            if "KEY_VALUES_MISMATCH" in str(exc):
                raise TlsFileError(
                    kind,
                    key_path,
                    f"holds a private key that does not belong to the certificate {cert_file}",
                ) from None
            raise TlsFileError(
                "cert_file", cert_file, f"cannot be loaded with its key ({reason})"
            ) from None
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
