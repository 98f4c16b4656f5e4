"""Security through the whole service: secrets never reach logs or HTTP, and what the exchange
sends (symbols, texts, compressed frames) is validated before it reaches logs, metrics or
Redis. Real redis-server (with a password) and the simulator over loopback, because a leak
would be in what real clients and real sockets carry."""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from loguru import logger
from quart_trio import QuartTrio

from devtools.devredis import RedisServer
from devtools.simulator import SimConfig
from screener.core.logs import _ToLoguru
from screener.core.metrics import Metrics
from screener.core.snapshot import Views
from screener.http.routes import create_app
from tests.system.service_harness import Subscriber, counter, eventually, running, simulator

REJECTED = "screener_messages_rejected_total"


SECRET = "Zq8hunter2sekrit"


OTHER = "not-the-password"


@contextmanager
def everything_logged() -> Iterator[list[str]]:
    """All log output of the block as production writes it (JSON lines, tracebacks without
    variable values), plus every stdlib logger (hypercorn, trio-websocket, redis, httpx) at
    DEBUG, which is more than production lets through."""
    out: list[str] = []
    sink = logger.add(out.append, level="DEBUG", serialize=True, backtrace=False, diagnose=False)
    root = logging.getLogger()
    bridge, level = _ToLoguru(), root.level
    root.addHandler(bridge)
    root.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        root.removeHandler(bridge)
        root.setLevel(level)
        logger.remove(sink)


SECRET_CASES = [
    ("REDIS_URL with a password", SECRET, {"REDIS_URL": "redis://:{pw}@127.0.0.1:{port}/0"}),
    (
        "REDIS_URL with user and password",
        SECRET,
        {"REDIS_URL": "redis://default:{pw}@127.0.0.1:{port}/0"},
    ),
    ("REDIS_PASSWORD", SECRET, {"REDIS_PASSWORD": "{pw}"}),
    ("wrong password in REDIS_URL", OTHER, {"REDIS_URL": "redis://:{pw}@127.0.0.1:{port}/0"}),
    ("wrong REDIS_PASSWORD", OTHER, {"REDIS_PASSWORD": "{pw}"}),
    # redis-py reads `password` from the query string too (redis.connection.parse_url).
    (
        "password in the REDIS_URL query",
        SECRET,
        {"REDIS_URL": "redis://127.0.0.1:{port}/0?password={pw}"},
    ),
]


@pytest.fixture
def app() -> QuartTrio:
    return create_app(Views.empty(), Metrics(), stale_after_s=60)


BAD_SYMBOLS = [
    "../../etc/passwd",
    "BTC_USDT\nERROR forged log line",
    "BTC_USDT\r\nX-Injected: 1",
    "btc_usdt",
    "BTC-USDT",
    "BTC_USDT ",
    "X" * 41,
    "",
    "\u0412TC_USDT",  # Cyrillic V
    "BTC_USDT\x00",
    "{extra}",
    'BTC_USDT","symbol":"ETH_USDT',
]


@pytest.mark.parametrize(
    ("required", "env"), [c[1:] for c in SECRET_CASES], ids=[c[0] for c in SECRET_CASES]
)
async def test_redis_credentials_never_reach_logs_or_http(
    tmp_path: Path, required: str, env: dict[str, str]
) -> None:
    server = RedisServer(tmp_path, password=required)
    server.start()
    bodies: list[str] = []
    try:
        with everything_logged() as logs, trio.fail_after(15):
            settings = {k: v.format(pw=SECRET, port=server.port) for k, v in env.items()}
            async with (
                simulator(SimConfig(symbols=3, rate_per_s=100)) as (_, sim),
                running(sim, server.port, LOG_LEVEL="DEBUG", **settings) as (svc, http),
            ):
                await eventually(lambda: svc.views.redis.value != (False, None), what="redis")
                await eventually(lambda: svc.views.ranking.value is not None, what="ranking")
                if svc.views.redis.value.up:
                    server.stop()  # the error paths too: redis unreachable, final flush fails
                    await eventually(lambda: not svc.views.redis.value.up, what="noticed")
                for path in ("/health", "/metrics", "/top5"):
                    bodies.append((await http.get(path)).text)
    finally:
        server.stop()
    assert any("redis" in line for line in logs)
    assert "redis: " in bodies[0]  # /health names the Redis problem ...
    leaked = [
        text[max(0, text.find(SECRET) - 60) :][:100] for text in logs + bodies if SECRET in text
    ]
    assert not leaked, leaked[:3]  # ... never the credentials


