# One command each, on a fresh machine: `make test`, `make run`, `make demo`.
# Each target creates .venv and installs the project into it first (only when needed).
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTHON ?= python3

$(STAMP): pyproject.toml devtools/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ./devtools -e '.[dev]'
	touch $(STAMP)

.PHONY: install test test-fast test-floors image-check lint run demo simulate bench
install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy screener actors devtools

## the test command: lint, then every test (starts its own redis-server and simulator)
test: lint
	$(BIN)/pytest

## lint, then the unit and MockClock tests only (seconds; no processes, sockets or redis-server)
test-fast: lint
	$(BIN)/pytest -m "not system"

## every test at the dependency floors: each direct dependency at the lowest version that
## pyproject.toml allows, in a venv of its own (uv's lowest-direct resolution; no lint)
test-floors:
	PYTHON=$(PYTHON) bash devtools/ci/floors.sh

## build docker/Dockerfile (docker, podman, or else buildah on a local Debian base) and run
## the image against loopback Redis and the simulator: HEALTHCHECK, /top5, SIGTERM exit 0
image-check: $(STAMP)
	VENV=$(VENV) bash devtools/ci/image_check.sh

## the service against the real exchange (env from the shell or .env; see .env.example)
run: $(STAMP)
	set -a; [ ! -f .env ] || . ./.env; set +a; exec $(BIN)/screener

## the service against the bundled simulator, with a private redis-server on port 6390
demo: $(STAMP)
	$(BIN)/python -m devtools.demo

simulate: $(STAMP)
	$(BIN)/screener simulate

## the benchmark of docs/performance.md (about 10 minutes; `--quick` is the CI smoke test)
bench: $(STAMP)
	$(BIN)/screener bench
