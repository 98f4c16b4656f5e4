"""`encode_event` writes the `market_data` document without building `as_dict()` first: the
bytes must be those of `orjson.dumps(event.as_dict())`, the documented form (docs/api.md),
except that a float of 1e16 or more is written `1e16`, not `1e+16` (the same JSON number).
`encode_candle` likewise for the `candle` document (`ClosedCandle.as_dict(published_ms)`)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from screener.core.models import (
    CANDLE_REST_SOURCE,
    HISTORY_SOURCE,
    LIVE_SOURCE,
    REST_SOURCE,
    ClosedCandle,
    Kline,
    MarketData,
)
from screener.redis.batch import Unencodable, encode_candle, encode_event

_FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1.4988e-06, 1e22])
_INTS = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@given(
    st.sampled_from([LIVE_SOURCE, REST_SOURCE, HISTORY_SOURCE]),
    st.from_regex(r"[A-Z0-9_]{1,40}", fullmatch=True),
    _INTS,
    _INTS,
    st.lists(_FLOATS, min_size=7, max_size=7),
    st.integers(min_value=0, max_value=10_000),
)
def test_the_document_is_byte_for_byte_the_documented_dict(
    source: str, symbol: str, t: int, ts_ms: int, floats: list[float], window_min: int
) -> None:
    o, h, low, c, q, a, change = floats
    event = MarketData(Kline(symbol, t, o, h, low, c, q, a, ts_ms, source), change, window_min)
    documented = orjson.dumps(event.as_dict())
    assert encode_event(event) == documented.replace(b"e+", b"e")
    assert orjson.loads(encode_event(event)) == orjson.loads(documented)


def test_integer_prices_stay_integers_as_before() -> None:
    event = MarketData(Kline("X_USDT", 60, 1, 2, 1, 2, 3, 4, 60_000), 100.0, 1)  # type: ignore[arg-type]
    assert encode_event(event) == orjson.dumps(event.as_dict())


def test_big_floats_are_the_same_numbers() -> None:
    event = MarketData(Kline("X_USDT", 60, 1.0, 1e16, 1.0, 1.0, 1.5e17, 1e22, 60_000), 1e20, 1)
    assert orjson.loads(encode_event(event)) == event.as_dict()


@pytest.mark.parametrize("field", ["t", "ts_ms"])
def test_an_integer_beyond_64_bits_is_unencodable_as_before(field: str) -> None:
    kline = Kline("X_USDT", 60, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 60_000)._replace(**{field: 2**70})
    with pytest.raises(Unencodable):
        encode_event(MarketData(kline, 0.0, 1))
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(MarketData(kline, 0.0, 1).as_dict())


@given(
    st.sampled_from([LIVE_SOURCE, CANDLE_REST_SOURCE]),
    st.from_regex(r"[A-Z0-9_]{1,40}", fullmatch=True),
    _INTS,
    st.lists(_FLOATS, min_size=6, max_size=6),
    _INTS,
    _INTS,
)
def test_the_candle_document_is_byte_for_byte_the_documented_dict(
    source: str, symbol: str, t: int, floats: list[float], closed_ms: int, published_ms: int
) -> None:
    o, h, low, c, q, a = floats
    candle = ClosedCandle(symbol, t, o, h, low, c, q, a, source, closed_ms)
    documented = orjson.dumps(candle.as_dict(published_ms))
    assert encode_candle(candle, published_ms) == documented.replace(b"e+", b"e")
    assert orjson.loads(encode_candle(candle, published_ms)) == orjson.loads(documented)


def test_a_candle_whose_open_time_is_beyond_64_bits_is_unencodable() -> None:
    candle = ClosedCandle("X_USDT", 2**70, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, LIVE_SOURCE, 0)
    with pytest.raises(Unencodable):
        encode_candle(candle, 60_000)
