"""How the publisher's link reaches Redis: its own trio stream, opened from the settings
redis-py's client was built with.

The client's pool states them once (`connection_kwargs`, `connection_class`: REDIS_URL's
host, port, unix path, user, password, db and `ssl_*` options, or REDIS_HOST/PORT/PASSWORD,
or the Sentinel master's options), so the link and the control path cannot disagree. Opening
is TCP (`trio.open_tcp_stream`) or a Unix socket, TLS through `trio.SSLStream` with a context
built as redis-py builds its own, then AUTH and SELECT as RESP commands. Under Sentinel the
master's address comes from redis-py's public Sentinel API in a thread. Errors are raised as
redis-py's (ConnectionError, TimeoutError, AuthenticationError), never with a secret in them.
A resource of the publisher actor, not an actor.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any, Final

import hiredis
import redis
import trio
from redis.connection import SSLConnection, UnixDomainSocketConnection

from screener.redis.client import REDIS_TIMEOUT_S, MasterPool

_CERT_REQS: Final = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


@dataclass(frozen=True)
class Endpoint:
    """Where and how to open a link; `host`/`port` are empty under Sentinel (asked each
    time a link opens)."""

    host: str = ""
    port: int = 6379
    path: str = ""  # a Unix socket's, else empty
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    tls: ssl.SSLContext | None = None

    def address(self, master: tuple[str, int] | None = None) -> str:
        if self.path:
            return self.path
        host, port = master or (self.host, self.port)
        return f"{host}:{port}"


def endpoint_of(pool: redis.ConnectionPool) -> Endpoint:
    """The endpoint of the client whose pool this is (direct or a Sentinel `MasterPool`)."""
    options: dict[str, Any] = pool.connection_kwargs
    tls = issubclass(pool.connection_class, SSLConnection) or bool(options.get("ssl"))
    return Endpoint(
        host=str(options.get("host") or ""),
        port=int(options.get("port") or 6379),
        path=str(options.get("path") or "")
        if issubclass(pool.connection_class, UnixDomainSocketConnection)
        else "",
        username=options.get("username"),
        password=options.get("password"),
        db=int(options.get("db") or 0),
        tls=tls_context(options) if tls else None,
    )


def tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    """The context redis-py's SSLConnection would use for these `ssl_*` options."""
    if options.get("ssl_validate_ocsp") or options.get("ssl_validate_ocsp_stapled"):
        raise redis.ConnectionError("OCSP validation (ssl_validate_ocsp) is not supported")
    reqs = options.get("ssl_cert_reqs", "required")
    if isinstance(reqs, str):
        if reqs not in _CERT_REQS:
            raise redis.ConnectionError(f"Invalid SSL Certificate Requirements Flag: {reqs}")
        reqs = _CERT_REQS[reqs]
    elif reqs is None:
        reqs = ssl.CERT_NONE
    context = ssl.create_default_context()
    context.check_hostname = bool(options.get("ssl_check_hostname", True)) and (
        reqs != ssl.CERT_NONE
    )
    context.verify_mode = reqs
    for flag in options.get("ssl_include_verify_flags") or ():
        context.verify_flags |= flag
    for flag in options.get("ssl_exclude_verify_flags") or ():
        context.verify_flags &= ~flag
    certfile, keyfile = options.get("ssl_certfile"), options.get("ssl_keyfile")
    if certfile:
        context.load_cert_chain(certfile, keyfile, password=options.get("ssl_password"))
    ca = (options.get("ssl_ca_certs"), options.get("ssl_ca_path"), options.get("ssl_ca_data"))
    if any(x is not None for x in ca):
        context.load_verify_locations(cafile=ca[0], capath=ca[1], cadata=ca[2])
    if options.get("ssl_min_version") is not None:
        context.minimum_version = options["ssl_min_version"]
    if options.get("ssl_ciphers"):
        context.set_ciphers(options["ssl_ciphers"])
    return context


async def master_address(masters: MasterPool) -> tuple[str, int]:
    """The master the Sentinels name now (redis-py's `Sentinel.discover_master`, blocking:
    in a thread, abandoned on cancel so a final flush never outlives its deadline)."""
    address: tuple[str, int] = await trio.to_thread.run_sync(
        masters.sentinel_manager.discover_master,
        masters.service_name,
        abandon_on_cancel=True,
    )
    return address


async def open_stream(endpoint: Endpoint, master: tuple[str, int] | None = None) -> trio.abc.Stream:
    """A connected, authenticated stream on the right db, within REDIS_TIMEOUT_S."""
    where = endpoint.address(master)
    with trio.move_on_after(REDIS_TIMEOUT_S) as late:
        stream = await _connect(endpoint, master, where)
        try:
            await _hello(stream, endpoint)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return stream
    assert late.cancelled_caught
    raise redis.TimeoutError(f"Timeout connecting to {where}")


async def _connect(
    endpoint: Endpoint, master: tuple[str, int] | None, where: str
) -> trio.abc.Stream:
    try:
        if endpoint.path:
            return await trio.open_unix_socket(endpoint.path)
        host, port = master or (endpoint.host, endpoint.port)
        tcp = await trio.open_tcp_stream(host, port)
        if endpoint.tls is None:
            return tcp
        tls = trio.SSLStream(tcp, endpoint.tls, server_hostname=host)
        try:
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(tls)
            raise
        return tls
    except (OSError, trio.BrokenResourceError) as exc:
        raise redis.ConnectionError(f"Error connecting to {where}: {_why(exc)}") from None


def _why(exc: BaseException) -> str:
    """The root cause in a few words: trio wraps it (all attempts failed; TLS broken)."""
    while exc.__cause__ is not None and not (isinstance(exc, OSError) and exc.strerror):
        exc = exc.__cause__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _command(*parts: str | bytes) -> bytes:
    encoded = [p.encode() if isinstance(p, str) else p for p in parts]
    return b"*%d\r\n" % len(encoded) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in encoded)


async def _hello(stream: trio.abc.Stream, endpoint: Endpoint) -> None:
    """AUTH (when a password is set) and SELECT (when the db is not 0), pipelined. An AUTH
    refused raises AuthenticationError in Redis's words (which never repeat the password)."""
    commands: list[tuple[str, bytes]] = []
    if endpoint.password is not None:
        auth = (endpoint.username, endpoint.password) if endpoint.username else (endpoint.password,)
        commands.append(("AUTH", _command("AUTH", *auth)))
    if endpoint.db:
        commands.append(("SELECT", _command("SELECT", str(endpoint.db))))
    if not commands:
        return
    await stream.send_all(b"".join(command for _, command in commands))
    reader = hiredis.Reader()
    for name, _ in commands:
        reply = reader.gets()
        while reply is False:
            data = await stream.receive_some(4096)
            if not data:
                raise redis.ConnectionError("Connection closed by server.")
            reader.feed(bytes(data) if isinstance(data, bytearray) else data)
            reply = reader.gets()
        if isinstance(reply, hiredis.ReplyError):
            words = str(reply)
            if name == "AUTH":
                code, _, rest = words.partition(" ")
                raise redis.AuthenticationError(rest if code == "WRONGPASS" else words)
            raise redis.ResponseError(words)
