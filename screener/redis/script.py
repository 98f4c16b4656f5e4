"""The publish script: every write of the publisher is one Lua script that Redis runs whole.

Why a script and not a pipeline of PUBLISHes: only Redis can tell, at the moment a write
runs, whether its writer still leads and whether its events went out already. So each slice
is one EVALSHA that

1. checks the writer's fence (`Fence`: the shard's lease key holds the writer's token and
   the term key its term), and does nothing else when it fails (answer `FENCED`): a deposed,
   frozen or partitioned leader's late write is refused by Redis, whenever it arrives;
2. per event, compares its push time with the newest push time already published for its
   symbol on this channel (`RedisSettings.published_key`, a hash): an event not newer is
   skipped, so a slice sent again after a timeout is never delivered twice, a standby that
   takes over sends what it held and only the pushes nobody published go out, and a
   symbol's events never go back in time;
3. records the new newest times (the script's first write: under Redis's memory limit or on
   a replica it fails before anything was published, answer `HELD`);
4. per closed candle, `SET <candle_key_prefix><symbol>:<open time> 1 NX PX <ttl>`: the key
   says that (symbol, minute) was published on the candles' channel, by any writer, so a
   candle sent again (a resend, a standby's takeover, a repair of a minute published live)
   is skipped; the first of these SETs is the script's first write when no record came
   before it, so it too fails (`HELD`) before anything was written;
5. PUBLISHes (and, by PUBLISH_MODE, XADDs) each event and candle that passed, and the
   ranking, if any, the same way.

The answer: `{"OK", published, skipped, ranking, candles_published, candles_skipped,
[message, target, error]...}` (`published`: events and ranking that went out; `skipped`:
events; `candles_skipped`: the message numbers of the candles skipped, so the caller knows
which; errors of single commands, such as WRONGTYPE on the stream key: those messages are
dropped), `{"FENCED", holder}` or `{"HELD", error}`. No script flags (Redis 6.2 runs it
too): Redis checks its memory limit at the first write of a script, which is why the record
and the candles' keys come before any PUBLISH.

The hash expires PUBLISHED_TTL_S after the last write: its times must outlive every resend
(REDIS_TIMEOUT_S, backoffs) and the standby's hold window (a few leases). A candle's key
lives as long as the writer says (the service: LOOKBACK_MIN plus ten minutes, longer than
any writer holds a candle). A limit, written down: an exchange whose push times go back
further than the newest published for a symbol sees those pushes skipped (counted) until
they pass it again.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final, NamedTuple

PUBLISHED_TTL_S: Final = 3600
"""How long the newest published push time per symbol is kept after the last write."""

CANDLE_TTL_S: Final = 1500
"""A candle key's lifetime when the writer names none (tests, tools): LOOKBACK_MIN's default
of 15 minutes, plus ten. The service passes its own (actors/publisher.py)."""

RANKING_FIELD: Final = b"#top_movers"
"""The ranking's entry in the hash (no symbol starts with '#'): a ranking is published once
per ranking time too."""

SOURCE: Final = """
if ARGV[1] ~= '' then
  local holder = redis.call('GET', KEYS[1])
  if holder ~= ARGV[1] or redis.call('GET', KEYS[2]) ~= ARGV[2] then
    return {'FENCED', holder}
  end
