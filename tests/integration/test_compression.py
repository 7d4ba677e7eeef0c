"""Response compression end to end (issue 7): a real gateway, a real upstream, real decoders."""

from __future__ import annotations

import asyncio
import functools
import gzip
import hashlib
import struct
import tracemalloc
import zlib
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

MIB = 1024 * 1024
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


# The upstream's own status says there is nothing to compress (RFC 9110 §15.3.5, §15.4.5: no
# content; §14.2: a 206 carries a part whose Content-Range counts bytes of the identity body).
UPSTREAM_STATUSES = {
    "204": (204, {}, b""),
    "304": (304, {"ETag": '"v1"', "Cache_Control": "max-age=60"}, b""),
    "206": (
        206,
        {"ETag": '"v1"', "Content_Range": f"bytes 0-{len(JSON) // 2 - 1}/{len(JSON)}"},
        JSON[: len(JSON) // 2],
    ),
}


@pytest.mark.parametrize("case", UPSTREAM_STATUSES)
async def test_upstream_204_304_and_206_are_never_compressed(
    origin: tuple[Origin, int], gateways: list[RunningGateway], case: str
) -> None:
    status, fields, body = UPSTREAM_STATUSES[case]
    recorder, port = origin
    # A compressible type on every one: only the status keeps the encoder away.
    recorder.answers["/p"] = answer(body, status=status, extra=fields)
    gateway = await compressing(gateways, port, min_size=16)
    received_status, headers, received = await get(gateway, "/p", Accept_Encoding="gzip, br, zstd")
    assert received_status == status
    assert headers["Content-Type"].startswith("application/json")
    assert "Content-Encoding" not in headers
    assert received == body
    if status == 206:
        assert headers["Content-Length"] == str(len(body))
        assert headers["Content-Range"] == fields["Content_Range"]
    else:
        assert "Transfer-Encoding" not in headers
    if "ETag" in fields:
        # Not weakened: the representation is the upstream's own.
        assert headers["ETag"] == '"v1"'
    assert recorder.hits("/p") == 1


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


@functools.cache
def gzip_bomb() -> bytes:
    """1 GiB of zeros as a valid gzip member of about 1 MiB, built without holding 1 GiB.

    Deflate resets its window at a full flush, so every MiB of zeros after one compresses to
    the same bytes: one MiB is compressed, its block repeated 1024 times, and the member closed
    with the CRC-32 and size (mod 2**32) of the whole (RFC 1952). About half a second, where
    compressing the whole GiB at level 9 takes several.
    """
    zeros = bytes(MIB)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(1024):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = struct.pack("<II", crc, (1024 * MIB) & 0xFFFFFFFF)
    return header + block * 1024 + compressor.flush(zlib.Z_FINISH) + trailer


def test_the_gzip_bomb_is_what_it_claims() -> None:
    bomb = gzip_bomb()
    assert len(bomb) < 2 * MIB
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    # Only the first 64 MiB and the header's validity: inflating it all would cost seconds.
    assert inflate.decompress(bomb, 64 * MIB) == bytes(64 * MIB)


async def test_a_gzip_bomb_passes_through_undecoded_and_memory_stays_flat(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    """HARDENING.md §D: what the upstream encoded is passed on byte for byte, never inflated,
    whatever the client accepts (here gzip, and br alone, which a gateway that decoded to
    re-encode would have to inflate for)."""
    bomb = gzip_bomb()
    expected = hashlib.sha256(bomb).hexdigest()
    recorder, port = origin
    recorder.answers["/bomb"] = answer(bomb, Content_Type="text/plain", Content_Encoding="gzip")
    gateway = await compressing(gateways, port)
    url = f"http://{LOCAL}:{gateway.address[1]}/bomb"
    for accept in ("gzip, br", "br"):
        digest = hashlib.sha256()
        received = 0
        tracemalloc.start()
        try:
            async with (
                aiohttp.ClientSession(auto_decompress=False) as session,
                session.get(
                    url, headers={"Accept-Encoding": accept}, skip_auto_headers=["Accept-Encoding"]
                ) as response,
            ):
                assert response.status == 200
                assert response.headers["Content-Encoding"] == "gzip"
                async for chunk in response.content.iter_chunked(64 * 1024):
                    digest.update(chunk)
                    received += len(chunk)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert received == len(bomb)
        assert digest.hexdigest() == expected
        # Gateway, upstream and client together, in this process: a gateway that inflated
        # even 1% of the bomb would pass 10 MiB.
        assert peak < 16 * MIB, f"peak {peak / MIB:.1f} MiB"


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
