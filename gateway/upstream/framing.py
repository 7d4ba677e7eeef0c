"""How an upstream response body is delimited, and whether the connection persists.

Pure functions over facts collected from the response head (RFC 9112 §6.3 and §9.3); the
connection calls them once per final response.
"""

from __future__ import annotations

from typing import Final

NO_BODY: Final = 0  # HEAD, 1xx, 204, 304, or Content-Length: 0
CHUNKED: Final = 1  # Transfer-Encoding whose final coding is chunked
LENGTH: Final = 2  # Content-Length: N > 0
UNTIL_CLOSE: Final = 3  # the body runs until the connection closes


def final_coding_is_chunked(transfer_encoding: bytes) -> bool:
    """Whether the last coding listed is ``chunked`` (RFC 9112 §6.3 rule 4)."""
    return transfer_encoding.rsplit(b",", 1)[-1].strip().lower() == b"chunked"


def response_framing(
    *,
    is_head: bool,
    status: int,
    http_11: bool,
    content_length: int | None,
    transfer_encoding: bytes | None,
    close: bool,
    keep_alive: bool,
) -> tuple[int, bool]:
    """``(framing, persistent)`` for a final response.

    ``content_length`` and ``transfer_encoding`` are the (already validated, mutually
    exclusive) framing fields; ``close`` and ``keep_alive`` are Connection tokens seen.
    """
    # RFC 9112 §9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 only with "keep-alive".
    persistent = not close and (http_11 or keep_alive)
    if is_head or status in {204, 304} or status < 200:
        # RFC 9112 §6.3 rule 1: no content whatever the fields say (HEAD: RFC 9110 §9.3.2).
        return NO_BODY, persistent
    if transfer_encoding is not None:
        if not http_11:
            # RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing;
            # the connection is closed after it.
            persistent = False
        if final_coding_is_chunked(transfer_encoding):
            return CHUNKED, persistent
        # Rule 4: a final coding other than chunked is read until the server closes.
        return UNTIL_CLOSE, False
    if content_length is not None:
        return (LENGTH if content_length else NO_BODY), persistent
    # Rule 8: neither field, the body is delimited by the close (never reusable).
    return UNTIL_CLOSE, False
