"""The Redis client's exceptions, apart from the modules mypyc compiles (it cannot compile
subclasses of built-in exceptions; setup.py)."""

from __future__ import annotations


class RedisError(Exception):
    """An error reply from Redis (``-ERR ...``, ``-NOSCRIPT ...``)."""


class ConnectionGone(ConnectionError):
    """The connection closed or broke before the reply arrived."""
