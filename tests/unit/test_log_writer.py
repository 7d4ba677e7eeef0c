"""The log writer: off the event loop, bounded, and atomic per pipe write."""

from __future__ import annotations

import io
import json
import os
import select
import threading

import pytest
from prometheus_client import REGISTRY

import gateway.observability.metrics  # noqa: F401  (registers the counter)
from gateway.observability.logging import LineWriter


class BlockedStream(io.StringIO):
    """A stdout whose reader has stopped: writes wait until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def fileno(self) -> int:
        raise io.UnsupportedOperation("not a file")

    def write(self, text: str) -> int:
        self.release.wait(10)
        return super().write(text)


def dropped() -> float:
    return REGISTRY.get_sample_value("gateway_access_log_dropped_total") or 0.0


def test_a_full_queue_drops_and_counts_instead_of_blocking() -> None:
    stream = BlockedStream()
    writer = LineWriter(stream, max_lines=5)
    before = dropped()
    for index in range(50):
        writer.write(f"line {index}")  # returns at once even though the stream is stuck
    assert dropped() - before >= 50 - 5 - 1  # the queue, plus one line the thread holds
    stream.release.set()
    writer.flush()
    written = stream.getvalue().splitlines()
    assert written
    assert written == sorted(written, key=lambda line: int(line.split()[1]))


def test_lines_reach_a_pipe_whole_in_writes_of_at_most_pipe_buf() -> None:
    read_end, write_end = os.pipe()
    chunks: list[bytes] = []

    def drain() -> None:
        while data := os.read(read_end, 1 << 20):
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    with os.fdopen(write_end, "w") as stream:
        writer = LineWriter(stream)
        lines = [f"{index:05d} " + "x" * (index % 300) for index in range(3000)]
        for line in lines:
            writer.write(line)
        writer.flush()
    reader.join(10)
    os.close(read_end)
    data = b"".join(chunks)
    assert data.decode().splitlines() == lines
    # Each os.write stayed within PIPE_BUF; the reader may see several writes merged, never more
    # than one line split across two writes (every write ends with a newline).
    assert all(chunk.endswith(b"\n") for chunk in chunks)
    assert select.PIPE_BUF >= 512


def test_access_lines_are_json_whatever_the_path_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.observability import access_log

    lines: list[str] = []
    monkeypatch.setattr(access_log, "write_line", lines.append)
    log = access_log.AccessLog()
    for path in ('/a"b\\\\c', "/\x00\x1f\x7f", "/caf\xe9", "/\u2028x"):
        log.record(
            request_id="r1",
            client_ip="::1",
            method="GET",
            path=path,
            route="unmatched",
            upstream=None,
            status=404,
            bytes_in=0,
            bytes_out=10,
            duration=0.0012345,
            upstream_seconds=None,
            trace_id=None,
        )
        parsed = json.loads(lines[-1])
        assert parsed["path"] == path
        assert parsed["upstream"] is None
        assert parsed["upstream_ms"] is None
        assert parsed["duration_ms"] == 1.234 or parsed["duration_ms"] == 1.235
        assert parsed["timestamp"].endswith("Z")
