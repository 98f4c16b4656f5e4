"""HTTP connections end when HTTP says so, and there are never more than HTTP_MAX_CONNECTIONS.

Real sockets and real hypercorn (real time): raw requests on loopback and the bytes that come
back, EOF included. The last two tests run the service as a process under a low file
descriptor limit, because running out of descriptors is a property of a process.

Hypercorn's trio worker under quart-trio never closed a finished connection (the close ran in
the app's task, which quart-trio cancels once the response is complete): these tests fail if
a dependency upgrade brings that back (docs/http-connections.md).
"""

from __future__ import annotations

import resource
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from quart import Response
from quart_trio import QuartTrio

from devtools.devredis import RedisServer, free_port
from devtools.simulator import FakeExchange, SimConfig
from screener.core.metrics import Metrics
from screener.core.snapshot import Views
from screener.http.routes import create_app, serve_http
from screener.http.server import ACCEPT_RETRY_S, QUIET_S
from tests.system.service_harness import Subscriber, eventually, simulator
from tests.system.test_process import ROOT, env_for

GET = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
PROBE = b"GET /probe HTTP/1.1\r\nHost: x\r\n\r\n"


class Probe:
    """An app with one more route that counts its calls: what reached a handler."""

    def __init__(self) -> None:
        self.calls = 0
        self.app: QuartTrio = create_app(Views.empty(), Metrics(), stale_after_s=60)
        self.app.get("/probe")(self._probe)

    async def _probe(self) -> Response:
        self.calls += 1
        return Response("probe", status=200)


@asynccontextmanager
async def serving(app: QuartTrio, **options: float) -> AsyncIterator[int]:
    """`serve_http` on a loopback port for the length of the block."""
    async with trio.open_nursery() as nursery:
        yield await nursery.start(partial(serve_http, app, "127.0.0.1", 0, **options))
        nursery.cancel_scope.cancel()


async def read_until_eof(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes (the caller's ceiling bounds the wait)."""
    answer = b""
    while chunk := await stream.receive_some():
        answer += chunk
    return answer


async def read_response(stream: trio.SocketStream) -> bytes:
    """One response with a Content-Length body (what every route here answers)."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += await stream.receive_some()
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += await stream.receive_some()
    return answer


# --- closing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", id="close"),
        pytest.param(b"GET /health HTTP/1.0\r\n\r\n", id="http-1.0"),
    ],
)
async def test_server_closes_after_the_response_when_asked(request_bytes: bytes) -> None:
    # A keep-alive timeout far beyond the ceiling: only the close after the response can end it.
    async with serving(Probe().app, keep_alive_s=600) as port:
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(request_bytes)
            answer = await read_until_eof(stream)
            await stream.aclose()
    assert answer.startswith(b"HTTP/1.1 503 ")  # /health of an empty service: stale
    assert answer.count(b"HTTP/1.1") == 1


async def test_idle_keep_alive_connection_is_closed_after_the_timeout() -> None:
    """Kept alive after a response, closed once idle for the keep-alive timeout, not before."""
    async with serving(Probe().app, keep_alive_s=0.5) as port:
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(GET)
            await read_response(stream)
            asked = trio.current_time()
            await stream.send_all(GET)  # kept alive: a second request on the same socket
            await read_response(stream)
            assert await read_until_eof(stream) == b""
            open_for = trio.current_time() - asked  # the timer starts after the response
            await stream.aclose()
    assert open_for >= 0.5


@pytest.mark.parametrize(
    ("headers", "closes", "probe_calls"),
    [
        # RFC 9112 6.3: answer it (framed by Transfer-Encoding), then close.
        pytest.param(b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", True, 0, id="CL+TE"),
        # The same pipeline without the ambiguity: the probe behind it runs (the test can see it).
        pytest.param(b"Transfer-Encoding: chunked\r\n", False, 1, id="TE-only"),
    ],
)
async def test_ambiguous_request_is_answered_then_closed_and_nothing_behind_it_runs(
    headers: bytes, closes: bool, probe_calls: int
) -> None:
    probe = Probe()
    first = b"GET /health HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n0\r\n\r\n"
    async with serving(probe.app, keep_alive_s=600) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(first + PROBE)
        with trio.fail_after(5):
            if closes:
                answer = await read_until_eof(stream)
            else:  # both answered, the probe last
                answer = b""
                while not answer.endswith(b"probe"):
                    answer += await stream.receive_some()
        await stream.aclose()
    if closes:
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert b"\r\nconnection: close\r\n" in answer.lower()
        assert answer.count(b"HTTP/1.1") == 1  # the pipelined request got no answer
    assert probe.calls == probe_calls


async def test_cancelled_server_closes_every_connection() -> None:
    """Cancelled (past the drain deadline, or the whole service), each connection's socket is
    closed on the way out rather than left to the garbage collector."""
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(serve_http, Probe().app, "127.0.0.1", 0))
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(GET)
            await read_response(stream)
            nursery.cancel_scope.cancel()
        assert await read_until_eof(stream) == b""
        await stream.aclose()


# --- the cap ----------------------------------------------------------------------------------


def accept_queue(port: int) -> int:
    """Connections the kernel completed on the listening socket that nobody accepted yet
    (for a LISTEN socket, /proc/net/tcp's rx_queue is the accept queue's length)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, queues = fields[1], fields[3], fields[4]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            return int(queues.split(":")[1], 16)
    raise AssertionError(f"no listening socket on port {port}")


async def test_connections_beyond_the_cap_wait_in_the_backlog() -> None:
    cap, extra = 4, 3
    async with serving(Probe().app, max_connections=cap, keep_alive_s=600) as port:
        with trio.fail_after(10):
            clients = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(cap + extra)]
            for client in clients:
                await client.send_all(GET)
            for client in clients[:cap]:  # accepted in arrival order
                await read_response(client)
            await eventually(lambda: accept_queue(port) == extra, what="the rest queued")
            for client in clients[cap:]:  # connected, not accepted: no answer
                with trio.move_on_after(0.2):
                    assert await client.receive_some() == b"", "answered beyond the cap"
            await clients[0].aclose()  # one leaves: the next one is served
            await read_response(clients[cap])
            await eventually(lambda: accept_queue(port) == extra - 1, what="one accepted")
            for client in clients[1:]:
                await client.aclose()


# --- the service as a process, short of file descriptors --------------------------------------


FD_LIMIT = 128
"""Below what a few hundred HTTP clients would take, above what the service itself needs."""
IDLE_CLIENTS = 250
CAP = 64
"""HTTP_MAX_CONNECTIONS for the feed test: with the service's own descriptors, under FD_LIMIT."""


def limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


async def health_status(port: int) -> int | None:
    """/health's status on a fresh connection (no pooled one holding a slot); None if the
    connection fails. No timeout of its own: callers set the ceiling."""
    try:
        async with httpx.AsyncClient(timeout=None) as http:
            return (await http.get(f"http://127.0.0.1:{port}/health")).status_code
    except httpx.TransportError:
        return None


def lines_with(log: Path, text: str) -> int:
    return sum(text in line for line in log.read_text().splitlines())


@asynccontextmanager
async def service_process(
    tmp_path: Path, redis_port: int, **env: str
) -> AsyncIterator[tuple[FakeExchange, int, Path]]:
    """`python -m screener` under FD_LIMIT against the simulator, feed up; its log in a file
    (a pipe nobody reads could fill up and stall it). Stopped with SIGTERM afterwards."""
    http_port = free_port()
    log = tmp_path / "service.log"
    async with simulator(SimConfig(symbols=20, rate_per_s=100)) as (ex, sim):
        with log.open("wb") as sink:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "screener"],
                cwd=ROOT,
                stdout=sink,
                stderr=sink,
                env=env_for(sim, redis_port, http_port, BACKFILL="off", **env),
                preexec_fn=limit_fds,
            )
            try:
                with trio.fail_after(20):
                    while await health_status(http_port) != 200:  # noqa: ASYNC110 - a process
                        await trio.sleep(0.05)
                await eventually(lambda: ex.connections == 1, what="the feed connected")
                yield ex, http_port, log
                proc.send_signal(signal.SIGTERM)
                with trio.fail_after(10):
                    assert await proc.wait() == 0, log.read_text()[-3000:]
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()


