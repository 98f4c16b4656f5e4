"""How the publisher's writes reach a thread and their outcome comes back to trio.

With REDIS_WRITER=thread or to_thread (and for TLS links), writes go through redis-py, which is
synchronous, so they run outside the event loop: in one long-lived `WriterThread`, or in
`trio.to_thread.run_sync` per write (`to_thread_hop`). The benchmark measures both against the
default socket link (docs/architecture.md, "How the publisher writes").
A resource of the publisher actor, not an actor: it knows nothing of Redis but the result type.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Awaitable, Callable, Iterator

import outcome
import trio

from screener.redis.batch import BatchResult

Hop = Callable[[Callable[[], BatchResult]], Awaitable[BatchResult]]
"""How a write reaches a thread and its result comes back: `WriterThread.run` (the service)
or `to_thread_hop`. Either way a cancelled caller abandons the call, which runs on."""


async def to_thread_hop(write: Callable[[], BatchResult]) -> BatchResult:
    """`trio.to_thread.run_sync` per write: a thread taken from trio's cache and named, a
    trio round trip each way (150-190 us a call here). trio.testing sees the thread, so
    MockClock tests that stand in a fake for Redis use this hop."""
    return await trio.to_thread.run_sync(write, abandon_on_cancel=True)


class WriterThread:
    """One long-lived thread that runs every write, so a batch costs a queue put, the
    thread's wake-up and one `TrioToken.run_sync_soon` back (docs/performance.md measures
    it against `to_thread_hop`). `open` starts it for the caller's trio run; leaving the
    block ends it after the write in hand."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()

    @classmethod
    @contextlib.contextmanager
    def open(cls) -> Iterator[WriterThread]:
        writer = cls()
        thread = threading.Thread(target=writer._serve, name="redis-writer", daemon=True)
        thread.start()
        try:
            yield writer
        finally:
            writer._jobs.put(None)  # ends the thread once the write in hand is done

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    async def run(self, write: Callable[[], BatchResult]) -> BatchResult:
        """`write()` in the writer thread; its result or exception here."""
        token = trio.lowlevel.current_trio_token()
        task = trio.lowlevel.current_task()
        abandoned = False

        def deliver(result: outcome.Outcome[BatchResult]) -> None:
            if not abandoned:
                trio.lowlevel.reschedule(task, result)

        def job() -> None:
            result = outcome.capture(write)
            with contextlib.suppress(trio.RunFinishedError):  # the run ended meanwhile
                token.run_sync_soon(deliver, result)

        def abort(_raise_cancel: object) -> trio.lowlevel.Abort:
            nonlocal abandoned
            abandoned = True  # the write runs on and records its outcome in its Attempt
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.checkpoint_if_cancelled()
        self._jobs.put(job)
        result: BatchResult = await trio.lowlevel.wait_task_rescheduled(abort)
        return result
