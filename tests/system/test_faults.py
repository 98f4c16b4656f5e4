"""Fault matrix: the whole service over loopback (simulator, real redis-server, hypercorn)
under each fault, asserting what survives (the service, the other chunks, correct events and
/top5) and what is reported (/health, /metrics, one clear log line).

SIGTERM under load and SIGTERM while Redis is down are in test_process.py.
"""

from __future__ import annotations

import copy
import gzip
import math
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from loguru import logger

from devtools.devredis import RedisServer
from devtools.simulator import SimConfig
from screener.app import Service
from tests.system.service_harness import Subscriber, counter, eventually, running, simulator

REJECTED = "screener_messages_rejected_total"
RECONNECTS = "screener_reconnects_total"

Frame = str | bytes
Event = dict[str, Any]


# --- helpers --------------------------------------------------------------------------------


@contextmanager
def captured_logs() -> Iterator[list[Any]]:
    """Every loguru message (DEBUG and up) of the block; `.record` has level and extra."""
    messages: list[Any] = []
    sink = logger.add(messages.append, level="DEBUG", format="{level} {extra} {message}")
    try:
        yield messages
    finally:
        logger.remove(sink)


def lines(messages: list[Any], level: str, text: str) -> list[str]:
    return [
        m.record["message"]
        for m in messages
        if m.record["level"].name == level and text in m.record["message"]
    ]


@pytest.fixture
def steady_jitter() -> float:
    """Full jitter with a fixed draw, so backoff delays are exact: retry n of a connection
    waits 0.05 x 2 x 2**n s (0.1, 0.2, 0.4, ...), of the publisher 0.05 x 0.5 x 2**n s.
    Tests that take it pass `rand=lambda: steady_jitter` to `running`."""
    return 0.05


def event_key(event: Event) -> tuple[str, int, float]:
    return event["symbol"], event["ts"], event["close"]


def push_key(payload: Event) -> tuple[str, int, float]:
    return payload["data"]["symbol"], payload["ts"], payload["data"]["c"]


def assert_sane(
    events: list[Event], symbols: set[str], pushed: set[tuple[str, int, float]]
) -> None:
    """Nothing bad reached Redis: known symbols, finite positive prices, finite change, and
    every event is one of the valid pushes the exchange sent."""
    for event in events:
        shown = orjson.dumps(event).decode()
        assert event["symbol"] in symbols, shown
        prices = [event[f] for f in ("open", "high", "low", "close", "price")]
        assert all(isinstance(p, float | int) and math.isfinite(p) and p > 0 for p in prices), shown
        assert event["low"] <= event["high"], shown
        assert isinstance(event["change_pct"], float), shown
        assert math.isfinite(event["change_pct"]), shown
        assert event_key(event) in pushed, shown


async def published(sub: Subscriber, payload: Event, what: str) -> None:
    key = push_key(payload)
    await eventually(
        lambda: any(event_key(e) == key for e in sub.get("market_data")),
        within_s=3,
        what=what,
    )


def up(svc: Service, n: int = 1) -> Callable[[], bool]:
    return lambda: svc.views.feed.value.conns_up == n


# --- the exchange misbehaves ----------------------------------------------------------------


