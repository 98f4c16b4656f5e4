"""The JSON log line: the shape log pipelines read without configuration, from a real loguru
record (an exception included), and text that cannot break the line."""

from __future__ import annotations

import re
from collections.abc import Iterator

import orjson
import pytest
from loguru import logger

from screener.core.logs import json_line


@pytest.fixture
def lines() -> Iterator[list[str]]:
    out: list[str] = []
    sink = logger.add(lambda message: out.append(json_line(message.record)), level="DEBUG")
    try:
        yield out
    finally:
        logger.remove(sink)


def test_the_four_keys_and_the_context_at_the_top_level(lines: list[str]) -> None:
    logger.bind(actor="connection", conn=3).warning("rejected frame: {why}", why="json")
    [line] = lines
    record = orjson.loads(line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", record.pop("timestamp"))
    assert record == {
        "level": "WARNING",
        "message": "rejected frame: json",
        "logger": "tests.unit.test_json_logs",
        "actor": "connection",
        "conn": 3,
        "why": "json",
    }


def test_an_exception_is_text_and_context_cannot_take_a_reserved_key(lines: list[str]) -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        logger.bind(actor="http", level="forged", message="forged").exception("request failed")
    record = orjson.loads(lines[0])
    assert (record["level"], record["message"], record["actor"]) == (
        "ERROR",
        "request failed",
        "http",
    )
    assert record["exception"].startswith("Traceback (most recent call last):")
    assert record["exception"].rstrip().endswith("ValueError: boom\nsecond line")
    assert "\n" not in lines[0]  # one line, whatever the text holds


def test_values_json_cannot_hold_are_written_as_text(lines: list[str]) -> None:
    logger.bind(actor="app").info("target {t}", t=frozenset({"A"}), obj=object())
    record = orjson.loads(lines[0])
    assert record["t"] == "frozenset({'A'})"
    assert record["obj"].startswith("<object object at")