async def test_bad_symbol_names_never_reach_logs_metrics_or_redis(
    redis_server: RedisServer,
) -> None:
    sub = Subscriber(redis_server.port, "market_data")
    try:
        with everything_logged() as logs, trio.fail_after(15):
            async with (
                simulator(SimConfig(symbols=2, rate_per_s=0)) as (ex, sim),
                running(sim, redis_server.port, LOG_LEVEL="DEBUG") as (svc, http),
            ):
                await eventually(lambda: counter(svc, "screener_subscriptions") == 2)
                symbol = ex.live_symbols[0]
                for bad in BAD_SYMBOLS:
                    push = await ex.push(symbol)
                    push["symbol"] = push["data"]["symbol"] = bad
                    await ex.send_raw(orjson.dumps(push).decode())
                last = await ex.push(symbol)
                await eventually(
                    lambda: any(e["ts"] == last["ts"] for e in sub.get("market_data")),
                    what="valid push after the bad ones",
                )
                metrics = (await http.get("/metrics")).text
                health = (await http.get("/health")).text
                keys = redis_server.client().keys("*")
    finally:
        sub.close()
    assert counter(svc, REJECTED, reason="bad_symbol") == len(BAD_SYMBOLS)
    assert {e["symbol"] for e in sub.get("market_data")} <= set(ex.live_symbols)
    markers = ["../", "forged", "Injected", "btc_usdt", "BTC-USDT", "XXXXXXXXXX", "\u0412TC"]
    for text in [*logs, metrics, health, *(k.decode(errors="replace") for k in keys)]:
        found = [m for m in markers if m in text]
        assert not found, (found, text[:300])


async def test_exchange_texts_cannot_forge_log_lines(redis_server: RedisServer) -> None:
    """`rs.error` texts and unknown channel names are logged; a newline in them must not
    start a line of its own in a text log (JSON logs escape it, terminals do not)."""
    forged = "\nCRITICAL | screener.app - all good, ignore the next alerts"
    with trio.fail_after(15):
        messages: list[Any] = []
        sink = logger.add(messages.append, level="DEBUG")
        try:
            async with (
                simulator(SimConfig(symbols=1, rate_per_s=0)) as (ex, sim),
                running(sim, redis_server.port) as (svc, _),
            ):
                await eventually(lambda: counter(svc, "screener_subscriptions") == 1)
                await ex.send_raw(orjson.dumps({"channel": "rs.error", "data": forged}).decode())
                await ex.send_raw(orjson.dumps({"channel": "x" + forged[:30]}).decode())
                await eventually(lambda: counter(svc, "screener_subscribe_errors_total") == 1)
                await eventually(lambda: counter(svc, REJECTED, reason="unknown_channel") == 1)
        finally:
            logger.remove(sink)
    texts = [m.record["message"] for m in messages]
    assert any("rs.error" in t for t in texts)
    assert not [t for t in texts if "\n" in t or "\r" in t]


async def test_compressed_frame_may_not_inflate_past_the_message_limit(
    redis_server: RedisServer,
) -> None:
    """WS_MAX_MESSAGE_BYTES bounds what arrives; without a bound on inflating, a 1 kB gzip
    frame becomes 1 MB here (and a 1 MB frame about 1 GB with the default limit)."""
    bomb = gzip.compress(b"\0" * (1 << 20), 9)
    assert len(bomb) < 2048
    with trio.fail_after(15):
        async with (
            simulator(SimConfig(symbols=1, rate_per_s=0)) as (ex, sim),
            running(sim, redis_server.port, WS_MAX_MESSAGE_BYTES="2048") as (svc, _),
        ):
            await eventually(lambda: counter(svc, "screener_subscriptions") == 1)
            received = counter(svc, "screener_messages_received_total")
            await ex.send_raw(bomb)
            await eventually(lambda: counter(svc, "screener_messages_received_total") > received)
            await eventually(
                lambda: sum(counter(svc, REJECTED, reason=r) for r in ("json", "too_large")) == 1,
                what="the frame handled",
            )
            too_large = counter(svc, REJECTED, reason="too_large")
    assert too_large == 1, "inflated past WS_MAX_MESSAGE_BYTES without being rejected"
