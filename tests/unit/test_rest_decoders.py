"""The REST client: pacing in exact virtual time, and every scripted fault of the simulator
over real loopback (500, 510, 429, hang, garbage, a venue refusal)."""

from __future__ import annotations

import pytest

from screener.core.models import HISTORY_SOURCE
from screener.mexc.rest import VenueError, envelope_data, kline_rows, ticker_prices
from screener.mexc.values import DecodeError


def test_envelope_and_columns_decode() -> None:
    data = envelope_data(
        b'{"success":true,"code":0,"data":{"time":[60,120],"open":[1,2],"close":[2,3],'
        b'"high":[2,3.5],"low":[1,2],"vol":[5,6],"amount":[7,8]}}'
    )
    rows = kline_rows(data, "A_USDT")
    assert [(k.t, k.open, k.close, k.high, k.ts_ms) for k in rows] == [
        (60, 1.0, 2.0, 2.0, 60_000),
        (120, 2.0, 3.0, 3.5, 120_000),
    ]
    assert {k.source for k in rows} == {HISTORY_SOURCE}
    with pytest.raises(VenueError) as refused:
        envelope_data(b'{"success":false,"code":1001,"message":"contract does not exist"}')
    assert (refused.value.code, refused.value.message) == (1001, "contract does not exist")
    with pytest.raises(DecodeError):
        envelope_data(b"<html>")
    with pytest.raises(DecodeError):
        kline_rows({"time": [60], "open": [1]}, "A_USDT")
    with pytest.raises(DecodeError):
        kline_rows(
            {c: [1, 2] for c in ("time", "open", "close", "high", "low", "vol")} | {"amount": [1]},
            "A_USDT",
        )


def test_ticker_rows_skip_junk_but_not_everything() -> None:
    ticks = ticker_prices(
        [
            {"symbol": "A_USDT", "lastPrice": 1.5, "timestamp": 1_770_000_000_000},
            {"symbol": "B_USDT", "lastPrice": "nope", "timestamp": 1},
            {"symbol": 7},
            "junk",
        ]
    )
    assert ticks == {"A_USDT": (1.5, 1_770_000_000_000)}
    with pytest.raises(DecodeError):
        ticker_prices([{"symbol": "B_USDT", "lastPrice": -1, "timestamp": 1}])
