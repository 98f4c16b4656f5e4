from __future__ import annotations

import os
import socket

import pytest

from screener.core.config import (
    VARIABLES,
    ConfigError,
    FleetSettings,
    Settings,
    load_settings,
    redact_url,
    resolved_variables,
)


def test_defaults_match_the_issue() -> None:
    s = load_settings({})
    assert s.exchange.rest_base == "https://api.mexc.com"
    assert s.exchange.ws_url == "wss://contract.mexc.com/edge"
    assert s.exchange.max_symbols_per_conn == 200
    assert s.exchange.ping_interval_s == 15
    assert s.exchange.dead_after_s == 30
    assert s.exchange.contracts_refresh_s == 3600
    assert (s.lookback_min, s.stale_after_s, s.rank_interval_s, s.top_n) == (15, 60, 15, 5)
    assert s.redis.market_data_channel == "market_data"
    assert s.redis.top_movers_channel == "top_movers"
    assert (s.http_host, s.http_port) == ("0.0.0.0", 8000)
    assert (s.log_format, s.log_level) == ("json", "INFO")


def test_every_bad_value_is_reported_at_once_naming_the_variable() -> None:
    env = {
        "LOOKBACK_MIN": "0",
        "WS_SCREENER_PORT": "http",
        "MEXC_WS_URL": "http://x",
        "LOG_FORMAT": "xml",
        "PING_INTERVAL_S": "-1",
        "SYMBOL_WHITELIST": "btc_usdt,B@D",
    }
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    problems = info.value.problems
    assert [p.split("=")[0] for p in problems] == [
        "MEXC_WS_URL",
        "SYMBOL_WHITELIST",
        "PING_INTERVAL_S",
        "LOOKBACK_MIN",
        "WS_SCREENER_PORT",
        "LOG_FORMAT",
    ]
    assert "LOOKBACK_MIN='0': must be between 1 and 1440" in problems
    assert "WS_SCREENER_PORT='http': not a whole number" in problems


def test_whitelist_is_normalized() -> None:
    s = load_settings({"SYMBOL_WHITELIST": " btc_usdt, ETH_USDT "})
    assert s.exchange.whitelist == frozenset({"BTC_USDT", "ETH_USDT"})
    assert load_settings({"SYMBOL_WHITELIST": " "}).exchange.whitelist == frozenset()


# What an adversarial run fed the service: each is one line naming the variable, never a
# traceback, a hot loop, an infinite deadline or a silent misreading.
@pytest.mark.parametrize(
    ("name", "raw", "reason"),
    [
        ("MEXC_BASE", "http://127.0.0.1:abc", "has a port that is not a number in 1..65535"),
        ("MEXC_WS_URL", "ws://127.0.0.1:99999/edge", "has a port that is not a number"),
        ("MEXC_WS_URL", "ws://:8802/edge", "has no host"),
        ("REDIS_URL", "redis://127.0.0.1:notaport", "has a port that is not a number"),
        ("CONTRACTS_REFRESH_S", "1e-9", "must be between 0.1 and 86400 seconds"),
        ("RANK_INTERVAL_S", "1e-9", "must be between 0.1 and 3600 seconds"),
        ("REST_POLL_S", "1e-9", "must be between 0.1 and 86400 seconds"),
        ("PING_INTERVAL_S", "1e-9", "must be between 0.1 and 300 seconds"),
        ("REST_RATE_PER_S", "1e20", "must be between 0.1 and 1000 requests per second"),
        ("REST_RATE_PER_S", "11", "above MEXC's documented 10 requests per second"),
        ("STALE_AFTER_S", "1e20", "must be between 0.1 and 3600 seconds"),
        ("STALE_AFTER_S", "inf", "not a number"),
        ("REST_TIMEOUT_S", "nan", "not a number"),
        ("TOP_N", "1_0", "not a whole number"),
        ("TOP_N", " 7 ", "not a whole number"),
        ("REDIS_PORT", "+6379", "not a whole number"),
        ("FALLBACK_POLL_S", "1_0", "not a number"),
        ("INTERVAL", "1M", "weeks and months have no fixed length"),
        ("INTERVAL", "min1", "must be one of"),
        ("SYMBOL_WHITELIST", ",,,", "has an empty entry"),
        ("SYMBOL_WHITELIST", "BTC_USDT,,ETH_USDT", "has an empty entry"),
    ],
)
def test_hostile_values_are_refused_in_one_line(name: str, raw: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({name: raw})
    [problem] = info.value.problems
    shown = "<hidden>" if name == "REDIS_URL" else repr(raw)
    assert problem.startswith(f"{name}={shown}: {reason}")


def test_the_rate_override_allows_a_faster_endpoint() -> None:
    env = {"REST_RATE_PER_S": "200", "REST_RATE_OVERRIDE": "on"}
    assert load_settings(env).rest.rate_per_s == 200.0


@pytest.mark.parametrize(
    ("raw", "mexc"),
    [
        ("1m", "Min1"),
        ("5m", "Min5"),
        ("1h", "Min60"),
        ("4h", "Hour4"),
        ("1d", "Day1"),
        ("Min15", "Min15"),
        ("Hour8", "Hour8"),
    ],
)
def test_interval_takes_mexc_names_and_short_forms(raw: str, mexc: str) -> None:
    assert load_settings({"INTERVAL": raw}).rest.mexc_interval == mexc


def test_secrets_never_echoed_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"REDIS_URL": "http://user:hunter2@host"})
    assert "hunter2" not in str(info.value)
    assert "REDIS_URL=<hidden>" in str(info.value)


