"""The transport scenarios again on asyncio's default loop.

The suite runs on uvloop, the loop the gateway runs in production (tests/conftest.py); the
default loop's transports differ in flow control, TLS and EOF handling, and the pool must work on
both (embedding, debugging with PYTHONASYNCIODEBUG), so a representative set is replayed here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from tests.integration import test_upstream_pool as pool_tests
from tests.integration import test_upstream_transport as transport_tests
from tests.integration.test_upstream_flow import (
    test_full_duplex_echo_streams_both_ways_at_once as full_duplex,
)
from tests.integration.test_upstream_flow import (
    test_length_framed_body_completes_at_its_last_byte as length_framed,
)
from tests.integration.test_upstream_flow import (
    test_response_body_buffer_stays_bounded_for_a_slow_consumer as bounded_response,
)

Scenario = Callable[..., Coroutine[Any, Any, None]]

SCENARIOS: list[tuple[Scenario, dict[str, Any]]] = [
    (transport_tests.test_three_hundred_sequential_requests_reuse_one_connection, {}),
    (transport_tests.test_content_length_body_is_sent_as_is, {}),
    (transport_tests.test_body_of_unknown_length_is_chunked_and_empty_chunks_are_skipped, {}),
    (transport_tests.test_chunked_response_is_decoded_and_trailers_do_not_leak, {}),
    (transport_tests.test_close_delimited_response_reads_to_eof_and_is_not_reused, {}),
    (transport_tests.test_head_response_has_no_body_despite_content_length, {}),
    (transport_tests.test_junk_after_a_complete_message_is_dropped_with_the_connection, {}),
    (transport_tests.test_junk_on_an_idle_connection_drops_it_from_the_pool, {}),
    (transport_tests.test_abandoned_response_closes_the_connection, {}),
    (transport_tests.test_interim_responses_are_relayed_in_order, {}),
    (transport_tests.test_expect_continue_holds_the_body_until_100, {}),
    (transport_tests.test_silent_upstream_is_gateway_timeout_and_the_connection_is_discarded, {}),
    (transport_tests.test_stall_mid_body_aborts_the_body_after_the_read_timeout, {}),
    (
        transport_tests.test_truncated_body_raises_upstream_aborted,
        {"partial": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "reset": True},
    ),
    (transport_tests.test_request_body_error_before_the_head_is_reraised_from_request, {}),
    (transport_tests.test_request_body_error_after_the_head_is_raised_from_the_response_body, {}),
    (
        transport_tests.test_idempotent_request_is_retried_once_on_a_fresh_connection,
        {"method": "GET", "fault": "rst"},
    ),
    (transport_tests.test_non_idempotent_request_is_not_retried, {"fault": "rst"}),
    (transport_tests.test_connection_refused_is_bad_gateway, {}),
    (pool_tests.test_max_connections_caps_sockets_and_waiters_are_served_in_order, {}),
    (pool_tests.test_no_slot_within_the_connect_timeout_is_upstream_busy, {}),
    (pool_tests.test_idle_connections_close_after_the_idle_timeout, {}),
    (pool_tests.test_tcp_connect_not_done_within_the_connect_timeout_is_gateway_timeout, {}),
    (bounded_response, {"chunked": True}),
    (full_duplex, {}),
    (length_framed, {}),
]


@pytest.mark.parametrize(
    ("scenario", "kwargs"), SCENARIOS, ids=[s.__name__.removeprefix("test_") for s, _ in SCENARIOS]
)
def test_on_the_default_loop(scenario: Scenario, kwargs: dict[str, Any]) -> None:
    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        runner.run(scenario(**kwargs))
