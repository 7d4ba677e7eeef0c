"""FieldNotes: what the edge learns about a request's fields in the pass that parses them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.edge import FieldNotes
from gateway.headers import HOP_BY_HOP
from gateway.messages import Headers

NAMES = st.sampled_from(
    [
        b"Host",
        b"HOST",
        b"Transfer-Encoding",
        b"Connection",
        b"keep-alive",
        b"TE",
        b"Upgrade",
        b"Proxy-Authorization",
        b"X-Request-ID",
        b"x-request-id",
        b"Expect",
        b"traceparent",
        b"Accept",
        b"User-Agent",
        b"X-Hosts",
    ]
)
FIELDS = st.lists(st.tuples(NAMES, st.binary(max_size=8)), max_size=12)


def test_a_plain_request() -> None:
    notes = FieldNotes.of([(b"Host", b"a"), (b"User-Agent", b"curl"), (b"Accept", b"*/*")])
    assert (notes.host, notes.hosts, notes.has_te, notes.hop_by_hop) == (b"a", 1, False, False)
    assert (notes.request_id, notes.expect, notes.has_traceparent) == (None, None, False)


@given(FIELDS)
def test_notes_agree_with_walking_the_list(headers: Headers) -> None:
    notes = FieldNotes.of(headers)

    def values(name: bytes) -> list[bytes]:
        return [v for k, v in headers if k.lower() == name]

    hosts = values(b"host")
    assert notes.hosts == len(hosts)
    assert notes.host == (hosts[0] if hosts else None)
    assert notes.has_te == bool(values(b"transfer-encoding"))
    assert notes.hop_by_hop == any(k.lower() in HOP_BY_HOP for k, _ in headers)
    ids = values(b"x-request-id")
    assert notes.request_id == (ids[0] if ids else None)
    expects = values(b"expect")
    assert notes.expect == (expects[0] if expects else None)
    assert notes.has_traceparent == bool(values(b"traceparent"))
