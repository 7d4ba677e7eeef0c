"""Cache entries' explicit serialisation (gateway.cache.entry) and keys (gateway.cache.keys)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cache.entry import MAGIC, CacheEntry
from gateway.cache.keys import key_for_url, primary_key, target_of
from gateway.cache.policy import Freshness
from gateway.messages import ProxyRequest


def entry(**overrides: object) -> CacheEntry:
    values: dict[str, object] = {
        "key": b"GET http://a.example:80/x?y=1",
        "status": 200,
        "reason": b"OK",
        "headers": [(b"Content-Type", b"text/plain"), (b"ETag", b'"v1"')],
        "body": b"hello",
        "freshness": Freshness(
            lifetime=60.0,
            initial_age=1.5,
            response_time=1_700_000_000.25,
            no_cache=False,
            no_stale=True,
            stale_while_revalidate=10.0,
            stale_if_error=300.0,
        ),
        "vary": (b"accept-encoding",),
        "secondary": b"+gzip",
        "tags": (b"users", b"user-7"),
        "shared": True,
    }
    values.update(overrides)
    return CacheEntry(**values)  # type: ignore[arg-type]


def fields_of(item: CacheEntry) -> tuple[object, ...]:
    f = item.freshness
    return (
        item.key,
        item.status,
        item.reason,
        item.headers,
        item.body,
        item.vary,
        item.secondary,
        item.tags,
        item.shared,
        (f.lifetime, f.initial_age, f.response_time, f.no_cache, f.no_stale),
        (f.stale_while_revalidate, f.stale_if_error),
    )


def test_an_entry_round_trips() -> None:
    original = entry()
    copy = CacheEntry.from_bytes(original.to_bytes())
    assert copy is not None
    assert fields_of(copy) == fields_of(original)


@given(
    body=st.binary(max_size=300),
    headers=st.lists(
        st.tuples(st.binary(min_size=1, max_size=20), st.binary(max_size=40)), max_size=6
    ),
    tags=st.lists(st.binary(max_size=10), max_size=3),
    status=st.integers(min_value=100, max_value=999),
)
def test_any_entry_round_trips(
    body: bytes, headers: list[tuple[bytes, bytes]], tags: list[bytes], status: int
) -> None:
    original = entry(body=body, headers=headers, tags=tuple(tags), status=status)
    copy = CacheEntry.from_bytes(original.to_bytes())
    assert copy is not None
    assert fields_of(copy) == fields_of(original)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"GWC1",
        b"\x80\x04\x95pickle",  # a pickle is garbage, never loaded
        b"GWC2" + entry().to_bytes()[4:],  # another version
        entry().to_bytes()[:-1],  # truncated
        entry().to_bytes() + b"x",  # trailing bytes
    ],
)
def test_garbage_is_none(data: bytes) -> None:
    assert CacheEntry.from_bytes(data) is None


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_are_none(data: bytes) -> None:
    CacheEntry.from_bytes(MAGIC + data)
    CacheEntry.from_bytes(data)


def test_flipping_any_byte_never_raises() -> None:
    data = bytearray(entry().to_bytes())
    for index in range(len(data)):
        damaged = bytearray(data)
        damaged[index] ^= 0xFF
        CacheEntry.from_bytes(bytes(damaged))


def request(
    target: bytes,
    *,
    host: str = "api.example.com",
    authority: bytes = b"api.example.com",
    scheme: str = "http",
) -> ProxyRequest:
    return ProxyRequest(
        method="GET",
        target=target,
        path=target.split(b"?")[0].decode(),
        host=host,
        authority=authority,
        headers=[],
        version=(1, 1),
        body=None,
        content_length=None,
        scheme=scheme,
        client_ip="127.0.0.1",
        peer_ip="127.0.0.1",
        peer_trusted=False,
        request_id="r",
    )


@pytest.mark.parametrize(
    ("made", "expected"),
    [
        (request(b"/a?b=1"), b"GET http://api.example.com:80/a?b=1"),
        (request(b"/a", authority=b"api.example.com:8080"), b"GET http://api.example.com:8080/a"),
        (request(b"/a", scheme="https"), b"GET https://api.example.com:443/a"),
        (request(b"/a", authority=b"API.example.com:0080"), b"GET http://api.example.com:80/a"),
        (
            request(b"/", host="::1", authority=b"[::1]:9000"),
            b"GET http://::1:9000/",
        ),
    ],
)
def test_primary_keys(made: ProxyRequest, expected: bytes) -> None:
    assert primary_key(made) == expected


def test_keys_differ_by_scheme_host_port_path_and_query() -> None:
    keys = {
        primary_key(request(b"/a")),
        primary_key(request(b"/a", scheme="https")),
        primary_key(request(b"/a", host="b.example.com", authority=b"b.example.com")),
        primary_key(request(b"/a", authority=b"api.example.com:81")),
        primary_key(request(b"/b")),
        primary_key(request(b"/a?")),
        primary_key(request(b"/a?x")),
    }
    assert len(keys) == 7


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://api.example.com/a?b=1", b"GET http://api.example.com:80/a?b=1"),
        ("HTTPS://API.example.com:443/a", b"GET https://api.example.com:443/a"),
        ("http://api.example.com", b"GET http://api.example.com:80/"),
        ("ftp://api.example.com/a", None),
        ("/a", None),
        ("http://user@api.example.com/a", None),
    ],
)
def test_keys_for_purge_urls(url: str, expected: bytes | None) -> None:
    assert key_for_url(url) == expected


def test_target_of_a_key() -> None:
    assert target_of(b"GET http://a:80/x/y?z") == b"/x/y?z"