async def test_flapping_exchange_reconnects_with_growing_backoff(
    redis_server: RedisServer, steady_jitter: float
) -> None:
    drops = 4
    sub = Subscriber(redis_server.port, "market_data")
    try:
        with captured_logs() as logs, trio.fail_after(20):
            async with (
                simulator(SimConfig(symbols=5, rate_per_s=100)) as (ex, sim),
                running(sim, redis_server.port, rand=lambda: steady_jitter) as (svc, http),
            ):
                await eventually(up(svc))
                gaps = []
                for n in range(drops):
                    dropped_at = trio.current_time()
                    await ex.drop_all()
                    await eventually(lambda n=n: ex.connects_total == n + 2, what="reconnect")
                    gaps.append(trio.current_time() - dropped_at)
                    await eventually(up(svc), what="subscribed again")
                before = len(sub.get("market_data"))
                await eventually(lambda: len(sub.get("market_data")) > before + 20)
                health = await http.get("/health")
                # Each drop costs exactly one reconnect: no storm, no duplicate subscriptions.
                assert counter(svc, RECONNECTS) == drops
                assert (ex.connects_total, ex.connections) == (drops + 1, 1)
                assert sorted(len(s) for s in ex.subscriptions.values()) == [5]
                assert counter(svc, "screener_subscriptions") == 5
                assert counter(svc, "screener_connections_up") == 1
                assert counter(svc, "screener_subscribe_errors_total") == 0
                assert counter(svc, "screener_events_dropped_total") == 0
                assert counter(svc, "screener_redis_up") == 1
                assert sum(counter(svc, REJECTED, reason=r) for r in ("json", "late")) == 0
    finally:
        sub.close()
    assert health.status_code == 200
    assert health.json()["connections"] == {"up": 1, "total": 1}
    # The delay doubles while the peer keeps flapping (the backoff resets only after 60 s
    # healthy): 0.1, 0.2, 0.4, 0.8 s, each gap being that delay plus a reconnect.
    delays = [steady_jitter * 2 * 2**n for n in range(drops)]
    for gap, delay in zip(gaps, delays, strict=True):
        assert delay <= gap < delay + 1.0, (gaps, delays)
    retries = lines(logs, "WARNING", "conn-0 failed")
    assert [r.rsplit("retry in ", 1)[1] for r in retries] == [f"{d:.2f}s" for d in delays]


async def test_one_silent_connection_is_replaced_while_the_others_stream(
    redis_server: RedisServer,
) -> None:
    sub = Subscriber(redis_server.port, "market_data")
    try:
        with captured_logs() as logs, trio.fail_after(20):
            async with (
                simulator(SimConfig(symbols=12, rate_per_s=300)) as (ex, sim),
                running(
                    sim, redis_server.port, MAX_SYMBOLS_PER_CONN="4", PING_INTERVAL_S="0.3"
                ) as (svc, http),
            ):
                await eventually(up(svc, 3))
                await eventually(lambda: sum(map(len, ex.subscriptions.values())) == 12)
                silent_id, silent_symbols = next(iter(ex.subscriptions.items()))
                silent_symbols = set(silent_symbols)
                others = {c for c in ex.subscriptions if c != silent_id}

                def streamed(symbols: set[str]) -> int:
                    return sum(e["symbol"] in symbols for e in sub.get("market_data"))

                other_symbols = set(ex.live_symbols) - silent_symbols
                ex.silent_connections.add(silent_id)  # reads on, sends nothing, not even pongs
                stalled_at = trio.current_time()
                others_before = streamed(other_symbols)
                await eventually(lambda: counter(svc, RECONNECTS) == 1, what="declared dead")
                detected = trio.current_time() - stalled_at
                others_during = streamed(other_symbols) - others_before
                await eventually(lambda: ex.connects_total == 4, what="replaced")
                await eventually(up(svc, 3), what="all three up again")
                silent_before = streamed(silent_symbols)
                await eventually(lambda: streamed(silent_symbols) > silent_before + 5)
                health = (await http.get("/health")).json()
                remaining = set(ex.subscriptions)
    finally:
        sub.close()
    # Dead after 2 x PING_INTERVAL_S without a frame; the other chunks never noticed.
    assert 0.6 <= detected < 2.0
    assert others_during > 50
    assert others <= remaining, "another connection was restarted"
    assert counter(svc, RECONNECTS) == 1
    assert health["status"] == "ok"
    assert health["connections"] == {"up": 3, "total": 3}
    dead = lines(logs, "WARNING", "ConnectionDead")
    assert len(dead) == 1
    assert "no frame for 0.6s" in dead[0]


