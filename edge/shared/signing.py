"""The gateway's Ed25519 signing key for parking transactions (docs/meter-link-v1.md §5).

The private key lives in one PEM file (PKCS#8) that only its owner may read. It is created, mode
0600, the first time the gateway needs it: written whole to a temporary file, synced, then linked
into place, so a full disk or a power cut never leaves an empty or half-written key behind (an
empty key file, which older versions could leave, is replaced). A file that group or others
can read is refused, as ssh refuses one: a key anyone on the box could copy signs nothing. The
key never appears in a log line or a repr. The public key goes out in the gateway's birth message.
"""

from __future__ import annotations

import base64
import errno
import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# cryptography (with its own OpenSSL, some 6.5 MB of RSS) is imported only where a key is made,
# read or checked: a gateway without parking meters never loads it.

__all__ = ["Signer", "SigningKeyError", "verify"]

log = logging.getLogger(__name__)


class SigningKeyError(Exception):
    """The key file cannot be used; the message says why and what to do. ``disk_full``: it
    could not be written for lack of space (waiting for space may help)."""

    def __init__(self, message: str, *, disk_full: bool = False) -> None:
        super().__init__(message)
        self.disk_full = disk_full


class Signer:
    def __init__(self, key: Ed25519PrivateKey, path: Path) -> None:
        from cryptography.hazmat.primitives import serialization

        self._key = key
        self.path = path
        self.public_raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public_raw).decode()

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def __repr__(self) -> str:
        return f"Signer(path={str(self.path)!r}, public={self.public_b64})"

    @classmethod
    def load_or_create(cls, path: str | Path) -> Signer:
        """The key at ``path``, created first if there is none. SigningKeyError when it cannot
        be used or written (``disk_full`` set when the disk had no room: nothing is left)."""
        path = Path(path)
        try:
            empty = path.stat().st_size == 0
        except FileNotFoundError:
            empty = None
        except OSError as exc:
            raise SigningKeyError(f"cannot read the signing key {path}: {exc.strerror}") from None
        if empty is None or empty:
            if empty:
                log.warning("signing key %s is empty (a write cut short): making a new one", path)
            return cls._create(path, replace=bool(empty))
        return cls(_load_existing(path), path)

    @staticmethod
    def problem(path: str | Path) -> str | None:
        """What :meth:`load_or_create` would refuse at ``path``, or None; changes nothing
        (``edge check``). A key still to be made must have a folder this user can write (or
        create); one that exists must be an owner-only, unencrypted PEM Ed25519 key."""
        path = Path(path)
        try:
            st = path.stat()
        except FileNotFoundError:
            st = None
        except OSError as exc:
            return f"cannot read the signing key {path}: {exc.strerror}"
        if st is not None and (st.st_size > 0 or not stat.S_ISREG(st.st_mode)):
            try:
                _load_existing(path)
            except SigningKeyError as exc:
                return str(exc)
            return None
        existing = path.parent
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        if not existing.is_dir():
            return f"cannot create the signing key {path}: {existing} is not a folder"
        if not os.access(existing, os.W_OK | os.X_OK):
            return (
                f"cannot create the signing key {path}: {existing} is not writable by this user "
                "(it is made on first start): chown the folder to the user the gateway runs as"
            )
        return None

    @classmethod
    def _create(cls, path: Path, *, replace: bool) -> Signer:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
            if replace:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)  # fails if another process made one first: use that
                except FileExistsError:
                    return cls.load_or_create(path)
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            raise SigningKeyError(
                f"cannot create the signing key {path}: {exc.strerror}"
                + ("; free space on that disk" if full else ""),
                disk_full=full,
            ) from None
        finally:
            tmp.unlink(missing_ok=True)
        return cls(key, path)


def _load_existing(path: Path) -> Ed25519PrivateKey:
    """The key in an existing, non-empty file; SigningKeyError saying what is wrong with it."""
    st = path.stat()
    if stat.S_ISDIR(st.st_mode):
        raise SigningKeyError(f"signing key {path} is a folder: parking.key_file names a file")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SigningKeyError(
            f"signing key {path} is readable by others (mode {stat.S_IMODE(st.st_mode):03o}); "
            f"run: chmod 600 {path}"
        )
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as exc:
        raise SigningKeyError(
            f"signing key {path} is not an unencrypted PEM private key ({type(exc).__name__})"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"signing key {path} is not an Ed25519 key")
    return key


def verify(public_raw: bytes, signature: bytes, data: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True
