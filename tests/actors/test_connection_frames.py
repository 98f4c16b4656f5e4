"""What the connection actor does with each kind of frame the exchange may send, over
`MemoryExchange` (real trio-websocket both ends) on MockClock: forwarded, dropped or counted."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio.testing
from loguru import logger

from screener.core.config import ExchangeSettings, load_settings
from screener.core.metrics import REJECT_REASONS, Metrics
from screener.core.models import ConnStatus, Kline, Unwatched, WindowInbox
from tests.actors.fakes import start_connection
from tests.actors.memory_exchange import MemoryExchange

FRAMES = Path(__file__).parent.parent / "frames"
SETTINGS = load_settings(
    {"PING_INTERVAL_S": "15", "SUBSCRIBE_BATCH": "2", "SUBSCRIBE_PAUSE_S": "0.5"}
).exchange
MAX_BYTES = SETTINGS.max_message_bytes  # WS_MAX_MESSAGE_BYTES, 1 MiB by default


def status(item: WindowInbox) -> WindowInbox:
    """A status change without the symbols a down status names (tests/actors/test_connection.py
    checks those)."""
    return item._replace(symbols=frozenset()) if isinstance(item, ConnStatus) else item


def frame(name: str) -> str:
    """A recorded frame, exactly as captured."""
    return (FRAMES / f"{name}.json").read_text().strip()


PUSH_2026 = frame("push_kline_min1_2026")
KLINE_2026 = Kline(
    symbol="BTC_USDT",
    t=1_770_330_480,
    open=63104.8,
    high=63522.3,
    low=63104.8,
    close=63519.9,
    volume=1425571.0,
    amount=9033395.19463,
    ts_ms=1_770_330_514_053,
)
KLINE_2022 = Kline(
    symbol="BTC_USDT",
    t=1_651_230_660,
    open=38901.5,
    high=38909.5,
    low=38833.0,
    close=38839.0,
    volume=83808.0,
    amount=325653.3287,
    ts_ms=1_651_230_713_067,
)


def variant(*, drop: str | None = None, top: dict[str, Any] | None = None, **data: Any) -> str:
    """The 2026 capture with fields of `data` replaced (or one dropped) and top-level changes."""
    msg = orjson.loads(PUSH_2026)
    msg["data"].update(data)
    if drop is not None:
        del msg["data"][drop]
    msg.update(top or {})
    return orjson.dumps(msg).decode()


def counts(metrics: Metrics) -> dict[str, float]:
    """Every rejection reason's count, and the rs.error answers under "rs.error"."""
    got = {
        reason: metrics.registry.get_sample_value(
            "screener_messages_rejected_total", {"reason": reason}
        )
        or 0.0
        for reason in REJECT_REASONS
    }
    got["rs.error"] = metrics.registry.get_sample_value("screener_subscribe_errors_total") or 0.0
    return got


def only(key: str | None = None, n: float = 0.0) -> dict[str, float]:
    expected = dict.fromkeys([*REJECT_REASONS, "rs.error"], 0.0)
    if key is not None:
        expected[key] = n
    return expected


@pytest.fixture
def warnings_logged() -> Iterator[list[str]]:
    """The connection actor's WARNING messages, formatted."""
    lines: list[str] = []

    def sink(message: Any) -> None:
        record = message.record
        if record["extra"].get("actor") == "connection":
            lines.append(record["message"])

    sink_id = logger.add(sink, level="WARNING", format="{message}")
    try:
        yield lines
    finally:
        logger.remove(sink_id)


