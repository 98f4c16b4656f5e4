"""Connection actor: one WebSocket to MEXC carrying the kline subscriptions of one chunk.

Inputs: `control`, the chunk's desired symbol set (a new set whenever the universe changes;
closing it retires the chunk). Output: decoded `Kline`s and `ConnStatus` changes into the
window actor's inbox (an owned clone, closed on exit): down at start, up once subscribed,
down (with the chunk's symbols) when an attempt fails, retired when the control channel
closes; and `Unwatched` with the symbols a new set drops, or every symbol at retirement (the
candle closer stops owing their minutes). Optionally `gaps`, a clone of
the backfill channel (owned, closed on exit): when the connection is up again after at least
`gap_after_s` down (or not yet up since start), it asks for the chunk's history once, without
waiting.

Each attempt connects, subscribes (paced), pings every `ping_interval_s` on absolute
deadlines, and treats `2 x ping_interval_s` without any frame (pongs included) as a dead
socket. A socket that still answers pings but brings no push of any of the chunk's symbols
for `silent_resubscribe_s` (the exchange lost our subscriptions) is resubscribed; if pushes
still do not come within another `silent_resubscribe_s`, it is replaced. Failures of the
named network exceptions restart the attempt with capped, jittered exponential backoff; a
chunk's trouble never touches another chunk. With the app's shared `Reachability`, a
connection that could not reach the exchange retries as soon as another one gets through
(and one of them probes within seconds while the exchange is away), so all chunks come back
together after an outage. On cancel the socket is closed with code 1000 under a short
shielded deadline.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable
from typing import Final

import trio
import trio_websocket
from loguru import logger
from trio_websocket import WebSocketConnection

from screener.core.compat import pending_messages
from screener.core.config import ExchangeSettings
from screener.core.logs import RateLimited
from screener.core.metrics import Metrics
from screener.core.models import ConnStatus, Kline, SymbolSet, Unwatched, WindowInbox
from screener.core.periodic import Pulse, Ticker, wait_quiet
from screener.core.supervise import Backoff, Reachability, Spell, run_supervised
from screener.mexc.frames import PING, ErrorReply, SubAck, UnsubAck, decode, sub_kline, unsub_kline
from screener.mexc.values import DecodeError
from screener.mexc.websocket import Connector, open_exchange_socket

RETRY_ON: Final[tuple[type[Exception], ...]] = (
    OSError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio_websocket.HandshakeError,
    trio_websocket.ConnectionClosed,
)
CLOSE_GRACE_S: Final = 1.0


class ConnectionDead(OSError):
    """Nothing arrived for twice the ping interval: the socket only looks alive."""


class ConnectionSilent(OSError):
    """Pings answered but no push even after resubscribing: the exchange forgot this socket."""


class _Chunk:
    """The actor's own state, kept across attempts."""

    def __init__(
        self,
        symbols: SymbolSet,
        gaps: trio.MemorySendChannel[SymbolSet] | None = None,
        gap_after_s: float = math.inf,
    ) -> None:
        self.desired = symbols
        self.changed = Pulse()
        self.gaps = gaps
        self.gap_after_s = gap_after_s
        self.down_since = trio.current_time()
        self.retired = False

    def update(self, symbols: SymbolSet) -> None:
        self.desired = symbols
        self.changed.fire()

    def came_up(self) -> None:
        """Down long enough to miss whole candles: ask for the chunk's history again. Never
        waits: a full backfill queue has plenty to do, and the live feed must not stall."""
        if self.gaps is not None and trio.current_time() - self.down_since >= self.gap_after_s:
            with contextlib.suppress(
                trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError
            ):
                self.gaps.send_nowait(self.desired)

    def went_down(self) -> None:
        self.down_since = trio.current_time()


