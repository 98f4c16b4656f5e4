"""Security: secrets never reach logs or HTTP; HTTP answers only GET on known routes, in
JSON, without stack traces; what the exchange sends (symbols, texts, compressed frames) is
validated before it reaches logs, metrics or Redis."""

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

from screener.devredis import RedisServer
from screener.http import Views, create_app, serve_http
from screener.logs import _ToLoguru
from screener.metrics import Metrics
from screener.simulator import SimConfig
from tests.service_harness import Subscriber, counter, eventually, running, simulator

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


# --- secrets --------------------------------------------------------------------------------

# (case, password the server requires, environment of the service; {port} and {pw} filled in)
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


# --- HTTP -----------------------------------------------------------------------------------


@pytest.fixture
def app() -> QuartTrio:
    return create_app(Views.empty(), Metrics(), stale_after_s=60)


def assert_json_error(response: Any, status: int, body: bytes) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert b"Traceback" not in body
    assert orjson.loads(body)["error"]


@pytest.mark.parametrize("path", ["/health", "/top5", "/metrics"])
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "TRACE"])
async def test_only_get_on_known_routes(app: QuartTrio, method: str, path: str) -> None:
    response = await app.test_client().open(path, method=method)
    body = await response.get_data()
    assert_json_error(response, 405, body)
    assert orjson.loads(body) == {"error": "method not allowed"}


async def test_options_is_not_answered_either(app: QuartTrio) -> None:
    """Quart answers OPTIONS on every route by itself (200, empty text/html)."""
    response = await app.test_client().open("/health", method="OPTIONS")
    assert_json_error(response, 405, await response.get_data())


@pytest.mark.parametrize(
    "path", ["/", "/nope", "/health/", "/top5/x", "/metrics.json", "/../../etc/passwd", "/%00"]
)
async def test_unknown_paths_are_json_404(app: QuartTrio, path: str) -> None:
    response = await app.test_client().get(path)
    body = await response.get_data()
    assert_json_error(response, 404, body)
    assert orjson.loads(body) == {"error": "not found"}


class _Broken:
    """A ranking snapshot whose rendering fails: a stand-in for any bug in a handler."""

    ranked = 3

    def as_dict(self) -> dict[str, object]:
        raise RuntimeError("boom: internal detail /srv/secret/path")


async def test_handler_error_is_json_500_without_details(app: QuartTrio) -> None:
    views = Views.empty()
    app = create_app(views, Metrics(), stale_after_s=60)
    views.ranking.set(_Broken())  # type: ignore[arg-type]
    response = await app.test_client().get("/top5")
    body = await response.get_data()
    assert_json_error(response, 500, body)
    assert orjson.loads(body) == {"error": "internal error"}
    assert b"boom" not in body
    assert b"/srv" not in body


async def test_handler_error_is_logged_for_operators() -> None:
    """The client gets no details, but the operator must: a 500 nobody sees is a silent bug."""
    views = Views.empty()
    app = create_app(views, Metrics(), stale_after_s=60)
    views.ranking.set(_Broken())  # type: ignore[arg-type]
    errors: list[Any] = []
    sink = logger.add(errors.append, level="ERROR")
    try:
        await app.test_client().get("/top5")
    finally:
        logger.remove(sink)
    assert errors, "a handler exception answered 500 without any log line"
    assert "boom" in str(errors[0])


async def exchange(port: int, raw: bytes) -> bytes:
    """Send raw bytes, return what comes back until the server closes or goes quiet."""
    answer = b""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(raw)
        while True:
            with trio.move_on_after(0.3 if answer else 3):
                chunk = await stream.receive_some()
                if chunk:
                    answer += chunk
                    continue
            return answer


async def test_malformed_requests_through_hypercorn_get_no_stack_trace(app: QuartTrio) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port: int = await nursery.start(serve_http, app, "127.0.0.1", 0)
            for raw in (
                b"BLAH\r\n\r\n",
                b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
                b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                b"Connection: close\r\n\r\nabc",
            ):
                answer = await exchange(port, raw)
                assert answer.startswith(b"HTTP/1.1 4"), (raw[:40], answer[:200])
                assert b"Traceback" not in answer
                assert b'File "' not in answer
            nursery.cancel_scope.cancel()


# --- what the exchange sends ----------------------------------------------------------------

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
