"""``FakeExchange``: one object that serves the simulated venue and exposes its knobs and state.

It owns a ``Market`` (prices, contracts), a ``WsHub`` (``/edge``) and a ``RestSide``
(``/api/v1/contract/*``); attributes below read and write those parts directly, so scripting
a test is plain attribute access. ``serve`` runs both servers and the push loop until cancelled.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

import trio
from loguru import logger
from quart_trio import QuartTrio

from devtools.simulator.exchange import Market, SimAddress, SimConfig
from devtools.simulator.rest import RestSide
from devtools.simulator.ws import WsHub

__all__ = ["FakeExchange", "run_simulator"]

_T = TypeVar("_T")


class _Via(Generic[_T]):
    """Attribute of a part: ``x = _Via("_ws")`` makes ``obj.x`` mean ``obj._ws.x``."""

    def __init__(self, part: str, name: str | None = None) -> None:
        self._part = part
        self._name = name or ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = self._name or name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _Via[_T]: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> _T: ...
    def __get__(self, obj: object | None, owner: type | None = None) -> _T | _Via[_T]:
        if obj is None:
            return self
        value: _T = getattr(getattr(obj, self._part), self._name)
        return value

    def __set__(self, obj: object, value: _T) -> None:
        setattr(getattr(obj, self._part), self._name, value)


class FakeExchange:
    """A MEXC-compatible futures venue on loopback, scriptable from tests."""

    # market
    contracts: _Via[list[dict[str, Any]]] = _Via("_market")
    # WebSocket knobs and state
    rate_per_s: _Via[float] = _Via("_ws")
    pushing: _Via[bool] = _Via("_ws")
    silent: _Via[bool] = _Via("_ws")
    silent_connections: _Via[set[int]] = _Via("_ws")
    refuse_handshake: _Via[bool] = _Via("_ws")
    error_symbols: _Via[set[str]] = _Via("_ws")
    ack_ts_as_string: _Via[bool] = _Via("_ws")
    ping_timeout_s: _Via[float] = _Via("_ws")
    on_push: _Via[Callable[[dict[str, Any]], None] | None] = _Via("_ws")
    connects_total: _Via[int] = _Via("_ws")
    subscriptions: _Via[dict[int, set[str]]] = _Via("_ws")
    sub_requests: _Via[int] = _Via("_ws")
    unsub_requests: _Via[int] = _Via("_ws")
    pings: _Via[int] = _Via("_ws")
    closed_codes: _Via[list[int | None]] = _Via("_ws")
    # REST knobs and state
    rest_fault: _Via[str | None] = _Via("_rest", "fault")
    rest_requests: _Via[int] = _Via("_rest", "requests")

    def __init__(self, config: SimConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.address: SimAddress | None = None
        self._market = Market(config, now=clock())
        self._ws = WsHub(self._market, clock, rate_per_s=config.rate_per_s)
        self._rest = RestSide(self._market, clock)

    @property
    def live_symbols(self) -> list[str]:
        """USDT perpetuals live now, derived from ``contracts`` (edit those to list/delist)."""
        return self._market.live_symbols(self.clock())

    @property
    def connections(self) -> int:
        """Currently open WebSocket connections."""
        return self._ws.connections

    async def serve(
        self, *, task_status: trio.TaskStatus[SimAddress] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve REST and WebSocket until cancelled; reports both URLs once both listen."""
        cfg = self.config
        async with trio.open_nursery() as nursery:
            rest_url: str = await nursery.start(self._rest.serve, cfg.host, cfg.rest_port)
            ws_url: str = await nursery.start(self._ws.serve, cfg.host, cfg.ws_port)
            self.address = SimAddress(rest_url=rest_url, ws_url=ws_url)
            task_status.started(self.address)

    def rest_app(self) -> QuartTrio:
        """The REST side as an ASGI app, for in-process clients (`httpx.ASGITransport`): no
        socket, so tests can run it on trio's MockClock."""
        return self._rest.create_app()

    async def push(
        self, symbol: str, *, price: float | None = None, **overrides: Any
    ) -> dict[str, Any]:
        """Send one kline push for ``symbol`` now; see ``WsHub.push``."""
        return await self._ws.push(symbol, price=price, **overrides)

    async def send_raw(self, frame: str | bytes) -> None:
        """Send ``frame`` unchanged to every open connection."""
        await self._ws.send_raw(frame)

    async def drop_all(self) -> None:
        """Abort every connection without a close frame."""
        await self._ws.drop_all()

    def candle(self, symbol: str) -> dict[str, Any] | None:
        """The open live candle of ``symbol`` as a push ``data`` dict (None before any push)."""
        current = self._market.current(symbol)
        if current is None:
            return None
        data: dict[str, Any] = Market.kline_push(symbol, current, int(self.clock() * 1000))["data"]
        return data


async def run_simulator(config: SimConfig) -> None:
    """Run a simulator until cancelled (the ``screener simulate`` CLI)."""
    exchange = FakeExchange(config)
    async with trio.open_nursery() as nursery:
        address: SimAddress = await nursery.start(exchange.serve)
        logger.info(
            "simulator serving: REST {} WS {} ({} live symbols, {}/s pushes)",
            address.rest_url,
            address.ws_url,
            len(exchange.live_symbols),
            config.rate_per_s,
        )