@asynccontextmanager
async def idle_clients(port: int, count: int) -> AsyncIterator[list[int]]:
    """`count` clients that each send one request and then hold their connection; yields the
    list that counts answered clients (one entry per answer)."""
    answered: list[int] = []

    async def client() -> None:
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(GET)
                if await stream.receive_some():
                    answered.append(1)
                await trio.sleep_forever()
        except (OSError, trio.BrokenResourceError):
            return  # turned away or reset: what the service does with it is the test's subject

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(client)
        yield answered
        nursery.cancel_scope.cancel()


async def test_idle_http_clients_cannot_starve_the_feed(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Fault 1 end to end: hundreds of idle HTTP clients, then the exchange drops the feed.
    Before the fix every client kept a descriptor, accept() failed with EMFILE hundreds of
    times and the WebSocket could not reconnect."""
    sub = Subscriber(redis_server.port, "market_data")
    try:
        async with (
            service_process(tmp_path, redis_server.port, HTTP_MAX_CONNECTIONS=str(CAP)) as (
                ex,
                port,
                log,
            ),
            idle_clients(port, IDLE_CLIENTS) as answered,
        ):
            await eventually(lambda: len(answered) >= CAP, what="HTTP served to the cap")
            assert len(answered) == CAP  # the rest wait: no slot frees before KEEP_ALIVE_S
            connects = ex.connects_total
            await ex.drop_all()
            await eventually(
                lambda: ex.connects_total > connects and ex.connections == 1,
                within_s=15,
                what="the feed reconnected",
            )
            seen = len(sub.get("market_data"))
            await eventually(
                lambda: len(sub.get("market_data")) > seen + 20, what="pushes flow again"
            )
            # /health queues behind the idle clients, each holding a slot for KEEP_ALIVE_S.
            with trio.fail_after(60):
                assert await health_status(port) == 200
    finally:
        sub.close()
    assert lines_with(log, "EMFILE") <= 2


async def test_running_out_of_descriptors_is_logged_once_and_survived(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A cap set above what the process may open: accept() fails with EMFILE until the clients
    leave (and the server has accepted and closed what they left in the backlog, failing
    again on the way). One warning, one line once accepting works again, no crash."""
    async with service_process(tmp_path, redis_server.port, HTTP_MAX_CONNECTIONS="1000") as (
        _,
        port,
        log,
    ):
        async with idle_clients(port, IDLE_CLIENTS):
            await eventually(
                lambda: lines_with(log, "EMFILE") > 0, what="the process ran out of descriptors"
            )
            await trio.sleep(10 * ACCEPT_RETRY_S)  # ten retries: one line, not ten
            assert lines_with(log, "EMFILE") == 1, log.read_text()[-3000:]
        # The end is logged at the first accept QUIET_S after the last failure.
        with trio.fail_after(QUIET_S + 30):
            while not lines_with(log, "accepting HTTP connections again"):
                assert await health_status(port) == 200
                await trio.sleep(0.2)
    assert lines_with(log, "cannot accept HTTP connections: EMFILE") == 1
    assert lines_with(log, "accepting HTTP connections again") == 1