def test_redis_target_is_redacted() -> None:
    s = load_settings({"REDIS_URL": "redis://:hunter2@cache:6380/0"})
    assert s.redis.safe_target() == "redis://***@cache:6380/0"
    assert redact_url("redis://cache:6379") == "redis://cache:6379"
    assert load_settings({"REDIS_PASSWORD": "pw"}).redis.safe_target() == "redis://localhost:6379"


def test_every_variable_has_help_and_a_valid_default() -> None:
    names = [v.name for v in VARIABLES]
    assert len(names) == len(set(names))
    for var in VARIABLES:
        assert var.help
        var.parse(var.default)


def test_the_records_default_to_what_an_empty_environment_gives() -> None:
    # One declaration: a record built in code and the service started with no variables set
    # cannot disagree (FleetSettings.replica_id once defaulted to "replica" here).
    assert Settings() == load_settings({})
    assert FleetSettings().replica_id == f"{socket.gethostname()[:48]}-{os.getpid()}"


def test_a_combination_problem_is_reported_with_the_single_ones() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"TOP_N": "0", "FLEET_SHARDS": "2", "FLEET_SHARD": "3"})
    assert info.value.problems == [
        "TOP_N='0': must be between 1 and 100",
        "FLEET_SHARD='3': must be below FLEET_SHARDS=2",
    ]