async def start_actor(
    nursery: trio.Nursery,
    exchange: MemoryExchange,
    metrics: Metrics,
    symbols: frozenset[str],
    settings: ExchangeSettings = SETTINGS,
) -> tuple[trio.MemorySendChannel[frozenset[str]], trio.MemoryReceiveChannel[WindowInbox]]:
    """Start the actor for `symbols` and wait until it is subscribed (up)."""
    control_send, out_recv = await start_connection(
        nursery, exchange, symbols, settings=settings, metrics=metrics
    )
    assert await out_recv.receive() == ConnStatus(7, up=True)
    return control_send, out_recv


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param(frame("push_kline_min1_2022"), KLINE_2022, id="text"),
        pytest.param(gzip.compress(PUSH_2026.encode()), KLINE_2026, id="gzip-binary"),
    ],
)
async def test_push_of_a_subscribed_symbol_reaches_the_outbox_as_a_kline(
    autojump_clock: trio.testing.MockClock,
    warnings_logged: list[str],
    message: str | bytes,
    expected: Kline,
) -> None:
    metrics = Metrics()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            exchange = MemoryExchange(nursery)
            _, out = await start_actor(nursery, exchange, metrics, frozenset({"BTC_USDT"}))
            await exchange.send(message)
            assert await out.receive() == expected
            assert trio.current_time() == 0.0
            nursery.cancel_scope.cancel()
    assert counts(metrics) == only()
    assert warnings_logged == []


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(
            variant(symbol="ETH_USDT", top={"symbol": "ETH_USDT"}), id="push-not-subscribed"
        ),
        pytest.param(frame("rs_sub_deal_doc"), id="answer-to-an-untracked-method"),
    ],
)
async def test_frames_of_no_interest_are_dropped_silently(
    autojump_clock: trio.testing.MockClock, warnings_logged: list[str], message: str
) -> None:
    metrics = Metrics()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            exchange = MemoryExchange(nursery)
            _, out = await start_actor(nursery, exchange, metrics, frozenset({"BTC_USDT"}))
            await exchange.send(message)
            await exchange.send(PUSH_2026)
            assert await out.receive() == KLINE_2026  # the first thing after "up"
            nursery.cancel_scope.cancel()
    assert counts(metrics) == only()
    assert warnings_logged == []
    assert exchange.connects == [0.0]


GZIP_BOMB = gzip.compress(b" " * (2 * MAX_BYTES))  # ~2 KiB on the wire, 2 MiB inflated


@pytest.mark.parametrize(
    ("message", "counted", "logged"),
    [
        pytest.param(
            '{"channel":"push.kline","data":{', "json", "rejected frame: json: ", id="json"
        ),
        pytest.param(
            b"\xde\xad\xbe\xef not compressed",
            "binary",
            "rejected frame: binary: neither gzip nor zlib",
            id="binary-garbage",
        ),
        pytest.param("[1, 2, 3]", "shape", "rejected frame: shape: not an object", id="shape"),
        pytest.param(
            '{"channel":"push.deal","data":{}}',
            "unknown_channel",
            "rejected frame: unknown_channel: push.deal",
            id="unknown_channel",
        ),
        pytest.param(
            variant(drop="q"), "missing_field", "rejected frame: missing_field: q", id="no-q"
        ),
        pytest.param(
            variant(symbol="btc-usdt"), "bad_symbol", "rejected frame: bad_symbol", id="bad_symbol"
        ),
        pytest.param(
            variant(o=True), "bad_type", "rejected frame: bad_type: bool", id="bad_type-bool-price"
        ),
        pytest.param(
            variant(h=1e13),
            "bad_value",
            "rejected frame: bad_value: price out of range",
            id="bad_value-price-out-of-range",
        ),
        pytest.param(
            variant(l=63600.0),
            "bad_value",
            "rejected frame: bad_value: low above high",
            id="bad_value-low-above-high",
        ),
        pytest.param(
            variant(top={"ts": 1_770_330_480_000 - 1}),
            "bad_value",
            "rejected frame: bad_value: implausible candle or push time",
            id="bad_value-pushed-before-the-candle-opened",
        ),
        pytest.param(
            frame("push_kline_min15_cheems"),
            "interval",
            "rejected frame: interval: Min15",
            id="interval",
        ),
        pytest.param(
            GZIP_BOMB,
            "too_large",
            f"rejected frame: too_large: inflates beyond {MAX_BYTES} bytes",
            id="too_large-gzip-bomb",
        ),
        pytest.param(
            frame("rs_error"),
            "rs.error",
            "exchange answered rs.error: Contract doesn't exist!",
            id="rs.error",
        ),
    ],
)
async def test_bad_frame_is_counted_once_logged_rate_limited_and_the_feed_goes_on(
    autojump_clock: trio.testing.MockClock,
    warnings_logged: list[str],
    message: str | bytes,
    counted: str,
    logged: str,
) -> None:
    metrics = Metrics()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            exchange = MemoryExchange(nursery)
            _, out = await start_actor(nursery, exchange, metrics, frozenset({"BTC_USDT"}))
            # Twice at t=0, once at t=10: each counted, logged at 0 and again at 10.
            for n, at in enumerate([0.0, 0.0, 10.0], start=1):
                await trio.sleep_until(at)
                await exchange.send(message)
                await exchange.send(PUSH_2026)
                assert await out.receive() == KLINE_2026  # the frame before it was handled
                assert counts(metrics) == only(counted, n)
                assert len(warnings_logged) == (1 if at < 10 else 2)
            assert trio.current_time() == 10.0
            with pytest.raises(trio.WouldBlock):
                out.receive_nowait()  # nothing else, no status change
            nursery.cancel_scope.cancel()
    assert exchange.connects == [0.0]
    first, second = warnings_logged
    assert first.startswith(logged)
    assert first.endswith("(+0 suppressed)")
    assert second.startswith(logged)
    assert second.endswith("(+1 suppressed)")


