"""The HTTP server: hypercorn serves each connection, behind an accept loop of our own that
holds at most `max_connections` at once, and with the app's `send` shielded so connections
close when they should.

(1) hypercorn closes a finished connection (and restarts its keep-alive timer) from inside
the ASGI app's `send`, and quart-trio cancels the app's task as soon as the response is
complete, so the close and the restart were cancelled and the socket stayed open until the
client left (docs/http-connections.md has the trace). `shield_sends` fixes it at the ASGI
boundary, with public interfaces only. (2) `hypercorn.trio.serve` accepts without limit (it
uses `trio.serve_listeners`) and logs every failed accept with a traceback; here a slot is
taken before `accept()`, so connections beyond the cap wait in the listen backlog, and running
out of file descriptors is logged once per episode. For that, each accepted connection is
handed to hypercorn's worker through screener/core/compat.py, the one place that uses hypercorn's
internals (and bounds its writes by `WRITE_S`). Plain HTTP only (no TLS, no QUIC).

Once `shutdown_trigger` returns: stop accepting, close the listening sockets, close idle
connections, let requests in flight finish within `config.graceful_timeout`, then return.
Cancelled, everything stops at once (every accepted socket is closed on the way out).
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final, NoReturn

import trio
from hypercorn.config import Config
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)
from hypercorn.utils import repr_socket_addr
from loguru import logger

from screener.core.compat import CLOSE_S, WRITE_S, open_hypercorn_worker

ACCEPT_RETRY_S: Final = 0.1
"""Pause before accepting again when the process is out of file descriptors (as trio does)."""

QUIET_S: Final = 5.0
"""Accept failures this far apart are separate episodes (each logged); closer, they are one."""

OUT_OF_FDS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
"""accept() errors that mean "no resources right now", not "broken listener"."""


SEND_S: Final = WRITE_S + CLOSE_S
"""Deadline for one ASGI `send` of the app: a write (itself bounded by `WRITE_S`) and what
hypercorn does on the connection after it (close it, or restart the keep-alive timer), which
is immediate: the deadline is only a backstop, as no shield may be without one."""


def shield_sends(app: ASGIFramework) -> ASGIFramework:
    """The app, with each `send` of an HTTP response shielded from the app's own cancellation.

    hypercorn manages the connection from inside `send`: once the last body chunk is written,
    it closes the socket (`Connection: close`, HTTP/1.0) or restarts the keep-alive timer. It
    also delivers `http.disconnect` from inside that same `send`, and quart-trio cancels the
    request's nursery, the task that is inside `send` included, as soon as it receives it. So
    the close and the timer restart were cancelled and the connection stayed open until the
    client left (docs/http-connections.md has the trace). Shielded here, at the ASGI boundary,
    `send` finishes what the server started; the app sees its cancellation at its next
    checkpoint, after `send` returned."""

    async def shielded_app(
        scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def shielded_send(message: ASGISendEvent) -> None:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + SEND_S):
                await send(message)

        await app(scope, receive, shielded_send)

    return shielded_app


class _Shortage:
    """Running out of file descriptors, logged once per episode: one warning when accept()
    starts failing, one line when it works again. Failures less than `QUIET_S` apart are one
    episode: at the ceiling each closed connection lets one accept through before the next
    failure, and that must not become two lines per connection."""

    def __init__(self) -> None:
        self._log = logger.bind(actor="http")
        self._since: float | None = None
        self._last = 0.0
        self._failed = 0

    def failed(self, exc: OSError) -> None:
        now = trio.current_time()
        if self._since is None:
            self._since = now
            self._log.warning(
                "cannot accept HTTP connections: {reason}; retrying every {retry:g}s "
                "(one line when it works again)",
                reason=errno.errorcode.get(exc.errno or 0, str(exc.errno)),
                retry=ACCEPT_RETRY_S,
            )
        self._last = now
        self._failed += 1

    def accepted(self) -> None:
        now = trio.current_time()
        if self._since is not None and now - self._last >= QUIET_S:
            self._log.info(
                "accepting HTTP connections again after {s:.1f}s ({n} attempts failed)",
                s=self._last - self._since,
                n=self._failed,
            )
            self._since = None
            self._failed = 0


async def _accept_forever(
    listener: trio.SocketListener,
    slots: trio.Semaphore,
    handle: Callable[[trio.SocketStream], Awaitable[None]],
    connections: trio.Nursery,
) -> NoReturn:
    """Accept only while a slot is free; ride out a shortage of file descriptors."""
    shortage = _Shortage()
    while True:
        await slots.acquire()
        try:
            stream = await listener.accept()
        except OSError as exc:
            slots.release()
            if exc.errno not in OUT_OF_FDS:
                raise
            shortage.failed(exc)
            await trio.sleep(ACCEPT_RETRY_S)
            continue
        shortage.accepted()
        connections.start_soon(handle, stream)


async def serve_hypercorn(
    app: ASGIFramework,
    config: Config,
    *,
    max_connections: int,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on `config.bind` until `shutdown_trigger` returns, then drain; `started()`
    reports the bound addresses as hypercorn does (`http://host:port`). `OSError` if a bind
    fails."""
    slots = trio.Semaphore(max_connections)
    sockets = config.create_sockets().insecure_sockets
    try:
        listeners = []
        for sock in sockets:
            sock.listen(config.backlog)
            listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
        async with open_hypercorn_worker(shield_sends(app), config) as worker:

            async def handle(stream: trio.SocketStream) -> None:
                try:
                    await worker.serve_connection(stream)
                finally:
                    stream.socket.close()  # hypercorn's own close dies if cancelled (drain)
                    slots.release()

            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(
                            partial(_accept_forever, listener, slots, handle, connections)
                        )
                    task_status.started(
                        [f"http://{repr_socket_addr(s.family, s.getsockname())}" for s in sockets]
                    )
                    await shutdown_trigger()
                    accepting.cancel_scope.cancel()
                for listener in listeners:
                    listener.socket.close()  # new clients are refused while the drain runs
                await worker.close_idle_connections()
                connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
    finally:
        for sock in sockets:
            sock.close()