def test_fleet_defaults_are_one_replica_of_one_shard() -> None:
    fleet = load_settings({}).fleet
    assert (fleet.shards, fleet.shard, fleet.lease_s, fleet.key_prefix) == (1, 0, 5, "screener")
    assert fleet.replica_id  # <hostname>-<pid>
    assert fleet.key(0, "lease") == "screener:fleet:1:0:lease"


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        (
            {"FLEET_SHARDS": "2", "FLEET_SHARD": "2"},
            "FLEET_SHARD='2': must be below FLEET_SHARDS=2",
        ),
        ({"FLEET_SHARDS": "0"}, "FLEET_SHARDS='0': must be between 1 and 256"),
        ({"FLEET_LEASE_S": "0.5"}, "FLEET_LEASE_S='0.5': must be between 1 and 600 seconds"),
        (
            {"FLEET_REPLICA_ID": "a b"},
            "FLEET_REPLICA_ID='a b': 1 to 64 letters, digits, '_', '.', ':' or '-'",
        ),
        (
            {"FLEET_KEY_PREFIX": "x" * 65},
            f"FLEET_KEY_PREFIX='{'x' * 65}': 1 to 64 letters, digits, '_', '.', ':' or '-'",
        ),
    ],
)
def test_bad_fleet_values_are_one_line_each(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert info.value.problems == [problem]


# --- shard and replica id from a StatefulSet pod's name ----------------------------------


@pytest.mark.parametrize(
    ("pod", "shard", "shards"),
    [("screener-0-0", 0, 2), ("screener-1-1", 1, 2), ("feed-eu-2-0", 2, 3), ("s-0-12", 0, 1)],
)
def test_the_shard_and_replica_id_come_from_the_pod_name(pod: str, shard: int, shards: int) -> None:
    fleet = load_settings({"FLEET_POD_NAME": pod, "FLEET_SHARDS": str(shards)}).fleet
    assert (fleet.shard, fleet.replica_id) == (shard, pod)
    assert fleet.pod is not None
    assert (fleet.pod.name, fleet.pod.shard) == (pod, shard)


def test_a_replica_id_given_beside_the_pod_name_is_kept() -> None:
    env = {"FLEET_POD_NAME": "screener-1-0", "FLEET_SHARDS": "2", "FLEET_REPLICA_ID": "eu-a"}
    fleet = load_settings(env).fleet
    assert (fleet.shard, fleet.replica_id) == (1, "eu-a")


def test_a_fleet_shard_that_agrees_with_the_pod_name_is_accepted() -> None:
    env = {"FLEET_POD_NAME": "screener-1-0", "FLEET_SHARDS": "2", "FLEET_SHARD": "1"}
    assert load_settings(env).fleet.shard == 1


def test_without_a_pod_name_nothing_changes() -> None:
    assert load_settings({}).fleet.pod is None
    assert load_settings({"FLEET_POD_NAME": ""}) == load_settings({})


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        (
            {"FLEET_POD_NAME": "screener-0", "FLEET_SHARDS": "2"},
            "FLEET_POD_NAME='screener-0': must be a StatefulSet pod name "
            "<name>-<shard>-<ordinal> (lower-case letters, digits and '-', at most 63), "
            "e.g. screener-0-1",
        ),
        (
            {"FLEET_POD_NAME": "Screener-0-1"},
            "FLEET_POD_NAME='Screener-0-1': must be a StatefulSet pod name "
            "<name>-<shard>-<ordinal> (lower-case letters, digits and '-', at most 63), "
            "e.g. screener-0-1",
        ),
        (
            {"FLEET_POD_NAME": "screener-2-0", "FLEET_SHARDS": "2"},
            "FLEET_POD_NAME='screener-2-0': names shard 2, which must be below FLEET_SHARDS=2",
        ),
        (
            {"FLEET_POD_NAME": "screener-1-0", "FLEET_SHARDS": "2", "FLEET_SHARD": "0"},
            "FLEET_POD_NAME='screener-1-0': names shard 1, but FLEET_SHARD='0' (unset "
            "FLEET_SHARD, or name the StatefulSet for its shard)",
        ),
    ],
)
def test_a_pod_name_that_cannot_name_the_shard_is_one_line(
    env: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert info.value.problems == [problem]


def test_a_pod_name_longer_than_a_hostname_is_refused() -> None:
    pod = "s" * 60 + "-0-0"
    with pytest.raises(ConfigError) as info:
        load_settings({"FLEET_POD_NAME": pod})
    [problem] = info.value.problems
    assert problem.startswith(f"FLEET_POD_NAME={pod!r}: must be a StatefulSet pod name")


def test_check_config_shows_what_the_pod_name_set() -> None:
    env = {"FLEET_POD_NAME": "screener-1-0", "FLEET_SHARDS": "2"}
    shown = {name: (value, source) for name, value, source in resolved_variables(env)}
    assert shown["FLEET_SHARD"] == ("1", "FLEET_POD_NAME")
    assert shown["FLEET_REPLICA_ID"] == ("screener-1-0", "FLEET_POD_NAME")
    assert shown["FLEET_POD_NAME"] == ("screener-1-0", "env")


# --- Redis Sentinel -------------------------------------------------------------------------


def test_no_sentinel_by_default() -> None:
    redis = load_settings({}).redis
    assert (redis.sentinels, redis.sentinel_master, redis.sentinel_password) == ((), "mymaster", "")
    assert redis.safe_target() == "redis://localhost:6379"


def test_sentinels_are_a_host_port_list_named_in_the_target_without_secrets() -> None:
    env = {
        "REDIS_SENTINELS": " 10.0.0.1:26379 , sentinel-b:26380,[::1]:26381",
        "REDIS_SENTINEL_MASTER": "cache",
        "REDIS_SENTINEL_PASSWORD": "sentinel-secret",
        "REDIS_URL": "redis://:hunter2@ignored:6379/2",
    }
    redis = load_settings(env).redis
    assert redis.sentinels == (("10.0.0.1", 26379), ("sentinel-b", 26380), ("::1", 26381))
    assert redis.sentinel_master == "cache"
    assert redis.sentinel_password == "sentinel-secret"
    target = redis.safe_target()
    assert target == "sentinel://10.0.0.1:26379,sentinel-b:26380,[::1]:26381/cache"
    assert "hunter2" not in target
    assert "sentinel-secret" not in target


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("sentinel-a", "'sentinel-a' is not host:port"),
        (":26379", "':26379' is not host:port"),
        ("a:26379,,b:26379", "'' is not host:port"),
        ("a:26379,", "'' is not host:port"),
        ("a:", "'a:' has a port that is not a number in 1..65535"),
        ("a:0", "'a:0' has a port that is not a number in 1..65535"),
        ("a:65536", "'a:65536' has a port that is not a number in 1..65535"),
        ("a:+1", "'a:+1' has a port that is not a number in 1..65535"),
    ],
)
def test_a_bad_sentinel_list_is_one_line(raw: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"REDIS_SENTINELS": raw})
    assert info.value.problems == [f"REDIS_SENTINELS={raw!r}: {reason}"]


def test_an_empty_master_name_and_a_unix_socket_under_sentinel_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"REDIS_SENTINEL_MASTER": " "})
    assert info.value.problems == ["REDIS_SENTINEL_MASTER=' ': must not be empty"]
    env = {"REDIS_SENTINELS": "a:26379", "REDIS_URL": "unix:///run/redis.sock?password=pw"}
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    [problem] = info.value.problems
    assert problem.startswith("REDIS_URL=<hidden>: a unix socket cannot be combined with ")
    assert "pw" not in problem
    assert load_settings({"REDIS_URL": "unix:///run/redis.sock"}).redis.sentinels == ()


def test_a_retired_variable_is_one_warning_line_not_a_refusal() -> None:
    from screener.core.config import retired_variables

    env = {"REDIS_WRITER": "thread"}
    assert load_settings(env).redis == load_settings({}).redis
    assert retired_variables(env) == [
        "REDIS_WRITER is no longer read (all writes use the socket link)"
    ]
    assert retired_variables({}) == []
