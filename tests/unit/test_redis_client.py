"""The client `make_client` builds under REDIS_SENTINELS, before it talks to anything: which
settings reach the master connection (the system tests watch it follow a failover)."""

from __future__ import annotations

from redis.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection

from screener.core.config import load_settings
from screener.redis.client import make_client


def test_the_master_takes_redis_url_credentials_db_and_tls_but_not_its_host() -> None:
    env = {
        "REDIS_SENTINELS": "127.0.0.1:26379",
        "REDIS_URL": "rediss://reader:hunter2@elsewhere:6390/3?ssl_cert_reqs=none",
        "REDIS_HOST": "also-elsewhere",
    }
    client = make_client(load_settings(env).redis)
    try:
        pool = client.connection_pool
        options = pool.connection_kwargs
        assert pool.connection_class is SentinelManagedSSLConnection
        assert (options["username"], options["password"], options["db"]) == ("reader", "hunter2", 3)
        assert options["ssl_cert_reqs"] == "none"
        assert "host" not in options
        assert "port" not in options
    finally:
        client.close()


def test_without_redis_url_the_master_takes_redis_password() -> None:
    env = {"REDIS_SENTINELS": "127.0.0.1:26379", "REDIS_PASSWORD": "hunter2"}
    client = make_client(load_settings(env).redis)
    try:
        pool = client.connection_pool
        assert pool.connection_class is SentinelManagedConnection
        assert pool.connection_kwargs["password"] == "hunter2"
        assert pool.service_name == "mymaster"  # type: ignore[attr-defined]
    finally:
        client.close()
