"""Command line: `screener` runs the service; `screener rest` the REST-only screener;
`screener check-config` prints the configuration it would run with; `screener simulate` and
`screener bench` are the development tools, where installed."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from types import ModuleType

import trio
from loguru import logger

from screener import __version__
from screener.core.config import (
    ConfigError,
    describe_variables,
    load_settings,
    resolved_variables,
    retired_variables,
)
from screener.core.logs import setup_logging
from screener.core.supervise import split_retryable
from screener.http.routes import ListenError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="screener",
        description="Stream MEXC perpetual-futures 1-minute candles, keep rolling windows, "
        "publish events on Redis and serve /health, /top5 and /metrics.",
        epilog=describe_variables(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"screener {__version__}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the service (the default)")
    sub.add_parser(
        "check-config",
        help="print the configuration the service would run with (secrets masked) and exit 0, "
        "or exit 2 with one line per bad variable",
    )
    sub.add_parser(
        "rest",
        help="the REST screener: top movers from kline polling every REST_POLL_S, "
        "no WebSocket, on REST_SCREENER_PORT",
    )
    sub.add_parser(
        "bench",
        help="the benchmark (docs/performance.md); `screener bench --help` for its options",
        add_help=False,
    )
    sim = sub.add_parser("simulate", help="serve a MEXC-compatible exchange on loopback")
    sim.add_argument("--symbols", type=int, default=50, help="live USDT perpetuals [50]")
    sim.add_argument("--rate", type=float, default=50.0, help="kline pushes per second [50]")
    sim.add_argument("--seed", type=int, default=1, help="random-walk seed [1]")
    sim.add_argument("--host", default="127.0.0.1", help="bind address [127.0.0.1]")
    sim.add_argument("--rest-port", type=int, default=8801, help="REST port [8801]")
    sim.add_argument("--ws-port", type=int, default=8802, help="WebSocket port [8802]")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # the benchmark parses its own options
        bench = _devtool("bench")
        return 2 if bench is None else int(bench.main(argv[1:]))
    args = build_parser().parse_args(argv)
    if args.command == "simulate":
        simulator = _devtool("simulator")
        return 2 if simulator is None else int(simulator.main(args))
    try:
        settings = load_settings(os.environ)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"screener: config error: {problem}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        for name, shown, source in resolved_variables(os.environ):
            print(f"{name}={shown}  # {source}")
        return 0
    setup_logging(settings.log_format, settings.log_level)
    for line in retired_variables(os.environ):
        logger.warning("{line}", line=line)
    from screener.app import run_until_signal

    rest = args.command == "rest"
    try:
        trio.run(run_until_signal, settings, "rest" if rest else "ws")
    except BaseException as exc:
        listen = (
            split_retryable(exc, (ListenError,)) if not isinstance(exc, KeyboardInterrupt) else None
        )
        if listen is None:
            raise
        logger.error("{err}", err=str(listen))
        port_variable = "REST_SCREENER_PORT" if rest else "WS_SCREENER_PORT"
        print(f"screener: {listen} (set {port_variable})", file=sys.stderr)
        return 1
    logger.info("screener stopped")
    return 0


def _devtool(name: str) -> ModuleType | None:
    """`devtools.<name>`, or None after one line saying how to install the development tools
    (the runtime wheel and image carry none of them)."""
    try:
        return importlib.import_module(f"devtools.{name}")
    except ModuleNotFoundError as exc:
        if exc.name not in ("devtools", f"devtools.{name}"):
            raise
        print(
            f"screener: `screener {'simulate' if name == 'simulator' else name}` is a development "
            "tool, not installed here: from a checkout, `make install` (or "
            "`pip install -e ./devtools -e '.[dev]'`) installs it",
            file=sys.stderr,
        )
        return None


if __name__ == "__main__":
    sys.exit(main())
