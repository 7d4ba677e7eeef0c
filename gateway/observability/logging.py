"""JSON log lines on stdout via structlog, written off the event loop.

A write to stdout blocks when whatever reads it (a terminal, a pipe to a log shipper) is slow;
on the event loop that would stall every request of the worker. Lines are therefore put on a
bounded queue that a writer thread drains in batches. When the queue is full the line is dropped
and counted (`gateway_access_log_dropped_total`): losing a log line under overload beats losing
latency for every request.
"""

from __future__ import annotations

import logging
import os
import select
import sys
import threading
from typing import Any, TextIO

import structlog

from gateway.config.model import LoggingConfig

_QUEUE_LINES = 10_000
# The writer thread writes what is pending every _WRITE_INTERVAL seconds, or at once when
# _WAKE_AT lines are waiting.
_WRITE_INTERVAL = 0.05
_WAKE_AT = 1024
_PIPE_BUF = select.PIPE_BUF


class LineWriter:
    """A bounded buffer of lines and the thread that writes them to a stream.

    The event loop only appends to a list (atomic under the GIL); the thread takes the whole list
    every 50 ms (sooner for a large backlog), so lines cost no locked queue operation and no
    thread switch each. A line reaches stdout at most about 50 ms after it was logged.
    """

    def __init__(self, stream: TextIO, max_lines: int = _QUEUE_LINES) -> None:
        self._stream = stream
        try:
            stream.flush()
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None  # not a real file (a test's StringIO): write through the stream
        self._max_lines = max_lines
        self._pending: list[str] = []
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def write(self, line: str) -> None:
        pending = self._pending
        if len(pending) >= self._max_lines:
            from gateway.observability.metrics import ACCESS_LOG_DROPPED

            ACCESS_LOG_DROPPED.inc()
            return
        pending.append(line)
        if len(pending) == _WAKE_AT:
            self._wake.set()

    def flush(self, timeout: float = 5.0) -> None:
        """Write what is pending and stop the thread (at exit)."""
        if not self._thread.is_alive():
            return
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            # Woken early only by a large backlog or by flush(): each wake-up makes the event
            # loop's thread hand over the GIL, so a steady stream is written a few times a
            # second in batches rather than once per burst.
            self._wake.wait(_WRITE_INTERVAL)
            self._wake.clear()
            # Swap, then write: lines appended from now on go to the new list (and wake us).
            batch, self._pending = self._pending, []
            if batch:
                try:
                    self._emit(batch)
                except (OSError, ValueError):
                    return  # stdout is gone: nothing left to log to
            if self._closing and not self._pending:
                return

    def _emit(self, lines: list[str]) -> None:
        """Write ``lines`` in chunks of whole lines of at most PIPE_BUF bytes each.

        Workers share one stdout pipe; POSIX makes a pipe write of at most PIPE_BUF bytes atomic,
        so lines from different processes never interleave mid-line (a longer single line is the
        one exception, written on its own).
        """
        if self._fd is None:
            self._stream.write("\n".join(lines) + "\n")
            self._stream.flush()
            return
        chunk = bytearray()
        for line in lines:
            data = line.encode() + b"\n"
            if chunk and len(chunk) + len(data) > _PIPE_BUF:
                self._write_all(chunk)
                chunk = bytearray()
            chunk += data
        if chunk:
            self._write_all(chunk)

    def _write_all(self, data: bytearray) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]


class _QueueLogger:
    """The structlog logger at the end of the chain: hands the rendered line to the writer."""

    def __init__(self, writer: LineWriter) -> None:
        self._write = writer.write

    def msg(self, message: str) -> None:
        self._write(message)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


_writer: LineWriter | None = None


def configure_logging(config: LoggingConfig, stream: TextIO | None = None) -> None:
    """JSON lines on ``stream`` (stdout), filtered at the configured level."""
    global _writer
    if _writer is not None:
        _writer.flush()
    writer = _writer = LineWriter(stream or sys.stdout)
    level = logging.getLevelNamesMapping()[config.level.upper()]
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=lambda *_: _QueueLogger(writer),
        cache_logger_on_first_use=True,
    )
    # aiohttp and asyncio log through the standard library: send them down the same path.
    handler = logging.Handler(level)
    handler.emit = _stdlib_emit  # type: ignore[method-assign]
    logging.basicConfig(level=level, handlers=[handler], force=True)


def _stdlib_emit(record: logging.LogRecord) -> None:
    get_logger(record.name).log(
        record.levelno,
        record.getMessage(),
        exc_info=record.exc_info if record.exc_info else None,
    )


def write_line(line: str) -> None:
    """Hand one already rendered JSON line to the writer (the access log's fast path)."""
    if _writer is not None:
        _writer.write(line)


def flush_logging() -> None:
    """Write every queued line; call before the process exits."""
    if _writer is not None:
        _writer.flush()


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
