"""What of a response body is already at hand when its head is written, for both protocols."""

from __future__ import annotations

from gateway.compression.codecs import EncodedBody
from gateway.messages import BodyStream, CompleteBody
from gateway.upstream.response import ResponseBody


async def body_at_hand(
    body: BodyStream | None, length: int | None
) -> tuple[bytes, bool, int | None]:
    """``(first, more, length)``: the body bytes to send with the head, whether more follow,
    and the length to declare.

    All of a small response (no iteration then), else the first chunk when one is ready, else
    nothing, so that the client sees the head of a slow response at once. A body compressed
    here whole is framed by its length (the upstream's framing is per hop, RFC 9112 §6.1, and
    its length is gone). Raises what the body raises (UpstreamAborted, a GatewayError).
    """
    if body is None:
        return b"", False, length
    if isinstance(body, CompleteBody):
        return body.take_complete(), False, length
    if isinstance(body, (ResponseBody, EncodedBody)):
        whole = body.take_complete()
        if whole is not None:
            return whole, False, len(whole) if isinstance(body, EncodedBody) else length
        if body.ready():
            try:
                return await body.__anext__(), True, length
            except StopAsyncIteration:
                return b"", False, length
    return b"", True, length
