"""Property-based tests (hypothesis) of the two pure cores: the decoder and the window.

Decoder: whatever arrives (any JSON, any text, any bytes, gzip of either, push-shaped frames
with any field values) either becomes a well-formed record or raises `DecodeError`, never
another exception. Window: for any sequence of pushes, each `apply` answers exactly what a
naive recomputation from the raw candles answers, never NaN, holding at most LOOKBACK_MIN
candles per symbol.
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from typing import Any

from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from actors.window import Windows
from screener.core.metrics import REJECT_REASONS
from screener.core.models import Kline
from screener.core.names import SYMBOL_RE
from screener.mexc.frames import ErrorReply, OtherReply, Pong, SubAck, UnsubAck, decode
from screener.mexc.values import DecodeError

T0 = 1_770_330_000  # a minute boundary (seconds), 2026-02
FAST = settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])

# --- decoder --------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

# Garbage for any field: edge numbers, wrong types, strings that look like numbers.
garbage = (
    st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.sampled_from(["1.5", "NaN", "inf", "-1", "0", "abc", "", "1e308"])
    | st.sampled_from([True, False, None, [], {}, [1.0]])
    | st.sampled_from(["../../etc", "A\nB", "btc_usdt", "X" * 41, "BTC USDT"])
    | st.text(max_size=45)
)
# Any positive finite float, from the smallest subnormal to 1.8e308.
positive = st.floats(min_value=0.0, exclude_min=True, allow_infinity=False, allow_nan=False)
realistic = st.floats(min_value=1e-8, max_value=1e6)
price = st.one_of(realistic, realistic, realistic, positive)
# Hypothesis favours small integers, so the fate of a field is drawn from a list instead.
fate = st.sampled_from(["valid"] * 18 + ["missing", "garbage"])


minutes = st.integers(min_value=T0, max_value=T0 + 86_400).map(lambda s: s // 60 * 60)
# Any positive number a timestamp field could carry, integral or not.
any_time = st.integers(1, 2**63 - 1) | st.floats(1.0, 1e308)
always_valid = st.just("valid")


@st.composite
def push_like(
    draw: st.DrawFn,
    *,
    prices: st.SearchStrategy[float] = price,
    t_values: st.SearchStrategy[Any] = minutes,
    ts_values: st.SearchStrategy[Any] | None = None,
    fates: st.SearchStrategy[str] = fate,
) -> dict[str, Any]:
    """A push.kline frame close to a real one: by default each field is valid 90% of the
    time, else garbage or missing, so every branch of the decoder is reached and many frames
    decode; the keyword arguments widen single fields."""
    t = draw(t_values)
    ts = draw(ts_values) if ts_values is not None else t * 1000 + draw(st.integers(0, 120_000))
    lo, hi = sorted((draw(prices), draw(prices)))
    valid: dict[str, Any] = {
        "symbol": draw(st.sampled_from(["BTC_USDT", "ETH_USDT", "X1000_USDT"])),
        "interval": "Min1",
        "t": t,
        "o": draw(prices),
        "h": hi,
        "l": lo,
        "c": draw(prices),
        "q": draw(st.integers(0, 10**9) | positive),
        "a": draw(positive),
        "ts": ts,
    }
    for key in list(valid):
        chosen = draw(fates)
        if chosen == "missing":
            del valid[key]
        elif chosen == "garbage":
            valid[key] = draw(garbage)
    ts = valid.pop("ts", None)
    msg: dict[str, Any] = {"channel": "push.kline", "data": valid}
    if ts is not None:
        msg["ts"] = ts
    if draw(fates) == "garbage":
        msg["channel"] = draw(st.sampled_from(["pong", "rs.sub.kline", "rs.error", "push.deal"]))
    if draw(fates) == "garbage":
        msg["data"] = draw(json_values)
    if draw(st.booleans()):
        msg["symbol"] = draw(garbage)
    return msg


def as_text(value: Any) -> str:
    """JSON text; the stdlib writes NaN/Infinity literals, which are not JSON."""
    return json.dumps(value, allow_nan=True)


def check_decoded(frame: str | bytes) -> None:
    try:
        out = decode(frame)
    except DecodeError as exc:
        reason = exc.reason  # a label for screener_messages_rejected_total
        assert reason in REJECT_REASONS
        return
    if type(out) is Kline:
        prices = (out.open, out.high, out.low, out.close)
        assert all(type(p) is float and math.isfinite(p) and p > 0 for p in prices), out
        assert out.low <= out.high, out
        for amount in (out.volume, out.amount):
            assert math.isfinite(amount), out
            assert amount >= 0, out
        assert isinstance(out.symbol, str), out
        assert SYMBOL_RE.match(out.symbol), out
        assert type(out.t) is int, out
        assert type(out.ts_ms) is int, out
        assert out.t > 0, out
        assert out.ts_ms > 0, out
    else:
        assert isinstance(out, Pong | SubAck | UnsubAck | ErrorReply | OtherReply), out


@FAST
@given(json_values)
def test_any_json_decodes_or_raises_decode_error(value: Any) -> None:
    check_decoded(as_text(value))


@FAST
@given(push_like())
def test_any_push_shaped_frame_decodes_or_raises_decode_error(msg: dict[str, Any]) -> None:
    text = as_text(msg)
    check_decoded(text)
    check_decoded(gzip.compress(text.encode()))
    check_decoded(zlib.compress(text.encode()))


@FAST
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_any_text_or_bytes_decodes_or_raises_decode_error(frame: str | bytes) -> None:
    check_decoded(frame)
    raw = frame.encode() if isinstance(frame, str) else frame
    check_decoded(gzip.compress(raw))


def _push(ts: float = T0 * 1000, **data: float) -> dict[str, Any]:
    fields = {"symbol": "BTC_USDT", "t": T0, "o": 1.0, "h": 1.0, "l": 1.0, "c": 1.0}
    fields |= {"q": 1, "a": 1.0, **data}
    return {"channel": "push.kline", "data": fields, "ts": ts}


PLAUSIBLE_S = (1_262_304_000, 4_102_444_800)  # 2010-01-01 .. 2100-01-01


@FAST
@given(
    push_like(t_values=minutes | any_time, ts_values=any_time, fates=always_valid)
    | push_like(t_values=minutes | any_time, fates=always_valid)
)
@example(_push(ts=1e308))
def test_decoded_times_are_minute_aligned_and_plausible(msg: dict[str, Any]) -> None:
    """A kline's `t` opens a minute and `ts` is a plausible push time for it.

    A push with ts=1e308 is otherwise accepted: the window's `now_minute` jumps to it, so every
    later push is "late", and the event cannot even be serialized (orjson: integer exceeds
    64-bit range), which crashes the publisher.
    """
    try:
        out = decode(as_text(msg))
    except DecodeError:
        return
    if type(out) is Kline:
        assert out.t % 60 == 0, out
        assert PLAUSIBLE_S[0] <= out.t < PLAUSIBLE_S[1], out
        assert out.t * 1000 <= out.ts_ms < (out.t + 3600) * 1000, out


@FAST
@given(
    push_like(prices=positive, fates=always_valid), push_like(prices=positive, fates=always_valid)
)
@example(_push(o=5e-324, l=5e-324), _push(c=1000.0, h=1000.0))
def test_change_between_two_decoded_candles_is_finite(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Whatever the decoder accepts, newest close over oldest open cannot overflow.

    An upper price bound alone is not enough: an open of 5e-324 and a close of 1000 make the
    change infinite, which orjson publishes as `null`.
    """
    try:
        first, last = decode(as_text(a)), decode(as_text(b))
    except DecodeError:
        return
    if type(first) is Kline and type(last) is Kline:
        assert math.isfinite((last.close / first.open - 1.0) * 100.0), (first, last)


