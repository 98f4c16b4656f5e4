"""The service as a real process: CLI, config errors, port in use, SIGTERM under load. Real
processes because exit codes, signals and what reaches stderr only exist for a process."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import orjson
import pytest
import trio

from devtools.devredis import RedisServer, free_port
from devtools.simulator import FakeExchange, SimAddress, SimConfig
from tests.system.service_harness import eventually

ROOT = Path(__file__).resolve().parents[2]


def env_for(
    sim: SimAddress | None, redis_port: int, http_port: int, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MEXC_BASE", "MEXC_WS_URL")}
    env |= {
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": str(redis_port),
        "HTTP_HOST": "127.0.0.1",
        "WS_SCREENER_PORT": str(http_port),
        "LOG_FORMAT": "json",
    }
    if sim is not None:
        env |= {"MEXC_BASE": sim.rest_url, "MEXC_WS_URL": sim.ws_url}
    return env | extra


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "screener", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_help_lists_every_variable() -> None:
    from screener.core.config import VARIABLES

    out = run_cli("--help")
    assert out.returncode == 0
    for var in VARIABLES:
        assert var.name in out.stdout


def test_bad_config_is_one_line_per_variable_and_exit_2() -> None:
    env = env_for(None, 1, 8000, LOOKBACK_MIN="abc", TOP_N="0")
    out = run_cli(env=env)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        "screener: config error: LOOKBACK_MIN='abc': not a whole number",
        "screener: config error: TOP_N='0': must be between 1 and 100",
    ]


def test_port_in_use_exits_non_zero_with_a_clear_message(redis_server: RedisServer) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = run_cli(
            env=env_for(
                None,
                redis_server.port,
                port,
                MEXC_BASE="http://127.0.0.1:9",
                MEXC_WS_URL="ws://127.0.0.1:9/edge",
            )
        )
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr


@asynccontextmanager
async def simulator(config: SimConfig) -> AsyncIterator[tuple[FakeExchange, SimAddress]]:
    exchange = FakeExchange(config)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(exchange.serve)
        yield exchange, address
        nursery.cancel_scope.cancel()


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything a process wrote, up to its EOF (one read may return only part)."""
    chunks = []
    while chunk := await stream.receive_some(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


async def _sigterm_exits_cleanly(redis_port: int) -> tuple[FakeExchange, float, int, str]:
    http_port = free_port()
    async with simulator(SimConfig(symbols=300, rate_per_s=3000)) as (ex, sim):
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "screener"],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            env=env_for(sim, redis_port, http_port, MAX_SYMBOLS_PER_CONN="100"),
        )
        try:
            async with httpx.AsyncClient() as http:

                async def healthy() -> bool:
                    try:
                        r = await http.get(f"http://127.0.0.1:{http_port}/health")
                    except httpx.TransportError:
                        return False
                    return r.status_code == 200

                await eventually(healthy, within_s=20, what="healthy")
            await eventually(lambda: ex.connections == 3)
            await trio.sleep(0.5)  # let it run under full load for a moment
            started = trio.current_time()
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                code = await proc.wait()
            elapsed = trio.current_time() - started
            assert proc.stderr is not None
            log = (await read_all(proc.stderr)).decode(errors="replace")
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await eventually(lambda: ex.connections == 0)
        return ex, elapsed, code, log


async def test_sigterm_under_load_exits_0_within_5s_closing_sockets_with_1000(
    redis_server: RedisServer,
) -> None:
    ex, elapsed, code, log = await _sigterm_exits_cleanly(redis_server.port)
    assert code == 0, log[-2000:]
    assert elapsed < 5
    assert ex.closed_codes.count(1000) == 3
    assert "SIGTERM received" in log
    assert_pipeline_json(log)