async def test_refused_handshake_is_retried_until_allowed(
    redis_server: RedisServer, steady_jitter: float
) -> None:
    sub = Subscriber(redis_server.port, "market_data")
    try:
        with captured_logs() as logs, trio.fail_after(20):
            async with (
                simulator(SimConfig(symbols=5, rate_per_s=100)) as (ex, sim),
                running(sim, redis_server.port, rand=lambda: steady_jitter) as (svc, http),
            ):
                await eventually(up(svc))
                ex.refuse_handshake = True
                await ex.drop_all()
                await eventually(lambda: counter(svc, RECONNECTS) >= 3, what="refusals")
                down = (await http.get("/health")).json()
                refused_connects = ex.connects_total
                ex.refuse_handshake = False
                await eventually(up(svc), what="accepted again")
                before = len(sub.get("market_data"))
                await eventually(lambda: len(sub.get("market_data")) > before + 10)
                health = await http.get("/health")
    finally:
        sub.close()
    assert down["connections"] == {"up": 0, "total": 1}
    assert refused_connects == 1  # refused attempts never got a WebSocket
    assert ex.connects_total == 2
    assert health.status_code == 200
    assert health.json()["connections"] == {"up": 1, "total": 1}
    refusals = lines(logs, "WARNING", "ConnectionRejected")
    assert len(refusals) >= 2
    assert all("503" in r for r in refusals)


async def test_rs_error_symbols_are_counted_and_the_others_stream(
    redis_server: RedisServer,
) -> None:
    sub = Subscriber(redis_server.port, "market_data")
    try:
        with captured_logs() as logs, trio.fail_after(20):
            async with simulator(SimConfig(symbols=6, rate_per_s=200)) as (ex, sim):
                refused = set(ex.live_symbols[:2])
                ex.error_symbols = refused
                async with running(sim, redis_server.port) as (svc, http):
                    await eventually(lambda: counter(svc, "screener_subscribe_errors_total") == 2)
                    await eventually(lambda: counter(svc, "screener_subscriptions") == 4)
                    served = set(ex.live_symbols) - refused
                    await eventually(
                        lambda: {e["symbol"] for e in sub.get("market_data")} == served,
                        what="every served symbol streams",
                    )
                    health = await http.get("/health")
                    reconnects = counter(svc, RECONNECTS)
    finally:
        sub.close()
    assert not {e["symbol"] for e in sub.get("market_data")} & refused
    assert health.status_code == 200
    assert health.json()["connections"] == {"up": 1, "total": 1}
    assert reconnects == 0
    errors = lines(logs, "WARNING", "exchange answered rs.error")
    assert len(errors) == 1  # rate-limited: the counter has the number
    assert "Contract doesn't exist!" in errors[0]


# --- garbage frames -------------------------------------------------------------------------

PLACEHOLDER = 424242.4242


def edit(**data: Any) -> Callable[[Event], Frame]:
    """A push whose `data` fields are replaced (None deletes the field)."""

    def build(push: Event) -> Frame:
        for key, value in data.items():
            if value is None:
                push["data"].pop(key, None)
            else:
                push["data"][key] = value
        return orjson.dumps(push).decode()

    return build


def top(**fields: Any) -> Callable[[Event], Frame]:
    """A push whose top-level fields are replaced (None deletes the field)."""

    def build(push: Event) -> Frame:
        for key, value in fields.items():
            if value is None:
                push.pop(key, None)
            else:
                push[key] = value
        return orjson.dumps(push).decode()

    return build


def literal(field: str, text: str) -> Callable[[Event], Frame]:
    """A push whose `data[field]` is written as `text`, which need not be valid JSON."""

    def build(push: Event) -> Frame:
        push["data"][field] = PLACEHOLDER
        return orjson.dumps(push).decode().replace(str(PLACEHOLDER), text)

    return build


