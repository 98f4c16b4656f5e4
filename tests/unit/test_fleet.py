"""The fleet's pure rules: shard assignment, what a lease answer allows, the tokens, the
lines that say why a replica is refused, the ranking merge."""

from __future__ import annotations

import random
import string

import orjson
import pytest

from actors.ranking import rank
from screener.core.config import load_settings
from screener.core.models import FeedStatus, FleetStatus, RedisStatus, SymbolStat, UniverseStatus
from screener.core.snapshot import Views
from screener.fleet.agreement import Agreement, clash, disagreement
from screener.fleet.shards import (
    FENCE_MARGIN,
    Grant,
    Lease,
    Refusal,
    decode_shard_ranking,
    encode_shard_ranking,
    merge_rankings,
    new_token,
    replica_of,
    shard_of,
)
from screener.http.health import health_report

SYMBOLS = [f"{a}{b}{c}_USDT" for a in "ABCDEFGH" for b in "XYZW" for c in string.ascii_uppercase]


def test_shard_of_is_pinned() -> None:
    """BLAKE2b depends on neither the process's hash seed nor the Python version, so every
    replica, restarted or upgraded, agrees; changing the hash would reshuffle every running
    fleet, so these values must never change."""
    assert [shard_of(s, 3) for s in ("BTC_USDT", "ETH_USDT", "SOL_USDT", "XRP_USDT")] == [
        2,
        2,
        1,
        0,
    ]
    assert [shard_of(s, 4) for s in ("BTC_USDT", "ETH_USDT", "SOL_USDT", "DOGE_USDT")] == [
        2,
        2,
        1,
        1,
    ]


def test_one_shard_holds_everything_and_more_split_evenly() -> None:
    assert {shard_of(s, 1) for s in SYMBOLS} == {0}
    counts = [sum(shard_of(s, 4) == i for s in SYMBOLS) for i in range(4)]
    assert min(counts) > len(SYMBOLS) / 4 * 0.8, counts


def test_a_listing_added_or_removed_moves_no_other_symbol() -> None:
    before = {s: shard_of(s, 5) for s in SYMBOLS}
    universe = set(SYMBOLS) - {SYMBOLS[7]} | {"NEW_USDT"}
    assert all(shard_of(s, 5) == before[s] for s in universe if s in before)


def test_growing_the_fleet_moves_only_what_the_new_shard_wins() -> None:
    moved = [s for s in SYMBOLS if shard_of(s, 4) != shard_of(s, 5)]
    assert moved
    assert all(shard_of(s, 5) == 4 for s in moved)


def test_a_grant_to_this_replica_makes_it_leader_until_the_fenced_end() -> None:
    lease = Lease("a", lease_s=5.0)
    fence = lease.answered(Grant("a", term=1, previous=None), sent_at=100.0)
    assert fence.role == "leader"
    assert fence.term == 1
    assert fence.fence is not None
    assert fence.valid_until == pytest.approx(100.0 + 5.0 * (1 - FENCE_MARGIN))
    assert lease.may_publish(103.9)
    assert not lease.may_publish(104.0)
    assert not lease.took_over


def test_validity_counts_from_the_request_not_the_answer() -> None:
    """A process frozen between sending a renewal and reading its answer wakes with the
    lease expired by its own clock, whatever Redis said."""
    lease = Lease("a", lease_s=5.0)
    lease.answered(Grant("a", term=1, previous="a"), sent_at=100.0)
    assert not lease.may_publish(115.0)  # the answer was read 15 s later: nothing goes


def test_another_holder_makes_a_standby_that_drops_what_it_holds() -> None:
    lease = Lease("a", lease_s=5.0)
    lease.answered(Grant("a", term=1, previous=None), sent_at=0.0)
    fence = lease.answered(Grant("b", term=2, previous="b"), sent_at=20.0)
    assert (fence.role, fence.fence, lease.leader, lease.term) == ("standby", None, "b", 2)
    assert not lease.may_publish(20.0)


def test_taking_over_from_another_is_counted_once() -> None:
    lease = Lease("b", lease_s=5.0)
    lease.answered(Grant("a", term=1, previous="a"), sent_at=0.0)
    fence = lease.answered(Grant("b", term=2, previous="a"), sent_at=7.0)
    assert fence.role == "leader"
    assert lease.took_over
    lease.answered(Grant("b", term=2, previous="b"), sent_at=8.0)
    assert not lease.took_over


def test_reacquiring_its_own_expired_lease_keeps_what_was_held() -> None:
    """After a Redis outage nobody else led: what the leader held is still its to send."""
    lease = Lease("a", lease_s=5.0)
    lease.answered(Grant("a", term=1, previous=None), sent_at=0.0)
    lease.failed("ConnectionError", refused=False, now=10.0)
    assert lease.role == "leader"
    assert not lease.may_publish(10.0)
    fence = lease.answered(Grant("a", term=2, previous="a"), sent_at=30.0)
    assert fence.role == "leader"
    assert fence.fence is not None
    assert not lease.took_over


