"""WebSocket side of the simulator: the ``/edge`` endpoint speaking MEXC's futures protocol.

Inputs: client frames (ping, sub.kline, unsub.kline). Outputs: pong, ``rs.*`` replies and
``push.kline`` frames, from scripted ``push()`` calls and from the automatic push loop.
Each connection has a bounded outbox drained by its own writer task, so one push is serialised
once and handed to every subscriber without waiting on any socket; a full outbox applies
backpressure to the pusher (the benchmark then measures the consumer, not a drop policy).
Two trio-websocket internals are used on purpose: the stream (to abort without a close frame)
and the send lock/wsproto pair (to write queued frames in one syscall).
On cancel every handler ends; trio-websocket closes the sockets.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import trio
from trio_websocket import (
    ConnectionClosed,
    Endpoint,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
    serve_websocket,
)
from wsproto.events import BytesMessage, TextMessage

from devtools.simulator.exchange import Market
from screener.core.names import INTERVAL_MINUTES

__all__ = ["WsHub"]

WS_PATH: Final = "/edge"
PUSH_TICK_S: Final = 0.01
"""Push loop period: 10 ms bursts reach ~20k msgs/s without a wake-up per message."""

OUTBOX_FRAMES: Final = 4096
"""Per-connection queued frames (~0.2 s at 20k/s) before the pusher waits for the socket."""

MAX_BACKLOG_S: Final = 1.0
"""If the pusher falls this far behind (CPU-bound), forget the backlog instead of bursting."""

WRITE_BATCH: Final = 256
"""Most frames joined into one socket write."""

_NO_CODE: Final = frozenset({1005, 1006})
"""wsproto's codes for "no close code received" / "no close frame at all"."""


async def _send_frames(ws: WebSocketConnection, frames: list[str | bytes]) -> None:
    """Send queued frames with one stream write.

    trio-websocket writes every message with its own ``send_all`` (a syscall and a task switch
    each), which dominates at 10k+ msgs/s. Here the connection's own wsproto frames the batch
    and it is written under the connection's send lock, as its ``send_message`` would do.
    """
    if len(frames) == 1 or ws.closed is not None:
        for frame in frames:
            await ws.send_message(frame)
        return
    proto = ws._wsproto
    data = b"".join(
        proto.send(TextMessage(data=f) if isinstance(f, str) else BytesMessage(data=f))
        for f in frames
    )
    async with ws._stream_lock:
        try:
            await ws._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ConnectionClosed(ws.closed) from None  # the reader task records the abort


@dataclass(eq=False)
class _Client:
    """One accepted connection."""

    id: int
    ws: WebSocketConnection
    outbox: trio.MemorySendChannel[str | bytes]
    symbols: set[str] = field(default_factory=set)
    dropped: bool = False


