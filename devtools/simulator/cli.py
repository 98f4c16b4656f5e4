"""`screener simulate`: serve the simulator on loopback until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import os

import trio
from loguru import logger

from devtools.simulator.exchange import SimConfig
from devtools.simulator.server import FakeExchange
from screener.app import set_on_signal
from screener.core.logs import setup_logging


def main(args: argparse.Namespace) -> int:
    """`args` are those of `screener simulate` (its parser lives with the service's CLI, so
    `screener --help` lists the command whether or not the tools are installed)."""
    setup_logging(os.environ.get("LOG_FORMAT", "text").lower(), "INFO")
    config = SimConfig(
        symbols=args.symbols,
        rate_per_s=args.rate,
        seed=args.seed,
        host=args.host,
        rest_port=args.rest_port,
        ws_port=args.ws_port,
    )

    async def serve() -> None:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(set_on_signal, stop)
            address = await nursery.start(FakeExchange(config).serve)
            logger.info(
                "simulator: MEXC_BASE={rest} MEXC_WS_URL={ws}",
                rest=address.rest_url,
                ws=address.ws_url,
            )
            await stop.wait()
            nursery.cancel_scope.cancel()

    trio.run(serve)
    return 0
