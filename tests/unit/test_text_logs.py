"""The text log line (`LOG_FORMAT=text`, `make demo`): the message first, then the context
fields as `key=value`, from a real loguru record; values that could break the pairs apart or
be taken for markup stay text."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from loguru import logger

from screener.core.logs import text_format

TIME_LEVEL = r"\d\d:\d\d:\d\d\.\d{3} "


@pytest.fixture
def lines() -> Iterator[list[str]]:
    out: list[str] = []
    sink = logger.add(out.append, level="DEBUG", format=text_format, colorize=False)
    try:
        yield out
    finally:
        logger.remove(sink)


def test_the_message_comes_before_the_fields(lines: list[str]) -> None:
    logger.bind(actor="ranking").info("ranking: {n} symbols ranked", n=12)
    [line] = lines
    expected = r"INFO    ranking: 12 symbols ranked actor=ranking n=12\n"
    assert re.fullmatch(TIME_LEVEL + expected, line)


def test_a_line_without_fields_ends_with_the_message(lines: list[str]) -> None:
    logger.warning("plain")
    assert re.fullmatch(TIME_LEVEL + r"WARNING plain\n", lines[0])


def test_values_with_spaces_quotes_braces_or_tags_stay_one_pair(lines: list[str]) -> None:
    logger.bind(actor="http", conn=3).error(
        "failed", why='a "b" = c', shape={"k": "<red>"}, empty=""
    )
    fields = lines[0].split("failed ", 1)[1]
    assert fields == ('actor=http conn=3 why="a \\"b\\" = c" shape="{\'k\': \'<red>\'}" empty=""\n')


def test_an_exception_follows_its_line(lines: list[str]) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logger.bind(actor="app").exception("crashed")
    first, *rest = lines[0].splitlines()
    assert first.endswith("ERROR   crashed actor=app")
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: boom"