def assert_pipeline_json(log: str) -> None:
    """LOG_FORMAT=json as log pipelines read it: one object per line, the four keys at the
    top, RFC 3339 UTC timestamps, the actor's context beside them, no file paths."""
    lines = log.splitlines()
    assert len(lines) > 5
    records = [orjson.loads(line) for line in lines]
    for record in records:
        assert {"timestamp", "level", "message", "logger"} <= record.keys(), record
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", record["timestamp"])
        assert record["level"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
        assert "record" not in record
    assert all(str(ROOT) not in line for line in lines)
    assert any(r.get("actor") == "universe" and r["logger"] == "actors.universe" for r in records)
    assert any(r["message"].startswith("SIGTERM received") and r["actor"] == "app" for r in records)


def test_text_logs_put_the_message_before_the_fields() -> None:
    """LOG_FORMAT=text as a terminal shows it: the message first, then `key=value` fields; a
    library's stdlib log line names its logger the same way."""
    script = (
        "import logging; from loguru import logger; from screener.core.logs import setup_logging; "
        "setup_logging('text', 'INFO'); "
        "logger.bind(actor='ranking').info('ranking: {n} symbols ranked', n=12); "
        "logging.getLogger('hypercorn.error').warning('slow client')"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 0, out.stderr
    assert [line[13:] for line in out.stderr.splitlines()] == [
        "INFO    ranking: 12 symbols ranked actor=ranking n=12",
        "WARNING slow client lib=hypercorn.error",
    ]


async def test_sigterm_while_redis_is_down_exits_0_within_5s(tmp_path: Path) -> None:
    _, elapsed, code, log = await _sigterm_exits_cleanly(free_port())
    assert code == 0, log[-2000:]
    assert elapsed < 5


@pytest.mark.parametrize("command", ["simulate", "bench"])
def test_development_commands_say_how_to_install_them_where_absent(command: str) -> None:
    """The runtime image has no development tools: one clear line and exit 2, no traceback."""
    hide = (
        "import sys; sys.modules['devtools'] = None; "
        f"from screener.__main__ import main; sys.exit(main([{command!r}]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", hide], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 2
    assert f"`screener {command}` is a development tool" in out.stderr
    assert "make install" in out.stderr
    assert "Traceback" not in out.stderr


def test_version_names_the_installed_distribution() -> None:
    from importlib import metadata

    out = run_cli("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"screener {metadata.version('screener')}"


def test_check_config_prints_the_resolved_settings_with_secrets_masked() -> None:
    env = env_for(None, 6380, 8000, TOP_N="7", REDIS_PASSWORD="hunter2")
    env["REDIS_URL"] = "redis://:s3cret@cache:6380/0"
    out = run_cli("check-config", env=env)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split("=", 1) for line in out.stdout.splitlines())
    assert lines["TOP_N"] == "7  # env"
    assert lines["LOOKBACK_MIN"] == "15  # default"
    assert lines["REDIS_PASSWORD"] == "<hidden>  # env"
    assert lines["REDIS_URL"] == "redis://***@cache:6380/0  # env"
    assert "hunter2" not in out.stdout + out.stderr
    assert "s3cret" not in out.stdout + out.stderr
    from screener.core.config import VARIABLES

    assert list(lines) == [var.name for var in VARIABLES]


def test_check_config_refuses_like_start_up() -> None:
    env = env_for(None, 6380, 8000, TOP_N="0", MEXC_WS_URL="ws://127.0.0.1:99999/edge")
    out = run_cli("check-config", env=env)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.splitlines() == [
        "screener: config error: MEXC_WS_URL='ws://127.0.0.1:99999/edge': has a port that is "
        "not a number in 1..65535",
        "screener: config error: TOP_N='0': must be between 1 and 100",
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MEXC_BASE", "http://127.0.0.1:abc"),
        ("MEXC_WS_URL", "ws://127.0.0.1:99999/edge"),
        ("REDIS_URL", "redis://127.0.0.1:notaport"),
    ],
)
def test_a_bad_url_stops_the_start_in_one_line_with_exit_2(name: str, value: str) -> None:
    """They used to crash with exit 1 and a 55-75-line traceback."""
    out = run_cli(env=env_for(None, 6380, 8000, **{name: value}))
    assert out.returncode == 2
    shown = "<hidden>" if name == "REDIS_URL" else repr(value)
    assert out.stderr.splitlines() == [
        f"screener: config error: {name}={shown}: has a port that is not a number in 1..65535"
    ]
