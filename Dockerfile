# syntax=docker/dockerfile:1
# Build stage: wheels for the gateway and its dependencies (compilers stay out of the image).
# The gateway's hot path is compiled with mypyc (setup.py, docs/performance.md): it needs a C
# compiler, mypy, and the runtime dependencies importable while it type-checks.
FROM python:3.11-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md setup.py ./
COPY gateway ./gateway
RUN pip install --no-cache-dir "setuptools>=75" "mypy>=1.10" . \
    && GATEWAY_MYPYC=1 pip wheel --no-cache-dir --no-build-isolation --wheel-dir /wheels .

# Runtime stage: only the wheels, installed for a non-root user.
FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --no-create-home gateway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY config/gateway.yaml /etc/gateway/gateway.yaml
USER gateway
EXPOSE 8080 9901
# The admin listener must be reachable from the container's own loopback for this check;
# /healthz answers while the process is alive.
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=2).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["gateway"]
CMD ["run", "--config", "/etc/gateway/gateway.yaml"]
