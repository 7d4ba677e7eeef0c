"""Optional native build: with GATEWAY_MYPYC=1 the hot-path modules are compiled with mypyc.

The modules are plain, strictly typed Python; mypyc turns them into C extensions that run the
same code with about 40% fewer instructions per proxied request (docs/performance.md). Without
the variable (the default, and every editable install) the package is pure Python. The compiled
build needs mypy and the runtime dependencies importable at build time, so build it without
isolation: ``GATEWAY_MYPYC=1 pip install --no-build-isolation .`` (what `make compiled` and the
Dockerfile do).
"""

from __future__ import annotations

import os

from setuptools import setup

# The request path: parsing, edge checks, routing, header rules, the upstream transport, the relay,
# the rate limiter, the cache (not its Redis store, for the reason below), compression, the
# WebSocket relay. Not the errors.py modules (gateway/, ratelimit/, redisproto/): mypyc's native
# classes keep no class-level defaults for subclasses to override, which the error classes rely
# on (close_connection, status, code).
# Not gateway/ratelimit/redis_backend.py: compiled, in a worker process the NOSCRIPT error reply
# escaped its `except RedisError` (and the stage's `except Exception`), its traceback growing from
# request to request, and a decision took ~5 ms instead of ~0.3 ms; called directly, compiled, it
# recovers from NOSCRIPT. Interpreted until that is reduced to a case.
COMPILED = [
    "gateway/cache/dates.py",
    "gateway/cache/directives.py",
    "gateway/cache/entry.py",
    "gateway/cache/keys.py",
    "gateway/cache/memory.py",
    "gateway/cache/policy.py",
    "gateway/cache/stage.py",
    "gateway/cache/validators.py",
    "gateway/chain.py",
    "gateway/compression/codecs.py",
    "gateway/compression/negotiate.py",
    "gateway/compression/rules.py",
    "gateway/compression/stage.py",
    "gateway/downstream/at_hand.py",
    "gateway/downstream/body.py",
    "gateway/downstream/connection.py",
    "gateway/downstream/h2fields.py",
    "gateway/downstream/hpack_decoder.py",
    "gateway/downstream/hpack_encoder.py",
    "gateway/downstream/hpack_tables.py",
    "gateway/downstream/http2.py",
    "gateway/downstream/writer.py",
    "gateway/edge.py",
    "gateway/headers.py",
    "gateway/messages.py",
    "gateway/observability/request_metrics.py",
    "gateway/proxy.py",
    "gateway/ratelimit/fields.py",
    "gateway/ratelimit/gcra.py",
    "gateway/ratelimit/keys.py",
    "gateway/ratelimit/memory.py",
    "gateway/ratelimit/policy.py",
    "gateway/redisproto/client.py",
    "gateway/ratelimit/stage.py",
    "gateway/ratelimit/table.py",
    "gateway/routing.py",
    "gateway/server.py",
    "gateway/tracing.py",
    "gateway/upstream/balancer.py",
    "gateway/upstream/connection.py",
    "gateway/upstream/framing.py",
    "gateway/upstream/health.py",
    "gateway/upstream/pool.py",
    "gateway/upstream/replay.py",
    "gateway/upstream/request.py",
    "gateway/upstream/response.py",
    "gateway/websocket/deflate.py",
    "gateway/websocket/frames.py",
    "gateway/websocket/handshake.py",
    "gateway/websocket/relay.py",
    "gateway/websocket/stage.py",
    "gateway/websocket/upstream.py",
]

ext_modules = []
if os.environ.get("GATEWAY_MYPYC") == "1":
    from mypyc.build import mypycify

    ext_modules = mypycify(COMPILED, opt_level="3")

setup(ext_modules=ext_modules)
