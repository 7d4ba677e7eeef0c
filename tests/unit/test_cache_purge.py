"""Purge requests (gateway.cache.purge): what the admin endpoint accepts, and what it refuses."""

from __future__ import annotations

import pytest

from gateway.cache.purge import parse_purge


@pytest.mark.parametrize(
    ("body", "kind", "value"),
    [
        (
            {"url": "https://api.example.com/users/7?x=1"},
            "url",
            b"GET https://api.example.com:443/users/7?x=1",
        ),
        ({"path_prefix": "/users/"}, "path_prefix", b"/users/"),
        ({"tag": "user-7"}, "tag", b"user-7"),
    ],
)
def test_accepted(body: object, kind: str, value: bytes) -> None:
    request = parse_purge(body)
    assert (request.kind, request.value) == (kind, value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], 'expected a JSON object such as {"url": "https://host/path"}'),
        ({}, "give exactly one of url, path_prefix, tag"),
        ({"url": "https://a/", "tag": "x"}, "give exactly one of url, path_prefix, tag"),
        ({"host": "a"}, "unknown key 'host': use one of url, path_prefix, tag"),
        ({"url": "/relative"}, "url must be an absolute http:// or https:// URL"),
        ({"url": ""}, "url must be a non-empty string"),
        ({"tag": 7}, "tag must be a non-empty string"),
        ({"path_prefix": "users"}, "path_prefix must start with '/'"),
        ({"tag": "a b"}, "tag must not contain spaces or control characters"),
    ],
)
def test_refused_with_a_reason(body: object, message: str) -> None:
    with pytest.raises(
        ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"
    ):
        parse_purge(body)
