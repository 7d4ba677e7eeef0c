"""One JSON line per request (issue 3's access line), through the non-blocking log writer."""

from __future__ import annotations

from typing import Any

# Re-exported for callers written against the first version of this module.
from gateway.observability.logging import configure_logging, get_logger

__all__ = ["AccessLog", "configure_logging", "get_logger"]


class AccessLog:
    """Writes the access line; the keys are a contract with whoever parses the logs."""

    __slots__ = ("_info",)

    def __init__(self) -> None:
        self._info: Any = get_logger("access").info

    def record(
        self,
        *,
        request_id: str,
        client_ip: str,
        method: str,
        path: str,
        route: str,
        upstream: str | None,
        status: int,
        bytes_in: int,
        bytes_out: int,
        duration: float,
        upstream_seconds: float | None,
        trace_id: str | None,
    ) -> None:
        self._info(
            "access",
            request_id=request_id,
            client_ip=client_ip,
            method=method,
            path=path,
            route=route,
            upstream=upstream,
            status=status,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            duration_ms=round(duration * 1000, 3),
            upstream_ms=None if upstream_seconds is None else round(upstream_seconds * 1000, 3),
            trace_id=trace_id,
        )
