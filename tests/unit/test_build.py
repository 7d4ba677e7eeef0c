"""Which build the suite runs against: `make test-compiled` must really test the compiled one."""

from __future__ import annotations

import os

import gateway.compression.stage
import gateway.downstream.connection
import gateway.server
import gateway.upstream.connection


def test_the_suite_runs_against_the_build_it_was_asked_to() -> None:
    expect_compiled = os.environ.get("GATEWAY_EXPECT_COMPILED") == "1"
    modules = (
        gateway.server,
        gateway.downstream.connection,
        gateway.upstream.connection,
        gateway.compression.stage,
    )
    for module in modules:
        assert (module.__file__ or "").endswith(".so") == expect_compiled, module.__file__
