"""Compression's field rules (gateway.compression.rules), table-driven."""

from __future__ import annotations

import pytest

from gateway.compression.rules import compressible, media_type, weak_etag, with_vary
from gateway.config.model import DEFAULT_COMPRESSIBLE
from gateway.messages import Headers


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"application/json", "application/json"),
        (b"Text/HTML; charset=UTF-8", "text/html"),
        (b"  image/svg+xml ;q", "image/svg+xml"),
        (b"", ""),
    ],
)
def test_media_type(value: bytes, expected: str) -> None:
    assert media_type(value) == expected


@pytest.mark.parametrize(
    ("media", "expected"),
    [
        ("text/html", True),
        ("text/event-stream", True),
        ("application/json", True),
        ("application/problem+json", True),
        ("application/atom+xml", True),
        ("image/svg+xml", True),
        ("application/wasm", True),
        ("image/png", False),
        ("application/octet-stream", False),
        ("application/zip", False),
        ("video/mp4", False),
        ("application/jsonx", False),
        ("", False),
        ("text", False),
    ],
)
def test_default_allow_list(media: str, expected: bool) -> None:
    assert compressible(media, DEFAULT_COMPRESSIBLE) is expected


def test_a_suffix_pattern_needs_the_suffix() -> None:
    assert compressible("application/vnd.api+json", ("application/*+json",))
    assert not compressible("application/json", ("application/*+json",))
    assert not compressible("text/json", ("application/*+json",))


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], [(b"Vary", b"Accept-Encoding")]),
        ([(b"Vary", b"Origin")], [(b"Vary", b"Origin, Accept-Encoding")]),
        ([(b"vary", b"accept-encoding")], [(b"vary", b"accept-encoding")]),
        ([(b"Vary", b"Origin, Accept-Encoding")], [(b"Vary", b"Origin, Accept-Encoding")]),
        ([(b"Vary", b"*")], [(b"Vary", b"*")]),
        ([(b"Vary", b"")], [(b"Vary", b"Accept-Encoding")]),
        (
            [(b"Vary", b"Origin"), (b"Vary", b"Cookie")],
            [(b"Vary", b"Origin, Accept-Encoding"), (b"Vary", b"Cookie")],
        ),
    ],
)
def test_vary_merging(headers: Headers, expected: Headers) -> None:
    assert with_vary(headers) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(b'"v1"', b'W/"v1"'), (b'W/"v1"', b'W/"v1"'), (b' "v1" ', b'W/"v1"')],
)
def test_weak_etag(value: bytes, expected: bytes) -> None:
    assert weak_etag(value) == expected