async def run_connection(
    control: trio.MemoryReceiveChannel[SymbolSet],
    outbox: trio.MemorySendChannel[WindowInbox],
    *,
    conn_id: int,
    settings: ExchangeSettings,
    metrics: Metrics,
    rand: Callable[[], float] = random.random,
    connect: Connector = open_exchange_socket,
    gaps: trio.MemorySendChannel[SymbolSet] | None = None,
    gap_after_s: float = math.inf,
    reachability: Reachability | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """`reachability`: the view of the exchange shared by every connection actor of the
    service (None: this connection recovers on its own backoff alone)."""
    async with control, outbox, gaps if gaps is not None else contextlib.nullcontext():
        chunk = _Chunk(await control.receive(), gaps, gap_after_s)
        await _send_status(outbox, ConnStatus(conn_id=conn_id, up=False))  # counted, not up
        task_status.started()

        async def follow_control(cancel: trio.CancelScope) -> None:
            async for symbols in control:
                if removed := chunk.desired - symbols:  # moved elsewhere or gone
                    await _send_status(outbox, Unwatched(removed))
                chunk.update(symbols)
            chunk.retired = True  # the chunk no longer exists
            await _send_status(outbox, Unwatched(chunk.desired))
            cancel.cancel()

        async def attempt(spell: Spell) -> None:
            await _connect_once(connect, chunk, outbox, spell, conn_id, settings, metrics)

        def on_failure(reason: str, delay: float) -> None:
            metrics.reconnects.inc()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow_control, nursery.cancel_scope)
            nursery.start_soon(
                lambda: run_supervised(
                    attempt,
                    name=f"conn-{conn_id}",
                    retry_on=RETRY_ON,
                    backoff=Backoff(first_s=2.0, cap_s=60.0, rand=rand),
                    healthy_after_s=60.0,
                    on_failure=on_failure,
                    reachability=reachability,
                    on_early_retry=metrics.reconnects_early.inc,
                )
            )
        if chunk.retired:
            await _send_status(outbox, ConnStatus(conn_id=conn_id, up=False, retired=True))


async def _connect_once(
    connect: Connector,
    chunk: _Chunk,
    outbox: trio.MemorySendChannel[WindowInbox],
    spell: Spell,
    conn_id: int,
    settings: ExchangeSettings,
    metrics: Metrics,
) -> None:
    log = logger.bind(actor="connection", conn=conn_id)
    async with connect(settings) as ws:
        spell.opened()  # the exchange answered: whatever fails now is not reachability
        link = _Link(ws, conn_id, metrics, outbox, spell, settings.max_message_bytes)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(link.read, chunk)
                nursery.start_soon(link.watchdog, settings.dead_after_s)
                nursery.start_soon(link.ping, settings.ping_interval_s)
                await link.subscribe_all(chunk, settings)
                await _send_status(outbox, ConnStatus(conn_id=conn_id, up=True))
                link.up = True
                link.last_push = trio.current_time()  # silence is counted from here
                spell.reached()
                chunk.came_up()
                log.info("subscribed {n} symbols", n=len(link.subscribed))
                nursery.start_soon(link.mind_pushes, settings)
                await link.follow(chunk, settings)
        finally:
            metrics.subscriptions.dec(link.acked)
            if link.up:
                chunk.went_down()
                # With the symbols: a push of their open minutes may be missed from now on.
                down = ConnStatus(conn_id=conn_id, up=False, symbols=chunk.desired)
                await _send_status(outbox, down)
            # Close with 1000 even when cancelled (shutdown, chunk retired), but never hang.
            with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_GRACE_S):
                await ws.aclose(1000)


async def _send_status(
    outbox: trio.MemorySendChannel[WindowInbox], status: ConnStatus | Unwatched
) -> None:
    """Status changes matter for /health, so they wait for room, but never for long."""
    with (
        trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_GRACE_S),
        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
    ):
        await outbox.send(status)


