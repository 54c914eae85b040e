"""Secrets the gateway is given: files that hold them, and URLs that must not.

A secret (the MQTT password, the status page's token, a private key) lives in a file of its own
that only its owner may read, as ssh asks of a private key: a config file is shared, copied into
tickets and often world-readable; a secret file is not. Whatever is wrong with a secret file is
said in a :class:`SecretFileError` that names the file and what to do, never its content.
``edge check`` asks the same questions (:func:`secret_file_problem`) that ``edge run`` asks
when it reads the file (:func:`read_secret`), so what the one accepts the other can use.

A broker URL never carries credentials (``mqtt://user:password@host``): it is shown wherever the
broker is named (``edge check``, the log, the status page), so a password in it would be shown
too. :func:`url_secret_problem` says why one is refused, without repeating it. A PostgreSQL DSN
is held to the same rule (:func:`dsn_secret_problem`): its password goes in PGPASSWORD or
~/.pgpass, where libpq looks for it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

__all__ = [
    "SecretFileError",
    "dsn_secret_problem",
    "dsn_where",
    "owner_only_problem",
    "read_secret",
    "secret_file_problem",
    "url_secret_problem",
]

#: A secret file larger than this is not a password or a token (a wrong path, e.g. a log).
MAX_SECRET_BYTES = 4096


class SecretFileError(Exception):
    """A secret file cannot be used; the message names the file and what to do (never the
    secret). Fatal for what needs it: fix the file."""


def owner_only_problem(path: Path) -> str | None:
    """Why ``path`` is open beyond its owner (group or others may read or write it), with the
    ``chmod 600`` that fixes it, as a phrase to follow the file's name; else None. Follows a
    symlink, as reading the file does."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # absent or unreadable: the caller says so in its own words
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (
            f"is readable by others (mode {stat.S_IMODE(mode):03o}) and holds a secret: "
            f"run chmod 600 {path}"
        )
    return None


def _read(path: Path, what: str) -> str:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SecretFileError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise SecretFileError(f"{what} {path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SecretFileError(f"{what} {path} is not a file")
    problem = owner_only_problem(path)
    if problem is not None:
        raise SecretFileError(f"{what} {path} {problem}")
    if st.st_size > MAX_SECRET_BYTES:
        raise SecretFileError(
            f"{what} {path} is {st.st_size} bytes, more than a secret ({MAX_SECRET_BYTES} at "
            "most): is it the right file?"
        )
    try:
        raw = path.read_bytes()[: MAX_SECRET_BYTES + 1]
    except OSError as exc:
        raise SecretFileError(
            f"{what} {path} cannot be read: {exc.strerror} (check it as the user the gateway "
            "runs as)"
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretFileError(f"{what} {path} is not UTF-8 text") from None
    secret = text.strip()
    if not secret:
        raise SecretFileError(
            f"{what} {path} is empty{' (white space only)' if text else ''}: write the secret "
            "in it (one line)"
        )
    if "\n" in secret or "\r" in secret:
        raise SecretFileError(f"{what} {path} holds more than one line: the secret alone, please")
    return secret


def read_secret(path: Path, what: str) -> str:
    """The secret in ``path`` (surrounding white space, such as the final newline, removed).

    Raises :class:`SecretFileError` when the file is missing, not a regular file, readable by
    group or others, larger than :data:`MAX_SECRET_BYTES`, not UTF-8, empty or white space
    only, or more than one line. ``what`` names it for people (``mqtt.password_file``)."""
    return _read(path, what)


def secret_file_problem(path: Path, what: str) -> str | None:
    """What :func:`read_secret` would refuse in ``path``, or None. Changes nothing."""
    try:
        _read(path, what)
    except SecretFileError as exc:
        return str(exc)
    return None


def url_secret_problem(url: str, what: str) -> str | None:
    """Why ``url`` may not be used as given: credentials (``user:password@``), or a query or
    fragment (where some clients take them). The message never repeats the URL. None if fine."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        return (
            f"{what} carries credentials (user:password@): a URL is shown wherever the broker "
            "is named, so it must hold no secret"
        )
    if parts.query or parts.fragment or "?" in url or "#" in url:
        return f"{what} takes no query or fragment (?... #...): give only SCHEME://HOST:PORT"
    return None


def dsn_secret_problem(dsn: str, what: str) -> str | None:
    """Why ``dsn`` may not be used as given, or None: it must be a ``postgresql://`` URL
    (``postgresql://USER@HOST:PORT/DATABASE``) with no password in it, neither after the user
    nor as a ``password=`` parameter. The message never repeats the DSN."""
    try:
        parts = urlsplit(dsn)
    except ValueError:  # e.g. an unclosed "[" of an IPv6 host
        return f"{what} must be postgresql://[USER@]HOST[:PORT]/DATABASE (it does not parse)"
    if parts.scheme not in ("postgresql", "postgres"):
        return f"{what} must be postgresql://[USER@]HOST[:PORT]/DATABASE"
    if parts.password is not None or any(
        k.strip().lower() == "password" for k, _ in parse_qsl(parts.query)
    ):
        return (
            f"{what} carries a password: a DSN is shown wherever the database is named, so give "
            "the password in PGPASSWORD or ~/.pgpass"
        )
    try:
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        return f"{what} has a port that is not a number"
    return None


def dsn_where(dsn: str) -> str:
    """HOST:PORT of a ``postgresql://`` DSN for messages, PostgreSQL's defaults filled in
    (localhost, 5432); never the user or the database."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    host = parts.hostname or query.get("host") or "localhost"
    try:
        port = parts.port or int(query.get("port", 5432))
    except ValueError:
        port = 5432
    return f"{host}:{port}"
