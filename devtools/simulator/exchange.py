"""Market state of the simulated MEXC futures venue: contracts, random walk, frames, REST bodies.

Pure and synchronous: every method takes ``now`` (wall seconds) instead of reading a clock, so
the WebSocket and REST sides agree on one state and tests can drive time by hand.

Price model, per symbol:
- before the symbol's *anchor* minute (the minute it was first touched) candles are synthetic:
  a deterministic function of (seed, symbol, minute), so any REST range is O(rows) and stable;
- from the anchor on, candles are the live random walk (one step per push); minutes without a
  push are flat, zero-volume candles at the previous close.
Both halves keep MEXC's carry-forward rule: ``o`` = previous close, ``ro`` = first trade.
"""

from __future__ import annotations

import math
import random
import zlib
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any, Final

from screener.core.names import INTERVAL_MINUTES

__all__ = [
    "Candle",
    "Market",
    "SimAddress",
    "SimConfig",
    "is_live_row",
]

STEP_SIGMA: Final = 0.0005
"""Std-dev of one log-price step (0.05 %), for pushes and for one synthetic minute."""

KLINE_LIMIT: Final = 2000
"""MEXC's documented maximum rows per kline request."""

HISTORY_CAP: Final = 2000
"""Closed live candles kept per symbol; older ones fold into the synthetic past."""

_SYNTH_PERIODS: Final = (47.0, 263.0, 1201.0, 5003.0, 19997.0)
_MASK64: Final = (1 << 64) - 1


@dataclass(frozen=True)
class SimConfig:
    """How big, how fast and where the simulator runs."""

    symbols: int = 50
    rate_per_s: float = 50.0
    seed: int = 1
    host: str = "127.0.0.1"
    rest_port: int = 0
    ws_port: int = 0
    extra_contracts: bool = True


@dataclass(frozen=True)
class SimAddress:
    """Where a started simulator listens."""

    rest_url: str
    ws_url: str


@dataclass(slots=True)
class Candle:
    """One 1-minute candle; ``m`` is the minute index (``t = m * 60``)."""

    m: int
    o: float
    c: float
    h: float
    l: float  # noqa: E741 - the venue's field name
    ro: float
    rc: float
    rh: float
    rl: float
    q: int
    a: float


