"""Moved to :mod:`edge.platform.consumer`; this old path re-exports it until release 0.2."""

from edge.platform.consumer import *  # noqa: F403
from edge.platform.consumer import __all__  # noqa: F401
