"""The fleet's keys in Redis: the leader lease of each shard and each shard's ranking.

Synchronous redis-py calls, run in worker threads by the fleet actor. Each lease operation
is one Lua script, so every check and its writes are atomic in Redis: the lease is taken
only when free (`SET NX PX` semantics), extended only by its holder (compare-and-extend)
and deleted only by its holder (compare-and-delete). Before the lease, the script checks:

- the deadline: a request that reaches Redis after its sender's deadline (wall-clock ms,
  compared with Redis's `TIME`) changes nothing and answers "late": its sender has given
  up on it, and a lease extended by it would be held by a replica that does not know. A
  lease taken or extended ends one lease after the request was sent (wall clock), so a
  request delayed on its way extends it no further than its sender's own reckoning;
- the configuration: the fleet on this channel (and under this prefix) registered the same
  document (screener/fleet/agreement.py), else "config";
- the identity: no other live process registered this replica id, else "clash";
- the previous answer: a replica that did not hear its previous answer in time neither
  takes nor extends the lease (the lease is left to run out, so a replica whose answers
  come back late loses it in Redis as it does by its own clock).

Keys, under `FleetSettings.key` (`<FLEET_KEY_PREFIX>:fleet:<FLEET_SHARDS>:<shard>:...`):
`lease` (the holder's token, `<replica id>#<nonce>`, expiring after FLEET_LEASE_S), `term`
(incremented at every acquisition of a free lease), `last` (the token that last acquired it)
and `ranking` (the shard leader's ranking, expiring after a few rank intervals). Beside
them: `<FLEET_KEY_PREFIX>:fleet:replica:<FLEET_REPLICA_ID>` (the token of the live process
with that id, expiring after one lease), and the configuration, under
`screener:channel:<MARKET_DATA_CHANNEL>` and `<FLEET_KEY_PREFIX>:fleet:config` (expiring
after `CONFIG_TTL_LEASES` leases); each request refreshes what it registered.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, cast

import orjson
import redis

from screener.core.config import FleetSettings
from screener.core.models import Ranking
from screener.fleet.agreement import Agreement, clash, disagreement
from screener.fleet.shards import (
    Answer,
    Grant,
    Late,
    Refusal,
    decode_shard_ranking,
    encode_shard_ranking,
)

ACQUIRE_OR_RENEW: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now > tonumber(ARGV[3]) then
  return {'late', now}
end
local token = ARGV[1]
local function refuse(answer)
  if redis.call('GET', KEYS[1]) == token then
    redis.call('DEL', KEYS[1])
  end
  return answer
end
for i = 5, 6 do
  local doc = redis.call('GET', KEYS[i])
  if doc and doc ~= ARGV[5] then
    return refuse({'config', i == 5 and 'channel' or 'prefix', doc})
  end
end
local other = redis.call('GET', KEYS[4])
if other and other ~= token then
  return refuse({'clash', other})
end
redis.call('SET', KEYS[5], ARGV[5], 'PX', ARGV[6])
redis.call('SET', KEYS[6], ARGV[5], 'PX', ARGV[6])
redis.call('SET', KEYS[4], token, 'PX', ARGV[2])
local holder = redis.call('GET', KEYS[1])
local term = tonumber(redis.call('GET', KEYS[2]) or '0')
if ARGV[4] ~= '1' then
  return {'ok', holder or '', term, holder or '', 0}
end
local px = math.max(1, tonumber(ARGV[7]) - now)
if holder == token then
  redis.call('PEXPIRE', KEYS[1], px)
  return {'ok', holder, term, holder, 1}
end
if holder then
  return {'ok', holder, term, holder, 0}
end
local previous = redis.call('GET', KEYS[3])
redis.call('SET', KEYS[1], token, 'PX', px)
redis.call('SET', KEYS[3], token)
return {'ok', token, redis.call('INCR', KEYS[2]), previous or '', 1}
"""

RELEASE: Final = """
local released = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  released = redis.call('DEL', KEYS[1])
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
return released
"""

CONFIG_TTL_LEASES: Final = 3
"""The registered configuration outlives its last replica by this many leases: long enough
that a fleet briefly cut off from Redis finds its own registration on return, short
enough that a fleet stopped to be reconfigured restarts soon after."""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else ""


def replica_key(fleet: FleetSettings) -> str:
    return ":".join((fleet.key_prefix, "fleet", "replica", fleet.replica_id))


def config_key(fleet: FleetSettings) -> str:
    return ":".join((fleet.key_prefix, "fleet", "config"))


def acquire_or_renew(
    client: redis.Redis,
    fleet: FleetSettings,
    agreement: Agreement,
    *,
    token: str,
    sent_ms: int,
    deadline_ms: int,
    heard: bool,
) -> Answer:
    """Take the shard's lease if free, extend it if ours; either way say who holds it. Or:
    late (reached Redis after `deadline_ms`, Unix ms), or refused (see the module doc).
    A lease taken or extended ends one lease after `sent_ms` (Unix ms: when the request
    left), not after it arrived, as the sender's own validity counts from the sending."""
    keys = [
        *(fleet.key(fleet.shard, name) for name in ("lease", "term", "last")),
        replica_key(fleet),
        agreement.channel_key(),
        config_key(fleet),
    ]
    lease_ms = round(fleet.lease_s * 1000)
    argv: list[bytes | str | int] = [token, lease_ms, deadline_ms, int(heard)]
    argv += [agreement.document(), CONFIG_TTL_LEASES * lease_ms, sent_ms + lease_ms]
    answer = cast(list[object], client.eval(ACQUIRE_OR_RENEW, len(keys), *keys, *argv))
    kind = _text(answer[0])
    if kind == "late":
        return Late(int(cast(int, answer[1])))
    if kind == "config":
        where, stored = _text(answer[1]), cast(bytes, answer[2])
        return Refusal("config", disagreement(agreement, stored, where=where))
    if kind == "clash":
        return Refusal("replica_id", clash(fleet.replica_id, fleet.lease_s))
    holder, term, previous, renewed = answer[1:5]
    return Grant(
        holder=_text(holder),
        term=int(cast(int, term)),
        previous=_text(previous) or None,
        renewed=bool(renewed),
    )


def release(client: redis.Redis, fleet: FleetSettings, token: str) -> bool:
    """Give the lease and the replica id up on a clean shutdown, so a standby takes over at
    its next request instead of after the lease runs out, and a restarted process of the
    same id is not kept waiting. True when the lease was ours."""
    keys = [fleet.key(fleet.shard, "lease"), replica_key(fleet)]
    return bool(client.eval(RELEASE, len(keys), *keys, token))


RANKING_TTL_INTERVALS: Final = 3
"""A shard's ranking expires after this many rank intervals without a new one: long enough
to ride out one slow round, short enough that a dead shard is named within a minute."""


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
