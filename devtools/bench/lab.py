"""The lab: the processes of a run and what the bench reads of them.

Everything runs as its own process on loopback, as in production: a private redis-server,
the simulator, the service (`python -m screener`, configured only through its environment),
a redis-py subscriber and the bare client. Children report through small JSON files rewritten
every `REPORT_S` (`stats_file`); the bench reads CPU and memory from /proc and counters from
/metrics. Every wait is bounded in time, and every child is killed on exit, even if the bench
itself is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from devtools.bench.plan import BenchError, say
from devtools.bench.stats_file import read_stats, write_stats
from devtools.devredis import RedisServer, free_port
from screener.core.config import VARIABLES

CLK_TCK = os.sysconf("SC_CLK_TCK")

# The service's /metrics the bench reads.
RECEIVED = "screener_messages_received_total"
DROPPED = "screener_events_dropped_total"
BACKLOG = "screener_publish_backlog"
LATE = 'screener_messages_rejected_total{reason="late"}'


def _die_with_parent() -> None:
    """Runs in each child before exec: SIGKILL it if the bench dies (Linux PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime, stime) of every thread of `pid`, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def machine_seconds() -> tuple[float, float]:
    """(user + nice, system + irq + softirq + steal) of all CPUs, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice) / CLK_TCK, (system + irq + softirq + steal) / CLK_TCK


def rss_mb(pid: int) -> float:
    """VmRSS of `pid` in MB, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for pid {pid}")


@dataclass
class Child:
    """One child process, its log (stdout and stderr) and its stats file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    stats: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, chars: int) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(
                f"{self.name} exited with code {self.proc.returncode}\n{self.tail(1500)}"
            )

    def read(self) -> dict[str, Any]:
        return read_stats(self.stats)


class Lab:
    """Owns the work directory, the redis-server and every child; `close` ends them all."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="screener-bench-")
        self.dir = Path(self._tmp.name)
        self.children: list[Child] = []
        self.serial = itertools.count(1)
        self.redis = RedisServer(self.dir)
        self.http = httpx.Client(timeout=5)

    def spawn(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        python: str = sys.executable,
    ) -> Child:
        if any(c.name == name for c in self.children):
            raise BenchError(f"{name} is already running")
        log = self.dir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [python, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent,  # safe: the bench spawns from its only thread
            )
        child = Child(name, proc, log, self.dir / f"{name}.json")
        self.children.append(child)
        return child

    def spawn_role(self, role: str, name: str, *args: str) -> Child:
        """`python -m devtools.bench <role>`: one of the children of `children`."""
        stats = self.dir / f"{name}.json"
        stats.unlink(missing_ok=True)  # a previous child of that name left its last report
        return self.spawn(name, ["-m", "devtools.bench", role, "--stats", str(stats), *args])

    def start_subscriber(self, life_s: float, *, events: Path | None = None) -> Child:
        """Start the private redis-server and the redis-py subscriber (child `sub`) on it;
        with `events`, it writes every market_data event's (symbol, ts) there."""
        self.redis.start()
        extra = [f"--events={events}"] if events is not None else []
        sub = self.spawn_role(
            "sub", "sub", f"--port={self.redis.port}", f"--max-s={life_s}", *extra
        )
        self.wait_for(lambda: "events" in sub.read(), within_s=20, what="the Redis subscriber")
        return sub

    def stop(self, child: Child) -> None:
        if child.proc.poll() is None:
            child.proc.terminate()
            try:
                child.proc.wait(5)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(5)
        if child in self.children:
            self.children.remove(child)

    def check(self) -> None:
        for child in self.children:
            child.check()

    def wait_for(
        self, check: Callable[[], bool], *, within_s: float, what: str, every_s: float = 0.05
    ) -> None:
        deadline = time.monotonic() + within_s
        while not check():
            self.check()
            time.sleep(every_s)
            if time.monotonic() > deadline:
                tails = "".join(f"\n--- {c.name}:\n{c.tail(600)}" for c in self.children)
                raise BenchError(f"timed out after {within_s:g} s waiting for {what}{tails}")

    def sleep(self, seconds: float, every: Callable[[], None] | None = None) -> None:
        """Sleep `seconds` in half-second steps, checking the children (and sampling)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(0.5, left))
            self.check()
            if every is not None:
                every()

    def close(self) -> None:
        for child in list(self.children):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self.stop(child)
        self.redis.stop()
        self.http.close()
        self._tmp.cleanup()


@contextlib.contextmanager
def open_lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


class Sim:
    """The simulator child and its controls."""

    def __init__(
        self,
        lab: Lab,
        symbols: int,
        *,
        warp: float = 1.0,
        max_s: float,
        pushes: Path | None = None,
    ) -> None:
        """With `pushes`, the simulator writes every push's (symbol, ts) there."""
        self.lab = lab
        name = f"sim-{next(lab.serial)}"
        self.ctl = lab.dir / f"{name}.ctl.json"
        write_stats(self.ctl, {"rate": 0.0})
        self.child = lab.spawn_role(
            "sim",
            name,
            f"--symbols={symbols}",
            "--rate=0",
            f"--warp={warp}",
            f"--ctl={self.ctl}",
            f"--max-s={max_s}",
            *([f"--pushes={pushes}"] if pushes is not None else []),
        )
        lab.wait_for(lambda: "ws" in self.child.read(), within_s=20, what="the simulator")
        info = self.child.read()
        self.rest_url: str = info["rest"]
        self.ws_url: str = info["ws"]

    def set_rate(self, rate: float) -> None:
        write_stats(self.ctl, {"rate": rate})
        self.lab.wait_for(
            lambda: self.child.read().get("rate") == rate, within_s=5, what=f"rate {rate:g}"
        )

    def sent(self) -> int:
        return int(self.child.read().get("sent", 0))


