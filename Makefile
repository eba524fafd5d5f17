# fusesnap: `make demo` shows it working, `make test` runs every check.
# Both install what they need (Debian packages and a venv) first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: deps system-deps venv lint typecheck unit test demo bench clean

system-deps:
	@tools/install-system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

deps: system-deps venv

lint: deps
	$(BIN)/ruff check fusesnap tools tests
	$(BIN)/ruff format --check fusesnap tools tests

typecheck: deps
	$(BIN)/mypy

test: deps
	$(BIN)/ruff check fusesnap tools tests
	$(BIN)/ruff format --check fusesnap tools tests
	$(BIN)/mypy
	$(BIN)/pytest

demo: deps
	$(BIN)/python -m tools.demo

# Every benchmark, then the goals table and docs/bench-startup.svg from this run's numbers.
BENCH_RESULTS := build/bench/results.json
bench: deps
	$(BIN)/pip install -q -e '.[test,bench]'
	rm -f $(BENCH_RESULTS)
	export FUSESNAP_BENCH_RESULTS=$(CURDIR)/$(BENCH_RESULTS) && \
	$(BIN)/python -m tools.bench.index && \
	$(BIN)/python -m tools.bench.pull && \
	$(BIN)/python -m tools.bench.read && \
	$(BIN)/python -m tools.bench.startup && \
	$(BIN)/python -m tools.bench.startup --unshaped && \
	$(BIN)/python -m tools.bench.containerd && \
	$(BIN)/python -m tools.bench.containerd --unshaped
	$(BIN)/python -m tools.bench.summary $(BENCH_RESULTS) --svg docs/bench-startup.svg

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
