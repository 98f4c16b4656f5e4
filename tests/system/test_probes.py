"""The probes through real sockets: /livez and /readyz served by hypercorn with the
heartbeat the service runs, and the whole service over loopback with every dependency gone
(the simulator refusing handshakes after dropping every socket, its REST answering 500, the
redis-server stopped): /livez keeps answering 200 while /health and /readyz answer 503."""

from __future__ import annotations

import threading
import time
from functools import partial

import httpx
import trio

from devtools.devredis import RedisServer
from devtools.simulator import SimConfig
from screener.core.metrics import Metrics
from screener.core.snapshot import Views
from screener.healthcheck import TIMEOUT_S, probe
from screener.http.probes import LIVENESS_LIMIT_S, run_heartbeat
from screener.http.routes import create_app, serve_http
from tests.contracts import check_document
from tests.system.service_harness import counter, eventually, running, simulator


async def test_probes_through_hypercorn_each_under_its_route_label() -> None:
    views = Views.empty()
    metrics = Metrics()
    app = create_app(views, metrics, stale_after_s=60.0)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_heartbeat, views.heartbeat)
            port = await nursery.start(partial(serve_http, app, "127.0.0.1", 0))
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                live = await http.get("/livez")
                ready = await http.get("/readyz")
            nursery.cancel_scope.cancel()
    assert (live.status_code, live.headers["content-type"]) == (200, "application/json")
    check_document("livez", live.json())
    assert live.json()["status"] == "alive"
    assert live.json()["beat_age_s"] < LIVENESS_LIMIT_S
    check_document("readyz", ready.json())
    assert (ready.status_code, ready.json()["status"]) == (503, "stale")
    for route in ("/livez", "/readyz"):
        count = metrics.registry.get_sample_value(
            "screener_http_request_duration_seconds_count", {"route": route}
        )
        assert count == 1, route


async def test_livez_answers_200_while_the_exchange_and_redis_are_unreachable(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(60):
        async with (
            simulator(SimConfig(symbols=3, rate_per_s=50)) as (ex, sim),
            running(sim, redis_server.port, STALE_AFTER_S="1.5", FALLBACK_POLL_S="0.2") as (
                svc,
                http,
            ),
        ):

            async def answer(path: str) -> tuple[int, str]:
                response = await http.get(path)  # its body checked against its schema
                return response.status_code, response.json()["status"]

            async def ready() -> bool:
                return await answer("/readyz") == (200, "ok")

            await eventually(ready, what="ready with every dependency up")
            assert await answer("/livez") == (200, "alive")
            published = partial(
                counter, svc, "screener_events_published_total", channel="market_data"
            )
            await eventually(lambda: published() > 0, what="events published")
            ex.refuse_handshake = True
            ex.rest_fault = "500"  # no REST failover either
            await ex.drop_all()
            redis_server.stop()
            livez: list[tuple[int, str]] = []

            async def stale() -> bool:
                livez.append(await answer("/livez"))
                return (await http.get("/health")).status_code == 503

            await eventually(stale, what="/health 503 with the exchange and Redis gone")
            health = (await http.get("/health")).json()
            assert (health["status"], health["redis"]) == ("stale", "down")
            assert health["connections"]["up"] == 0
            assert await answer("/readyz") == (503, "stale")
            livez.append(await answer("/livez"))
            assert set(livez) == {(200, "alive")}, livez


async def test_a_blocked_loop_fails_the_image_probe_by_its_timeout() -> None:
    """A task that blocks the event loop (no checkpoint) leaves /livez unanswered: the image's
    probe, issued while the loop is blocked, gives up after its timeout, then the service
    answers again."""
    views = Views.empty()
    app = create_app(views, Metrics(), stale_after_s=60.0)
    asking = threading.Event()
    result: list[tuple[bool, str]] = []

    def ask(port: int) -> None:
        asking.set()
        result.append(probe({"WS_SCREENER_PORT": str(port)}))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_heartbeat, views.heartbeat)
            port = await nursery.start(partial(serve_http, app, "127.0.0.1", 0))
            assert (await trio.to_thread.run_sync(probe, {"WS_SCREENER_PORT": str(port)}))[0]
            thread = threading.Thread(target=ask, args=(port,))
            thread.start()
            asking.wait(10)  # the probe is sending as the loop blocks
            # Blocks the loop on purpose: the bug this probe exists for.
            time.sleep(TIMEOUT_S + 3)  # noqa: ASYNC251
            thread.join(10)
            assert (await trio.to_thread.run_sync(probe, {"WS_SCREENER_PORT": str(port)}))[0]
            nursery.cancel_scope.cancel()
    assert result == [(False, f"http://127.0.0.1:{port}/livez: timed out")]