def test_leaderless_only_while_redis_refuses() -> None:
    lease = Lease("a", lease_s=5.0)
    lease.failed("ConnectionError", refused=False, now=1.0)
    assert lease.leaderless_since is None  # unreachable: nothing known
    lease.failed("READONLY You can't write", refused=True, now=2.0)
    lease.failed("READONLY You can't write", refused=True, now=4.0)
    assert lease.leaderless_since == 2.0
    assert lease.error is not None
    lease.answered(Grant("b", term=3, previous="b"), sent_at=5.0)
    assert lease.leaderless_since is None
    assert lease.error is None


def test_a_token_is_the_replica_id_and_a_nonce_no_other_process_shares() -> None:
    tokens = {new_token("fleet-s0-a") for _ in range(100)}
    assert len(tokens) == 100
    assert {replica_of(t) for t in tokens} == {"fleet-s0-a"}
    assert replica_of("old-version-replica") == "old-version-replica"


def test_the_lease_is_this_processs_not_its_replica_ids() -> None:
    """Another process with the same FLEET_REPLICA_ID holding the lease is another leader:
    this one stands by, and shows the holder by its replica id."""
    lease = Lease("a", lease_s=5.0, token="a#1")
    fence = lease.answered(Grant("a#2", term=4, previous="a#2"), sent_at=0.0)
    assert (fence.role, lease.leader) == ("standby", "a")
    fence = lease.answered(Grant("a#1", term=5, previous="a#2"), sent_at=10.0)
    assert fence.role == "leader"
    assert fence.fence is not None
    assert fence.fence.token == "a#1"
    assert lease.took_over


def test_an_unconfirmed_answer_keeps_the_role_but_extends_nothing() -> None:
    """A request sent after a missed answer: Redis says the lease is still this replica's
    but did not extend it, so the validity stays that of the last grant heard in time."""
    lease = Lease("a", lease_s=6.0, token="a#1")
    lease.answered(Grant("a#1", term=1, previous=None), sent_at=0.0)
    lease.failed("no answer in time", refused=False, now=4.0, heard=False)
    assert not lease.heard
    fence = lease.answered(Grant("a#1", term=1, previous="a#1", renewed=False), sent_at=4.0)
    assert (fence.role, fence.valid_until) == ("leader", 6.0 * 0.8)
    assert lease.heard
    assert not lease.may_publish(5.0)
    fence = lease.answered(Grant("a#1", term=1, previous="a#1"), sent_at=6.0)
    assert lease.may_publish(6.0 + 4.7)


def test_a_refused_replica_stands_by_until_an_answer_grants_again() -> None:
    lease = Lease("a", lease_s=5.0, token="a#1")
    lease.answered(Grant("a#1", term=1, previous=None), sent_at=0.0)
    refusal = Refusal("config", "FLEET_SHARDS=3 here, but ...")
    fence = lease.refused(refusal)
    assert (fence.role, fence.fence, lease.refusal) == ("standby", None, refusal)
    assert not lease.may_publish(0.1)
    lease.failed("ConnectionError", refused=False, now=2.0)
    assert lease.refusal == refusal  # still the last word from Redis
    lease.answered(Grant("b#1", term=2, previous="b#1"), sent_at=3.0)
    assert lease.refusal is None


AGREED = Agreement.of(load_settings({"FLEET_SHARDS": "3", "SYMBOL_WHITELIST": "B_USDT,A_USDT"}))


def test_the_registered_configuration_is_canonical() -> None:
    assert AGREED.document() == (
        b'{"FLEET_KEY_PREFIX":"screener","FLEET_SHARDS":"3","MARKET_DATA_CHANNEL":'
        b'"market_data","MAX_SYMBOLS":"3000","SYMBOL_WHITELIST":"A_USDT,B_USDT"}'
    )
    assert AGREED.channel_key() == "screener:channel:market_data"


@pytest.mark.parametrize(
    ("theirs", "where", "line"),
    [
        (
            {"FLEET_SHARDS": "2"},
            "channel",
            "FLEET_SHARDS=3 here, but the fleet on channel market_data runs FLEET_SHARDS=2",
        ),
        (
            {"FLEET_KEY_PREFIX": "other", "MAX_SYMBOLS": "10"},
            "channel",
            "FLEET_KEY_PREFIX=screener here, but the fleet on channel market_data runs "
            "FLEET_KEY_PREFIX=other",
        ),
        (
            {"SYMBOL_WHITELIST": ""},
            "channel",
            "SYMBOL_WHITELIST=A_USDT,B_USDT here, but the fleet on channel market_data runs "
            "SYMBOL_WHITELIST=(empty)",
        ),
        (
            {"MARKET_DATA_CHANNEL": "md2"},
            "prefix",
            "MARKET_DATA_CHANNEL=market_data here, but the fleet under "
            "FLEET_KEY_PREFIX=screener publishes to MARKET_DATA_CHANNEL=md2",
        ),
    ],
)
def test_a_disagreement_names_the_variable_and_both_values(
    theirs: dict[str, str], where: str, line: str
) -> None:
    stored = orjson.dumps(AGREED.values() | theirs)
    assert disagreement(AGREED, stored, where=where) == line


