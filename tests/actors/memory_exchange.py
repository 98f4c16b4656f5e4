"""A scripted exchange over in-memory streams, for connection tests in exact virtual time.

Real trio-websocket on both ends, real MEXC frames; only the TCP socket is replaced by
`trio.testing.memory_stream_pair`, so `autojump_clock` cannot jump while bytes are in flight.
Pings are answered and subscriptions acknowledged; `send` pushes any frame (text or bytes)
to the newest client, and `answer_unsubs` acknowledges unsubscriptions too.

Outage knobs: `refuse_until` refuses every connect before that time (`ConnectionRefusedError`,
each refusal's time in `refused`); `close_all` ends every open socket from the exchange's
side; `push` sends a kline to the sockets subscribed to its symbol; `forget_subs` acknowledges
subscriptions without keeping them and `drop_subscriptions` forgets those kept, both
silently (pings are still answered), as an exchange that lost a socket's subscriptions does.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import trio
import trio.testing
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    wrap_client_stream,
    wrap_server_stream,
)

from screener.core.config import ExchangeSettings


class MemoryExchange:
    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.answer_pings = True
        self.answer_unsubs = False
        self.connects: list[float] = []
        self.pings: list[float] = []
        self.subs: list[str] = []
        self.sub_times: list[float] = []  # when each of `subs` arrived
        self.unsubs: list[str] = []
        self.close_codes: list[int | None] = []
        self.server_sockets: list[WebSocketConnection] = []
        self.connected = trio.Event()
        self.refuse_until = -math.inf
        self.refused: list[float] = []
        self.forget_subs = False
        self.kept: dict[WebSocketConnection, set[str]] = {}  # subscriptions, per socket

    async def push(self, symbol: str, price: float = 100.0) -> int:
        """A valid 1-minute kline push for `symbol`, dated now (trio time after a base
        epoch), sent to every open socket subscribed to it; returns how many got it."""
        ts = 1_770_330_000_000 + int(trio.current_time() * 1000)
        t = ts // 60_000 * 60
        data = {"symbol": symbol, "interval": "Min1", "t": t, "o": price, "c": price}
        data |= {"h": price, "l": price, "a": 1.0, "q": 1, "ro": price, "rc": price}
        data |= {"rh": price, "rl": price}
        frame = orjson.dumps(
            {"symbol": symbol, "data": data, "channel": "push.kline", "ts": ts}
        ).decode()
        sent = 0
        for ws, symbols in tuple(self.kept.items()):
            if symbol in symbols and ws.closed is None:
                await ws.send_message(frame)
                sent += 1
        return sent

    def drop_subscriptions(self) -> None:
        """Forget every socket's subscriptions without a word; pings are still answered."""
        for symbols in self.kept.values():
            symbols.clear()

    async def close_all(self, code: int = 1001) -> None:
        """Close every open socket from the exchange's side (1001: going away)."""
        for ws in self.server_sockets:
            if ws.closed is None:
                await ws.aclose(code)

    async def send(self, message: str | bytes) -> None:
        """Send one frame as the exchange, on the newest connection: text for `str`, binary
        for `bytes`."""
        await self.server_sockets[-1].send_message(message)

    @asynccontextmanager
    async def connect(self, settings: ExchangeSettings) -> AsyncIterator[WebSocketConnection]:
        if trio.current_time() < self.refuse_until:
            self.refused.append(trio.current_time())
            await trio.lowlevel.checkpoint()
            raise ConnectionRefusedError("connection refused (memory exchange)")
        client_stream, server_stream = trio.testing.memory_stream_pair()
        self.connects.append(trio.current_time())
        self.nursery.start_soon(self._serve, server_stream)
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(
                nursery,
                client_stream,
                "mexc.test",
                "/edge",
                max_message_size=settings.max_message_bytes,
            )
            try:
                yield ws
            finally:
                await ws.aclose()

    async def _serve(self, stream: trio.abc.Stream) -> None:
        async with trio.open_nursery() as nursery:
            request = await wrap_server_stream(nursery, stream)
            ws = await request.accept()
            self.server_sockets.append(ws)
            self.kept[ws] = set()
            self.connected.set()
            self.connected = trio.Event()
            try:
                while True:
                    msg = orjson.loads(await ws.get_message())
                    now_ms = int(trio.current_time() * 1000)
                    if msg["method"] == "ping":
                        self.pings.append(trio.current_time())
                        if self.answer_pings:
                            await ws.send_message(
                                orjson.dumps({"channel": "pong", "data": now_ms}).decode()
                            )
                    elif msg["method"] == "sub.kline":
                        self.subs.append(msg["param"]["symbol"])
                        self.sub_times.append(trio.current_time())
                        if not self.forget_subs:
                            self.kept[ws].add(msg["param"]["symbol"])
                        await ws.send_message(
                            orjson.dumps(
                                {"channel": "rs.sub.kline", "data": "success", "ts": now_ms}
                            ).decode()
                        )
                    elif msg["method"] == "unsub.kline":
                        self.unsubs.append(msg["param"]["symbol"])
                        self.kept[ws].discard(msg["param"]["symbol"])
                        if self.answer_unsubs:
                            await ws.send_message(
                                orjson.dumps(
                                    {"channel": "rs.unsub.kline", "data": "success", "ts": now_ms}
                                ).decode()
                            )
            except ConnectionClosed as exc:
                self.close_codes.append(exc.reason.code)
