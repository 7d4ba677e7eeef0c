# The two commands of the README: `make demo` and `make check`. Both set up what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The mypyc-compiled build (setup.py), installed apart from the source tree.
COMPILED := build/compiled

.PHONY: demo check lint types test test-compiled compiled bench soak clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=75"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Start the gateway on 127.0.0.1:8080 in front of a bundled demo upstream (no config, no Redis).
demo: $(STAMP)
	$(BIN)/gateway demo

# Lint, types and the whole test suite, on the source and on the compiled build; .ci/run calls
# exactly this.
check: $(STAMP)
	./.ci/system-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest
	$(MAKE) test-compiled

# The hot-path modules compiled with mypyc (docs/performance.md), into $(COMPILED).
compiled: $(STAMP)
	# setuptools would copy extensions left in build/lib.* by an earlier list of modules.
	rm -rf $(COMPILED) build/lib.* build/temp.*
	GATEWAY_MYPYC=1 $(BIN)/python -m pip install --quiet --no-build-isolation --no-deps --target $(COMPILED) .

# The same suite against the compiled build: it is what the Docker image and make bench run.
# PYTHONSAFEPATH keeps the source tree off sys.path, also in the gateway processes tests start.
test-compiled: compiled
	PYTHONSAFEPATH=1 PYTHONPATH=$(COMPILED) GATEWAY_EXPECT_COMPILED=1 $(BIN)/pytest \
		--import-mode=append -o pythonpath=$(COMPILED) -p no:cacheprovider

# The load test against nginx and HAProxy (docs/performance.md): installs nginx, wrk, haproxy,
# redis-server and nghttp2-client (h2load) with apt-get when missing, matplotlib for the chart;
# results in loadtests/results/.
# BENCH_ARGS passes options through, e.g. BENCH_ARGS="--rounds 1 --duration 2" for a smoke run.
bench: compiled
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	mkdir -p loadtests/results
	$(BIN)/python loadtests/bench.py --gateway-build $(COMPILED) \
		--json loadtests/results/bench.json --png loadtests/results/bench.png $(BENCH_ARGS)
	$(BIN)/python loadtests/websocket_bench.py --gateway-build $(COMPILED) \
		--json loadtests/results/websocket.json

# The soak test (HARDENING.md §H, docs/performance.md): one worker of the compiled build under
# mixed load and faults for an hour; fails when RSS, fds or event-loop tasks grow. Installs nginx,
# wrk and redis-server with apt-get when missing. SOAK_ARGS passes options, e.g.
# SOAK_ARGS="--minutes 10".
soak: compiled
	mkdir -p loadtests/results
	$(BIN)/python loadtests/soak.py --gateway-build $(COMPILED) \
		--json loadtests/results/soak.json $(SOAK_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy

test: $(STAMP)
	$(BIN)/pytest

clean:
	rm -rf $(VENV) build .mypy_cache .ruff_cache .pytest_cache .hypothesis
