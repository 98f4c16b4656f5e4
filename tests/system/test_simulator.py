"""The simulator's WebSocket side speaks the MEXC futures protocol over real loopback sockets
(it is the fake every other system test relies on, so its wire format is tested on the
wire); its REST side is tested in-process in tests/actors/test_simulator_rest.py.

Rules (as trio-websocket's own tests): 127.0.0.1, port 0, a ``trio.fail_after`` ceiling in
every test, a fake wall clock where candle timing matters, no sleeps to wait for the server
(``wait_all_tasks_blocked`` or FIFO ordering of one connection instead)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import trio
from loguru import logger
from trio.testing import wait_all_tasks_blocked
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    open_websocket_url,
    wrap_client_stream,
)

from devtools.simulator import FakeExchange, SimAddress, SimConfig, run_simulator
from tests.simulator_fakes import FILTERED, MINUTE, T0, make


@asynccontextmanager
async def running(ex: FakeExchange) -> AsyncIterator[SimAddress]:
    async with trio.open_nursery() as nursery:
        address: SimAddress = await nursery.start(ex.serve)
        yield address
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def owned_client(url: str) -> AsyncIterator[WebSocketConnection]:
    """A client that closes its own TCP stream.

    trio-websocket 0.12.2's client never closes its socket when the *server* ends the
    connection (close frame or bare EOF); under ``filterwarnings = error`` the ResourceWarning
    then fails whichever later test triggers GC. Owning the stream is the workaround.
    """
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(nursery, stream, parts.hostname, parts.path)
            yield ws
            await ws.aclose()
    finally:
        await stream.aclose()


async def request(ws: WebSocketConnection, payload: dict[str, Any]) -> Any:
    await ws.send_message(orjson.dumps(payload).decode())
    return orjson.loads(await ws.get_message())


def sub(symbol: str) -> dict[str, Any]:
    return {"method": "sub.kline", "param": {"symbol": symbol, "interval": "Min1"}, "gzip": False}


async def test_ping_pong() -> None:
    with trio.fail_after(10):
        ex, _ = make()
        async with running(ex) as addr, open_websocket_url(addr.ws_url) as ws:
            pong = await request(ws, {"method": "ping"})
        assert pong == {"channel": "pong", "data": int(T0 * 1000), "ts": int(T0 * 1000)}
        assert ex.pings == 1
        assert ex.connects_total == 1


async def test_push_shape_and_candle_semantics() -> None:
    with trio.fail_after(10):
        ex, clock = make()
        seen: list[dict[str, Any]] = []
        ex.on_push = seen.append
        async with running(ex) as addr, open_websocket_url(addr.ws_url) as ws:
            ack = await request(ws, sub("BTC_USDT"))
            assert ack == {"channel": "rs.sub.kline", "data": "success", "ts": int(T0 * 1000)}

            frames = []
            for step in (0.0, 10.0, 20.0, 60.0):  # three trades in one minute, one in the next
                clock.now += step
                sent = await ex.push("BTC_USDT")
                frames.append(orjson.loads(await ws.get_message()))
                assert frames[-1] == sent
            assert ex.subscriptions == {1: {"BTC_USDT"}}

        assert seen == frames
        first = frames[0]
        assert list(first) == ["symbol", "data", "channel", "ts"]
        assert list(first["data"]) == [
            *("symbol", "interval", "t", "o", "c", "h", "l", "a", "q"),
            *("ro", "rc", "rh", "rl"),
        ]
        assert (first["symbol"], first["channel"], first["ts"]) == (
            "BTC_USDT",
            "push.kline",
            T0 * 1000,
        )
        one, two, three, nxt = (f["data"] for f in frames)
        assert one["interval"] == "Min1"
        assert one["t"] == two["t"] == three["t"] == MINUTE
        assert one["o"] == two["o"] == three["o"] == 63104.8  # the start price, carried forward
        assert one["ro"] == two["ro"] == three["ro"] == one["c"]  # first trade of the minute
        assert one["q"] < two["q"] < three["q"]  # cumulative contracts
        assert one["a"] < two["a"] < three["a"]  # cumulative USDT turnover
        assert three["a"] - two["a"] == pytest.approx(
            (three["q"] - two["q"]) * 0.0001 * three["c"], abs=1e-3
        )
        assert nxt["t"] == MINUTE + 60
        assert nxt["o"] == three["c"]  # new candle opens at the previous close
        assert (nxt["ro"], nxt["rh"], nxt["rl"], nxt["rc"]) == (nxt["c"],) * 4
        assert nxt["a"] == round(nxt["q"] * 0.0001 * nxt["c"], 4)
        for d in (one, two, three, nxt):
            assert isinstance(d["q"], int)
            assert d["h"] >= max(d["o"], d["c"], d["rh"])
            assert d["l"] <= min(d["o"], d["c"], d["rl"])
            assert d["rl"] <= min(d["ro"], d["rc"]) <= max(d["ro"], d["rc"]) <= d["rh"]
            assert len(repr(d["c"])) <= 8  # rounded to priceScale 1


async def test_push_price_and_overrides() -> None:
    with trio.fail_after(10):
        ex, _ = make()
        async with running(ex) as addr, open_websocket_url(addr.ws_url) as ws:
            await request(ws, sub("ETH_USDT"))
            moved = await ex.push("ETH_USDT", price=2500.0)
            assert orjson.loads(await ws.get_message()) == moved
            faked = await ex.push("ETH_USDT", c=1.5, t=123)
            assert orjson.loads(await ws.get_message()) == faked
        assert (moved["data"]["c"], moved["data"]["h"]) == (2500.0, 2500.0)
        assert (faked["data"]["c"], faked["data"]["t"]) == (1.5, 123)
        # overrides touch the frame only; the walk continues from 2500
        candle = ex.candle("ETH_USDT")
        assert candle is not None
        assert candle["h"] >= 2500.0
        assert candle["c"] == pytest.approx(2500.0, rel=0.01)


async def test_automatic_pushes_round_robin() -> None:
    with trio.fail_after(10):
        ex, _ = make(rate_per_s=1000.0)
        async with running(ex) as addr, open_websocket_url(addr.ws_url) as ws:
            await request(ws, sub("BTC_USDT"))
            await request(ws, sub("SYM0001_USDT"))
            frames = [orjson.loads(await ws.get_message()) for _ in range(20)]
        assert {f["channel"] for f in frames} == {"push.kline"}
        assert {f["symbol"] for f in frames} == {"BTC_USDT", "SYM0001_USDT"}


async def test_sub_errors_and_bad_frames() -> None:
    with trio.fail_after(10):
        ex, _ = make()
        ex.error_symbols = {"ETH_USDT"}
        ms = int(T0 * 1000)
        async with running(ex) as addr, open_websocket_url(addr.ws_url) as ws:
            assert await request(ws, sub("ETH_USDT")) == {
                "channel": "rs.error",
                "data": "Contract doesn't exist!",
                "ts": ms,
            }
            for symbol in ("BTCUSDT", *FILTERED):
                reply = await request(ws, sub(symbol))
                assert reply == {
                    "channel": "rs.error",
                    "data": f"Contract [{symbol}] not exists",
                    "ts": ms,
                }
            assert ex.subscriptions == {1: set()}

            for garbage in ("not json", "[1,2]", '{"param":{}}', b"\x1f\x8b\x08"):
                await ws.send_message(garbage)
                reply = orjson.loads(await ws.get_message())
                assert reply["channel"] == "rs.error"
            assert (await request(ws, {"method": "ping"}))["channel"] == "pong"  # still open

            ex.ack_ts_as_string = True
            assert await request(ws, sub("BTC_USDT")) == {
                "channel": "rs.sub.kline",
                "data": "success",
                "ts": str(ms),
            }
        assert ex.sub_requests == 1 + 1 + len(FILTERED) + 1


async def test_listing_and_delisting_follow_contracts() -> None:
    with trio.fail_after(10):
        ex, _ = make()
        row = dict(
            next(r for r in ex.contracts if r["symbol"] == "SYM0001_USDT"), symbol="NEW1_USDT"
        )
        ex.contracts.append(row)
        ex.contracts[:] = [r for r in ex.contracts if r["symbol"] != "SYM0002_USDT"]
        assert "NEW1_USDT" in ex.live_symbols
        assert "SYM0002_USDT" not in ex.live_symbols
        async with running(ex) as addr, open_websocket_url(addr.ws_url) as ws:
            assert (await request(ws, sub("NEW1_USDT")))["channel"] == "rs.sub.kline"
            assert (await request(ws, sub("SYM0002_USDT")))["channel"] == "rs.error"


async def test_unsub_stops_pushes() -> None:
    with trio.fail_after(10):
        ex, _ = make()
        seen: list[dict[str, Any]] = []
        ex.on_push = seen.append
        async with running(ex) as addr, open_websocket_url(addr.ws_url) as ws:
            await request(ws, sub("BTC_USDT"))
            await ex.push("BTC_USDT")
            assert orjson.loads(await ws.get_message())["channel"] == "push.kline"
            unsub = {"method": "unsub.kline", "param": {"symbol": "BTC_USDT", "interval": "Min1"}}
            assert await request(ws, unsub) == {
                "channel": "rs.unsub.kline",
                "data": "success",
                "ts": int(T0 * 1000),
            }
            await ex.push("BTC_USDT")
            # one connection's frames are FIFO: had the push been sent, it would come first
            assert (await request(ws, {"method": "ping"}))["channel"] == "pong"
            assert ex.subscriptions == {1: set()}
        assert len(seen) == 1
        assert (ex.sub_requests, ex.unsub_requests) == (1, 1)


async def test_silent_sends_nothing_but_keeps_the_socket() -> None:
    with trio.fail_after(10):
        ex, clock = make()
        async with running(ex) as addr, open_websocket_url(addr.ws_url) as ws:
            await request(ws, sub("BTC_USDT"))
            ex.silent = True
            await ex.push("BTC_USDT")
            await ws.send_message('{"method":"ping"}')
            await ws.send_message(orjson.dumps(sub("ETH_USDT")).decode())
            await wait_all_tasks_blocked()
            assert (ex.pings, ex.sub_requests) == (1, 2)

            ex.silent = False
            clock.now += 1
            # the first frame after silence is the pong to the second ping: nothing was queued
            pong = await request(ws, {"method": "ping"})
            assert pong == {
                "channel": "pong",
                "data": int(clock.now * 1000),
                "ts": int(clock.now * 1000),
            }
            assert ex.connections == 1


async def test_refuse_handshake() -> None:
    with trio.fail_after(10):
        ex, _ = make()
        ex.refuse_handshake = True
        async with running(ex) as addr:
            # A raw handshake: trio-websocket 0.12's client leaks its socket on ConnectionRejected.
            url = urlsplit(addr.ws_url)
            assert url.hostname is not None
            assert url.port is not None
            async with await trio.open_tcp_stream(url.hostname, url.port) as stream:
                await stream.send_all(
                    b"GET /edge HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n\r\n"
                )
                head = await stream.receive_some()
            assert head.startswith(b"HTTP/1.1 503 ")
            assert ex.connects_total == 0
            ex.refuse_handshake = False
            async with open_websocket_url(addr.ws_url) as ws:
                assert (await request(ws, {"method": "ping"}))["channel"] == "pong"
        assert ex.connects_total == 1


async def test_drop_all_aborts_without_close_frame() -> None:
    with trio.fail_after(10):
        ex, _ = make()
        async with running(ex) as addr:
            async with owned_client(addr.ws_url) as ws:
                await request(ws, sub("BTC_USDT"))
                await ex.drop_all()
                with pytest.raises(ConnectionClosed) as info:
                    await ws.get_message()
            assert info.value.reason is not None
            assert info.value.reason.code == 1006  # abnormal: no close frame was received
            await wait_all_tasks_blocked()
            assert (ex.connections, ex.subscriptions, ex.closed_codes) == (0, {}, [])

            async with open_websocket_url(addr.ws_url):
                assert ex.connections == 1
            await wait_all_tasks_blocked()
            assert ex.closed_codes == [1000]
            assert ex.connections == 0


async def test_idle_connection_is_closed_without_ping() -> None:
    with trio.fail_after(10):
        ex, _ = make()
        ex.ping_timeout_s = 0.05  # the venue's 60 s rule, shortened
        async with running(ex) as addr, owned_client(addr.ws_url) as ws:
            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
        assert info.value.reason is not None
        assert info.value.reason.code == 1000


async def test_send_raw_reaches_every_connection() -> None:
    with trio.fail_after(10):
        ex, _ = make()
        async with (
            running(ex) as addr,
            open_websocket_url(addr.ws_url) as ws1,
            open_websocket_url(addr.ws_url) as ws2,
        ):
            await request(ws1, {"method": "ping"})
            await request(ws2, {"method": "ping"})
            await ex.send_raw('{"channel":"push.kline","data":')
            await ex.send_raw(b"\x1f\x8b\x08\x00")
            for ws in (ws1, ws2):
                assert await ws.get_message() == '{"channel":"push.kline","data":'
                assert await ws.get_message() == b"\x1f\x8b\x08\x00"


async def test_run_simulator_logs_both_urls() -> None:
    with trio.fail_after(10):
        lines: list[str] = []
        started = trio.Event()

        def sink(message: str) -> None:
            lines.append(message)
            started.set()

        handler = logger.add(sink, format="{message}", filter="devtools.simulator")
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_simulator, SimConfig(symbols=2, rate_per_s=0))
                await started.wait()
                nursery.cancel_scope.cancel()
        finally:
            logger.remove(handler)
        assert "REST http://127.0.0.1:" in lines[0]
        assert "/edge" in lines[0]
