"""The simulator's REST side in-process (its ASGI app behind `httpx.ASGITransport`, no
socket): contract list, columnar klines that agree with live pushes, tickers, scripted
faults; the simulator's wall clock is a fake one, and the hang fault runs on MockClock. Its
WebSocket side is tested over real sockets in tests/system/."""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import orjson
import pytest
import trio

from devtools.simulator import FakeExchange
from tests.simulator_fakes import FILTERED, MINUTE, T0, make

KLINE = "/api/v1/contract/kline/BTC_USDT"


def in_process(ex: FakeExchange) -> httpx.AsyncClient:
    """A client of the simulator's REST app without a socket."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=ex.rest_app()), base_url="http://sim"
    )


def live_recipe(row: dict[str, Any], now_ms: int) -> bool:
    """The filter recipe of docs/exchange.md (section 6.2), restated apart from the simulator."""
    return (
        row["quoteCoin"] == "USDT"
        and row["settleCoin"] == "USDT"
        and row["futureType"] == 1
        and row["state"] == 0
        and not row["isHidden"]
        and (row["openingTime"] == 0 or row["openingTime"] <= now_ms)
    )


def assert_continuous(data: dict[str, list[float]]) -> None:
    rows = list(zip(data["open"], data["close"], data["high"], data["low"], strict=True))
    for (_, prev_close, _, _), (o, _, _, _) in itertools.pairwise(rows):
        assert o == prev_close
    for o, c, h, low in rows:
        assert h >= max(o, c)
        assert low <= min(o, c)


async def test_rest_contract_detail() -> None:
    with trio.fail_after(10):
        ex, _ = make()
        async with in_process(ex) as client:
            rows = (await client.get("/api/v1/contract/detail")).json()
            one = (
                await client.get("/api/v1/contract/detail", params={"symbol": "BTC_USDT"})
            ).json()
            missing = (
                await client.get("/api/v1/contract/detail", params={"symbol": "NOPE"})
            ).json()
        assert (rows["success"], rows["code"]) == (True, 0)
        by_symbol = {r["symbol"]: r for r in rows["data"]}
        assert len(by_symbol) == 5 + len(FILTERED)
        live = [r["symbol"] for r in rows["data"] if live_recipe(r, int(T0 * 1000))]
        assert (
            live
            == ex.live_symbols
            == ["BTC_USDT", "ETH_USDT", "SYM0001_USDT", "SYM0002_USDT", "SYM0003_USDT"]
        )
        assert all(s.replace("_", "").isalnum() and s.isupper() for s in by_symbol)
        assert by_symbol["ETH_USDC"]["settleCoin"] == "USDC"
        assert (by_symbol["BTC_USD"]["quoteCoin"], by_symbol["BTC_USD"]["settleCoin"]) == (
            "USD",
            "BTC",
        )
        assert by_symbol["HIDDEN1_USDT"]["isHidden"] is True
        assert by_symbol["DAILY1_USDT"]["futureType"] == 2
        assert by_symbol["OFFLINE1_USDT"]["state"] == 3
        assert by_symbol["NEWLIST1_USDT"]["openingTime"] > T0 * 1000
        assert one["data"] == by_symbol["BTC_USDT"]
        btc = one["data"]
        assert (btc["contractSize"], btc["priceScale"], btc["priceUnit"]) == (0.0001, 1, 0.1)
        assert (btc["futureType"], btc["state"], btc["apiAllowed"], btc["type"]) == (1, 0, False, 1)
        assert missing == {"success": False, "code": 1001, "message": "contract does not exist"}


async def test_rest_kline_columns_and_live_agreement() -> None:
    with trio.fail_after(10):
        ex, clock = make()
        async with in_process(ex) as client:
            await ex.push("BTC_USDT")
            await ex.push("BTC_USDT")
            live = ex.candle("BTC_USDT")
            rng = (
                await client.get(
                    KLINE, params={"interval": "Min1", "start": MINUTE - 600, "end": MINUTE}
                )
            ).json()
            only_end = (
                await client.get(KLINE, params={"interval": "Min1", "end": MINUTE - 60})
            ).json()
            latest = (await client.get(KLINE)).json()
            min5 = (
                await client.get(KLINE, params={"interval": "Min5", "start": MINUTE - 3600})
            ).json()
            future = (await client.get(KLINE, params={"start": MINUTE + 600})).json()
            clock.now += 180  # three minutes without trades: flat candles at the last close
            later = (await client.get(KLINE, params={"start": MINUTE - 120})).json()
            bad = (await client.get(KLINE, params={"interval": "Min2"})).json()
            unknown = (await client.get("/api/v1/contract/kline/NOPE_USDT")).json()

        data = rng["data"]
        assert list(data) == [
            *("time", "open", "close", "high", "low", "vol", "amount"),
            *("realOpen", "realClose", "realHigh", "realLow"),
        ]
        assert data["time"] == list(range(MINUTE - 600, MINUTE + 1, 60))
        assert all(len(col) == 11 for col in data.values())
        assert_continuous(data)
        assert live is not None
        last = {name: col[-1] for name, col in data.items()}
        assert (last["open"], last["close"], last["high"], last["low"]) == (
            live["o"],
            live["c"],
            live["h"],
            live["l"],
        )
        assert (last["realOpen"], last["realHigh"], last["realLow"]) == (
            live["ro"],
            live["rh"],
            live["rl"],
        )
        assert (last["vol"], last["amount"]) == (live["q"], live["a"])

        assert only_end["data"]["time"][-1] == MINUTE - 60
        assert len(only_end["data"]["time"]) == 2000
        assert len(latest["data"]["time"]) == 2000
        assert latest["data"]["time"][-1] == MINUTE
        assert latest["data"]["close"][-1] == live["c"]
        assert_continuous(latest["data"])
        assert min5["data"]["time"][0] == (MINUTE - 3600) // 300 * 300  # the window holding start
        assert all(t % 300 == 0 for t in min5["data"]["time"])
        assert len(min5["data"]["time"]) == 13
        assert min5["data"]["close"][-1] == live["c"]
        assert_continuous(min5["data"])
        assert future["data"]["time"] == []

        after = later["data"]
        assert after["time"] == list(range(MINUTE - 120, MINUTE + 181, 60))
        assert after["close"][2] == live["c"]
        assert after["open"][3:] == after["close"][3:] == [live["c"]] * 3
        assert after["vol"][3:] == [0.0] * 3
        assert_continuous(after)
        assert bad["success"] is False
        assert unknown["code"] == 1001


async def test_rest_kline_is_deterministic() -> None:
    with trio.fail_after(10):
        a, _ = make()
        b, _ = make()
        params = {"start": MINUTE - 3000, "end": MINUTE - 60}
        async with in_process(a) as client_a, in_process(b) as client_b:
            one = (await client_a.get(KLINE, params=params)).json()
            two = (await client_b.get(KLINE, params=params)).json()
        assert one == two
        assert len(one["data"]["time"]) == 50


async def test_rest_ticker() -> None:
    with trio.fail_after(10):
        ex, _ = make()
        async with in_process(ex) as client:
            pushed = await ex.push("BTC_USDT")
            everything = (await client.get("/api/v1/contract/ticker")).json()
            btc = (
                await client.get("/api/v1/contract/ticker", params={"symbol": "BTC_USDT"})
            ).json()
        symbols = {t["symbol"] for t in everything["data"]}
        assert set(ex.live_symbols) < symbols  # all contracts, as the venue: clients filter
        assert {"ETH_USDC", "BTC_USD"} <= symbols
        assert not {"OFFLINE1_USDT", "NEWLIST1_USDT"} & symbols
        ticker = btc["data"]
        assert ticker["symbol"] == "BTC_USDT"
        assert ticker["lastPrice"] == pushed["data"]["c"]
        # The venue's clock (frozen here) never gives one symbol the same ms twice: the
        # push took T0, the full ticker T0 + 1 ms, this one T0 + 2 ms.
        assert ticker["timestamp"] == int(T0 * 1000) + 2
        assert pushed["ts"] == int(T0 * 1000)
        for key in (
            "riseFallRate",
            "volume24",
            "amount24",
            "fairPrice",
            "indexPrice",
            "high24Price",
        ):
            assert isinstance(ticker[key], int | float)
        assert -1 < ticker["riseFallRate"] < 1


@pytest.mark.parametrize(
    ("fault", "status", "body"),
    [
        ("500", 500, {"success": False, "code": 500, "message": "System internal error!"}),
        ("510", 200, {"success": False, "code": 510, "message": "Excessive frequency of requests"}),
        ("garbage", 200, None),
    ],
)
async def test_rest_faults(fault: str, status: int, body: dict[str, Any] | None) -> None:
    with trio.fail_after(10):
        ex, _ = make()
        async with in_process(ex) as client:
            ex.rest_fault = fault
            for path in ("/api/v1/contract/detail", KLINE, "/api/v1/contract/ticker", "/nope"):
                response = await client.get(path)
                assert response.status_code == status
                if body is None:
                    with pytest.raises(orjson.JSONDecodeError):
                        orjson.loads(response.content)
                else:
                    assert response.json() == body
            ex.rest_fault = None
            assert (await client.get("/api/v1/contract/ping")).json()["data"] == int(T0 * 1000)
        assert ex.rest_requests == 5


async def test_rest_hang_and_not_found(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10):
        ex, _ = make()
        async with in_process(ex) as client:
            ex.rest_fault = "hang"
            with trio.move_on_after(0.2) as waited:
                await client.get("/api/v1/contract/detail")
            assert waited.cancelled_caught
            ex.rest_fault = None
            missing = await client.get("/api/v1/contract/nothing")
        assert missing.status_code == 404
        assert missing.json() == {"success": False, "code": 404, "message": "Not Found"}
        assert ex.rest_requests == 2
