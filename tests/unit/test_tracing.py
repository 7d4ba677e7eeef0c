"""W3C Trace Context handling: parsing, continuing and starting traces."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.messages import Headers
from gateway.tracing import apply_trace_context, parse_traceparent

VALID = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (VALID, (b"4bf92f3577b34da6a3ce929d0e0e4736", b"01")),
        (b" " + VALID + b" ", (b"4bf92f3577b34da6a3ce929d0e0e4736", b"01")),
        # A later version may append fields after a dash (§3.2.4); version 00 may not.
        (b"01" + VALID[2:] + b"-extra", (b"4bf92f3577b34da6a3ce929d0e0e4736", b"01")),
        (VALID + b"-extra", None),
        (b"ff" + VALID[2:], None),  # version ff is invalid
        (b"00-" + b"0" * 32 + VALID[35:], None),  # all-zero trace id
        (VALID[:36] + b"0" * 16 + VALID[52:], None),  # all-zero parent id
        (VALID.upper(), None),  # hex is lower-case only
        (VALID[:-1], None),
        (b"00_" + VALID[3:], None),
        (b"garbage", None),
        (b"", None),
    ],
)
def test_parse_traceparent(value: bytes, expected: tuple[bytes, bytes] | None) -> None:
    assert parse_traceparent(value) == expected


def test_a_valid_trace_is_continued_with_a_new_parent_id() -> None:
    headers: Headers = [(b"Traceparent", VALID), (b"tracestate", b"vendor=1")]
    context = apply_trace_context(headers)
    assert context.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    (name, value), state = headers
    assert name == b"Traceparent"
    assert value.startswith(b"00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert value.endswith(b"-01")
    assert value[36:52] != VALID[36:52]
    assert value == context.header
    # tracestate travels with a valid traceparent.
    assert state == (b"tracestate", b"vendor=1")


def test_an_invalid_trace_is_replaced_and_its_tracestate_dropped() -> None:
    headers: Headers = [(b"traceparent", b"nonsense"), (b"tracestate", b"v=1"), (b"a", b"b")]
    context = apply_trace_context(headers)
    assert headers == [(b"traceparent", context.header), (b"a", b"b")]
    assert parse_traceparent(context.header) == (context.trace_id.encode(), b"01")


def test_a_missing_trace_is_started() -> None:
    headers: Headers = [(b"a", b"b")]
    context = apply_trace_context(headers)
    assert headers == [(b"a", b"b"), (b"traceparent", context.header)]
    assert len(context.trace_id) == 32


def test_repeated_traceparent_fields_leave_one() -> None:
    headers: Headers = [(b"traceparent", VALID), (b"traceparent", VALID)]
    apply_trace_context(headers)
    assert len(headers) == 1


@given(st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=60)), max_size=8))
def test_output_always_has_exactly_one_valid_traceparent(headers: Headers) -> None:
    headers = list(headers)
    context = apply_trace_context(headers)
    parents = [value for name, value in headers if name.lower() == b"traceparent"]
    assert parents == [context.header]
    assert parse_traceparent(context.header) is not None
