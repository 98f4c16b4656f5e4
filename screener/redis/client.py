"""The Redis client the service's actors use: direct, or the master the Sentinels name.

A resource, not an actor. With REDIS_SENTINELS the client writes to the master the
Sentinels name and follows it when it moves (`MasterPool`). What is written with it, a
batch of events in one round trip, is screener/redis/batch.py.
"""

from __future__ import annotations

import time
from typing import Any, Final, NoReturn

import redis
from loguru import logger
from redis.backoff import NoBackoff
from redis.connection import SSLConnection, parse_url
from redis.retry import Retry
from redis.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
)

from screener.core.config import RedisSettings

REDIS_TIMEOUT_S: Final = 2.0
SENTINEL_TIMEOUT_S: Final = 1.0
"""Per Sentinel asked: an unreachable one costs this much before the next is tried."""
MASTER_CHECK_S: Final = 1.0
"""How often the master is confirmed with the Sentinels while writes succeed. After a
`SENTINEL FAILOVER` the old master keeps accepting writes (PUBLISH even as a replica) until
Sentinel reconfigures it, about 10 s later: without this check the events of those seconds
would go where the new master's subscribers never see them."""
MASTER_CHECK_FAILED_S: Final = 30.0
"""After a check no Sentinel answered: a hung Sentinel costs SENTINEL_TIMEOUT_S of the
write path each time it is asked, so while none answers the master is confirmed rarely
(writes to it go on meanwhile)."""
REDIS_ERRORS: Final[tuple[type[Exception], ...]] = (redis.RedisError, OSError)
"""What a failed link raises; anything else is a bug."""


def make_client(settings: RedisSettings, *, announce_moves: bool = True) -> redis.Redis:
    """Our own backoff does the retrying (and says so once); redis-py's silent internal
    retries would only delay the first warning. RESP2 keeps auth errors plain.
    `announce_moves`: log a Sentinel failover (the publisher's client does; a second client
    of the same process, the fleet's, would only repeat the line)."""
    if settings.sentinels:
        return _sentinel_client(settings, announce_moves)
    if settings.url:
        return redis.Redis.from_url(
            settings.url,
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
            protocol=2,
        )
    return redis.Redis(
        host=settings.host,
        port=settings.port,
        password=settings.password or None,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
        protocol=2,
    )


def _master_options(settings: RedisSettings) -> dict[str, Any]:
    """How to talk to the master: REDIS_URL's password, user, db and TLS options (its host
    and port are the Sentinels' to say), else REDIS_PASSWORD."""
    if not settings.url:
        return {"password": settings.password or None}
    options: dict[str, Any] = parse_url(settings.url)  # type: ignore[no-untyped-call]
    for name in ("host", "port"):
        options.pop(name, None)
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True  # SentinelConnectionPool picks its TLS connection from this
    return options


def _sentinel_client(settings: RedisSettings, announce_moves: bool) -> redis.Redis:
    common: dict[str, Any] = {"retry": Retry(NoBackoff(), 0), "protocol": 2}
    sentinel = _Sentinel(
        announce_moves,
        list(settings.sentinels),
        sentinel_kwargs={
            "socket_timeout": SENTINEL_TIMEOUT_S,
            "socket_connect_timeout": SENTINEL_TIMEOUT_S,
            "password": settings.sentinel_password or None,
            **common,
        },
    )
    client: redis.Redis = sentinel.master_for(
        settings.sentinel_master,
        connection_pool_class=MasterPool,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        **common,
        **_master_options(settings),
    )
    return client


class _Sentinel(Sentinel):
    """redis-py's Sentinel client, with two changes to `discover_master`. It says once when
    the master moved (the first address found is not news: the publisher's `redis up at`
    line names the group). And when no Sentinel names a master, the error says why for each
    in a few words: redis-py's own message quotes every client's settings, some 800
    characters per Sentinel, so the reason was cut off in the log and /health."""

    def __init__(self, announce_moves: bool, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.announce_moves = announce_moves
        self.master_seen: tuple[str, int] | None = None

    def discover_master(self, service_name: str) -> tuple[str, int]:
        address = self._ask(service_name)
        seen, self.master_seen = self.master_seen, address
        if self.announce_moves and seen is not None and seen != address:
            logger.bind(actor="redis").warning(
                "redis master {name} moved from {old} to {new} (Sentinel failover)",
                name=service_name,
                old=f"{seen[0]}:{seen[1]}",
                new=f"{address[0]}:{address[1]}",
            )
        return address

    def _ask(self, service_name: str) -> tuple[str, int]:
        """redis-py's loop: the first Sentinel naming a master that is up wins and is asked
        first next time."""
        why: list[str] = []
        for index, sentinel in enumerate(self.sentinels):
            where = "{host}:{port}".format_map(sentinel.connection_pool.connection_kwargs)
            try:
                masters: dict[str, dict[str, Any]] = sentinel.sentinel_masters()  # type: ignore[assignment]
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                why.append(f"{where}: {type(exc).__name__}: {exc}")
                continue
            state = masters.get(service_name)
            if not state:
                why.append(f"{where}: does not know {service_name!r}")
            elif not self.check_master_state(state, service_name):  # type: ignore[no-untyped-call]
                why.append(f"{where}: sees it down")
            else:
                self.sentinels[0], self.sentinels[index] = sentinel, self.sentinels[0]
                return str(state["ip"]), int(state["port"])
        raise MasterNotFoundError(f"no master {service_name!r} ({'; '.join(why)})")


class MasterPool(SentinelConnectionPool):
    """A Sentinel pool that also asks the Sentinels where the master is at most every
    `MASTER_CHECK_S` while writes succeed (redis-py asks only when it connects): when it
    moved, the idle connection is closed, and the write taken next connects to the new one.
    Sentinels that cannot answer do not stop writes to a master that still takes them (and
    are asked again only after `MASTER_CHECK_FAILED_S`).
    READONLY from a demoted master is redis-py's own business: it drops the connection and
    raises ConnectionError, so the publisher retries, and the retry asks the Sentinels."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.check_at = 0.0

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        self.check_master()
        return super().get_connection(*args, **kwargs)

    def check_due(self) -> bool:
        return time.monotonic() >= self.check_at

    def check_master(self) -> tuple[str, int] | None:
        """Where the Sentinels say the master is, when a check is due (None: not due, or no
        Sentinel answered; the connection attempt, if there is one, says why). Blocking: the
        publisher's socket link calls it from a thread."""
        now = time.monotonic()
        if now < self.check_at:
            return None
        self.check_at = now + MASTER_CHECK_S
        try:
            address: tuple[str, int] = self.get_master_address()  # type: ignore[no-untyped-call]
        except REDIS_ERRORS:
            self.check_at = now + MASTER_CHECK_FAILED_S
            return None
        return address

    def disconnect(self, inuse_connections: bool = True) -> None:
        """Closing the client closes the Sentinel links too (a failover only drops the idle
        master connections: `inuse_connections=False`)."""
        super().disconnect(inuse_connections)
        if inuse_connections:
            for sentinel in self.sentinel_manager.sentinels:
                sentinel.close()


def demoted(pool: SentinelConnectionPool) -> NoReturn:
    """READONLY from the master the Sentinels named: it has been demoted. As redis-py's own
    `read_response` does for a Sentinel connection, a broken link, not a refusal: the pool
    forgets the old master and the caller's retry asks the Sentinels for the new one. (Both
    ways of writing: `read_refusals` and the socket link.)"""
    pool.reset()  # type: ignore[no-untyped-call]
    raise redis.ConnectionError("The previous master is now a slave")
