"""The rate limiter's own exception, apart from the modules mypyc compiles (it cannot compile
subclasses of built-in exceptions; setup.py). Redis's are in `gateway.redisproto.errors`."""

from __future__ import annotations


class BackendDown(Exception):
    """The backend failed a moment ago; it is not asked again before it may have recovered."""