# (what, frame builder from a valid push, reason counted in screener_messages_rejected_total)
GARBAGE: list[tuple[str, Callable[[Event], Frame], str]] = [
    ("non-JSON text", lambda _: "this is not json {", "json"),
    ("empty text", lambda _: "", "json"),
    ("binary, not gzip", lambda _: b"\x00\xffnot gzip at all", "binary"),
    ("gzip of non-JSON", lambda _: gzip.compress(b"<html>502</html>"), "json"),
    ("a JSON array", lambda _: "[1, 2, 3]", "shape"),
    ("JSON null", lambda _: "null", "shape"),
    ("no data", top(data=None), "missing_field"),
    ("data is a list", top(data=[1, 2]), "missing_field"),
    ("no close", edit(c=None), "missing_field"),
    ("no t", edit(t=None), "missing_field"),
    ("no ts", top(ts=None), "missing_field"),
    ("close is a bool", edit(c=True), "bad_type"),
    ("close is a list", edit(c=[1.0]), "bad_type"),
    ("close is null", edit(c=[None]), "bad_type"),
    ("close is text", edit(c="abc"), "bad_value"),
    ("close is the text NaN", edit(c="NaN"), "bad_value"),
    ("close is the text Infinity", edit(c="Infinity"), "bad_value"),
    ("t is text", edit(t="soon"), "bad_value"),
    ("NaN literal", literal("c", "NaN"), "json"),
    ("Infinity literal", literal("h", "Infinity"), "json"),
    ("-Infinity literal", literal("l", "-Infinity"), "json"),
    ("1e999 literal", literal("c", "1e999"), "json"),
    ("price 1e308", edit(c=1e308, h=1e308), "bad_value"),
    ("open 5e-324 (change overflows)", edit(o=5e-324, l=5e-324), "bad_value"),
    ("zero price", edit(c=0, l=0), "bad_value"),
    ("negative price", edit(c=-1.5, l=-1.5), "bad_value"),
    ("low above high", lambda p: edit(l=p["data"]["h"] * 2)(p), "bad_value"),
    ("negative volume", edit(q=-5), "bad_value"),
    ("interval Min5", edit(interval="Min5"), "interval"),
    ("symbol is a number", edit(symbol=42), "bad_symbol"),
    ("symbol is lower case", edit(symbol="btc_usdt"), "bad_symbol"),
    ("unknown channel", top(channel="push.deal"), "unknown_channel"),
    ("no channel", top(channel=None), "unknown_channel"),
]


async def test_garbage_of_every_kind_is_counted_and_valid_pushes_still_flow(
    redis_server: RedisServer,
) -> None:
    sub = Subscriber(redis_server.port, "market_data")
    pushed: set[tuple[str, int, float]] = set()
    missed: list[str] = []
    try:
        with captured_logs() as logs, trio.fail_after(30):
            async with (
                simulator(SimConfig(symbols=3, rate_per_s=0)) as (ex, sim),
                running(sim, redis_server.port) as (svc, http),
            ):
                ex.on_push = lambda p: pushed.add(push_key(p))
                symbols = set(ex.live_symbols)
                await eventually(lambda: counter(svc, "screener_subscriptions") == 3)
                for i, (what, build, reason) in enumerate(GARBAGE):
                    symbol = ex.live_symbols[i % 3]
                    template = await ex.push(symbol)
                    before = counter(svc, REJECTED, reason=reason)
                    await ex.send_raw(build(copy.deepcopy(template)))
                    # A valid push after the garbage: published, so the garbage was handled.
                    await published(sub, await ex.push(symbol), f"valid push after {what}")
                    if counter(svc, REJECTED, reason=reason) != before + 1:
                        missed.append(f"{what}: not counted as {reason}")

                # Compressed valid pushes are accepted (the venue may gzip: docs/exchange.md,
                # section 5.9).
                for pack in (gzip.compress, zlib.compress):
                    push = await ex.push(ex.live_symbols[0])
                    push["ts"] += 1
                    push["data"]["c"] = push["data"]["h"]
                    pushed.add(push_key(push))
                    await ex.send_raw(pack(orjson.dumps(push)))
                    await published(sub, push, f"{pack.__module__} push")

                rankings = counter(svc, "screener_rankings_total")
                await eventually(lambda: counter(svc, "screener_rankings_total") >= rankings + 2)
                top5 = (await http.get("/top5")).json()
                health = await http.get("/health")
                reconnects = counter(svc, RECONNECTS)
    finally:
        sub.close()
    events = sub.get("market_data")
    assert_sane(events, symbols, pushed)
    assert not missed, missed
    assert reconnects == 0  # garbage never costs the connection
    assert health.status_code == 200
    # /top5 shows each symbol's change as of its last event.
    last = {e["symbol"]: e["change_pct"] for e in events}
    ranked = top5["top5_gainers"] + top5["top5_losers"]
    assert {r["symbol"] for r in ranked} == symbols
    assert all(r["change_pct"] == last[r["symbol"]] for r in ranked), (ranked, last)
    # One clear line per kind (rate-limited), naming the reason.
    for reason in {reason for _, _, reason in GARBAGE}:
        assert lines(logs, "WARNING", f"rejected frame: {reason}"), reason


