"""The decoder on the recorded frames of tests/frames (see docs/exchange.md), and on garbage."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from screener.core.models import Kline
from screener.mexc.frames import ErrorReply, Pong, SubAck, _fast_kline, _kline, decode, sub_kline
from screener.mexc.rest import VenueError, contracts, envelope_data, live_usdt_perpetuals
from screener.mexc.values import DecodeError

FRAMES = Path(__file__).parent.parent / "frames"


def frame(name: str) -> bytes:
    return (FRAMES / name).read_bytes().strip()


def text(name: str) -> str:
    """A recorded frame as the text message trio-websocket hands over."""
    return frame(name).decode()


def test_real_min1_push_2026() -> None:
    k = decode(text("push_kline_min1_2026.json"))
    assert k == Kline(
        "BTC_USDT",
        1770330480,
        63104.8,
        63522.3,
        63104.8,
        63519.9,
        1425571.0,
        9033395.19463,
        1770330514053,
    )


def test_real_min1_push_2022_with_integer_prices() -> None:
    k = decode(text("push_kline_min1_2022.json"))
    assert isinstance(k, Kline)
    assert (k.close, k.open, k.t, k.ts_ms) == (38839.0, 38901.5, 1651230660, 1651230713067)


def test_other_intervals_are_not_ours() -> None:
    with pytest.raises(DecodeError) as info:
        decode(text("push_kline_min15_cheems.json"))
    assert info.value.reason == "interval"


def test_tiny_prices_keep_their_digits() -> None:
    raw = orjson.loads(frame("push_kline_min15_cheems.json"))
    raw["data"]["interval"] = "Min1"
    k = decode(orjson.dumps(raw).decode())
    assert isinstance(k, Kline)
    assert repr(k.close) == "1.4988e-06"
    assert orjson.dumps(k.close) == b"1.4988e-6"


def test_replies() -> None:
    assert decode(text("pong.json")) == Pong()
    assert decode(text("rs_sub_kline.json")) == SubAck()
    assert decode(text("rs_error.json")) == ErrorReply("Contract doesn't exist!")


def test_gzip_and_zlib_binary_frames() -> None:
    raw = frame("push_kline_min1_2026.json")
    assert isinstance(decode(gzip.compress(raw)), Kline)
    assert isinstance(decode(zlib.compress(raw)), Kline)


def test_string_numbers_and_string_ts_are_accepted() -> None:
    raw = orjson.loads(frame("push_kline_min1_2026.json"))
    raw["ts"] = "1770330514053"
    raw["data"]["c"] = "63519.9"
    k = decode(orjson.dumps(raw).decode())
    assert isinstance(k, Kline)
    assert (k.close, k.ts_ms) == (63519.9, 1770330514053)


def _mutated(**data: object) -> bytes:
    raw = orjson.loads(frame("push_kline_min1_2026.json"))
    for key, value in data.items():
        if value is ...:
            del raw["data"][key]
        else:
            raw["data"][key] = value
    return orjson.dumps(raw)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "json"),
        (b"\x00\x01binary", "binary"),
        (b"[1,2]", "shape"),
        (b'{"channel":"push.unknown","data":{}}', "unknown_channel"),
        (b'{"channel":"push.kline","data":[]}', "missing_field"),
        (
            b'{"channel":"push.kline","data":{"symbol":"BTC_USDT","interval":"Min1"},"ts":1}',
            "missing_field",
        ),
        (_mutated(c=...), "missing_field"),
        (_mutated(c=0), "bad_value"),
        (_mutated(c=-1.5), "bad_value"),
        (_mutated(o="abc"), "bad_value"),
        (_mutated(h=None), "bad_type"),
        (_mutated(l=True), "bad_type"),
        (_mutated(q=-3), "bad_value"),
        (_mutated(l=70000), "bad_value"),
        (_mutated(t=1.5), "bad_value"),
        (_mutated(symbol="btc usdt"), "bad_symbol"),
        (_mutated(symbol="A" * 41), "bad_symbol"),
        (
            b'{"channel":"push.kline","data":{"symbol":"X_USDT","interval":"Min1","t":1,'
            b'"o":NaN,"h":1,"l":1,"c":1,"q":1,"a":1},"ts":1}',
            "json",
        ),
        (_mutated(o="Infinity"), "bad_value"),
        (_mutated(o="nan"), "bad_value"),
        # A literal beyond a double: no JSON decoder here takes it (orjson writes 1e308 as
        # "1e308" in some versions and "1e+308" in others, so the literal is put in by hand).
        (_mutated(o=12345.5).replace(b"12345.5", b"1e999"), "json"),
        (_mutated(t=1770330481), "bad_value"),
        (_mutated(interval=None), "interval"),
    ],
)
def test_garbage_is_rejected_with_a_reason(payload: bytes, reason: str) -> None:
    message: str | bytes = payload if reason == "binary" else payload.decode()
    with pytest.raises(DecodeError) as info:
        decode(message)
    assert info.value.reason == reason


_ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1770330480, 1770330540, 0.0, 1e-16, 1e12, 63104.8, "63104.8", "1e3"]),
    st.text(max_size=8),
)


@given(
    st.dictionaries(
        st.sampled_from(["t", "o", "h", "l", "c", "q", "a", "symbol", "interval"]), _ANY_VALUE
    ),
    st.one_of(st.just(1770330514053), _ANY_VALUE),
)
def test_the_fast_path_accepts_nothing_the_checked_path_rejects(
    changes: dict[str, object], ts: object
) -> None:
    """msgspec's typed decode is only a shortcut: whatever it accepts, the field-by-field
    checks accept as the same `Kline`; whatever else, they decide (and name the reason)."""
    raw = orjson.loads(frame("push_kline_min1_2026.json"))
    raw["data"].update(changes)
    raw["ts"] = ts
    message = orjson.dumps(raw).decode()
    fast = _fast_kline(message)
    if fast is not None:
        assert fast == _kline(orjson.loads(message))
        assert decode(message) == fast


def test_the_fast_path_takes_the_recorded_pushes() -> None:
    for name in ("push_kline_min1_2026.json", "push_kline_min1_2022.json"):
        assert _fast_kline(text(name)) == _kline(orjson.loads(frame(name)))


def test_subscribe_frame_matches_the_protocol() -> None:
    assert orjson.loads(sub_kline("BTC_USDT")) == {
        "method": "sub.kline",
        "param": {"symbol": "BTC_USDT", "interval": "Min1"},
        "gzip": False,
    }


def _row(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "symbol": "BTC_USDT",
        "quoteCoin": "USDT",
        "settleCoin": "USDT",
        "futureType": 1,
        "state": 0,
        "isHidden": False,
        "openingTime": 0,
        "apiAllowed": False,
    }
    row.update(overrides)
    return row


def test_contract_filter_recipe() -> None:
    now_ms = 1_800_000_000_000
    rows = [
        _row(),
        _row(symbol="LTC_USDT", futureType="1", state="0"),  # ccxt's stringified dump
        _row(symbol="ETH_USDC", quoteCoin="USDC", settleCoin="USDC"),
        _row(symbol="BTC_USD", quoteCoin="USD", settleCoin="BTC"),
        _row(symbol="HID_USDT", isHidden=True),
        _row(symbol="DAY_USDT", futureType=2),
        _row(symbol="OFF_USDT", state=3),
        _row(symbol="NEW_USDT", openingTime=now_ms + 60_000),
        _row(symbol="OPEN_USDT", openingTime=now_ms - 60_000),
        _row(symbol="bad name"),
    ]
    assert live_usdt_perpetuals(contracts(rows), now_ms) == {"BTC_USDT", "LTC_USDT", "OPEN_USDT"}


def test_contract_detail_object_or_list() -> None:
    obj = contracts(envelope_data(frame("contract_detail_object.json")))
    assert [c.symbol for c in obj] == ["BTC_USDT"]
    assert live_usdt_perpetuals(obj, 1e13) == {"BTC_USDT"}
    listed = contracts(envelope_data(b'{"success":true,"code":0,"data":[{"symbol":"A_USDT"},7]}'))
    assert [c.symbol for c in listed] == ["A_USDT"]


@pytest.mark.parametrize(
    "body", [frame("error_envelope.json"), b"<html>", b"[]", b'{"success":true,"data":5}']
)
def test_contract_detail_errors(body: bytes) -> None:
    with pytest.raises((DecodeError, VenueError)):
        contracts(envelope_data(body))