def _mix(x: int) -> int:
    """splitmix64 finaliser: a cheap, well-spread hash for per-minute synthetic noise."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _unit(key: int, m: int, salt: int) -> float:
    """Deterministic uniform in [0, 1) for (symbol key, minute, salt)."""
    return _mix(key ^ _mix((m << 6) + salt)) / 18446744073709551616.0


def is_live_row(row: dict[str, Any], now_ms: int) -> bool:
    """The filter recipe for a tradable USDT-margined perpetual (docs/exchange.md, section 6.2)."""
    opening = row.get("openingTime") or 0
    return (
        row.get("quoteCoin") == "USDT"
        and row.get("settleCoin") == "USDT"
        and row.get("futureType") == 1
        and row.get("state") == 0
        and not row.get("isHidden")
        and opening <= now_ms
    )


@dataclass(frozen=True, slots=True)
class _Spec:
    """Per-symbol constants; derived from the contract row plus seeded draws."""

    key: int
    contract_size: float
    price_scale: int
    tick: float
    start_price: float
    q_mean: float
    phases: tuple[float, ...]

    def px(self, value: float) -> float:
        """Round to the price grid, never below one tick, so floats print short."""
        return max(round(value, self.price_scale), self.tick)

    def g(self, m: int) -> float:
        """Synthetic log-price shape at minute ``m``: slow waves plus per-minute noise."""
        waves = sum(
            STEP_SIGMA * math.sqrt(period) * 0.5 * math.sin(2 * math.pi * m / period + phase)
            for period, phase in zip(_SYNTH_PERIODS, self.phases, strict=True)
        )
        noise = (_unit(self.key, m, 1) + _unit(self.key, m, 2) + _unit(self.key, m, 3) - 1.5) * 2
        return waves + STEP_SIGMA * noise


class _Book:
    """Live state of one symbol: walk price, open candle, recent closed candles."""

    __slots__ = (
        "anchor_m",
        "anchor_price",
        "candle",
        "closed",
        "closed_ms",
        "price",
        "rng",
        "spec",
    )

    def __init__(self, spec: _Spec, rng: random.Random, anchor_m: int) -> None:
        self.spec = spec
        self.rng = rng
        self.anchor_m = anchor_m
        self.anchor_price = spec.px(spec.start_price)
        self.price = self.anchor_price
        self.candle: Candle | None = None
        self.closed: dict[int, Candle] = {}
        self.closed_ms: list[int] = []

    def synth_close(self, m: int) -> float:
        """Close of synthetic minute ``m`` (< anchor); equals the anchor price at anchor - 1."""
        spec = self.spec
        return spec.px(self.anchor_price * math.exp(spec.g(m) - spec.g(self.anchor_m - 1)))

    def close_before(self, m: int) -> float:
        """Last close strictly before minute ``m``."""
        if m <= self.anchor_m:
            return self.synth_close(m - 1)
        if self.candle is not None and self.candle.m < m:
            return self.candle.c
        i = bisect_left(self.closed_ms, m)
        return self.closed[self.closed_ms[i - 1]].c if i else self.anchor_price

    def archive(self, candle: Candle) -> None:
        self.closed[candle.m] = candle
        self.closed_ms.append(candle.m)
        if len(self.closed_ms) > HISTORY_CAP:
            # Fold the oldest live minutes into the synthetic past; continuity is kept because
            # the synthetic path is re-anchored on the first retained candle's open.
            drop = len(self.closed_ms) - HISTORY_CAP
            for m in self.closed_ms[:drop]:
                del self.closed[m]
            del self.closed_ms[:drop]
            first = self.closed[self.closed_ms[0]]
            self.anchor_m, self.anchor_price = first.m, first.o


class Market:
    """Contracts and per-symbol candles of the simulated venue."""

    def __init__(self, config: SimConfig, *, now: float) -> None:
        self.config = config
        self.contracts: list[dict[str, Any]] = []
        self._specs: dict[str, _Spec] = {}
        self._books: dict[str, _Book] = {}
        self._last_push_ms: dict[str, int] = {}
        self._build_contracts(now)

    # --- contracts -------------------------------------------------------------------------

    def _build_contracts(self, now: float) -> None:
        cfg = self.config
        rng = random.Random(cfg.seed)
        create_ms = int(now * 1000) - 86_400_000 * 400
        names: list[str] = []
        if cfg.symbols >= 2:
            names += ["BTC_USDT", "ETH_USDT"]
        names += [f"SYM{i:04d}_USDT" for i in range(1, cfg.symbols - len(names) + 1)]
        fixed = {"BTC_USDT": (63104.8, 1, 0.0001), "ETH_USDT": (2324.5, 2, 0.01)}
        for cid, symbol in enumerate(names, start=10):
            if symbol in fixed:
                price, scale, size = fixed[symbol]
            else:
                price = 10 ** rng.uniform(-5.5, 3.5)
                scale = min(12, max(0, math.ceil(5 - math.log10(price))))
                size = float(f"1e{min(2, max(-4, math.floor(math.log10(10 / price))))}")
            self._specs[symbol] = self._make_spec(symbol, size, scale, price, rng)
            self.contracts.append(
                _contract_row(cid=cid, symbol=symbol, size=size, scale=scale, create_ms=create_ms)
            )
        if cfg.extra_contracts:
            cid = 10 + len(names)
            opening_ms = int(now * 1000) + 86_400_000
            extras: list[dict[str, Any]] = [
                _contract_row(
                    cid=cid,
                    symbol="ETH_USDC",
                    size=0.01,
                    scale=2,
                    create_ms=create_ms,
                    quote="USDC",
                ),
                _contract_row(
                    cid=cid + 1,
                    symbol="BTC_USD",
                    size=100.0,
                    scale=1,
                    create_ms=create_ms,
                    quote="USD",
                    settle="BTC",
                ),
                _contract_row(
                    cid=cid + 2,
                    symbol="HIDDEN1_USDT",
                    size=1.0,
                    scale=4,
                    create_ms=create_ms,
                    hidden=True,
                ),
                _contract_row(
                    cid=cid + 3,
                    symbol="DAILY1_USDT",
                    size=1.0,
                    scale=4,
                    create_ms=create_ms,
                    future_type=2,
                ),
                _contract_row(
                    cid=cid + 4,
                    symbol="OFFLINE1_USDT",
                    size=1.0,
                    scale=4,
                    create_ms=create_ms,
                    state=3,
                ),
                _contract_row(
                    cid=cid + 5,
                    symbol="NEWLIST1_USDT",
                    size=1.0,
                    scale=4,
                    create_ms=create_ms,
                    opening_ms=opening_ms,
                ),
            ]
            self.contracts += extras

    def _make_spec(
        self, symbol: str, size: float, scale: int, price: float, rng: random.Random
    ) -> _Spec:
        key = _mix((self.config.seed << 32) ^ zlib.crc32(symbol.encode()))
        return _Spec(
            key=key,
            contract_size=size,
            price_scale=scale,
            tick=round(10.0**-scale, scale),
            start_price=price,
            q_mean=rng.choice((3.0, 10.0, 40.0, 150.0, 600.0)),
            phases=tuple(rng.uniform(0, 2 * math.pi) for _ in _SYNTH_PERIODS),
        )

    def row(self, symbol: str) -> dict[str, Any] | None:
        """The contract row for ``symbol``, if listed."""
        return next((r for r in self.contracts if r.get("symbol") == symbol), None)

    def live_symbols(self, now: float) -> list[str]:
        """USDT perpetuals a correct client would trade now, in listing order."""
        now_ms = int(now * 1000)
        return [r["symbol"] for r in self.contracts if is_live_row(r, now_ms)]

    def is_live(self, symbol: str, now: float) -> bool:
        now_ms = int(now * 1000)
        return any(r.get("symbol") == symbol and is_live_row(r, now_ms) for r in self.contracts)

    def _spec(self, symbol: str) -> _Spec:
        spec = self._specs.get(symbol)
        if spec is None:
            # A row a test appended: take its size/scale, draw the rest from the seed.
            row = self.row(symbol) or {}
            scale = int(row.get("priceScale", 4))
            rng = random.Random(f"{self.config.seed}:spec:{symbol}")
            price = max(10 ** rng.uniform(0, 2), 1000 * 10.0**-scale)
            size = float(row.get("contractSize", 1.0))
            spec = self._specs[symbol] = self._make_spec(symbol, size, scale, price, rng)
        return spec

    def _book(self, symbol: str, now: float) -> _Book:
        book = self._books.get(symbol)
        if book is None:
            rng = random.Random(f"{self.config.seed}:walk:{symbol}")
            book = self._books[symbol] = _Book(self._spec(symbol), rng, int(now // 60))
        return book

    # --- live walk -------------------------------------------------------------------------

    def trade(self, symbol: str, now: float, price: float | None = None) -> Candle:
        """One trade on ``symbol`` at ``price`` (or a random step); returns the open candle."""
        book = self._book(symbol, now)
        spec = book.spec
        m = int(now // 60)
        candle = book.candle
        if price is None:
            price = spec.px(book.price * math.exp(book.rng.gauss(0.0, STEP_SIGMA)))
        else:
            price = spec.px(price)
        qty = 1 + int(book.rng.expovariate(1.0 / spec.q_mean))
        turnover = qty * spec.contract_size * price
        if candle is None or m > candle.m:
            if candle is not None:
                book.archive(candle)
            o = book.price
            candle = book.candle = Candle(
                m=m,
                o=o,
                c=price,
                h=max(o, price),
                l=min(o, price),
                ro=price,
                rc=price,
                rh=price,
                rl=price,
                q=qty,
                a=turnover,
            )
        else:  # same minute (or a clock that stepped back: keep filling the open candle)
            candle.c = candle.rc = price
            if price > candle.h:
                candle.h = price
            if price < candle.l:
                candle.l = price
            if price > candle.rh:
                candle.rh = price
            if price < candle.rl:
                candle.rl = price
            candle.q += qty
            candle.a += turnover
        book.price = price
        return candle

    def push_time(self, symbol: str, now: float) -> int:
        """The time a push (or a ticker row) of `symbol` carries: the clock's, but never a
        millisecond already used for that symbol. The exchange pushes a symbol's candle at
        most every few hundred ms; a burst here (tests push in a loop, some on a frozen
        clock) must not give two pushes one `ts`, which with the symbol identifies a push
        downstream (each is published once)."""
        ms = max(int(now * 1000), self._last_push_ms.get(symbol, -1) + 1)
        self._last_push_ms[symbol] = ms
        return ms

    def current(self, symbol: str) -> Candle | None:
        """The open live candle of ``symbol`` (None before its first push)."""
        book = self._books.get(symbol)
        return book.candle if book else None

    @staticmethod
    def kline_push(symbol: str, candle: Candle, ts_ms: int) -> dict[str, Any]:
        """A ``push.kline`` payload with the key order of the 2026 capture, sent at
        ``ts_ms``."""
        return {
            "symbol": symbol,
            "data": {
                "symbol": symbol,
                "interval": "Min1",
                "t": candle.m * 60,
                "o": candle.o,
                "c": candle.c,
                "h": candle.h,
                "l": candle.l,
                "a": round(candle.a, 4),
                "q": candle.q,
                "ro": candle.ro,
                "rc": candle.rc,
                "rh": candle.rh,
                "rl": candle.rl,
            },
            "channel": "push.kline",
            "ts": ts_ms,
        }

    # --- REST bodies -----------------------------------------------------------------------

    def klines(
        self, symbol: str, interval: str, start: int | None, end: int | None, now: float
    ) -> dict[str, list[float]]:
        """Columnar kline data as ``/contract/kline/{symbol}`` returns it.

        Rows are the windows containing ``start`` .. ``end`` (seconds), never past now; the last
        row may be the open window. Raises KeyError for an unsupported interval.
        """
        k = INTERVAL_MINUTES[interval]
        book = self._book(symbol, now)
        last = int(now // 60) // k * k
        hi = last if end is None else min(last, end // 60 // k * k)
        if start is None:
            lo = hi - (KLINE_LIMIT - 1) * k
        else:
            lo = start // 60 // k * k
            hi = min(hi, lo + (KLINE_LIMIT - 1) * k)
        cols: dict[str, list[float]] = {
            name: []
            for name in (
                "time",
                "open",
                "close",
                "high",
                "low",
                "vol",
                "amount",
                "realOpen",
                "realClose",
                "realHigh",
                "realLow",
            )
        }
        now_m = int(now // 60)
        for s in range(lo, hi + 1, k):
            row = self._window(book, s, min(s + k - 1, now_m))
            cols["time"].append(s * 60)
            cols["open"].append(row.o)
            cols["close"].append(row.c)
            cols["high"].append(row.h)
            cols["low"].append(row.l)
            cols["vol"].append(float(row.q))
            cols["amount"].append(round(row.a, 4))
            cols["realOpen"].append(row.ro)
            cols["realClose"].append(row.rc)
            cols["realHigh"].append(row.rh)
            cols["realLow"].append(row.rl)
        return cols

    def _window(self, book: _Book, s: int, e: int) -> Candle:
        """Candle for minutes ``s..e`` (inclusive)."""
        if e < book.anchor_m:
            return self._synthetic(book, s, e - s + 1)
        parts = [self._synthetic(book, m, 1) for m in range(s, min(e + 1, book.anchor_m))]
        lo = max(s, book.anchor_m)
        prev = book.close_before(lo)
        for m in range(lo, e + 1):
            live = book.closed.get(m)
            if live is None and book.candle is not None and book.candle.m == m:
                live = book.candle
            if live is None:  # no trade that minute: flat at the previous close
                live = Candle(m, prev, prev, prev, prev, prev, prev, prev, prev, 0, 0.0)
            parts.append(live)
            prev = live.c
        if len(parts) == 1:
            return parts[0]
        traded = [p for p in parts if p.q] or parts[:1]
        return Candle(
            m=s,
            o=parts[0].o,
            c=parts[-1].c,
            h=max(p.h for p in parts),
            l=min(p.l for p in parts),
            ro=traded[0].ro,
            rc=traded[-1].rc,
            rh=max(p.rh for p in traded),
            rl=min(p.rl for p in traded),
            q=sum(p.q for p in parts),
            a=sum(p.a for p in parts),
        )

    @staticmethod
    def _synthetic(book: _Book, s: int, k: int) -> Candle:
        """A synthetic window of ``k`` minutes before the anchor, in O(1)."""
        spec = book.spec
        o, c = book.synth_close(s - 1), book.synth_close(s + k - 1)
        spread = STEP_SIGMA * math.sqrt(k) * 2
        salt = 8 + (k % 40)
        ro = spec.px(o * (1 + (_unit(spec.key, s, salt) - 0.5) * spread))
        rh = spec.px(max(ro, c) * (1 + _unit(spec.key, s, salt + 1) * spread))
        rl = spec.px(min(ro, c) * (1 - _unit(spec.key, s, salt + 2) * spread))
        q = 1 + int(k * spec.q_mean * 20 * (0.2 + _unit(spec.key, s, salt + 3)))
        return Candle(
            m=s,
            o=o,
            c=c,
            h=max(rh, o),
            l=min(rl, o),
            ro=ro,
            rc=c,
            rh=rh,
            rl=rl,
            q=q,
            a=q * spec.contract_size * (ro + c) / 2,
        )

    def ticker(self, symbol: str, now: float) -> dict[str, Any]:
        """A ``/contract/ticker`` entry shaped like MEXC's documented sample (docs/exchange.md,
        section 6.4)."""
        book = self._book(symbol, now)
        spec = book.spec
        row = self.row(symbol) or {}
        now_m = int(now // 60)
        last = book.price
        day_ago = book.close_before(now_m - 1439)
        rates = {
            f"r{days}": round(last / book.close_before(now_m - 1440 * days + 1) - 1, 4)
            for days in (7, 30, 90, 180, 365)
        }
        volume24 = int(spec.q_mean * 20 * 1440 * (0.5 + _unit(spec.key, now_m, 60)))
        rise = round(last / day_ago - 1, 4)
        return {
            "contractId": row.get("id", 0),
            "symbol": symbol,
            "lastPrice": last,
            "bid1": spec.px(last - spec.tick),
            "ask1": last,
            "volume24": volume24,
            "amount24": round(volume24 * spec.contract_size * last, 4),
            "holdVol": volume24 // 3,
            "lower24Price": spec.px(min(last, day_ago) * 0.99),
            "high24Price": spec.px(max(last, day_ago) * 1.01),
            "riseFallRate": rise,
            "riseFallValue": round(last - day_ago, spec.price_scale),
            "indexPrice": spec.px(last * 1.0001),
            "fairPrice": spec.px(last * 1.00005),
            "fundingRate": 0.0001,
            "maxBidPrice": spec.px(last * 1.1),
            "minAskPrice": spec.px(last * 0.9),
            "timestamp": self.push_time(symbol, now),  # the venue's clock never repeats
            "riseFallRates": {"zone": "UTC+8", "r": rise, "v": round(last - day_ago, 8), **rates},
            "riseFallRatesOfTimezone": [rise, rise, rise],
        }


def _contract_row(
    *,
    cid: int,
    symbol: str,
    size: float,
    scale: int,
    create_ms: int,
    quote: str = "USDT",
    settle: str | None = None,
    future_type: int = 1,
    state: int = 0,
    hidden: bool = False,
    opening_ms: int = 0,
) -> dict[str, Any]:
    """A ``contract/detail`` row with the fields of MEXC's documented sample (fee and risk
    arrays trimmed)."""
    base = symbol.split("_", 1)[0]
    return {
        "symbol": symbol,
        "displayName": f"{symbol}永续",
        "displayNameEn": f"{symbol} PERPETUAL",
        "positionOpenType": 3,
        "baseCoin": base,
        "quoteCoin": quote,
        "baseCoinName": base,
        "quoteCoinName": quote,
        "futureType": future_type,
        "settleCoin": settle or quote,
        "contractSize": size,
        "minLeverage": 1,
        "maxLeverage": 200,
        "priceScale": scale,
        "volScale": 0,
        "amountScale": 4,
        "priceUnit": round(10.0**-scale, scale),
        "volUnit": 1,
        "minVol": 1,
        "maxVol": 1_000_000,
        "state": state,
        "isNew": opening_ms > 0,
        "isHot": False,
        "isHidden": hidden,
        "apiAllowed": False,
        "limitMaxVol": 2_500_000,
        "id": cid,
        "createTime": create_ms + cid * 60_000,
        "openingTime": opening_ms,
        "openingCountdownOption": 1,
        "showBeforeOpen": True,
        "type": 1,
        "indexOrigin": ["BINANCE", "BYBIT", "OKX", "MEXC"],
    }
