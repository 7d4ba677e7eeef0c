"""loadtests/http2_bench.py: h2load's summary, the checks that fail the section, the configs it
writes, and the HTTP/1.1-loss summary.

The load-test scripts are not a package: their directory goes on sys.path as when they run.
"""

from __future__ import annotations

import ssl
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "loadtests"))

from http2_bench import (
    Certificate,
    H2loadResult,
    Http2BenchError,
    Row,
    check_h2load,
    h2load_argv,
    listener,
    loss_summary,
    parse_h2load,
)
from targets import gateway_conf

from gateway.config.loader import load_config
from tests.unit.tls_files import write_certificate

# nghttp2 1.52's h2load -D 3 -m10 against the gateway's h2c listener, progress lines cut.
OUTPUT = """\
starting benchmark...
spawning thread #0: 50 total client(s). Timing-based test with 0s of warm-up time and 3s of main duration for measurements.
Application protocol: h2c
Main benchmark duration is over for thread #0. Stopping all clients.

finished in 3.01s, 3113.80 req/s, 500.81KB/s
requests: 9341 total, 9841 started, 9341 done, 9341 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 9341 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 1.12MB (1178349) total, 322.47KB (330212) headers (space savings 80.15%), 1.10MB (1156644) data
                     min         max         mean         sd        +/- sd
time for request:    79.43ms    541.07ms    204.07ms     69.40ms    71.41%
time for connect:        0us         0us         0us         0us     0.00%
time to 1st byte:        0us         0us         0us         0us     0.00%
req/s           :      43.27       53.26       47.74        2.86    70.00%
"""  # noqa: E501


def test_the_summary_is_parsed() -> None:
    result = parse_h2load(OUTPUT)
    assert result == H2loadResult(
        requests_per_s=3113.80,
        done=9341,
        succeeded=9341,
        failed=0,
        errored=0,
        timeout=0,
        status_2xx=9341,
        protocol="h2c",
        mean_ms=204.07,
    )


def test_a_mean_in_microseconds_is_converted() -> None:
    output = OUTPUT.replace("204.07ms", "853us")
    assert parse_h2load(output).mean_ms == pytest.approx(0.853)


def test_output_without_a_summary_fails_the_section() -> None:
    with pytest.raises(Http2BenchError, match="req/s"):
        parse_h2load("starting benchmark...\n")


def test_a_clean_run_passes() -> None:
    check_h2load("h2c -m10", parse_h2load(OUTPUT), "h2c")


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        (
            "0 failed, 0 errored",
            "20 failed, 20 errored",
            r"20 of 9341 requests failed \(20 errored, 0 timed out\)",
        ),
        ("0 errored, 0 timeout", "0 errored, 3 timeout", r"\(0 errored, 3 timed out\)"),
        ("9341 2xx, 0 3xx", "9340 2xx, 1 3xx", "1 of 9341 answers not 2xx"),
        ("Application protocol: h2c", "Application protocol: http/1.1", "not h2c"),
    ],
)
def test_any_failure_fails_the_section(old: str, new: str, problem: str) -> None:
    result = parse_h2load(OUTPUT.replace(old, new))
    with pytest.raises(Http2BenchError, match=problem):
        check_h2load("h2c -m10", result, "h2c")


def test_h2load_runs_http1_or_streams_per_connection() -> None:
    assert h2load_argv("http://x/", 10, 50, None) == [
        "h2load",
        "-t1",
        "-c50",
        "-D",
        "10",
        "--h1",
        "http://x/",
    ]
    assert h2load_argv("http://x/", 2, 8, 10)[-2:] == ["-m10", "http://x/"]


def test_the_configs_load(tmp_path: Path) -> None:
    # The loader loads the pair as a worker would: a real certificate, made here.
    cert_path, key_path = write_certificate(tmp_path, "server.crt", "server.key", "localhost")
    cert, key = Path(cert_path), Path(key_path)
    tls = Certificate(cert, key, ssl.create_default_context())
    ports = (9001, 9002, 9003)
    plain = load_config(gateway_conf(tmp_path, "h1-only", ports))
    assert [(item.listen.port, item.tls, item.http2.h2c) for item in plain.server.listeners] == [
        (9003, None, False)
    ]
    extra = (
        listener(9004, h2c=True, streams_per_connection=1_000_000),
        listener(9005, tls=tls),
    )
    both = load_config(gateway_conf(tmp_path, "h2", ports, listeners=extra)).server.listeners
    assert [item.listen.port for item in both] == [9003, 9004, 9005]
    assert not both[0].http2.h2c
    assert both[0].tls is None
    assert both[1].http2.h2c
    assert both[1].http2.max_requests_per_connection == 1_000_000
    assert both[2].tls is not None
    assert both[2].tls.default.cert == str(cert)
    assert both[2].http2.max_requests_per_connection == 1000
    sniffing = load_config(gateway_conf(tmp_path, "sniff", ports, h2c=True)).server.listeners
    assert [(item.listen.port, item.http2.h2c) for item in sniffing] == [(9003, True)]


def row(label: str, rps: float, cpu: float = 50.0) -> Row:
    return Row(label, "wrk", rps, int(rps * 10), 0, cpu, p99_ms=rps / 1000)


def test_the_loss_is_the_ratio_of_medians() -> None:
    summary = loss_summary(
        {
            "h1-only": [row("h1-only", 10_000), row("h1-only", 12_000), row("h1-only", 11_000)],
            "h2-idle": [
                row("h2-idle", 9_000, 60.0),
                row("h2-idle", 12_000),
                row("h2-idle", 10_450),
            ],
        }
    )
    assert summary["h1-only"]["rps"] == 11_000
    assert summary["h1-only"]["vs_h1_only"] == pytest.approx(1.0)
    assert summary["h2-idle"]["vs_h1_only"] == pytest.approx(0.95)
    assert summary["h2-idle"]["runs_rps"] == [9_000, 12_000, 10_450]
    assert summary["h2-idle"]["p99_ms"] == pytest.approx(10.45)
    # Weighted by each run's requests: 60 us over 90,000 requests, 50 over 224,500.
    assert summary["h2-idle"]["cpu_us_per_request"] == pytest.approx(
        (60 * 90_000 + 50 * 224_500) / 314_500
    )
