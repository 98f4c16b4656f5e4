"""REST failover through the whole service over loopback: the WebSocket side goes dark, the
REST ticker keeps /top5 moving, then live pushes return. Real sockets, redis-server and
hypercorn because the point is the hand-over between real feeds; the failover's schedule in
exact virtual time is in tests/actors/test_failover*.py."""

from __future__ import annotations

import trio
import trio.testing

from devtools.devredis import RedisServer
from tests.system.frozen_clock import frozen_simulator, service
from tests.system.service_harness import Subscriber, counter, eventually


async def test_dark_websocket_fails_over_to_rest_then_recovers(redis_server: RedisServer) -> None:
    sub = Subscriber(redis_server.port, "market_data")
    env = {"STALE_AFTER_S": "1", "FALLBACK_POLL_S": "0.2", "TOP_N": "2"}
    try:
        with trio.fail_after(30):
            async with (
                frozen_simulator(6) as (ex, sim),
                service(sim, redis_server.port, **env) as (svc, http),
            ):
                await eventually(lambda: counter(svc, "screener_subscriptions") == 6)
                opens = {s: (await ex.push(s))["data"]["o"] for s in ex.live_symbols}
                await eventually(lambda: svc.views.feed.value.last_push_at is not None)
                health = await http.get("/health")
                assert (health.status_code, health.json()["feed"]) == (200, "ws")

                # The WebSocket side goes dark: sockets dropped, reconnects refused.
                ex.refuse_handshake = True
                await ex.drop_all()
                health_now = {}

                async def rest_feed() -> bool:
                    response = await http.get("/health")
                    health_now.update(response.json(), code=response.status_code)
                    return health_now["feed"] == "rest" and health_now["status"] == "degraded"

                await eventually(rest_feed, what="REST failover in /health")
                assert health_now["code"] == 200
                assert health_now["connections"]["up"] == 0

                # The market moves; only the REST ticker can see it.
                mover = ex.live_symbols[3]
                await ex.push(mover, price=opens[mover] * 1.5)  # nobody is subscribed
                await eventually(
                    lambda: (svc.views.ranking.value or [0, 0, [None]])[2][0].symbol == mover,
                    what="the mover on top through REST",
                )
                top = (await http.get("/top5")).json()
                assert top["stale"] is False
                assert abs(top["top5_gainers"][0]["change_pct"] - 50.0) < 1e-6
                await eventually(
                    lambda: any(
                        e["source"] == "mexc-rest" and e["symbol"] == mover
                        for e in sub.get("market_data")
                    ),
                    what="mexc-rest events on Redis",
                )

                # The exchange is back: the connection resubscribes, the first push ends it.
                ex.refuse_handshake = False
                await eventually(lambda: svc.views.feed.value.conns_up == 1, within_s=15)
                await eventually(lambda: counter(svc, "screener_subscriptions") == 6)

                async def ws_feed() -> bool:
                    await ex.push(ex.live_symbols[0])
                    response = await http.get("/health")
                    health_now.update(response.json(), code=response.status_code)
                    return health_now["feed"] == "ws" and health_now["status"] == "ok"

                await eventually(ws_feed, what="back on the WebSocket feed")
                await eventually(lambda: counter(svc, "screener_feed_rest") == 0)
                assert counter(svc, "screener_rest_requests_total", endpoint="ticker") >= 2
    finally:
        sub.close()
    live = [e for e in sub.get("market_data") if e["source"] == "mexc"]
    assert live[-1]["symbol"] == ex.live_symbols[0]
