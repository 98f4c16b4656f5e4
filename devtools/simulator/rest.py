"""REST side of the simulator: MEXC's public ``/api/v1/contract/*`` endpoints.

A small Quart-Trio app served by hypercorn inside the caller's Trio run. Bodies use MEXC's
envelope (``{"success":true,"code":0,"data":...}``); ``fault`` scripts gateway failures on every
route. It serves until cancelled; cancellation stops hypercorn with its connections.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any, Final

import orjson
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio

from devtools.simulator.exchange import Market
from screener.core.names import INTERVAL_MINUTES

__all__ = ["FAULTS", "RestSide"]

FAULTS: Final = frozenset({"500", "510", "429", "hang", "garbage"})
_JSON: Final = "application/json"


def _body(payload: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status=status, content_type=_JSON)


def _ok(data: Any) -> Response:
    return _body({"success": True, "code": 0, "data": data})


def _fail(code: int, message: str) -> Response:
    """A venue-level error: MEXC answers HTTP 200 with ``success: false``."""
    return _body({"success": False, "code": code, "message": message})


def _int_arg(name: str) -> int | None:
    raw = request.args.get(name)
    return None if raw in (None, "") else int(float(raw))


class RestSide:
    """Routes, fault knob and request counter of the REST side."""

    def __init__(self, market: Market, clock: Callable[[], float]) -> None:
        self.market = market
        self.clock = clock
        self.fault: str | None = None
        self.requests = 0

    def create_app(self) -> QuartTrio:
        """The ASGI app; also usable with ``app.test_client()``."""
        app = QuartTrio(__name__)
        app.before_request(self._before)
        app.register_error_handler(404, self._not_found)
        app.add_url_rule("/api/v1/contract/ping", view_func=self._ping)
        app.add_url_rule("/api/v1/contract/detail", view_func=self._detail)
        app.add_url_rule("/api/v1/contract/ticker", view_func=self._ticker)
        app.add_url_rule("/api/v1/contract/kline/<symbol>", view_func=self._kline)
        return app

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve on ``host:port`` until cancelled; reports the ``http://`` base URL."""
        config = Config()
        config.bind = [f"{host}:{port}"]
        config.accesslog = None
        # Hand hypercorn a logger it will not reconfigure; records propagate to whatever the
        # application routes stdlib logging into.
        config.errorlog = logging.getLogger("hypercorn.error")
        config.graceful_timeout = 1.0
        async with trio.open_nursery() as nursery:
            # Stopped by cancellation only: the trigger never fires.
            binds: list[str] = await nursery.start(
                partial(serve, self.create_app(), config, shutdown_trigger=trio.sleep_forever)
            )
            task_status.started(binds[0])

    # --- hooks and routes ------------------------------------------------------------------

    async def _before(self) -> Response | None:
        self.requests += 1
        fault = self.fault
        if fault is None:
            return None
        if fault == "hang":
            await trio.sleep_forever()
        if fault == "500":
            return _body({"success": False, "code": 500, "message": "System internal error!"}, 500)
        if fault == "510":
            return _fail(510, "Excessive frequency of requests")
        if fault == "429":  # what a gateway in front of the venue answers when throttling
            return Response(b"Too Many Requests", status=429, content_type="text/plain")
        if fault == "garbage":
            return Response(b"<html><body>502 Bad Gateway</body></html\x00", content_type=_JSON)
        raise ValueError(f"unknown rest_fault {fault!r}; expected one of {sorted(FAULTS)}")

    async def _not_found(self, _error: Exception) -> Response:
        return _body({"success": False, "code": 404, "message": "Not Found"}, 404)

    async def _ping(self) -> Response:
        return _ok(int(self.clock() * 1000))

    async def _detail(self) -> Response:
        symbol = request.args.get("symbol")
        if symbol is None:
            return _ok(self.market.contracts)
        row = self.market.row(symbol)
        return _ok(row) if row is not None else _fail(1001, "contract does not exist")

    async def _ticker(self) -> Response:
        now = self.clock()
        symbol = request.args.get("symbol")
        if symbol is None:
            # "No symbol => an array of all contracts" (docs/exchange.md, section 6.4): every
            # enabled, opened row, including the ones a USDT-perpetual client must filter out.
            now_ms = int(now * 1000)
            rows = [
                r["symbol"]
                for r in self.market.contracts
                if r.get("state") == 0 and (r.get("openingTime") or 0) <= now_ms
            ]
            return _ok([self.market.ticker(s, now) for s in rows])
        if self.market.row(symbol) is None:
            return _fail(1001, "contract does not exist")
        return _ok(self.market.ticker(symbol, now))

    async def _kline(self, symbol: str) -> Response:
        if self.market.row(symbol) is None:
            return _fail(1001, "contract does not exist")
        interval = request.args.get("interval", "Min1")
        if interval not in INTERVAL_MINUTES:
            return _fail(600, f"Parameter error: interval {interval} not simulated")
        try:
            start, end = _int_arg("start"), _int_arg("end")
        except ValueError:
            return _fail(600, "Parameter error: start/end must be seconds")
        return _ok(self.market.klines(symbol, interval, start, end, self.clock()))