class WsHub:
    """Connections, subscriptions, counters and scripting knobs of the WebSocket side."""

    def __init__(self, market: Market, clock: Callable[[], float], *, rate_per_s: float) -> None:
        self.market = market
        self.clock = clock
        # knobs
        self.rate_per_s = rate_per_s
        self.pushing = True
        self.silent = False
        self.silent_connections: set[int] = set()  # ids (keys of `subscriptions`) gone quiet
        self.refuse_handshake = False
        self.error_symbols: set[str] = set()
        self.ack_ts_as_string = False
        self.ping_timeout_s = 60.0
        self.on_push: Callable[[dict[str, Any]], None] | None = None
        # observable state
        self.connects_total = 0
        self.sub_requests = 0
        self.unsub_requests = 0
        self.pings = 0
        self.closed_codes: list[int | None] = []
        self.subscriptions: dict[int, set[str]] = {}
        self._clients: dict[int, _Client] = {}
        self._subscribers: dict[str, dict[int, _Client]] = {}
        self._ids = itertools.count(1)
        self._rr: list[str] = []
        self._rr_dirty = False
        self._rr_pos = 0

    @property
    def connections(self) -> int:
        return len(self._clients)

    # --- serving ---------------------------------------------------------------------------

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on ``host:port`` and push until cancelled; reports the ``ws://`` URL."""
        async with trio.open_nursery() as nursery:
            server: WebSocketServer = await nursery.start(
                serve_websocket, self._handle, host, port, None
            )
            nursery.start_soon(self._run_pusher)
            endpoint = server.listeners[0]
            if not isinstance(endpoint, Endpoint):
                raise TypeError(f"not a TCP listener: {endpoint}")
            task_status.started(f"{endpoint.url}{WS_PATH}")

    async def _handle(self, request: WebSocketRequest) -> None:
        if self.refuse_handshake:
            await request.reject(503, body=b"Service Unavailable")
            return
        if request.path.split("?", 1)[0] != WS_PATH:
            await request.reject(404, body=b"Not Found")
            return
        ws = await request.accept()
        self.connects_total += 1
        send, recv = trio.open_memory_channel[str | bytes](OUTBOX_FRAMES)
        client = _Client(next(self._ids), ws, send)
        self._clients[client.id] = client
        self.subscriptions[client.id] = client.symbols
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write, client, recv)
                await self._read(client)
                nursery.cancel_scope.cancel()
        finally:
            self._forget(client)

    async def _read(self, client: _Client) -> None:
        """Answer client frames; close the socket after ``ping_timeout_s`` without a ping."""
        idle = trio.CancelScope(deadline=trio.current_time() + self.ping_timeout_s)
        while True:
            with idle:
                try:
                    while True:
                        message = await client.ws.get_message()
                        await self._on_message(client, message, idle)
                except ConnectionClosed as exc:
                    if not client.dropped:
                        code = int(exc.reason.code) if exc.reason else None
                        self.closed_codes.append(None if code in _NO_CODE else code)
                    return
            if not self.silent:  # the idle deadline passed (a silent server closes nothing)
                await client.ws.aclose(1000, "no ping within 60 s")
                return
            idle = trio.CancelScope(deadline=trio.current_time() + self.ping_timeout_s)

    async def _write(self, client: _Client, recv: trio.MemoryReceiveChannel[str | bytes]) -> None:
        async with recv:
            async for frame in recv:
                batch = [frame]
                while len(batch) < WRITE_BATCH:
                    try:
                        batch.append(recv.receive_nowait())
                    except trio.WouldBlock:
                        break
                try:
                    await _send_frames(client.ws, batch)
                except ConnectionClosed:
                    return  # the reader sees the close too and ends the handler

    def _forget(self, client: _Client) -> None:
        client.outbox.close()
        self._clients.pop(client.id, None)
        self.subscriptions.pop(client.id, None)
        for symbol in tuple(client.symbols):
            self._unsubscribe(client, symbol)

    # --- client frames ---------------------------------------------------------------------

    async def _on_message(
        self, client: _Client, message: str | bytes, idle: trio.CancelScope
    ) -> None:
        try:
            request = orjson.loads(message)
            method = request["method"]
            if not isinstance(method, str):
                raise TypeError(method)
        except (orjson.JSONDecodeError, KeyError, TypeError):
            if not self.silent:
                await self._reply(client, self._rs("rs.error", "Invalid request!"))
            return
        param = request.get("param")
        if not isinstance(param, dict):
            param = {}
        if method == "ping":
            self.pings += 1
            idle.deadline = trio.current_time() + self.ping_timeout_s
            if not self.silent:
                ms = int(self.clock() * 1000)
                await self._reply(client, {"channel": "pong", "data": ms, "ts": ms})
            return
        if self.silent:  # a stalled venue: requests are received and counted, nothing happens
            self.sub_requests += method == "sub.kline"
            self.unsub_requests += method == "unsub.kline"
            return
        if method == "sub.kline":
            self.sub_requests += 1
            await self._reply(client, self._sub(client, param))
        elif method == "unsub.kline":
            self.unsub_requests += 1
            symbol = param.get("symbol")
            if isinstance(symbol, str):
                self._unsubscribe(client, symbol)
            await self._reply(client, self._rs("rs.unsub.kline", "success"))
        else:
            await self._reply(client, self._rs("rs.error", f"Method [{method}] not supported"))

    def _sub(self, client: _Client, param: dict[str, Any]) -> dict[str, Any]:
        """Apply a sub.kline; returns the reply. The "gzip" flag is ignored: always JSON text.

        Whether the real venue gzips frames when "gzip" is absent or true is unverified (the
        docs/exchange.md, section 9); the simulator always answers in plain JSON text.
        """
        symbol = param.get("symbol")
        interval = param.get("interval", "Min1")
        if not isinstance(symbol, str):
            return self._rs("rs.error", "Invalid request!")
        if symbol in self.error_symbols:
            return self._rs("rs.error", "Contract doesn't exist!")
        if not self.market.is_live(symbol, self.clock()):
            return self._rs("rs.error", f"Contract [{symbol}] not exists")
        if interval != "Min1":
            known = interval in INTERVAL_MINUTES or interval in ("Week1", "Month1")
            why = "only Min1 is simulated" if known else "invalid interval"
            return self._rs("rs.error", f"Interval [{interval}]: {why}")
        client.symbols.add(symbol)
        subs = self._subscribers.setdefault(symbol, {})
        if not subs:
            self._rr_dirty = True
        subs[client.id] = client
        return self._rs("rs.sub.kline", "success")

    def _unsubscribe(self, client: _Client, symbol: str) -> None:
        client.symbols.discard(symbol)
        subs = self._subscribers.get(symbol)
        if subs is not None and subs.pop(client.id, None) is not None and not subs:
            del self._subscribers[symbol]
            self._rr_dirty = True

    def _rs(self, channel: str, data: str) -> dict[str, Any]:
        ms = int(self.clock() * 1000)
        return {"channel": channel, "data": data, "ts": str(ms) if self.ack_ts_as_string else ms}

    async def _reply(self, client: _Client, payload: dict[str, Any]) -> None:
        await self._send(client, orjson.dumps(payload).decode())

    async def _send(self, client: _Client, frame: str | bytes) -> None:
        """Queue ``frame``; waits only when the outbox is full; a closing client is skipped,
        and so is one in ``silent_connections`` (it reads and counts, sends nothing)."""
        if client.id in self.silent_connections:
            return
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            try:
                client.outbox.send_nowait(frame)
            except trio.WouldBlock:
                await client.outbox.send(frame)

    # --- pushes ----------------------------------------------------------------------------

    async def push(
        self, symbol: str, *, price: float | None = None, **overrides: Any
    ) -> dict[str, Any]:
        """Trade once on ``symbol`` and send the kline push to its subscribers.

        ``price`` sets the trade price instead of a random step (and moves the walk there);
        ``overrides`` replace fields of ``data`` in this frame only. ``on_push`` sees the
        payload when at least one connection is subscribed and the hub is not silent.
        """
        now = self.clock()
        candle = self.market.trade(symbol, now, price)
        payload = self.market.kline_push(symbol, candle, self.market.push_time(symbol, now))
        if overrides:
            payload["data"].update(overrides)
        subs = self._subscribers.get(symbol)
        if subs and not self.silent:
            if self.on_push is not None:
                self.on_push(payload)
            await self._fanout(tuple(subs.values()), orjson.dumps(payload).decode())
        return payload

    async def _fanout(self, clients: tuple[_Client, ...], frame: str | bytes) -> None:
        for client in clients:
            await self._send(client, frame)

    async def send_raw(self, frame: str | bytes) -> None:
        """Send ``frame`` as is to every open connection (ignores ``silent``)."""
        await self._fanout(tuple(self._clients.values()), frame)

    async def drop_all(self) -> None:
        """Abort every connection: close the TCP stream without a WebSocket close frame."""
        for client in tuple(self._clients.values()):
            client.dropped = True
            # trio-websocket has no public abort; closing its stream is what a dead peer does.
            await client.ws._stream.aclose()

    def _next_symbol(self) -> str | None:
        if self._rr_dirty:
            self._rr = list(self._subscribers)
            self._rr_dirty = False
        if not self._rr:
            return None
        self._rr_pos = (self._rr_pos + 1) % len(self._rr)
        return self._rr[self._rr_pos]

    async def _run_pusher(self) -> None:
        """Push ``rate_per_s`` klines per second, round-robin over subscribed symbols."""
        start = trio.current_time()
        k = 0
        budget = 0.0
        while True:
            k += 1
            deadline = start + k * PUSH_TICK_S
            await trio.sleep_until(deadline)
            if trio.current_time() - deadline > MAX_BACKLOG_S:
                start, k = trio.current_time(), 0
            if not self.pushing or self.silent or self.rate_per_s <= 0 or not self._subscribers:
                budget = 0.0
                continue
            budget += self.rate_per_s * PUSH_TICK_S
            for _ in range(int(budget)):
                symbol = self._next_symbol()
                if symbol is None:
                    break
                await self.push(symbol)
            budget -= int(budget)
