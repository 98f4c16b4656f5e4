"""The exchange's WebSocket as the connection actors open it (`open_exchange_socket`).

A resource, not an actor: it owns the TCP (and TLS) stream and the trio-websocket
connection for as long as the caller's `async with` lasts. Tests inject a connector over
in-memory streams instead, for exact virtual time.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Final
from urllib.parse import urlsplit

import trio
from trio_websocket import WebSocketConnection, wrap_client_stream

from screener.core.config import ExchangeSettings

CONNECT_TIMEOUT_S: Final = 10.0
# trio-websocket's queue between its reader task and ours. The default of 1 forces a task
# switch per message; 64 lets one socket read's worth of pushes (~300 B each) through at
# once, while bounding what a flood can hold (64 x WS_MAX_MESSAGE_BYTES at worst).
MESSAGE_QUEUE: Final = 64
# Bytes per socket read (trio-websocket's default is 4 KiB, about a dozen pushes): under
# load one read then feeds wsproto a whole burst.
RECEIVE_BYTES: Final = 64 * 1024

Connector = Callable[[ExchangeSettings], AbstractAsyncContextManager[WebSocketConnection]]


@asynccontextmanager
async def open_exchange_socket(settings: ExchangeSettings) -> AsyncIterator[WebSocketConnection]:
    """Connect to `settings.ws_url` within `CONNECT_TIMEOUT_S`.

    We open and own the TCP (and TLS) stream ourselves: trio-websocket 0.12's client leaves
    its socket open when the server ends the connection, which leaks a file descriptor per
    reconnect in a service that reconnects forever.
    """
    url = urlsplit(settings.ws_url)
    host = url.hostname or ""
    secure = url.scheme == "wss"
    port = url.port or (443 if secure else 80)
    resource = (url.path or "/") + (f"?{url.query}" if url.query else "")
    with trio.fail_after(CONNECT_TIMEOUT_S):
        tcp = await trio.open_tcp_stream(host, port)
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = tcp
    try:
        if secure:
            stream = trio.SSLStream(
                tcp, ssl.create_default_context(), server_hostname=host, https_compatible=True
            )
        async with trio.open_nursery() as nursery:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                ws = await wrap_client_stream(
                    nursery,
                    stream,
                    host,
                    resource,
                    max_message_size=settings.max_message_bytes,
                    message_queue_size=MESSAGE_QUEUE,
                    receive_buffer_size=RECEIVE_BYTES,
                )
            yield ws
            nursery.cancel_scope.cancel()  # the library's reader task ends with the socket
    finally:
        await trio.aclose_forcefully(stream)
