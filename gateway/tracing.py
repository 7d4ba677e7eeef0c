"""W3C Trace Context (https://www.w3.org/TR/trace-context/): `traceparent` to the upstream.

The gateway is a hop in the trace: it keeps the caller's trace id and flags, and sends its own
span id as the parent id upstream. A request without a valid `traceparent` starts a new trace
(sampled flag set, so the upstream's tracer records what the gateway started); an invalid one is
replaced, and its `tracestate` dropped with it (§3.3.1: tracestate is meaningless without a valid
traceparent).
"""

from __future__ import annotations

import random
from typing import NamedTuple

from gateway.messages import Headers

_HEX = frozenset(b"0123456789abcdef")
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16


class TraceContext(NamedTuple):
    # A NamedTuple, not a frozen dataclass: one is built per request, and a frozen dataclass's
    # __init__ (object.__setattr__ per field) costs several times more.
    trace_id: str
    # The traceparent value to send upstream.
    header: bytes


def _hex(value: bytes) -> bool:
    return all(byte in _HEX for byte in value)


def parse_traceparent(value: bytes) -> tuple[bytes, bytes] | None:
    """(trace id, flags) of a valid traceparent value, else None (§3.2)."""
    value = value.strip(b" \t")
    # version "-" trace-id "-" parent-id "-" flags; later versions may append "-" fields (§3.2.4).
    if len(value) < 55 or (len(value) > 55 and value[55:56] != b"-"):
        return None
    version, trace_id, parent_id, flags = value[0:2], value[3:35], value[36:52], value[53:55]
    if value[2:3] != b"-" or value[35:36] != b"-" or value[52:53] != b"-":
        return None
    if not (_hex(version) and _hex(trace_id) and _hex(parent_id) and _hex(flags)):
        return None
    if version == b"ff" or (version == b"00" and len(value) != 55):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, flags


def apply_trace_context(headers: Headers, *, present: bool = True) -> TraceContext:
    """Set this hop's `traceparent` in ``headers`` (in place) and return the trace context.

    ``present=False`` says the caller knows there is no traceparent field (the edge noted the
    fields as it parsed them), which saves looking.
    """
    found: bytes | None = None
    if present:
        for name, value in headers:
            if len(name) == 11 and name.lower() == b"traceparent":
                found = value
                break
    parsed = parse_traceparent(found) if found is not None else None
    # One draw for a new trace id (128 bits) and this hop's span id (64 bits). All-zero ids are
    # invalid (§3.2.2.3); the chance is 2**-64, and the lowest bit is forced for the span.
    # bytes.hex, not a format spec: half the cost (`gateway.headers.new_request_id`).
    ids = (random.getrandbits(192) | 1).to_bytes(24, "big").hex()
    if parsed is not None:
        trace_text = parsed[0].decode("ascii")
        header = f"00-{trace_text}-{ids[32:]}-".encode() + parsed[1]
    else:
        trace_text = ids[:32]
        header = f"00-{trace_text}-{ids[32:]}-01".encode()
    if found is None:
        headers.append((b"traceparent", header))
    else:
        # One traceparent, ours, where the caller's stood; the caller's tracestate goes with an
        # invalid traceparent.
        kept: Headers = []
        placed = False
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"traceparent":
                if not placed:
                    kept.append((name, header))
                    placed = True
            elif lowered != b"tracestate" or parsed is not None:
                kept.append((name, value))
        headers[:] = kept
    return TraceContext(trace_text, header)
