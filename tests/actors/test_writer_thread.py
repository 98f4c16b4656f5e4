"""`WriterThread`: one long-lived thread runs each write; its result or error comes back to
the trio task that asked, and a cancelled caller abandons a write that still finishes. Real
threads, real time: a write takes microseconds; `fail_after` bounds each wait."""

from __future__ import annotations

import threading

import pytest
import trio

from screener.redis.batch import BatchResult
from screener.redis.writer_thread import WriterThread

DONE = BatchResult(unencodable=0, refused=0, refusal=None)


async def test_writes_run_in_one_thread_and_their_results_come_back() -> None:
    names: list[str] = []

    def write() -> BatchResult:
        names.append(threading.current_thread().name)
        return DONE

    with trio.fail_after(10), WriterThread.open() as writer:
        results = [await writer.run(write) for _ in range(3)]
    assert results == [DONE] * 3
    assert names == ["redis-writer"] * 3


async def test_an_error_of_the_write_is_raised_in_the_caller() -> None:
    def write() -> BatchResult:
        raise ConnectionError("refused")

    with trio.fail_after(10), WriterThread.open() as writer, pytest.raises(ConnectionError):
        await writer.run(write)


async def test_a_cancelled_caller_abandons_the_write_which_still_finishes() -> None:
    release, finished = threading.Event(), threading.Event()

    def write() -> BatchResult:
        release.wait(10)
        finished.set()
        return DONE

    with trio.fail_after(10), WriterThread.open() as writer:
        with trio.move_on_after(0.05) as scope:
            await writer.run(write)
        assert scope.cancelled_caught
        release.set()
        assert await trio.to_thread.run_sync(finished.wait, 10)
        assert await writer.run(lambda: DONE) == DONE  # the thread serves on
