"""Fixtures of the actor tests: the publisher tests' in-memory Redis on the test's MockClock
(`fake`) and the publisher's log lines (`logs`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio.testing

from tests.actors.fakes import MemoryRedis, publisher_lines


@pytest.fixture
def fake(autojump_clock: trio.testing.MockClock) -> MemoryRedis:
    """Redis in memory behind the publisher's real link, up and accepting every write, timed
    on the test's clock."""
    return MemoryRedis(autojump_clock)


@pytest.fixture
def logs() -> Iterator[list[tuple[str, str]]]:
    """The publisher's log lines as (level, message)."""
    with publisher_lines() as lines:
        yield lines
