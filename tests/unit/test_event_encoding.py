"""`encode_event` writes the `market_data` document without building `as_dict()` first: the
bytes must be those of `orjson.dumps(event.as_dict())`, the documented form (docs/api.md),
except that a float of 1e16 or more is written `1e16`, not `1e+16` (the same JSON number)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from screener.core.models import HISTORY_SOURCE, LIVE_SOURCE, REST_SOURCE, Kline, MarketData
from screener.redis.batch import Unencodable, encode_event

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