# --- window ---------------------------------------------------------------------------------

WINDOW_SYMBOLS = ("A_USDT", "B_USDT", "C_USDT")
prices = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def pushes(draw: st.DrawFn) -> list[Kline]:
    """Pushes as the exchange sends them: t on minute boundaries, ts at or after t."""
    out = []
    for _ in range(draw(st.integers(1, 30))):
        symbol = draw(st.sampled_from(WINDOW_SYMBOLS))
        t = T0 + 60 * draw(st.integers(0, 30))
        ts_ms = t * 1000 + draw(st.integers(0, 5 * 60_000))
        o, c = draw(prices), draw(prices)
        hi, lo = max(o, c) * draw(st.floats(1, 1.1)), min(o, c) / draw(st.floats(1, 1.1))
        out.append(Kline(symbol, t, o, hi, lo, c, 1.0, 1.0, ts_ms))
    return out


class Reference:
    """The window rule written as plainly as possible, to compare the real one against."""

    def __init__(self, lookback_min: int) -> None:
        self.lookback_s = lookback_min * 60
        self.now_minute = 0
        self.raw: dict[str, dict[int, Kline]] = {}

    def apply(self, k: Kline) -> tuple[float, int] | None:
        self.now_minute = max(self.now_minute, k.ts_ms // 60_000 * 60)
        cutoff = self.now_minute - self.lookback_s
        if k.t <= cutoff:
            return None
        self.raw.setdefault(k.symbol, {})[k.t] = k
        held = {t: c for t, c in self.raw[k.symbol].items() if t > cutoff}
        oldest, newest = held[min(held)], held[max(held)]
        return (newest.close / oldest.open - 1.0) * 100.0, (newest.t - oldest.t) // 60 + 1


def _k(symbol: str, minute: int, *, at_minute: int | None = None) -> Kline:
    t = T0 + 60 * minute
    ts_ms = (T0 + 60 * (minute if at_minute is None else at_minute)) * 1000
    return Kline(symbol, t, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, ts_ms)


# Shrinking long push sequences takes minutes; the smallest known counterexamples are given
# explicitly instead, so a failure is both fast and readable.
WINDOW = settings(deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])


