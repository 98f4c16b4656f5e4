"""The live page's other routes through Quart's in-process client: GET / (the packaged page,
nothing fetched from elsewhere), GET /symbol/<SYMBOL> from the candles snapshot, and (on
MockClock) the candles reaching that snapshot from the real window and ranking actors."""

from __future__ import annotations

from functools import partial
from importlib import resources

import trio
import trio.testing

from actors.ranking import run_ranking
from screener.core.metrics import Metrics
from screener.core.models import Charts, Kline, MarketData, PublisherInbox, Ranking, WindowInbox
from screener.core.snapshot import Views
from screener.http.charts import symbol_report
from tests.actors.fakes import client_for, get, start_window
from tests.contracts import check_document

M = 1_770_330_480  # 2026-02-05 22:28:00 UTC


def kline(symbol: str, minute: int, close: float, at_s: float = 30.0) -> Kline:
    t = M + 60 * minute
    return Kline(
        symbol, t, 1.0, max(1.0, close), min(1.0, close), close, 1.0, close, int((t + at_s) * 1000)
    )


async def test_the_page_is_the_packaged_file_with_a_policy_that_keeps_it_local() -> None:
    metrics = Metrics()
    client = client_for(Views.empty(), metrics=metrics)
    with trio.fail_after(10):
        response = await client.get("/")
        body = await response.get_data()
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert body == resources.files("screener.http").joinpath("page/index.html").read_bytes()
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy
    text = body.decode()
    assert 'new EventSource("/stream")' in text
    assert "/symbol/" in text
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in text
    count = metrics.registry.get_sample_value(
        "screener_http_request_duration_seconds_count", {"route": "/"}
    )
    assert count == 1


async def test_symbol_answers_the_window_from_the_snapshot_and_404_otherwise() -> None:
    views = Views.empty()
    candles = (kline("A_USDT", 0, 1.1), kline("A_USDT", 1, 1.2))
    charts = Charts(wall_ts=M + 90.0, lookback_min=15, candles={"A_USDT": candles})
    views.charts.set(charts)
    client = client_for(views)
    with trio.fail_after(10):
        assert await get(client, "/symbol/A_USDT") == (200, symbol_report(charts, "A_USDT"))
        assert await get(client, "/symbol/a_usdt") == (200, symbol_report(charts, "A_USDT"))
        check_document("symbol", (await get(client, "/symbol/A_USDT"))[1])
        assert await get(client, "/symbol/B_USDT") == (404, {"error": "unknown symbol"})
        for bad in ("A-USDT", "%20", "A_USDT%0A", "X" * 41):
            assert await get(client, f"/symbol/{bad}") == (404, {"error": "invalid symbol"}), bad
        assert (await get(client, "/symbol/A_USDT/x"))[0] == 404


async def test_each_ranking_round_publishes_the_window_candles_before_the_ranking(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The real window and ranking actors: the candles snapshot holds the window's own
    records, and is replaced before the ranking that HTTP's streams wait for."""
    views, metrics = Views.empty(), Metrics()
    ingest_send, ingest_recv = trio.open_memory_channel[WindowInbox](16)
    events_send, events_recv = trio.open_memory_channel[list[MarketData]](16)
    out_send, out_recv = trio.open_memory_channel[PublisherInbox](16)
    a0, a1, b1 = kline("A_USDT", 0, 1.1), kline("A_USDT", 1, 1.3), kline("B_USDT", 1, 0.9)
    seen: list[tuple[float, Charts]] = []

    async def watch() -> None:
        while True:
            await views.ranking.wait_set()
            ranking = views.ranking.value
            assert ranking is not None
            assert views.charts.value.wall_ts == ranking.wall_ts
            seen.append((trio.current_time(), views.charts.value))

    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            await start_window(nursery, ingest_recv, events_send, lookback_min=15, feed=views.feed)
            nursery.start_soon(watch)
            for candle in (a0, a1, b1):
                ingest_send.send_nowait(candle)
            await nursery.start(
                partial(
                    run_ranking,
                    ingest_send,
                    out_send,
                    snapshot=views.ranking,
                    metrics=metrics,
                    interval_s=5.0,
                    top_n=5,
                    lookback_min=15,
                    wall=lambda: M + 100 + trio.current_time(),
                    charts=views.charts,
                )
            )
            ranking = await out_recv.receive()
            assert isinstance(ranking, Ranking)
            assert trio.current_time() == 5.0
            nursery.cancel_scope.cancel()
    events_recv.close()
    assert len(seen) == 1
    at, charts = seen[0]
    assert at == 5.0
    assert charts == Charts(
        wall_ts=M + 105.0, lookback_min=15, candles={"A_USDT": (a0, a1), "B_USDT": (b1,)}
    )
    assert charts.candles["A_USDT"][1] is a1  # shared with the window, not copied