@pytest.mark.parametrize(
    ("what", "fields"),
    [
        ("push time 1e308 ms", {"ts": 1e308}),
        ("push time in the year 146 million", {"ts": 2**62}),
        ("candle time 1e18 s", {"data.t": 10**18}),
        # Accepted and published: orjson cannot encode the integers, the publisher crashes.
        ("candle time 1e306 s, push time 1e308 ms", {"data.t": 1e306, "ts": 1e308}),
    ],
)
async def test_absurd_timestamps_are_rejected_and_do_not_poison_the_window(
    redis_server: RedisServer, what: str, fields: dict[str, Any]
) -> None:
    """A push time far ahead would move the window's clock (exchange time) past every real
    push, and a candle time far ahead would stay the newest candle of its symbol forever."""
    sub = Subscriber(redis_server.port, "market_data")
    try:
        with trio.fail_after(15):
            async with (
                simulator(SimConfig(symbols=2, rate_per_s=0)) as (ex, sim),
                running(sim, redis_server.port) as (svc, _),
            ):
                await eventually(lambda: counter(svc, "screener_subscriptions") == 2)
                symbol = ex.live_symbols[0]
                bad = await ex.push(symbol)
                await published(sub, bad, "first push")
                for key, value in fields.items():
                    if key.startswith("data."):
                        bad["data"][key[5:]] = value
                    else:
                        bad[key] = value
                await ex.send_raw(orjson.dumps(bad).decode())
                for _ in range(3):
                    await published(sub, await ex.push(symbol), f"valid push after {what}")
                rejected = counter(svc, REJECTED, reason="bad_value")
                late = counter(svc, REJECTED, reason="late")
    finally:
        sub.close()
    assert rejected == 1, what
    assert late == 0
    assert all(e["window_min"] <= 15 for e in sub.get("market_data"))


async def test_frame_over_the_size_limit_closes_1009_counts_and_reconnects(
    redis_server: RedisServer, steady_jitter: float
) -> None:
    sub = Subscriber(redis_server.port, "market_data")
    try:
        with captured_logs() as logs, trio.fail_after(15):
            async with (
                simulator(SimConfig(symbols=3, rate_per_s=0)) as (ex, sim),
                running(
                    sim, redis_server.port, rand=lambda: steady_jitter, WS_MAX_MESSAGE_BYTES="2048"
                ) as (svc, _),
            ):
                await eventually(lambda: counter(svc, "screener_subscriptions") == 3)
                symbol = ex.live_symbols[0]
                push = await ex.push(symbol)
                push["ts"] += 1
                push["data"]["padding"] = "x" * 4096  # a valid push, only too large
                await ex.send_raw(orjson.dumps(push).decode())
                await eventually(lambda: 1009 in ex.closed_codes, what="closed with 1009")
                await eventually(lambda: counter(svc, RECONNECTS) == 1)
                await eventually(up(svc), what="reconnected")
                await eventually(lambda: counter(svc, "screener_subscriptions") == 3)
                await published(sub, await ex.push(symbol), "push after reconnect")
                too_large = counter(svc, REJECTED, reason="too_large")
    finally:
        sub.close()
    assert ex.connects_total == 2
    assert not any(e["symbol"] == symbol and e["ts"] == push["ts"] for e in sub.get("market_data"))
    failed = lines(logs, "WARNING", "conn-0 failed")
    assert len(failed) == 1
    assert "1009" in failed[0]
    assert too_large == 1, "the oversized message is not counted as too_large"


