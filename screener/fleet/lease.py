"""The fleet's keys in Redis: the leader lease of each shard and each shard's ranking.

Synchronous redis-py calls, run in worker threads by the fleet actor. Each lease operation
is one Lua script, so a check and its write are atomic in Redis: the lease is taken only
when free (`SET NX PX` semantics), extended only by its holder (compare-and-extend) and
deleted only by its holder (compare-and-delete).

Keys, under `FleetSettings.key` (`<FLEET_KEY_PREFIX>:fleet:<FLEET_SHARDS>:<shard>:...`):
`lease` (the holder's replica id, expiring after FLEET_LEASE_S), `term` (incremented at every
acquisition of a free lease), `last` (the last replica that acquired it) and `ranking` (the
shard leader's ranking, expiring after a few rank intervals).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, cast

import orjson
import redis

from screener.core.config import FleetSettings
from screener.core.models import Ranking
from screener.fleet.shards import Grant, decode_shard_ranking, encode_shard_ranking

ACQUIRE_OR_RENEW: Final = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {holder, tonumber(redis.call('GET', KEYS[2]) or '0'), holder}
end
if holder then
  return {holder, tonumber(redis.call('GET', KEYS[2]) or '0'), holder}
end
local previous = redis.call('GET', KEYS[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[3], ARGV[1])
return {ARGV[1], redis.call('INCR', KEYS[2]), previous}
"""

RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

RANKING_TTL_INTERVALS: Final = 3
"""A shard's ranking expires after this many rank intervals without a new one: long enough
to ride out one slow round, short enough that a dead shard is named within a minute."""


def _text(value: object) -> str | None:
    return value.decode() if isinstance(value, bytes) else None


def acquire_or_renew(client: redis.Redis, fleet: FleetSettings) -> Grant:
    """Take the shard's lease if free, extend it if ours; either way say who holds it."""
    keys = [fleet.key(fleet.shard, name) for name in ("lease", "term", "last")]
    answer = client.eval(ACQUIRE_OR_RENEW, 3, *keys, fleet.replica_id, round(fleet.lease_s * 1000))
    holder, term, *rest = cast(list[object], answer)
    return Grant(
        holder=_text(holder) or "",
        term=int(cast(int, term)),
        previous=_text(rest[0]) if rest else None,
    )


def release(client: redis.Redis, fleet: FleetSettings) -> bool:
    """Give the lease up on a clean shutdown, so a standby takes over at its next renewal
    instead of after the lease runs out. True when it was ours."""
    key = fleet.key(fleet.shard, "lease")
    return bool(client.eval(RELEASE, 1, key, fleet.replica_id))


def write_shard_ranking(
    client: redis.Redis, fleet: FleetSettings, ranking: Ranking, ttl_s: float
) -> None:
    doc = orjson.dumps(encode_shard_ranking(ranking, fleet.shard))
    client.set(fleet.key(fleet.shard, "ranking"), doc, px=max(1, round(ttl_s * 1000)))


def read_shard_rankings(client: redis.Redis, fleet: FleetSettings) -> Mapping[int, Ranking]:
    """Every shard's ranking still in Redis. One that does not decode is left out, as if
    missing (the merge names it), rather than failing the others."""
    keys = [fleet.key(i, "ranking") for i in range(fleet.shards)]
    found: dict[int, Ranking] = {}
    for shard, raw in enumerate(cast(list[bytes | None], client.mget(keys))):
        if raw is None:
            continue
        try:
            found[shard] = decode_shard_ranking(orjson.loads(raw))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return found