def test_a_registration_this_version_cannot_read_is_named_as_such() -> None:
    line = disagreement(AGREED, b"[1, 2]", where="channel")
    assert line.startswith("the fleet on channel market_data registered a configuration")


def test_a_clash_names_the_replica_id_and_how_long_a_restart_waits() -> None:
    line = clash("fleet-s0-a", 5.0)
    assert line.startswith("FLEET_REPLICA_ID=fleet-s0-a is in use by another live process")
    assert "FLEET_LEASE_S=5s" in line


def stats(*rows: tuple[str, float]) -> list[SymbolStat]:
    return [SymbolStat(s, c, 1.0 + i) for i, (s, c) in enumerate(rows)]


def test_the_merge_equals_ranking_the_whole_universe() -> None:
    rng = random.Random(7)
    universe = [SymbolStat(s, round(rng.uniform(-20, 20), 3), 1.0) for s in SYMBOLS]
    whole = rank(universe, top_n=5, lookback_min=15, wall_ts=1.0)
    shards = 3
    parts = {
        i: rank(
            [s for s in universe if shard_of(s.symbol, shards) == i],
            top_n=5,
            lookback_min=15,
            wall_ts=1.0,
        )
        for i in range(shards)
    }
    merged = merge_rankings(parts[1], parts, shard=1, shards=shards, top_n=5)
    assert (merged.gainers, merged.losers) == (whole.gainers, whole.losers)
    assert merged.ranked == len(universe)
    assert merged.as_dict()["shards"] == {"reporting": 3, "total": 3, "missing": []}


def test_a_missing_shard_is_named() -> None:
    own = rank(stats(("A_USDT", 1.0), ("B_USDT", -2.0)), top_n=2, lookback_min=15, wall_ts=1.0)
    merged = merge_rankings(own, {}, shard=2, shards=4, top_n=2)
    assert merged.gainers == own.gainers
    assert merged.as_dict()["shards"] == {"reporting": 1, "total": 4, "missing": [0, 1, 3]}


def test_shard_ranking_round_trip() -> None:
    own = rank(stats(("A_USDT", 1.5), ("B_USDT", -2.25)), top_n=5, lookback_min=30, wall_ts=9.5)
    assert decode_shard_ranking(encode_shard_ranking(own, 3)) == own
    with pytest.raises(KeyError):
        decode_shard_ranking({"shard": 1})


def fleet_status(**changes: object) -> FleetStatus:
    base = FleetStatus(
        shard=0,
        shards=2,
        replica="a",
        lease_s=5.0,
        role="standby",
        leader="b",
        term=3,
        error=None,
        leaderless_since=None,
    )
    return base._replace(**changes)


def health(
    fleet: FleetStatus, *, now: float = 100.0, last_push_at: float = 99.0
) -> tuple[int, str]:
    views = Views.empty()
    views.feed.set(FeedStatus(last_push_at=last_push_at, conns_up=1, conns_total=1))
    views.universe.set(UniverseStatus(symbols=3, chunks=1, error=None))
    views.redis.set(RedisStatus(up=True, error=None))
    views.fleet.set(fleet)
    code, body = health_report(views, now, 60.0)
    return code, body["status"]


def test_health_names_a_refusal_and_only_a_stale_feed_is_worse() -> None:
    refused = fleet_status(refused="FLEET_SHARDS=3 here, but ...", leaderless_since=0.0)
    assert health(refused) == (503, "refused")
    assert health(refused, last_push_at=0.0) == (503, "stale")
    assert health(fleet_status(leaderless_since=0.0)) == (503, "leaderless")


def test_health_shows_a_leader_publishing_only_within_its_lease() -> None:
    views = Views.empty()
    views.feed.set(FeedStatus(last_push_at=99.0, conns_up=1, conns_total=1))
    views.universe.set(UniverseStatus(symbols=3, chunks=1, error=None))
    views.redis.set(RedisStatus(up=True, error=None))
    views.fleet.set(fleet_status(role="leader", leader="a", valid_until=100.5))
    assert health_report(views, 100.0, 60.0)[1]["fleet"]["publishing"] is True
    code, body = health_report(views, 100.5, 60.0)
    assert (code, body["status"], body["fleet"]["publishing"]) == (200, "ok", False)
    assert body["problems"] == ["fleet: lease of shard 0 not confirmed; publishing held"]
