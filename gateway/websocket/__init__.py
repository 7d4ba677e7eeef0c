"""WebSocket relaying (issue 8): framing, the handshakes, and the relay between two hops."""
