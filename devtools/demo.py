"""`make demo`: the service against the bundled simulator and a private redis-server.

Everything runs on loopback in one process tree and stops on Ctrl-C; nothing reaches the
real exchange. Ports: HTTP 8000 (WS_SCREENER_PORT), simulator 8801/8802, Redis 6390.
"""

from __future__ import annotations

import os
import sys
import tempfile
from functools import partial
from pathlib import Path

import trio
from loguru import logger

from devtools.devredis import RedisServer
from devtools.simulator import FakeExchange, SimConfig
from screener.app import run_service, set_on_signal
from screener.core.config import ConfigError, load_settings
from screener.core.logs import setup_logging


async def _demo(env: dict[str, str], redis_dir: Path) -> None:
    exchange = FakeExchange(SimConfig(symbols=100, rate_per_s=100, rest_port=8801, ws_port=8802))
    redis = RedisServer(redis_dir, port=int(env["REDIS_PORT"]))
    await trio.to_thread.run_sync(redis.start)
    try:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(set_on_signal, stop)
            sim = await nursery.start(exchange.serve)
            env |= {"MEXC_BASE": sim.rest_url, "MEXC_WS_URL": sim.ws_url}
            async with trio.open_nursery() as service:  # drains on a signal, then returns
                svc = await service.start(partial(run_service, load_settings(env), stop=stop.wait))
                logger.info(
                    "demo: open http://127.0.0.1:{port}/ in a browser (the live page; rankings "
                    "every {r}s), or try http://127.0.0.1:{port}/top5 and "
                    "redis-cli -p {rp} subscribe market_data",
                    port=svc.http_port,
                    r=svc.settings.rank_interval_s,
                    rp=redis.port,
                )
            nursery.cancel_scope.cancel()  # then the simulator stops
    finally:
        redis.stop()


def main() -> int:
    env = {
        "LOG_FORMAT": "text",
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": "6390",
        "RANK_INTERVAL_S": "5",
    } | dict(os.environ)
    try:
        settings = load_settings(env)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"screener demo: config error: {problem}", file=sys.stderr)
        return 2
    setup_logging(settings.log_format, settings.log_level)
    with tempfile.TemporaryDirectory(prefix="screener-demo-") as tmp:
        trio.run(_demo, env, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
