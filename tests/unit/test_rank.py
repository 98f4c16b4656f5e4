from __future__ import annotations

from actors.ranking import rank
from screener.core.models import SymbolStat


def test_gainers_descending_losers_ascending_ties_by_symbol() -> None:
    stats = [
        SymbolStat("B_USDT", 5.0, 1.0),
        SymbolStat("A_USDT", 5.0, 1.0),
        SymbolStat("C_USDT", -2.0, 1.0),
        SymbolStat("D_USDT", 0.0, 1.0),
        SymbolStat("E_USDT", -2.0, 1.0),
        SymbolStat("F_USDT", 9.0, 1.0),
    ]
    r = rank(stats, top_n=3, lookback_min=15, wall_ts=0.0)
    assert [s.symbol for s in r.gainers] == ["F_USDT", "A_USDT", "B_USDT"]
    assert [s.symbol for s in r.losers] == ["C_USDT", "E_USDT", "D_USDT"]
    assert r.ranked == 6


def test_fewer_symbols_than_top_n() -> None:
    r = rank([SymbolStat("A_USDT", 1.0, 2.0)], top_n=5, lookback_min=15, wall_ts=0.0)
    assert r.gainers == r.losers == (SymbolStat("A_USDT", 1.0, 2.0),)


def test_as_dict_shape() -> None:
    r = rank([SymbolStat("A_USDT", 1.5, 2.0)], top_n=5, lookback_min=15, wall_ts=1_770_000_000)
    assert r.as_dict() == {
        "type": "top_movers",
        "ts_ms": 1_770_000_000_000,
        "ts": "2026-02-02 02:40:00 UTC",
        "lookback_min": 15,
        "top5_gainers": [{"symbol": "A_USDT", "change_pct": 1.5, "price": 2.0}],
        "top5_losers": [{"symbol": "A_USDT", "change_pct": 1.5, "price": 2.0}],
        "shards": {"reporting": 1, "total": 1, "missing": []},
    }