end
local newest, fields, messages = {}, {}, {}
local published, skipped, ranking = 0, 0, 0
local function admit(field, ts)
  local last = newest[field]
  if last == nil then
    last = tonumber(redis.call('HGET', KEYS[3], field) or '-1')
  end
  if ts <= last then return false end
  if newest[field] == nil then fields[#fields + 1] = field end
  newest[field] = ts
  return true
end
local n = tonumber(ARGV[7])
local i = 8
for index = 0, n - 1 do
  if admit(ARGV[i], tonumber(ARGV[i + 1])) then
    messages[#messages + 1] = {ARGV[6], ARGV[i + 2], index}
  else
    skipped = skipped + 1
  end
  i = i + 3
end
local candles_channel, prefix, candle_ttl = ARGV[i], ARGV[i + 1], ARGV[i + 2]
local m = tonumber(ARGV[i + 3])
local first_candle = i + 4
i = first_candle + 3 * m
local ranking_message = nil
if i <= #ARGV then
  ranking = 2
  if admit(ARGV[i + 1], tonumber(ARGV[i + 2])) then
    ranking = 1
    ranking_message = {ARGV[i], ARGV[i + 3], n + m}
  end
end
published = #messages + (ranking_message and 1 or 0)
if #fields > 0 then
  local record = {}
  for _, field in ipairs(fields) do
    record[#record + 1] = field
    record[#record + 1] = string.format('%d', newest[field])
  end
  local ok = redis.pcall('HSET', KEYS[3], unpack(record))
  if type(ok) == 'table' and ok.err then return {'HELD', ok.err} end
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
-- Redis refuses a script's write for its memory limit or on a replica (OOM, READONLY)
-- only at the script's first write, before anything was written; the record above, if
-- any, was that write and was accepted. So a candle's SET fails so only as the script's
-- first write: holding the slice then loses nothing and repeats nothing.
local candles_published, candles_skipped = 0, {}
for k = 0, m - 1 do
  local j = first_candle + 3 * k
  local set = redis.pcall(
    'SET', prefix .. ARGV[j] .. ':' .. ARGV[j + 1], '1', 'NX', 'PX', candle_ttl)
  if type(set) == 'table' and set.err then return {'HELD', set.err} end
  if set then
    candles_published = candles_published + 1
    messages[#messages + 1] = {candles_channel, ARGV[j + 2], n + k}
  else
    candles_skipped[#candles_skipped + 1] = n + k
  end
end
messages[#messages + 1] = ranking_message
local answer = {'OK', published, skipped, ranking, candles_published, candles_skipped}
local function note(r, msg, target)
  if type(r) == 'table' and r.err then
    answer[#answer + 1] = msg[3]
    answer[#answer + 1] = target
    answer[#answer + 1] = r.err
  end
end
local to_pubsub = string.find(ARGV[4], 'p', 1, true) ~= nil
local to_stream = string.find(ARGV[4], 's', 1, true) ~= nil
for _, msg in ipairs(messages) do
  if to_pubsub then note(redis.pcall('PUBLISH', msg[1], msg[2]), msg, 'p') end
  if to_stream then
    note(redis.pcall('XADD', msg[1], 'MAXLEN', '~', ARGV[5], '*', 'data', msg[2]), msg, 's')
  end
end
return answer
"""
# KEYS: the lease, the term, the published hash. ARGV: the token ('' : no fence), the term,
# the hash's TTL in ms, the targets ('p', 's' or 'ps'), the stream MAXLEN, the events'
# channel, their count n, n x (symbol, push time ms, document); the candles' channel, their
# key prefix, their keys' TTL in ms, their count m, m x (symbol, open time s, document);
# then optionally the ranking: its channel, field, time ms, document. Messages are numbered
# from 0: the events (0..n-1), the candles (n..n+m-1), then the ranking (n+m). `ranking` in
# the answer: 0 none sent, 1 published, 2 skipped.

SHA: Final = hashlib.sha1(SOURCE.encode()).hexdigest().encode()


class Answer(NamedTuple):
    """What the script did with a slice."""

    status: str  # "OK", "FENCED" or "HELD"
    published: int = 0  # events and ranking that went out (not skipped)
    skipped: int = 0  # events already published before (by this or another writer)
    ranking_skipped: bool = False
    refusals: tuple[tuple[int, str, str], ...] = ()  # (message, "p" or "s", Redis's words)
    why: str | None = None  # FENCED: the lease's holder (None: nobody); HELD: Redis's words
    candles_published: int = 0  # candles that went out (their keys were new)
    candles_skipped: tuple[int, ...] = ()  # the message numbers of candles published before


def read_answer(reply: object) -> Answer:
    """The script's reply as hiredis parsed it; raises ValueError on any other shape (a
    script of another version under the same SHA cannot exist, so that is a broken link)."""
    if not isinstance(reply, list) or not reply or not isinstance(reply[0], bytes):
        raise ValueError(f"unexpected reply to the publish script: {reply!r:.200}")
    status = reply[0].decode()
    if status == "OK" and len(reply) >= 6 and isinstance(reply[5], list):
        rest = reply[6:]
        refusals = tuple(
            (int(rest[k]), rest[k + 1].decode(), _text(rest[k + 2]) or "")
            for k in range(0, len(rest) - 2, 3)
        )
        return Answer(
            status,
            int(reply[1]),
            int(reply[2]),
            reply[3] == 2,
            refusals,
            candles_published=int(reply[4]),
            candles_skipped=tuple(map(int, reply[5])),
        )
    if status in ("FENCED", "HELD"):
        return Answer(status, why=_text(reply[1]) if len(reply) > 1 else None)
    raise ValueError(f"unexpected reply to the publish script: {reply!r:.200}")


_SCRIPT_PLACE: Final = re.compile(r"^@user_script: ?\d+: ?-?")
"""Redis 6.2 names the script's line before some errors ("@user_script: 43: -OOM ..."):
the code that decides what becomes of a message must come first."""


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return _SCRIPT_PLACE.sub("", value.decode(errors="replace")).strip()
    return None
