"""Hypercorn's trio worker with two changes: connections close when they should, and at most
`max_connections` are open at once.

Why not `hypercorn.trio.serve`: (1) hypercorn closes a finished connection (and restarts its
keep-alive timer) from `TCPServer.protocol_send`, which runs in the ASGI app's task, and
quart-trio cancels that task as soon as the response is complete, so the close and the timer
restart are cancelled and the socket stays open until the client leaves (docs/http-connections.md
has the trace); `_ClosingTCPServer` runs that method shielded, under a short deadline.
(2) `trio.serve_listeners` accepts without limit and logs every failed accept with a
traceback; here a slot is taken before `accept()`, so connections beyond the cap wait in the
listen backlog, and running out of file descriptors is logged once per episode. (3) hypercorn
shields each write without a deadline, so a client that stops reading holds its connection,
and shutdown, forever; here a write it takes nothing of for `WRITE_S` ends the connection.

This builds on hypercorn internals (`TCPServer`, `Lifespan`, `WorkerContext`): the versions it
was tested on are pinned in pyproject.toml, and tests/system/test_http_connections.py fails if
an upgrade changes the behaviour. Plain HTTP only (no TLS, no QUIC): the service needs no more.
Once `shutdown_trigger` returns: stop accepting, close the listening sockets, close idle
connections, let requests in flight finish within `config.graceful_timeout`, then return.
Cancelled, everything stops at once (every accepted socket is closed on the way out).
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final, NoReturn, cast

import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ASGIFramework, ConnectionState, LifespanState
from hypercorn.utils import repr_socket_addr, wrap_app
from loguru import logger

CLOSE_S: Final = 2.0
"""Deadline for what hypercorn does on a connection once a response is complete (close the
socket, or restart the keep-alive timer): both are immediate, so 2 s is only a backstop."""

WRITE_S: Final = 2.0
"""Deadline for one write to a client. hypercorn shields its writes (the ASGI app's task is
cancelled once a response is complete, and a write must not be cut) without a deadline, so a
client that stops reading, once the kernel's buffers are full, would hold its connection and
shutdown forever: a live page stream does exactly that when a laptop sleeps. A client that
takes not one byte more for 2 s while megabytes wait in the buffers is gone; a slow but live
one frees room continuously, so a small write completes."""

ACCEPT_RETRY_S: Final = 0.1
"""Pause before accepting again when the process is out of file descriptors (as trio does)."""

QUIET_S: Final = 5.0
"""Accept failures this far apart are separate episodes (each logged); closer, they are one."""

OUT_OF_FDS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
"""accept() errors that mean "no resources right now", not "broken listener"."""


class _ClosingTCPServer(TCPServer):
    """One HTTP connection, whose connection management survives the app's cancellation."""

    async def protocol_send(self, event: Event) -> None:
        # Called from the ASGI app's task, which quart-trio cancels once the response is
        # complete: shielded, the close (`Closed`) and the keep-alive timer's restart
        # (`Updated(idle=True)`) happen. Writes (`RawData`) are shielded too, within WRITE_S.
        if isinstance(event, RawData):
            await self._write(event.data)
            return
        with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_S):
            await super().protocol_send(event)

    async def _write(self, data: bytes) -> None:
        """hypercorn's write, shielded as there, but a client that takes nothing for `WRITE_S`
        loses its connection, as one that went away does."""
        async with self.send_lock:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + WRITE_S):
                try:
                    await self.stream.send_all(data)
                    return
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_S):
                await self.stream.aclose()  # a cut write leaves the stream unusable
                await self.protocol.handle(Closed())

    async def _read_data(self) -> None:
        # Reading ends when the client has gone (EOF, reset). The connection's task group
        # then waits for its tasks, the keep-alive timer included: stopped here, the socket
        # and its slot are released at once instead of at the end of the keep-alive timeout.
        await super()._read_data()
        await self.idle_task.stop()


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
    wrapped: AppWrapper = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    state = ConnectionState(lifespan_state.copy())
    slots = trio.Semaphore(max_connections)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            # hypercorn annotates the stream as SSLStream but serves plain SocketStreams too.
            await _ClosingTCPServer(
                wrapped, config, context, state, cast(trio.SSLStream[trio.SocketStream], stream)
            ).run()
        finally:
            stream.socket.close()  # hypercorn's own close dies if cancelled (drain deadline)
            slots.release()

    sockets = config.create_sockets().insecure_sockets
    try:
        listeners = []
        for sock in sockets:
            sock.listen(config.backlog)
            listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
        async with trio.open_nursery() as lifespan_nursery:
            await lifespan_nursery.start(lifespan.handle_lifespan)
            await lifespan.wait_for_startup()
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
                await context.terminated.set()  # idle keep-alive connections close now
                connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
            await lifespan.wait_for_shutdown()
            lifespan_nursery.cancel_scope.cancel()
    finally:
        for sock in sockets:
            sock.close()
