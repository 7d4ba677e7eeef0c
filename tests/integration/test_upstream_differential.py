"""The lean transport against a reference client (aiohttp's ClientSession, DESIGN.md §2).

Hypothesis generates well-formed responses (status, duplicate fields, Content-Length or
chunked framing split at arbitrary points across writes); a raw upstream replays the bytes and
both clients must read the same status, reason, fields and body.
"""

from __future__ import annotations

import asyncio

import aiohttp
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.upstream import UpstreamPool
from tests.upstream_servers import RawConnection, RawUpstream, collect, upstream_config

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).filter(
    lambda name: name.lower() not in {"content-length", "transfer-encoding", "connection"}
)
VALUE = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 =;,/", max_size=30).map(str.strip)


@st.composite
def responses(draw: st.DrawFn) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes, list[bytes]]:
    status = draw(st.sampled_from([200, 201, 203, 206, 400, 404, 418, 500, 503]))
    reason = draw(st.sampled_from([b"OK", b"Whatever", b"Not Found", b"I'm a teapot"]))
    fields = [
        (name.encode(), value.encode())
        for name, value in draw(st.lists(st.tuples(TOKEN, VALUE), max_size=6))
    ]
    fields += [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")]  # duplicates survive
    body = draw(st.binary(max_size=20000))
    chunked = draw(st.booleans())
    if chunked:
        sizes = draw(st.lists(st.integers(1, 5000), max_size=8))
        framed = bytearray()
        rest = body
        for size in sizes:
            if not rest:
                break
            piece, rest = rest[:size], rest[size:]
            framed += b"%x\r\n%s\r\n" % (len(piece), piece)
        if rest:
            framed += b"%x\r\n%s\r\n" % (len(rest), rest)
        framed += b"0\r\n\r\n"
        fields.append((b"Transfer-Encoding", b"chunked"))
        payload = bytes(framed)
    else:
        fields.append((b"Content-Length", str(len(body)).encode()))
        payload = body
    head = b"HTTP/1.1 %d %s\r\n" % (status, reason)
    head += b"".join(b"%s: %s\r\n" % field for field in fields) + b"\r\n"
    wire = head + payload
    cuts = sorted(draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    return status, reason, fields, body, [p for p in pieces if p]


async def compare(pieces: list[bytes], body: bytes) -> None:
    async def handler(conn: RawConnection) -> None:
        while await conn.read_request() is not None:
            for piece in pieces:
                await conn.send(piece)

    async with RawUpstream(handler) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        ours = await pool.request("GET", b"/", [], b"h", None, None)
        our_body = await collect(ours.body)
        await ours.release()
        await pool.close()
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.get(f"http://127.0.0.1:{upstream.port}/") as theirs,
        ):
            their_body = await theirs.read()
            assert ours.status == theirs.status
            assert ours.reason.decode() == theirs.reason
            assert ours.headers == list(theirs.raw_headers)
            assert our_body == their_body == body


@settings(max_examples=60, deadline=None)
@given(responses())
def test_same_result_as_aiohttp_client(
    response: tuple[int, bytes, list[tuple[bytes, bytes]], bytes, list[bytes]],
) -> None:
    _status, _reason, _fields, body, pieces = response
    asyncio.run(compare(pieces, body))
