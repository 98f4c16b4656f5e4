# One command each, on a fresh machine: `make test`, `make run`, `make demo`.
# Each target creates .venv and installs the project into it first (only when needed).
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTHON ?= python3

# uv installs the exact versions of uv.lock (every package, hashes checked); uv itself, at the
# release below, lives in a venv of its own ($(TOOLS)), so the project venv holds only the lock.
UV_VERSION := 0.13.10
TOOLS ?= .tools
UV := $(TOOLS)/bin/uv
export UV_PYTHON_DOWNLOADS := never

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q uv==$(UV_VERSION)

$(STAMP): pyproject.toml devtools/pyproject.toml uv.lock | $(UV)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync -q --locked --extra dev --python $(PYTHON)
	touch $(STAMP)

.PHONY: install upgrade test test-fast test-latest test-floors image-check lint config-docs kubernetes-rules run demo simulate bench
install: $(STAMP)

## refresh uv.lock to the newest releases pyproject.toml allows, install them, run the suite;
## commit uv.lock only when it passes (docs/operations.md, "Upgrading dependencies")
upgrade: | $(UV)
	$(UV) lock --upgrade
	$(MAKE) test

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy screener actors devtools

## rewrite .env.example's variable list and docs/operations.md's variable table from the
## settings declaration (screener/core/config.py); the packaging tests fail until they agree
config-docs: $(STAMP)
	$(BIN)/python -m devtools.config_docs

## rewrite the Kubernetes PrometheusRule (docker/kubernetes/base/prometheusrule.yaml) from
## docker/monitoring/alerts.yml; tests/system/test_kubernetes.py fails until they agree
kubernetes-rules: $(STAMP)
	$(BIN)/python -m devtools.kubernetes_rules

## the test command: lint, then every test (starts its own redis-server and simulator)
test: lint
	$(BIN)/pytest

## lint, then the unit and MockClock tests only (seconds; no processes, sockets or redis-server)
test-fast: lint
	$(BIN)/pytest -m "not system"

## lint and every test on the newest releases, ignoring uv.lock (in .venv-latest; by hand, not
## in CI): tells early what the next `make upgrade` will meet
test-latest: | $(UV)
	rm -rf .venv-latest
	$(UV) venv -q --python $(PYTHON) .venv-latest
	$(UV) pip install -q --python .venv-latest/bin/python --upgrade -e ./devtools -e '.[dev]'
	$(MAKE) VENV=.venv-latest STAMP=.venv-latest/bin/python test

## every test at the dependency floors: each direct dependency at the lowest version that
## pyproject.toml allows, in a venv of its own (uv's lowest-direct resolution; no lint)
test-floors: | $(UV)
	UV=$(UV) PYTHON=$(PYTHON) bash devtools/ci/floors.sh

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