def service_env(
    sim: Sim, redis_port: int, per_conn: int, extra: Mapping[str, str]
) -> dict[str, str]:
    """The production environment, minus any screener variable of the caller's shell."""
    own = {v.name for v in VARIABLES}
    env = {k: v for k, v in os.environ.items() if k not in own}
    env.update(
        MEXC_BASE=sim.rest_url,
        MEXC_WS_URL=sim.ws_url,
        REDIS_HOST="127.0.0.1",
        REDIS_PORT=str(redis_port),
        HTTP_HOST="127.0.0.1",
        WS_SCREENER_PORT=str(free_port()),
        MAX_SYMBOLS_PER_CONN=str(per_conn),
        LOG_LEVEL="WARNING",
        LOG_FORMAT="json",
    )
    env.update(extra)
    return env


def _default(name: str) -> str | None:
    return next((v.default for v in VARIABLES if v.name == name), None)


class ServiceProcess:
    """The service child: `python -m screener`, and its /metrics."""

    def __init__(self, lab: Lab, env: dict[str, str]) -> None:
        self.lab = lab
        self.env = env
        self.url = f"http://127.0.0.1:{env['WS_SCREENER_PORT']}"
        self.child = lab.spawn("service", ["-m", "screener"], env=env)

    def metrics(self) -> dict[str, float]:
        text = self.lab.http.get(self.url + "/metrics").text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def backfilled(self, n: int) -> bool:
        """The start-up REST backfill is over (or this version of the service has none)."""
        try:
            body = self.lab.http.get(self.url + "/health").json()
        except (httpx.HTTPError, ValueError):
            return False
        fill = body.get("backfill") if isinstance(body, dict) else None
        return not isinstance(fill, dict) or int(fill.get("done", 0)) >= n

    def wait_backfill(self, n: int) -> float:
        """Wait out the start-up backfill, a transient that steady-state figures exclude."""
        if self.env.get("BACKFILL", _default("BACKFILL")) != "on":
            return 0.0
        rate = float(self.env.get("REST_RATE_PER_S", _default("REST_RATE_PER_S") or "10"))
        say(f"service: waiting for the start-up backfill of {n} symbols ({rate:g} REST req/s)")
        start = time.monotonic()
        self.lab.wait_for(
            lambda: self.backfilled(n), within_s=2 * n / rate + 60, what="the backfill"
        )
        return time.monotonic() - start

    def drain(self, sim: Sim) -> None:
        """Stop the pushes and wait until nothing is queued anywhere: the publish backlog is
        empty and the sockets have gone quiet (the simulator's outboxes are flushed)."""
        sim.set_rate(0)
        last = [-1.0]

        def quiet() -> bool:
            metrics = self.metrics()
            received = metrics.get(RECEIVED, 0.0)
            done = metrics.get(BACKLOG, 1.0) == 0 and received == last[0]
            last[0] = received
            return done

        self.lab.wait_for(quiet, within_s=60, what="the pipeline to drain", every_s=0.5)

    def subscribed(self, n: int) -> bool:
        try:
            return self.metrics().get("screener_subscriptions", 0) >= n
        except httpx.HTTPError:
            return False


def start_service(
    lab: Lab, sim: Sim, *, symbols: int, per_conn: int, extra: Mapping[str, str]
) -> ServiceProcess:
    """The service against `sim` and the lab's Redis, once subscribed to all `symbols`."""
    svc = ServiceProcess(lab, service_env(sim, lab.redis.port, per_conn, extra))
    lab.wait_for(lambda: svc.subscribed(symbols), within_s=60, what="the service's subscriptions")
    return svc
