"""Response compression end to end (issue 7): a real gateway, a real upstream, real decoders."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable

import aiohttp
import brotli
import pytest
import zstandard
from aiohttp import web
from multidict import CIMultiDict

from gateway.app import RunningGateway, start
from gateway.config.model import CacheConfig, CompressionConfig, RouteConfig
from tests.harness import LOCAL, gateway_config, upstream_to
from tests.integration.cache_origin import Origin

JSON = (
    b'{"items": ['
    + b",".join(b'{"id": %d, "name": "item %d"}' % (i, i) for i in range(300))
    + b"]}"
)


def decode(coding: str | None, data: bytes) -> bytes:
    if coding is None:
        return data
    if coding == "gzip":
        return gzip.decompress(data)
    if coding == "br":
        return bytes(brotli.decompress(data))
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


async def compressing(
    gateways: list[RunningGateway], port: int, **options: object
) -> RunningGateway:
    config = CompressionConfig(**options)  # type: ignore[arg-type]
    route = RouteConfig(name="api", upstream="origin", compression=config)
    gateway = await start(gateway_config([upstream_to("origin", port)], [route]))
    gateways.append(gateway)
    return gateway


def answer(
    body: bytes = JSON,
    *,
    status: int = 200,
    extra: dict[str, str] | None = None,
    **headers: str,
) -> Callable[[web.Request], web.Response]:
    fields = {name.replace("_", "-"): value for name, value in {**(extra or {}), **headers}.items()}
    fields.setdefault("Content-Type", "application/json")
    return lambda request: web.Response(status=status, body=body, headers=fields)


async def get(
    gateway: RunningGateway, path: str, method: str = "GET", **headers: str
) -> tuple[int, CIMultiDict[str], bytes]:
    url = f"http://{LOCAL}:{gateway.address[1]}{path}"
    fields = {name.replace("_", "-"): value for name, value in headers.items()}
    # auto_decompress off: the test sees the bytes on the wire and decodes them itself.
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        # aiohttp sends its own Accept-Encoding unless told not to: the test says what it sends.
        async with session.request(
            method, url, headers=fields, skip_auto_headers=["Accept-Encoding"]
        ) as response:
            return response.status, CIMultiDict(response.headers), await response.read()


@pytest.mark.parametrize(
    ("accept", "coding"),
    [("gzip, deflate, br, zstd", "br"), ("gzip", "gzip"), ("zstd, gzip;q=0.5", "zstd")],
)
async def test_negotiated_codings_round_trip(
    origin: tuple[Origin, int], gateways: list[RunningGateway], accept: str, coding: str
) -> None:
    recorder, port = origin
    recorder.answers["/j"] = answer(ETag='"v1"')
    gateway = await compressing(gateways, port)
    status, headers, body = await get(gateway, "/j", Accept_Encoding=accept)
    assert status == 200
    assert headers["Content-Encoding"] == coding
    # The upstream's length is gone; the whole encoded body is framed by its own.
    assert headers["Content-Length"] == str(len(body))
    assert "Transfer-Encoding" not in headers
    assert headers["Vary"] == "Accept-Encoding"
    assert headers["ETag"] == 'W/"v1"'
    assert decode(coding, body) == JSON
    assert len(body) < len(JSON) / 4


async def test_a_whole_body_leaves_in_one_send_and_keeps_http10_alive(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    """The upstream's body arrived whole: the encoded body goes with the head in one send,
    framed by its length, so an HTTP/1.0 client keeps its connection."""
    recorder, port = origin
    recorder.answers["/j"] = answer()
    gateway = await compressing(gateways, port, algorithms=("gzip",))
    reader, writer = await asyncio.open_connection(LOCAL, gateway.address[1])
    try:
        for _ in range(2):
            writer.write(
                b"GET /j HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n"
                b"Accept-Encoding: gzip\r\n\r\n"
            )
            head = await reader.readuntil(b"\r\n\r\n")
            fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
            assert fields[b"Content-Encoding"] == b"gzip"
            assert fields[b"Connection"] == b"keep-alive"
            body = await reader.readexactly(int(fields[b"Content-Length"]))
            assert gzip.decompress(body) == JSON
    finally:
        writer.close()


async def test_identity_answers_carry_vary_too(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = origin
    recorder.answers["/j"] = answer(ETag='"v1"', Vary="Origin")
    gateway = await compressing(gateways, port)
    status, headers, body = await get(gateway, "/j")
    assert (status, body) == (200, JSON)
    assert "Content-Encoding" not in headers
    assert headers["Vary"] == "Origin, Accept-Encoding"
    assert headers["ETag"] == '"v1"'


SKIPPED = {
    "no-transform": ({"Cache_Control": "no-transform"}, {}, "GET"),
    "image": ({"Content_Type": "image/png"}, {}, "GET"),
    "small": ({}, {}, "GET"),
    "head": ({}, {}, "HEAD"),
    "range": ({}, {"Range": "bytes=0-10"}, "GET"),
}


@pytest.mark.parametrize("case", SKIPPED)
async def test_skip_rules(
    origin: tuple[Origin, int], gateways: list[RunningGateway], case: str
) -> None:
    fields, request_fields, method = SKIPPED[case]
    recorder, port = origin
    body = b'{"tiny": 1}' if case == "small" else JSON
    recorder.answers["/s"] = answer(body, extra=fields)
    gateway = await compressing(gateways, port)
    _, headers, received = await get(
        gateway, "/s", method, Accept_Encoding="gzip, br", **request_fields
    )
    assert "Content-Encoding" not in headers
    if method == "GET":
        assert received == body


async def test_an_upstream_gzip_body_passes_byte_for_byte(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = origin
    upstream_gzip = gzip.compress(JSON, compresslevel=1)
    recorder.answers["/g"] = answer(upstream_gzip, Content_Encoding="gzip")
    gateway = await compressing(gateways, port)
    _, headers, body = await get(gateway, "/g", Accept_Encoding="br, gzip")
    assert headers["Content-Encoding"] == "gzip"
    assert body == upstream_gzip


async def cached_and_compressing(gateways: list[RunningGateway], port: int) -> RunningGateway:
    route = RouteConfig(
        name="api", upstream="origin", cache=CacheConfig(), compression=CompressionConfig()
    )
    gateway = await start(gateway_config([upstream_to("origin", port)], [route]))
    gateways.append(gateway)
    return gateway


async def test_the_cache_keeps_one_variant_per_negotiated_coding(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = origin
    recorder.answers["/c"] = answer(ETag='"v1"', Cache_Control="max-age=60")
    gateway = await cached_and_compressing(gateways, port)
    spellings = [
        ("gzip, deflate, br, zstd", "br"),  # a browser
        ("br, gzip", "br"),  # another spelling of the same choice: the same variant
        ("BR;q=1.0, gzip;q=0.5", "br"),
        ("gzip", "gzip"),
        ("gzip, deflate", "gzip"),
        (None, None),  # no field: identity
    ]
    for accept, coding in spellings:
        headers = {} if accept is None else {"Accept_Encoding": accept}
        status, fields, body = await get(gateway, "/c", Host="api.example.com", **headers)
        assert status == 200
        assert fields.get("Content-Encoding") == coding
        assert decode(coding, body) == JSON
    # br, gzip and identity: three upstream requests for six clients.
    assert recorder.hits("/c") == 3
    # A hit on a compressed variant costs no compression: no bytes go through an encoder.
    gateway.flush_metrics()
    before = _compressed("br")
    _, fields, body = await get(gateway, "/c", Host="api.example.com", Accept_Encoding="br")
    gateway.flush_metrics()
    assert fields["Cache-Status"].startswith("gateway; hit")
    assert fields["Content-Encoding"] == "br"
    assert decode("br", body) == JSON
    assert _compressed("br") == before
    assert before > 0  # the miss that stored it was counted


def _compressed(algorithm: str) -> float:
    from prometheus_client import REGISTRY

    labels = {"algorithm": algorithm, "stage": "in"}
    return REGISTRY.get_sample_value("gateway_compression_bytes_total", labels) or 0.0


async def test_a_weak_etag_of_a_compressed_variant_gets_304(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = origin
    recorder.answers["/e"] = answer(ETag='"v1"', Cache_Control="max-age=60")
    gateway = await cached_and_compressing(gateways, port)
    _, fields, _ = await get(gateway, "/e", Accept_Encoding="gzip")
    assert fields["ETag"] == 'W/"v1"'
    status, fields, body = await get(gateway, "/e", Accept_Encoding="gzip", If_None_Match='W/"v1"')
    assert (status, body) == (304, b"")
    assert fields["ETag"] == 'W/"v1"'


async def test_an_encoded_entry_never_reaches_a_client_that_does_not_accept_it(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = origin
    # An upstream that gzips without saying Vary: Accept-Encoding.
    recorder.answers["/z"] = answer(
        gzip.compress(JSON), Content_Encoding="gzip", Cache_Control="max-age=60"
    )
    gateway = await cached_and_compressing(gateways, port)
    await get(gateway, "/z", Accept_Encoding="gzip")
    _, fields, _ = await get(gateway, "/z", Accept_Encoding="gzip")
    assert fields["Cache-Status"].startswith("gateway; hit")
    # A client that takes only br, or nothing, is not handed the stored gzip body.
    _, fields, _ = await get(gateway, "/z", Accept_Encoding="br")
    assert not fields["Cache-Status"].startswith("gateway; hit")
    _, fields, _ = await get(gateway, "/z")
    assert not fields["Cache-Status"].startswith("gateway; hit")