@settings(WINDOW, max_examples=400)
@given(st.integers(1, 6), pushes())
# A candle that expired because another symbol advanced the minute is still used when the
# push replaces (or inserts) a candle instead of opening a new minute.
@example(2, [_k("A_USDT", 1), _k("A_USDT", 0), _k("B_USDT", 2), _k("A_USDT", 1)])
def test_window_change_matches_a_recomputation_from_raw_candles(
    lookback_min: int, sequence: list[Kline]
) -> None:
    windows, reference = Windows(lookback_min), Reference(lookback_min)
    for k in sequence:
        event, expected = windows.apply(k), reference.apply(k)
        if expected is None:
            assert event is None, k
            continue
        assert event is not None, k
        assert not math.isnan(event.change_pct)
        assert (event.change_pct, event.window_min) == expected, (k, sequence)
        assert event.kline is k
        for symbol in WINDOW_SYMBOLS:
            assert len(windows.candles(symbol)) <= lookback_min, symbol


@settings(WINDOW, max_examples=200)
@given(st.integers(1, 6), pushes())
def test_stats_match_the_recomputation_and_expire_old_candles(
    lookback_min: int, sequence: list[Kline]
) -> None:
    windows, reference = Windows(lookback_min), Reference(lookback_min)
    for k in sequence:
        windows.apply(k)
        reference.apply(k)
    cutoff = reference.now_minute - reference.lookback_s
    expected = {}
    for symbol, raw in reference.raw.items():
        held = {t: c for t, c in raw.items() if t > cutoff}
        if held:
            newest = held[max(held)]
            expected[symbol] = ((newest.close / held[min(held)].open - 1.0) * 100.0, newest.close)
    stats = windows.stats()
    assert {s.symbol: (s.change_pct, s.price) for s in stats} == expected
    assert windows.held() == sum(sum(t > cutoff for t in raw) for raw in reference.raw.values())
