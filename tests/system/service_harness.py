"""Helpers for tests that run the whole service over loopback: the simulator, a real
redis-server, the service in-process (or as a subprocess), a Redis subscriber.

Every document these helpers receive is checked against the packaged JSON Schemas
(screener/schemas/): each `market_data`/`top_movers` message the `Subscriber` collects and
each GET /health, /livez, /readyz and /top5 answer fetched through `running(...)`'s client.
A document that does not match fails the test, so every system test also checks the
published contract."""

from __future__ import annotations

import inspect
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import orjson
import redis
import trio

from devtools.simulator import FakeExchange, SimAddress, SimConfig
from screener.app import Service, run_service
from screener.core.config import Settings, load_settings
from tests.contracts import SCHEMA_NAMES, TOP5_RANKING, check_document, schema_errors
from tests.helpers import sample


def service_settings(sim: SimAddress, redis_port: int, **overrides: str) -> Settings:
    env = {
        "MEXC_BASE": sim.rest_url,
        "MEXC_WS_URL": sim.ws_url,
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": str(redis_port),
        "HTTP_HOST": "127.0.0.1",
        "WS_SCREENER_PORT": "0",
        "SUBSCRIBE_PAUSE_S": "0.001",
        "SUBSCRIBE_BATCH": "100",
        "RANK_INTERVAL_S": "0.2",
        "LOG_FORMAT": "text",
        # Windows start empty unless a test asks for REST history (BACKFILL=on), so the
        # figures of a test that only pushes are those pushes' own.
        "BACKFILL": "off",
        # The simulator is no venue with a budget: tests may fetch faster than MEXC allows.
        "REST_RATE_OVERRIDE": "on",
    }
    env.update(overrides)
    return load_settings(env)


HTTP_SCHEMAS = {
    ("/health", 200): "health",
    ("/health", 503): "health",
    ("/livez", 200): "livez",
    ("/livez", 503): "livez",
    ("/readyz", 200): "readyz",
    ("/readyz", 503): "readyz",
    ("/top5", 200): TOP5_RANKING,
    ("/top5", 503): "error",
}
"""The document each answer of GET /health, /livez, /readyz and /top5 must be, by path and
status; other statuses and methods (404, 405, HEAD) are the error tests' own business."""


async def check_http_answer(response: httpx.Response) -> None:
    """httpx response hook: validate GET /health, /livez, /readyz and /top5 bodies against
    the schemas."""
    ref = HTTP_SCHEMAS.get((response.request.url.path, response.status_code))
    if response.request.method != "GET" or ref is None:
        return
    await response.aread()
    check_document(ref, response.json())


class Subscriber:
    """Collects every message of some Redis pub/sub channels on a thread of its own.

    Create it before the service starts so nothing published is missed. Messages of the
    `market_data` and `top_movers` channels are validated against their schemas; one that
    does not match makes `get` and `close` raise, so the test fails.
    """

    def __init__(
        self, port: int, *channels: str, password: str | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.client = redis.Redis(host=host, port=port, password=password)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.messages: dict[str, list[dict[str, Any]]] = {c: [] for c in channels}
        self.invalid: list[str] = []
        self._lock = threading.Lock()
        self.pubsub.subscribe(**dict.fromkeys(channels, self._handle))
        self.lost: Exception | None = None  # why the connection ended (Redis stopped under it)
        self._thread = self.pubsub.run_in_thread(
            sleep_time=0.01, daemon=True, exception_handler=self._lose
        )

    def _lose(self, exc: Exception, pubsub: object, thread: Any) -> None:
        """Redis went away (a test stops it): keep what was received, stop reading."""
        self.lost = exc
        thread.stop()

    def _handle(self, message: dict[str, Any]) -> None:
        channel = message["channel"].decode()
        document = orjson.loads(message["data"])
        # Raising here would only end the reader thread; the test's own thread raises instead.
        # By the document's type, not the channel's name: `candle` documents go to `candles`.
        kind = document.get("type") if isinstance(document, dict) else None
        errors = schema_errors(kind, document) if kind in SCHEMA_NAMES else []
        with self._lock:
            self.messages[channel].append(document)
            self.invalid.extend(f"{channel}: {e}: {document!r}" for e in errors)

    def _raise_if_invalid(self) -> None:
        with self._lock:
            if self.invalid:
                raise AssertionError(f"messages not matching their schema: {self.invalid}")

    def get(self, channel: str) -> list[dict[str, Any]]:
        self._raise_if_invalid()
        with self._lock:
            return list(self.messages[channel])

    def close(self) -> None:
        self._thread.stop()
        self._thread.join(5)
        self.pubsub.close()
        self.client.close()
        self._raise_if_invalid()


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], *, within_s: float = 10.0, what: str = ""
) -> None:
    """Wait for a condition that depends on real sockets, threads or another process.

    `check` is a plain function or an async one (an HTTP request, a read from Redis).
    Polling is deliberate: those have no trio.Event to wait on. The ceiling keeps it bounded.
    """
    with trio.move_on_after(within_s):
        while True:
            outcome = check()
            if await outcome if inspect.isawaitable(outcome) else outcome:
                return
            await trio.sleep(0.02)
    raise AssertionError(f"not within {within_s}s: {what or check}")


@asynccontextmanager
async def simulator(
    config: SimConfig, *, clock: Callable[[], float] = time.time
) -> AsyncIterator[tuple[FakeExchange, SimAddress]]:
    """The fake exchange on loopback ports, for the length of the block."""
    exchange = FakeExchange(config, clock=clock)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(exchange.serve)
        yield exchange, address
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def running(
    sim: SimAddress,
    redis_port: int,
    *,
    wall: Callable[[], float] = time.time,
    rand: Callable[[], float] = random.random,
    **env: str,
) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    """The whole service in-process against `sim`, with an HTTP client on its port whose
    GET /health and /top5 answers are checked against the schemas."""
    settings = service_settings(sim, redis_port, **env)
    async with trio.open_nursery() as nursery:
        svc: Service = await nursery.start(partial(run_service, settings, wall=wall, rand=rand))
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{svc.http_port}",
            event_hooks={"response": [check_http_answer]},
        ) as http:
            yield svc, http
        nursery.cancel_scope.cancel()


def counter(svc: Service, name: str, **labels: str) -> float:
    """A sample of the service's own Prometheus registry (0 before it exists)."""
    return sample(svc.metrics, name, **labels)
