# The two commands of the README: `make demo` and `make check`. Both set up what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo check lint types test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Start the gateway on 127.0.0.1:8080 in front of a bundled demo upstream (no config, no Redis).
demo: $(STAMP)
	$(BIN)/gateway demo

# Lint, types and the whole test suite; .ci/run calls exactly this.
check: $(STAMP)
	./.ci/system-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

# The load test against nginx and HAProxy (docs/performance.md): installs nginx, wrk and haproxy
# with apt-get when missing, matplotlib for the chart; results in loadtests/results/.
# BENCH_ARGS passes options through, e.g. BENCH_ARGS="--rounds 1 --duration 2" for a smoke run.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	mkdir -p loadtests/results
	$(BIN)/python loadtests/bench.py --json loadtests/results/bench.json --png loadtests/results/bench.png $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy

test: $(STAMP)
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