class _Link:
    """The tasks of one attempt, sharing the socket and its receive clock."""

    def __init__(
        self,
        ws: WebSocketConnection,
        conn_id: int,
        metrics: Metrics,
        outbox: trio.MemorySendChannel[WindowInbox],
        spell: Spell,
        max_bytes: int,
    ) -> None:
        self.ws = ws
        self.spell = spell
        self.max_bytes = max_bytes
        self.conn_id = conn_id
        self.metrics = metrics
        self.outbox = outbox
        self.log = logger.bind(actor="connection", conn=conn_id)
        self.last_rx = trio.current_time()
        self.last_push = self.last_rx  # of any subscribed symbol
        self.sending = trio.Lock()  # one subscription change at a time
        self.subscribed: set[str] = set()
        self.acked = 0
        self.up = False
        self.quiet = RateLimited(10.0)

    async def read(self, chunk: _Chunk) -> None:
        """Messages already queued by trio-websocket's reader are taken without a checkpoint
        and counted together: the receive clock and `screener_messages_received_total` move
        once per run of queued messages (at most `MESSAGE_QUEUE`), when the queue is empty."""
        ws, outbox, metrics = self.ws, self.outbox, self.metrics
        received = metrics.received
        max_bytes = self.max_bytes
        queued = pending_messages(ws)  # None: get_message only
        uncounted = 0
        while True:
            try:
                if queued is None:
                    raise trio.WouldBlock
                message = queued.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                if uncounted:
                    received.inc(uncounted)
                    uncounted = 0
                try:  # waits; raises ConnectionClosed once the socket is closed
                    message = await ws.get_message()
                except trio_websocket.ConnectionClosed as exc:
                    if exc.reason is not None and exc.reason.code == 1009:  # MESSAGE_TOO_BIG
                        self._rejected("too_large", f"message over {max_bytes} bytes")
                    raise
                self.last_rx = trio.current_time()
            uncounted += 1
            try:
                frame = decode(message, max_bytes)
            except DecodeError as exc:
                self._rejected(exc.reason, str(exc))
                continue
            if type(frame) is Kline:
                if frame.symbol in self.subscribed:
                    self.last_push = self.last_rx
                    try:  # no scheduling round trip per push while there is room
                        outbox.send_nowait(frame)
                    except trio.WouldBlock:
                        await outbox.send(frame)
            elif type(frame) is SubAck:
                if self.spell.healthy_since is None:
                    self.spell.healthy()  # backoff resets only after a real subscription
                self.acked += 1
                metrics.subscriptions.inc()
            elif type(frame) is UnsubAck:
                self.acked -= 1
                metrics.subscriptions.dec()
            elif type(frame) is ErrorReply:
                metrics.rs_errors.inc()
                if (n := self.quiet.allow("rs.error")) is not None:
                    self.log.warning(
                        "exchange answered rs.error: {msg} (+{n} suppressed)",
                        msg=frame.message,
                        n=n,
                    )

    def _rejected(self, reason: str, detail: str) -> None:
        self.metrics.rejected.labels(reason).inc()
        if (n := self.quiet.allow(reason)) is not None:
            self.log.warning("rejected frame: {detail} (+{n} suppressed)", detail=detail, n=n)

    async def watchdog(self, dead_after_s: float) -> None:
        await wait_quiet(lambda: self.last_rx, dead_after_s)
        raise ConnectionDead(f"no frame for {dead_after_s:g}s")

    async def ping(self, interval_s: float) -> None:
        ticker = Ticker(interval_s)
        while True:
            await ticker.wait()
            await self.ws.send_message(PING)

    async def subscribe_all(self, chunk: _Chunk, settings: ExchangeSettings) -> None:
        await self._sync(chunk.desired, settings)

    async def mind_pushes(self, settings: ExchangeSettings) -> None:
        """Pings prove the socket, not the subscriptions: an exchange that lost them keeps
        answering pings and sends nothing. After `silent_resubscribe_s` without a push of any
        of the chunk's symbols (per connection: one idle symbol is normal), resubscribe the
        chunk; if pushes still do not come within another `silent_resubscribe_s`, raise
        `ConnectionSilent` so the attempt is replaced."""
        limit = settings.silent_resubscribe_s
        while True:
            await wait_quiet(lambda: self.last_push, limit)
            resubscribed_at = trio.current_time()
            self.metrics.silent_resubscribes.inc()
            self.log.warning(
                "no push for {s:g}s on {n} symbols; resubscribing",
                s=resubscribed_at - self.last_push,
                n=len(self.subscribed),
            )
            await self.resubscribe(settings)
            await trio.sleep_until(resubscribed_at + limit)
            if self.last_push < resubscribed_at:
                self.metrics.silent_reconnects.inc()
                raise ConnectionSilent(
                    f"no push for {trio.current_time() - self.last_push:g}s, "
                    "resubscribing did not help"
                )

    async def resubscribe(self, settings: ExchangeSettings) -> None:
        """Send `sub.kline` again for every symbol of the chunk, acknowledgements counted
        afresh. No unsubscribe first: an exchange that lost the subscriptions has nothing to
        unsubscribe (the protocol notes do not say how MEXC answers a repeated `sub.kline`;
        a refusal would show as `rs.error`, and the reconnect still follows)."""
        async with self.sending:
            self.metrics.subscriptions.dec(self.acked)
            self.acked = 0
            await self._send_paced([sub_kline(s) for s in sorted(self.subscribed)], settings)

    async def follow(self, chunk: _Chunk, settings: ExchangeSettings) -> None:
        """Subscribe or unsubscribe the difference whenever the chunk changes."""
        while True:
            await chunk.changed.wait()
            await self._sync(chunk.desired, settings)
            self.log.info("chunk now {n} symbols", n=len(self.subscribed))

    async def _sync(self, desired: SymbolSet, settings: ExchangeSettings) -> None:
        async with self.sending:
            frames = [unsub_kline(s) for s in sorted(self.subscribed - desired)]
            frames += [sub_kline(s) for s in sorted(desired - self.subscribed)]
            self.subscribed = set(desired)
            await self._send_paced(frames, settings)

    async def _send_paced(self, frames: list[str], settings: ExchangeSettings) -> None:
        for i, frame in enumerate(frames):
            if i and i % settings.subscribe_batch == 0:
                await trio.sleep(settings.subscribe_pause_s)
            await self.ws.send_message(frame)
