"""The live page's data in `screener rest`: the same stream and /symbol, fed by REST klines
at `INTERVAL` (5-minute candles here: the sparkline still has a point per minute)."""

from __future__ import annotations

import re

import orjson
import pytest
import trio

from devtools.devredis import RedisServer
from tests.contracts import check_document
from tests.system.test_rest_mode import Clock, rest_screener

EVENT = re.compile(rb"event: (\w+)\ndata: (.*)\n\n")
SYMBOLS = 8  # the fake exchange's (tests/system/test_rest_mode.py)


@pytest.mark.parametrize(("interval", "candles", "minutes"), [("1m", 15, 15), ("5m", 3, 11)])
async def test_rest_screener_streams_rankings_and_serves_symbol_windows(
    redis_server: RedisServer, interval: str, candles: int, minutes: int
) -> None:
    with trio.fail_after(20):
        async with rest_screener(
            redis_server.port, Clock(), INTERVAL=interval, REST_POLL_S="0.5", RANK_INTERVAL_S="0.5"
        ) as (ex, _, http):
            while True:  # every symbol fetched, so each window is full
                top = await http.get("/top5")
                if top.status_code == 200 and (await http.get("/health")).json()["status"] == "ok":
                    doc = await http.get(f"/symbol/{top.json()['top5_gainers'][0]['symbol']}")
                    if len(doc.json().get("candles", ())) == candles:
                        break
                await trio.sleep(0.05)
            symbol = doc.json()
            check_document("symbol", symbol)
            assert (symbol["window_min"], len(symbol["closes"])) == (minutes, minutes)
            assert symbol["candles"][-1]["source"] == "mexc-rest-history"

            # A raw socket: the events are read off the chunked body as they come, and the
            # stream is left once it has what the test needs (httpx would leave generators
            # to the GC). The first ranking may predate the last symbols' history (ranked at
            # start, while the backfill runs): the test takes the second ranking of all
            # SYMBOLS, by when the live page's candles have caught up with the windows too.
            port = http.base_url.port
            assert port is not None
            events: dict[str, dict[str, object]] = {}
            complete = 0
            received = b""
            unread = 0  # where the next event is looked for in `received`
            async with await trio.open_tcp_stream("127.0.0.1", port) as sock:
                await sock.send_all(b"GET /stream HTTP/1.1\r\nHost: screener\r\n\r\n")
                while "status" not in events or complete < 2:
                    chunk = await sock.receive_some(1 << 16)
                    assert chunk, "the stream ended"
                    received += chunk
                    while found := EVENT.search(received, unread):
                        unread = found.end()
                        name, data = found.groups()
                        events[name.decode()] = event = orjson.loads(data)
                        complete += name == b"ranking" and event["ranked"] == SYMBOLS
            assert received.startswith(b"HTTP/1.1 200")
            assert b"content-type: text/event-stream" in received.lower()
    assert events["status"]["feed"] == "rest"
    ranking = events["ranking"]
    check_document("live_ranking", ranking)
    listed = [m["symbol"] for m in (*ranking["top5_gainers"], *ranking["top5_losers"])]  # type: ignore[misc]
    assert set(ranking["sparklines"]) == set(listed)  # type: ignore[arg-type]
    assert all(len(points) == minutes for points in ranking["sparklines"].values())  # type: ignore[attr-defined]
    assert ex.connects_total == 0
