from __future__ import annotations

from screener.core.config import load_settings
from screener.core.models import CandleLag, ClosedCandle, Fence, Kline, Leadership, MarketData
from screener.redis.lanes import CandleHold, Lanes, PublishBuffer


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


def closed(symbol: str, t: int) -> ClosedCandle:
    return ClosedCandle(symbol, t, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, "mexc", t * 1000 + 60_000)


def test_candles_are_never_coalesced_and_leave_in_arrival_order() -> None:
    hold = CandleHold(hold_s=600)
    a0, a1, b0 = closed("A", 0), closed("A", 60), closed("B", 0)
    assert hold.add([a0, a1]) == 0
    assert hold.add([b0]) == 0  # a repair of an older minute, after: it stays behind
    assert hold.take(2) == [a0, a1]
    assert hold.lag() == CandleLag(1, 0)
    assert hold.put_back([a0, a1]) == 0  # a write that failed: in front again
    assert list(hold.candles) == [a0, a1, b0]
    assert hold.lag(CandleLag(3, -60)) == CandleLag(6, -60)  # with a write in flight
    assert hold.take(10) == [a0, a1, b0]
    assert hold.lag() == CandleLag()


def test_a_candle_hold_s_older_than_the_newest_seen_is_dropped() -> None:
    hold = CandleHold(hold_s=120)
    a0, b60, a120 = closed("A", 0), closed("B", 60), closed("A", 120)
    assert hold.add([a0, b60]) == 0
    assert hold.add([a120]) == 1  # 0 <= 120 - 120
    assert list(hold.candles) == [b60, a120]
    taken = hold.take(1)
    hold.add([closed("A", 180)])  # 60 <= 180 - 120, but it is in flight
    assert hold.put_back(taken) == 1  # back too late: dropped then
    assert [c.t for c in hold.candles] == [120, 180]
    assert hold.lag() == CandleLag(2, 120)


def test_lanes_send_candles_in_either_role_only_while_leading() -> None:
    settings = load_settings({}).redis
    lanes = Lanes(settings, fenced=True, candle_hold_s=900)
    lanes.refence(Leadership("standby", float("-inf"), 0), 0.0)
    lanes.add_candles([closed("A", 0)])
    assert (lanes.next_slice(1.0), lanes.has_pending(), lanes.candle_lag()) == (
        None,
        False,
        CandleLag(),
    )
    fence = Fence("lease", "term", "r#1", 1)
    lanes.refence(Leadership("leader", 10.0, 1, fence), 1.0)
    assert lanes.has_pending()
    assert lanes.candle_lag() == CandleLag(1, 0)
    sent = lanes.next_slice(1.0)
    assert sent is not None
    assert (sent.events, sent.ranking, sent.candles) == ([], None, [closed("A", 0)])
    assert not lanes.has_pending()