# --- Redis misbehaves -----------------------------------------------------------------------


async def test_redis_killed_mid_stream_and_restarted(
    redis_server: RedisServer, steady_jitter: float
) -> None:
    symbols = 150  # more than PUBLISH_BUFFER: coalescing alone cannot keep them all
    with captured_logs() as logs, trio.fail_after(30):
        async with (
            simulator(SimConfig(symbols=symbols, rate_per_s=3000)) as (ex, sim),
            running(sim, redis_server.port, rand=lambda: steady_jitter, PUBLISH_BUFFER="100") as (
                svc,
                http,
            ),
        ):
            sub = Subscriber(redis_server.port, "market_data")
            try:
                await eventually(lambda: len(sub.get("market_data")) > 100, what="streaming")
            finally:
                sub.close()
            redis_server.stop()
            await eventually(lambda: svc.views.redis.value.error is not None, what="noticed")
            down = (await http.get("/health")).json()
            await eventually(lambda: counter(svc, "screener_events_dropped_total") > 0)
            received = counter(svc, "screener_messages_received_total")
            await eventually(lambda: counter(svc, "screener_messages_received_total") > received)
            backlog = counter(svc, "screener_publish_backlog")
            redis_up_while_down = counter(svc, "screener_redis_up")

            redis_server.start()  # same port
            sub = Subscriber(redis_server.port, "market_data")
            try:
                await eventually(lambda: len(sub.get("market_data")) > 100, what="resumed")
                events = sub.get("market_data")
            finally:
                sub.close()
            health = (await http.get("/health")).json()
            redis_up = counter(svc, "screener_redis_up")
    assert down["redis"] == "down"
    assert down["status"] == "ok"  # the feed decides the status; Redis shows in problems
    assert any(p.startswith("redis: ") for p in down["problems"])
    assert redis_up_while_down == 0
    assert backlog <= 100
    assert (health["redis"], redis_up) == ("up", 1)
    assert "problems" not in health
    assert_sane(events, set(ex.live_symbols), {event_key(e) for e in events})
    assert len(lines(logs, "WARNING", "redis unavailable")) == 1  # once, not once per retry
    assert len(lines(logs, "INFO", "redis up")) == 2  # at start and after the restart


async def test_wrong_redis_password_is_reported_and_ingest_continues(tmp_path: Path) -> None:
    locked = RedisServer(tmp_path, password="right-horse-battery")
    locked.start()
    try:
        with captured_logs() as logs, trio.fail_after(15):
            async with (
                simulator(SimConfig(symbols=5, rate_per_s=200)) as (_, sim),
                running(sim, locked.port, REDIS_PASSWORD="wrong-staple") as (svc, http),
            ):
                await eventually(lambda: svc.views.redis.value.error is not None)
                await eventually(lambda: svc.views.ranking.value is not None, what="ranking")
                received = counter(svc, "screener_messages_received_total")
                await eventually(
                    lambda: counter(svc, "screener_messages_received_total") > received
                )
                health = await http.get("/health")
                top5 = await http.get("/top5")
                metrics = (await http.get("/metrics")).text
    finally:
        locked.stop()
    assert health.status_code == 200
    body = health.json()
    assert body["redis"] == "down"
    assert (
        "redis: AuthenticationError: invalid username-password pair or user is disabled."
        in body["problems"]
    )
    assert top5.status_code == 200
    assert "screener_redis_up 0.0" in metrics
    warned = lines(logs, "WARNING", "redis unavailable")
    assert len(warned) == 1
    assert "AuthenticationError" in warned[0]