async def test_message_over_the_size_limit_on_the_wire_is_counted_and_reconnects(
    autojump_clock: trio.testing.MockClock, warnings_logged: list[str]
) -> None:
    small = load_settings({"PING_INTERVAL_S": "15", "WS_MAX_MESSAGE_BYTES": "1024"}).exchange
    metrics = Metrics()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            exchange = MemoryExchange(nursery)
            _, out = await start_actor(nursery, exchange, metrics, frozenset({"BTC_USDT"}), small)
            await exchange.send("x" * 1025)
            assert status(await out.receive()) == ConnStatus(7, up=False)
            assert trio.current_time() == 0.0
            assert status(await out.receive()) == ConnStatus(7, up=True)
            assert trio.current_time() == 1.0  # backoff uniform(0, 2) with rand 0.5
            await exchange.send(PUSH_2026)
            assert await out.receive() == KLINE_2026
            nursery.cancel_scope.cancel()
    assert counts(metrics) == only("too_large", 1)
    assert exchange.connects == [0.0, 1.0]
    assert exchange.close_codes[0] == 1009  # MESSAGE_TOO_BIG, said by the client
    assert warnings_logged == ["rejected frame: message over 1024 bytes (+0 suppressed)"]


@pytest.mark.parametrize("interval_s", [5, 15, 30])
async def test_pings_at_exact_multiples_of_the_interval(
    autojump_clock: trio.testing.MockClock, interval_s: int
) -> None:
    settings = load_settings({"PING_INTERVAL_S": str(interval_s)}).exchange
    with trio.fail_after(10 * interval_s):
        async with trio.open_nursery() as nursery:
            exchange = MemoryExchange(nursery)
            _, out = await start_actor(
                nursery, exchange, Metrics(), frozenset({"BTC_USDT"}), settings
            )
            # Traffic off the grid does not move it.
            await trio.sleep_until(interval_s * 1.5)
            await exchange.send(PUSH_2026)
            assert await out.receive() == KLINE_2026
            await trio.sleep_until(interval_s * 4 + 1)
            nursery.cancel_scope.cancel()
    assert exchange.pings == [interval_s * k for k in (1, 2, 3, 4)]
    assert exchange.connects == [0.0]


async def test_any_frame_even_a_rejected_one_proves_the_socket_alive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    metrics = Metrics()
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            exchange = MemoryExchange(nursery)
            exchange.answer_pings = False
            _, out = await start_actor(nursery, exchange, metrics, frozenset({"BTC_USDT"}))
            await trio.sleep_until(20.0)
            await exchange.send("not json")
            assert status(await out.receive()) == ConnStatus(7, up=False)
            assert trio.current_time() == 50.0  # 20 + 2 x 15, not 0 + 2 x 15
            nursery.cancel_scope.cancel()
    assert counts(metrics) == only("json", 1)
    assert exchange.connects == [0.0]


async def test_unsubscribe_ack_decrements_the_subscriptions_gauge(
    autojump_clock: trio.testing.MockClock,
) -> None:
    metrics = Metrics()

    def subscriptions() -> float | None:
        return metrics.registry.get_sample_value("screener_subscriptions")

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            exchange = MemoryExchange(nursery)
            exchange.answer_unsubs = True
            control, out = await start_actor(
                nursery, exchange, metrics, frozenset({"BTC_USDT", "ETH_USDT"})
            )
            await trio.testing.wait_all_tasks_blocked()
            assert subscriptions() == 2.0
            await control.send(frozenset({"ETH_USDT"}))
            assert await out.receive() == Unwatched(frozenset({"BTC_USDT"}))
            await trio.testing.wait_all_tasks_blocked()
            assert exchange.unsubs == ["BTC_USDT"]
            assert subscriptions() == 1.0
            eth = variant(symbol="ETH_USDT", top={"symbol": "ETH_USDT"})
            await exchange.send(PUSH_2026)  # no longer subscribed: dropped
            await exchange.send(eth)
            assert await out.receive() == KLINE_2026._replace(symbol="ETH_USDT")
            await control.aclose()
            assert await out.receive() == Unwatched(frozenset({"ETH_USDT"}))
            assert status(await out.receive()) == ConnStatus(7, up=False)
            assert status(await out.receive()) == ConnStatus(7, up=False, retired=True)
    assert subscriptions() == 0.0
    assert exchange.connects == [0.0]
