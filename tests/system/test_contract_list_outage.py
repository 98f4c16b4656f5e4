"""Fault 6 over loopback: the exchange's contract list fails (HTTP 502) from the start while its
ticker works. /health must not call a service that tracks no symbol healthy, and no empty
ranking may reach `top_movers`; once the list answers, the service streams and ranks. Real
sockets, redis-server and hypercorn; the verdicts in exact virtual time are in
tests/actors/test_health_semantics.py.

The simulator's `rest_fault` fails every route at once, so the test serves the simulator's own
REST app on a loopback port of its own, in front of which a hook fails `contract/detail` only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import trio
from quart import Response, request

from devtools.devredis import RedisServer
from devtools.simulator import FakeExchange, SimAddress, SimConfig
from screener.http.routes import serve_http
from screener.mexc.rest import CONTRACT_DETAIL_PATH
from tests.system.service_harness import Subscriber, counter, eventually, running, simulator


@asynccontextmanager
async def contract_list_failing(
    ex: FakeExchange, sim: SimAddress
) -> AsyncIterator[tuple[SimAddress, trio.Event]]:
    """`sim` with a REST side whose `contract/detail` answers 502 until the event is set; the
    other routes are the simulator's, on the same market."""
    restored = trio.Event()
    app = ex.rest_app()

    async def fail_contract_list() -> Response | None:
        if request.path == CONTRACT_DETAIL_PATH and not restored.is_set():
            return Response(b"Bad Gateway", status=502, content_type="text/plain")
        return None

    app.before_request(fail_contract_list)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_http, app, "127.0.0.1", 0))
        yield SimAddress(rest_url=f"http://127.0.0.1:{port}", ws_url=sim.ws_url), restored
        nursery.cancel_scope.cancel()


async def test_contract_list_down_while_the_ticker_works_is_503_and_publishes_no_empty_ranking(
    redis_server: RedisServer,
) -> None:
    sub = Subscriber(redis_server.port, "top_movers")
    env = {"STALE_AFTER_S": "1", "FALLBACK_POLL_S": "0.2", "RANK_INTERVAL_S": "0.2"}
    try:
        with trio.fail_after(30):
            async with (
                simulator(SimConfig(symbols=4, rate_per_s=100)) as (ex, sim),
                contract_list_failing(ex, sim) as (front, restored),
                running(front, redis_server.port, rand=lambda: 0.1, **env) as (svc, http),
            ):
                # The failover starts after STALE_AFTER_S and its ticker polls succeed. Every
                # /health answer meanwhile is 503, never the 200 "degraded" of before.
                codes: set[int] = set()
                ticker = "screener_rest_requests_total"
                while counter(svc, ticker, endpoint="ticker") < 5:  # 5 polls, 5+ ranking rounds
                    codes.add((await http.get("/health")).status_code)
                    await trio.sleep(0.05)  # real sockets and threads: no event to wait on
                assert svc.views.rest.value.last_ok_at is not None  # the ticker works
                health = await http.get("/health")
                top5 = await http.get("/top5")
                published_during_outage = sub.get("top_movers")

                restored.set()
                await eventually(lambda: svc.views.universe.value.symbols == 4, what="universe")

                async def healthy() -> bool:
                    response = await http.get("/health")
                    return response.status_code == 200 and response.json()["status"] == "ok"

                await eventually(healthy, what="healthy again")
                await eventually(lambda: len(sub.get("top_movers")) >= 3, what="rankings")
                recovered = (await http.get("/health")).json()
                top5_after = await http.get("/top5")
    finally:
        sub.close()
    assert codes == {503}
    body = health.json()
    assert (health.status_code, body["status"], body["symbols"]) == (503, "stale", 0)
    assert body["problems"] == [
        "no push received yet",
        "contract list unavailable: RestFailed: contract_detail: server: HTTP 502",
    ]
    assert (top5.status_code, top5.json()) == (503, {"error": "no data yet"})
    assert published_during_outage == []
    # Once the list answers: symbols tracked, streaming, and every ranking has figures.
    assert (recovered["status"], recovered["symbols"]) == ("ok", 4)
    assert "problems" not in recovered
    assert top5_after.status_code == 200
    assert all(m["top5_gainers"] and m["top5_losers"] for m in sub.get("top_movers"))
