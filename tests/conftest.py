"""Shared fixtures, and the test kinds by folder: unit/ (pure cores, no clock), actors/ (one
actor or time-dependent piece on trio's MockClock, with fakes), system/ (real processes,
redis-server, loopback sockets, hypercorn; marked `system`, so `make test-fast` skips them).
The summary at the end counts the tests run of each kind.

Shared helpers, one of each: `sample` (a metric's value) in tests/helpers.py; the actor tests'
fake Redis and publisher log lines (`fake`, `logs`) in tests/actors/conftest.py; `eventually`
(wait on another process or real sockets, with a ceiling) in tests/system/service_harness.py."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.devredis import RedisServer

TESTS = Path(__file__).parent
CLOCKS = ("autojump_clock", "mock_clock")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for one test, killed afterwards."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def kind_of(item: pytest.Item) -> str:
    return Path(str(item.path)).relative_to(TESTS).parts[0]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if kind_of(item) == "system":
            item.add_marker(pytest.mark.system)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    kinds: Counter[str] = Counter()
    for report in terminalreporter.getreports("passed") + terminalreporter.getreports("failed"):
        if report.when != "call":
            continue
        kinds[report.nodeid.split("/")[1]] += 1
        if "mockclock" in report.keywords:
            kinds["on MockClock"] += 1
    if kinds:
        terminalreporter.write_line(
            "tests run by kind: " + ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
        )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tag the tests that run on a MockClock, for the summary above."""
    if any(name in getattr(item, "fixturenames", ()) for name in CLOCKS):
        item.add_marker("mockclock")
