from __future__ import annotations

from screener.core.models import Kline, MarketData
from screener.redis.lanes import PublishBuffer


def ev(symbol: str, n: int) -> MarketData:
    return MarketData(Kline(symbol, 60, 1.0, 1.0, 1.0, float(n), 1.0, 1.0, 60_000 + n), 0.0, 1)


def test_within_capacity_nothing_is_dropped() -> None:
    buf = PublishBuffer(capacity=10)
    assert buf.add([ev("A", 1), ev("A", 2)]) == 0
    assert len(buf) == 2


def test_overflow_keeps_the_newest_event_per_symbol_in_order() -> None:
    buf = PublishBuffer(capacity=4)
    dropped = buf.add([ev("A", 1), ev("B", 1), ev("A", 2), ev("C", 1), ev("B", 2)])
    assert dropped == 2
    assert [(e.kline.symbol, e.kline.close) for e in buf.events] == [
        ("A", 2.0),
        ("C", 1.0),
        ("B", 2.0),
    ]


def test_more_symbols_than_capacity_drops_the_oldest() -> None:
    buf = PublishBuffer(capacity=2)
    assert buf.add([ev("A", 1), ev("B", 1), ev("C", 1)]) == 1
    assert [e.kline.symbol for e in buf.events] == ["B", "C"]


def test_failed_batch_goes_back_in_front_of_newer_events() -> None:
    buf = PublishBuffer(capacity=10)
    buf.add([ev("A", 1), ev("B", 1)])
    events, ranking = buf.take()
    buf.add([ev("C", 1)])
    assert buf.put_back(events, ranking) == 0
    assert [e.kline.symbol for e in buf.events] == ["A", "B", "C"]
