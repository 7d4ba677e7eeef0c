"""The compression stage of a route's chain: the negotiated coding, applied as the body streams.

Left as the upstream sent them (HARDENING.md §D): HEAD, 1xx/204/304, 206 and requests with
Range, ``Cache-Control: no-transform``, bodies of a known length below ``min_size``, responses
already encoded (passed through byte for byte, never decoded), and types outside
``content_types``. Every response of an allowed type that could have been compressed carries
``Vary: Accept-Encoding``, the uncompressed ones too. A compressed one gets ``Content-Encoding``,
no Content-Length (its length is known only at the end) and a weak ETag.
"""

from __future__ import annotations

from gateway.chain import Handler
from gateway.compression.codecs import EncodedBody, encoder
from gateway.compression.negotiate import IDENTITY, choose
from gateway.compression.rules import (
    STREAMING_TYPES,
    compressible,
    media_type,
    weak_etag,
    with_vary,
)
from gateway.config.model import CompressionConfig
from gateway.messages import ProxyRequest, ProxyResponse
from gateway.observability.request_metrics import RequestMetrics


class CompressionStage:
    __slots__ = ("_algorithms", "_levels", "_metrics", "_min_size", "_types")

    def __init__(self, config: CompressionConfig, metrics: RequestMetrics) -> None:
        self._algorithms: tuple[str, ...] = config.algorithms
        self._min_size = config.min_size
        self._types = config.content_types
        self._levels = {
            "br": config.levels.br,
            "zstd": config.levels.zstd,
            "gzip": config.levels.gzip,
        }
        self._metrics = metrics

    async def __call__(self, request: ProxyRequest, call_next: Handler) -> ProxyResponse:
        response = await call_next(request)
        status = response.status
        if status < 200 or status in {204, 304}:
            return response
        content_type = b""
        encoded = False
        no_transform = False
        for name, value in response.headers:
            lname = name.lower()
            if lname == b"content-type":
                content_type = value
            elif lname == b"content-encoding":
                encoded = encoded or value.strip().lower() not in (b"", b"identity")
            elif lname == b"cache-control" and b"no-transform" in value.lower():
                no_transform = True
        media = media_type(content_type)
        if encoded or no_transform or not compressible(media, self._types):
            return response
        # From here the coding depends on Accept-Encoding, whatever this response gets.
        response.headers = with_vary(response.headers)
        length = response.content_length
        if (
            request.method == "HEAD"
            or response.body is None
            or status == 206
            or (length is not None and length < self._min_size)
        ):
            return response
        accept: list[bytes] = []
        for name, value in request.headers:
            lname = name.lower()
            if lname == b"range":
                return response
            if lname == b"accept-encoding":
                accept.append(value)
        coding = choose(accept, self._algorithms)
        if coding == IDENTITY:
            return response
        headers = [
            (name, weak_etag(value) if name.lower() == b"etag" else value)
            for name, value in response.headers
        ]
        headers.append((b"Content-Encoding", coding.encode("ascii")))
        response.headers = headers
        response.content_length = None
        metrics = self._metrics
        response.body = EncodedBody(
            response.body,
            encoder(coding, self._levels[coding]),
            flush=media in STREAMING_TYPES,
            on_bytes=lambda raw, out: metrics.compressed(coding, raw, out),
        )
        request.compression = coding
        return response
