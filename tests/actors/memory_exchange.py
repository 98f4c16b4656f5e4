"""A scripted exchange over in-memory streams, for connection tests in exact virtual time.

Real trio-websocket on both ends, real MEXC frames; only the TCP socket is replaced by
`trio.testing.memory_stream_pair`, so `autojump_clock` cannot jump while bytes are in flight.
Pings are answered and subscriptions acknowledged; `send` pushes any frame (text or bytes)
to the newest client, and `answer_unsubs` acknowledges unsubscriptions too.
"""

from __future__ import annotations

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

from screener.config import ExchangeSettings


class MemoryExchange:
    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.answer_pings = True
        self.answer_unsubs = False
        self.connects: list[float] = []
        self.pings: list[float] = []
        self.subs: list[str] = []
        self.unsubs: list[str] = []
        self.close_codes: list[int | None] = []
        self.server_sockets: list[WebSocketConnection] = []
        self.connected = trio.Event()

    async def send(self, message: str | bytes) -> None:
        """Send one frame as the exchange, on the newest connection: text for `str`, binary
        for `bytes`."""
        await self.server_sockets[-1].send_message(message)

    @asynccontextmanager
    async def connect(self, settings: ExchangeSettings) -> AsyncIterator[WebSocketConnection]:
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
                        await ws.send_message(
                            orjson.dumps(
                                {"channel": "rs.sub.kline", "data": "success", "ts": now_ms}
                            ).decode()
                        )
                    elif msg["method"] == "unsub.kline":
                        self.unsubs.append(msg["param"]["symbol"])
                        if self.answer_unsubs:
                            await ws.send_message(
                                orjson.dumps(
                                    {"channel": "rs.unsub.kline", "data": "success", "ts": now_ms}
                                ).decode()
                            )
            except ConnectionClosed as exc:
                self.close_codes.append(exc.reason.code)
