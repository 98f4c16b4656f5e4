"""Server-Sent Events for the live page (`GET /stream`), fanned out from the snapshots.

One task (`Streams.run`) builds each event once and offers it to every open stream's bounded
queue without ever waiting: a `ranking` event each time the ranking snapshot is replaced (the
/top5 document with each listed symbol's sparkline), a `status` event (the /health document)
every `STATUS_S`, a heartbeat comment every `HEARTBEAT_S` so that proxies do not close a quiet
stream. A new stream gets the current status and ranking at once. A stream whose queue is full
(its client reads slower than events come) is ended and counted in
`screener_stream_clients_dropped_total`: nothing upstream waits for a browser, and the
browser's EventSource reconnects by itself. At most `max_clients` streams are open; more are
refused. When `stop` fires every stream ends, so HTTP's drain does not wait for them.

Only snapshots are read (`Views`): no stream, however many or slow, reaches an actor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, Final

import orjson
import trio
from loguru import logger

from screener.core.metrics import Metrics
from screener.core.periodic import Ticker
from screener.core.snapshot import Views
from screener.http.charts import sparklines
from screener.http.health import health_report, top5_report

if TYPE_CHECKING:
    from loguru import Logger

STATUS_S: Final = 5.0
"""Between status events: the page's status line (feed, connections, Redis, push age)."""

HEARTBEAT_S: Final = 15.0
"""Between heartbeat comments, well inside the 30-60 s after which proxies close idle streams."""

CLIENT_QUEUE: Final = 16
"""Events a stream may fall behind before it is dropped: with a status every 5 s and a ranking
every 15 s, a client this far behind has not read for about a minute; a live browser keeps up
with far less."""

RETRY_MS: Final = 2000
"""The reconnection delay EventSource is told to use after a stream ends."""

HEARTBEAT: Final = b": heartbeat\n\n"


def sse(event: str, data: object) -> bytes:
    """One Server-Sent Event: its name and one line of JSON."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


Queue = trio.MemoryReceiveChannel[bytes]


@dataclass(eq=False)
class Streams:
    """The open streams and the one task that feeds them (`run`)."""

    views: Views
    metrics: Metrics
    _: KW_ONLY
    stale_after_s: float
    rest_mode: bool = False
    max_clients: int = 100
    status_s: float = STATUS_S
    heartbeat_s: float = HEARTBEAT_S
    queue_size: int = CLIENT_QUEUE
    _open: dict[Queue, trio.MemorySendChannel[bytes]] = field(init=False, default_factory=dict)
    _closed: bool = field(init=False, default=False)
    _log: Logger = field(init=False, default_factory=lambda: logger.bind(actor="http"))

    def __len__(self) -> int:
        return len(self._open)

    def status_event(self) -> bytes:
        _, body = health_report(
            self.views, trio.current_time(), self.stale_after_s, rest_mode=self.rest_mode
        )
        return sse("status", body)

    def ranking_event(self) -> bytes | None:
        """The /top5 document plus `ranked` and each listed symbol's `sparklines`; None before
        a ranking with data."""
        status, body = top5_report(
            self.views, trio.current_time(), self.stale_after_s, rest_mode=self.rest_mode
        )
        ranking = self.views.ranking.value
        if status != 200 or ranking is None:
            return None
        listed = [s.symbol for s in (*ranking.gainers, *ranking.losers)]
        body["ranked"] = ranking.ranked
        body["sparklines"] = sparklines(self.views.charts.value, listed)
        return sse("ranking", body)

    def open(self) -> Queue | str:
        """A new stream's queue, already holding its first events; or why it is refused."""
        if self._closed or len(self._open) >= self.max_clients:
            self.metrics.stream_refused.inc()
            return "shutting down" if self._closed else "too many streams"
        send, queue = trio.open_memory_channel[bytes](self.queue_size)
        send.send_nowait(f"retry: {RETRY_MS}\n\n".encode())
        send.send_nowait(self.status_event())
        ranking = self.ranking_event()
        if ranking is not None:
            send.send_nowait(ranking)
        self._open[queue] = send
        self.metrics.stream_clients.set(len(self._open))
        return queue

    async def events(self, queue: Queue) -> AsyncIterator[bytes]:
        """The body of one stream: its queue's events until it is dropped or closed."""
        try:
            while True:
                try:
                    chunk = await queue.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return
                yield chunk
        finally:
            self._end(queue)

    def _end(self, queue: Queue) -> bool:
        """Forget a stream and close both ends of its queue (a stream waiting on it ends at
        once, without sending what was still queued); False if it was already gone."""
        send = self._open.pop(queue, None)
        if send is not None:
            send.close()
        queue.close()
        self.metrics.stream_clients.set(len(self._open))
        return send is not None

    def offer(self, chunk: bytes) -> None:
        """Queue `chunk` on every stream, never waiting: a full queue ends its stream."""
        for queue, send in list(self._open.items()):
            try:
                send.send_nowait(chunk)
            except trio.WouldBlock:
                if self._end(queue):
                    self.metrics.stream_dropped.inc()
                    self._log.warning(
                        "live page stream dropped: its client is {n} events behind",
                        n=self.queue_size,
                    )

    def close(self) -> None:
        """End every stream and refuse new ones (shutdown)."""
        self._closed = True
        for queue in list(self._open):
            self._end(queue)

    async def _rankings(self) -> None:
        while True:
            await self.views.ranking.wait_set()
            if self._open:
                event = self.ranking_event()
                if event is not None:
                    self.offer(event)

    async def _every(self, period_s: float, build: Callable[[], bytes]) -> None:
        ticker = Ticker(period_s)
        while True:
            await ticker.wait()
            if self._open:
                self.offer(build())

    async def run(
        self,
        *,
        stop: Callable[[], Awaitable[None]] = trio.sleep_forever,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Feed the streams until `stop` returns, then end them all and return."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._rankings)
            nursery.start_soon(self._every, self.status_s, self.status_event)
            nursery.start_soon(self._every, self.heartbeat_s, lambda: HEARTBEAT)
            task_status.started()
            await stop()
            self.close()
            nursery.cancel_scope.cancel()
