"""Moved to :mod:`edge.platform.ledger`; this old path re-exports it until release 0.2."""

from edge.platform.ledger import *  # noqa: F403
from edge.platform.ledger import __all__  # noqa: F401
