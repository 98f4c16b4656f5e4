"""Redis as the publisher uses it: the client, and one batch written in one round trip.

A resource, not an actor: `publish_batch` is synchronous (redis-py) and runs in a worker
thread of the publisher actor, the one place that talks to Redis.
"""

from __future__ import annotations

from typing import Final, NamedTuple

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from screener.config import RedisSettings
from screener.models import MarketData, Ranking

REDIS_TIMEOUT_S: Final = 2.0
REDIS_ERRORS: Final[tuple[type[Exception], ...]] = (redis.RedisError, OSError)
"""What a failed link raises; anything else is a bug."""


def make_client(settings: RedisSettings) -> redis.Redis:
    """Our own backoff does the retrying (and says so once); redis-py's silent internal
    retries would only delay the first warning. RESP2 keeps auth errors plain."""
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


def encode_event(event: MarketData) -> bytes:
    return orjson.dumps(event.as_dict())


class BatchResult(NamedTuple):
    unencodable: int
    refused: int
    refusal: str | None  # the first refusal's text, for the log


def _resp(*parts: bytes) -> bytes:
    """One command in the Redis protocol (RESP): an array of bulk strings."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def packed_commands(settings: RedisSettings, messages: list[tuple[str, bytes]]) -> list[bytes]:
    """PUBLISH (and XADD) commands for a batch, packed here rather than by redis-py's
    general-purpose packer, which cost a tenth of the service's CPU under load."""
    commands: list[bytes] = []
    if settings.to_pubsub:
        heads: dict[str, bytes] = {}
        for channel, payload in messages:
            head = heads.get(channel)
            if head is None:
                name = channel.encode()
                head = heads[channel] = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n" % (len(name), name)
            commands.append(b"%s$%d\r\n%s\r\n" % (head, len(payload), payload))
    if settings.to_stream:
        cap = b"%d" % settings.stream_maxlen
        for channel, payload in messages:
            commands.append(
                _resp(b"XADD", channel.encode(), b"MAXLEN", b"~", cap, b"*", b"data", payload)
            )
    return commands


def publish_batch(
    client: redis.Redis,
    settings: RedisSettings,
    events: list[MarketData],
    ranking: Ranking | None,
) -> BatchResult:
    """Runs in a worker thread: serialize and send the whole batch in one round trip.

    Events that cannot be serialized and commands Redis refuses are counted and skipped:
    one bad record must not block, or crash, the rest."""
    messages: list[tuple[str, bytes]] = []
    unencodable = 0
    channel = settings.market_data_channel
    for event in events:
        try:
            messages.append((channel, encode_event(event)))
        except orjson.JSONEncodeError:
            unencodable += 1
    if ranking is not None:
        messages.append((settings.top_movers_channel, orjson.dumps(ranking.as_dict())))
    commands = packed_commands(settings, messages)
    if not commands:
        return BatchResult(unencodable, 0, None)
    pool = client.connection_pool
    conn = pool.get_connection()
    refused: list[str] = []
    try:
        conn.send_packed_command([b"".join(commands)])  # type: ignore[no-untyped-call]
        for _ in commands:
            try:
                conn.read_response()
            except redis.ResponseError as exc:  # one command refused (e.g. WRONGTYPE), not
                refused.append(str(exc))  # the link: retrying it would loop forever
    except BaseException:
        conn.disconnect()  # type: ignore[no-untyped-call]  # a half-read reply stream is useless
        raise
    finally:
        pool.release(conn)
    return BatchResult(unencodable, len(refused), refused[0] if refused else None)
