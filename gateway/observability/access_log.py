"""JSON log lines on stdout via structlog: the gateway's own events and one line per request."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from gateway.config.model import LoggingConfig


def configure_logging(config: LoggingConfig) -> None:
    """JSON lines on stdout (DESIGN.md §3), filtered at the configured level."""
    level = logging.getLevelNamesMapping()[config.level.upper()]
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
    # aiohttp and asyncio log through the standard library: route them to the same stream.
    logging.basicConfig(level=level, stream=sys.stdout, format="%(message)s", force=True)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


class AccessLog:
    """One JSON line per request."""

    __slots__ = ("_logger",)

    def __init__(self) -> None:
        self._logger = structlog.get_logger("access")

    def record(
        self,
        *,
        method: str,
        target: str,
        status: int,
        route: str,
        client_ip: str,
        request_id: str,
        duration: float,
    ) -> None:
        self._logger.info(
            "request",
            method=method,
            target=target,
            status=status,
            route=route,
            client_ip=client_ip,
            request_id=request_id,
            duration_ms=round(duration * 1000, 3),
        )
