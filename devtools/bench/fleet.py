"""`screener bench --fleet`: the fleet's figures. Two shards of two replicas (four real
`python -m screener` processes) against one simulator and one redis-server: CPU and events/s
per replica at the benchmark's fixed rate, then the takeover gap after SIGKILL of a shard's
leader (median of `takeovers`), measured from the kill to the first event the standby
publishes. `write_section` puts the figures into docs/performance.md's Fleet section."""

from __future__ import annotations

import os
import signal
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from devtools.bench.lab import Child, Lab, Sim, cpu_seconds, open_lab, rss_mb, service_env
from devtools.bench.plan import say
from devtools.devredis import free_port

PUBLISHED = 'screener_events_published_total{channel="market_data"}'


@dataclass(frozen=True)
class FleetPlan:
    symbols: int = 800
    per_conn: int = 200
    rate: float = 2000.0
    shards: int = 2
    replicas: int = 2
    lease_s: float = 5.0
    warmup_s: float = 10.0
    measure_s: float = 30.0
    takeovers: int = 5


@dataclass
class ReplicaFigures:
    name: str
    role: str
    cpu_pct: float
    published_per_s: float
    rss_mb: float


@dataclass
class FleetResult:
    plan: FleetPlan
    sent_per_s: float = 0.0
    delivered_per_s: float = 0.0
    replicas: list[ReplicaFigures] = field(default_factory=list)
    gaps_s: list[float] = field(default_factory=list)
    sent: int = 0  # pushes from the first (warm-up included) until drained
    delivered: int = 0  # events the subscriber received over the same span
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after


class Replica:
    """One replica process; restarted under the same name after each SIGKILL."""

    def __init__(self, lab: Lab, sim: Sim, plan: FleetPlan, shard: int, index: int) -> None:
        self.lab = lab
        self.name = f"s{shard}r{index}"
        self.shard = shard
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.env = service_env(
            sim,
            lab.redis.port,
            plan.per_conn,
            {
                "WS_SCREENER_PORT": str(port),
                "BACKFILL": "off",
                "FLEET_SHARDS": str(plan.shards),
                "FLEET_SHARD": str(shard),
                "FLEET_REPLICA_ID": self.name,
                "FLEET_LEASE_S": f"{plan.lease_s:g}",
            },
        )
        self.child: Child = self.start()

    def start(self) -> Child:
        self.child = self.lab.spawn(f"replica-{self.name}", ["-m", "screener"], env=self.env)
        return self.child

    def get(self, path: str) -> httpx.Response | None:
        try:
            return self.lab.http.get(self.url + path)
        except httpx.HTTPError:
            return None

    def role(self) -> str | None:
        r = self.get("/health")
        if r is None:
            return None
        fleet: dict[str, Any] = r.json().get("fleet", {})
        return fleet.get("role")

    def metric(self, name: str) -> float:
        r = self.get("/metrics")
        if r is None:
            return 0.0
        for line in r.text.splitlines():
            if line.startswith(name + " "):
                return float(line.rpartition(" ")[2])
        return 0.0

    def kill(self) -> None:
        self.child.proc.send_signal(signal.SIGKILL)
        self.child.proc.wait(5)
        self.lab.children.remove(self.child)


def run_fleet_bench(plan: FleetPlan) -> FleetResult:
    res = FleetResult(plan)
    load_before = os.getloadavg()[0]
    with open_lab() as lab:
        life = plan.warmup_s + plan.measure_s + plan.takeovers * 60 + 120
        sub = lab.start_subscriber(life)
        sim = Sim(lab, plan.symbols, max_s=life)
        reps = [
            Replica(lab, sim, plan, shard, i)
            for shard in range(plan.shards)
            for i in range(plan.replicas)
        ]
        per_shard = plan.symbols / plan.shards
        lab.wait_for(
            lambda: all(r.metric("screener_subscriptions") >= per_shard * 0.8 for r in reps),
            within_s=90,
            what="every replica's subscriptions",
        )
        lab.wait_for(
            lambda: sorted(r.role() or "" for r in reps).count("leader") == plan.shards,
            within_s=30,
            what="one leader per shard",
        )
        say(f"fleet: {len(reps)} replicas subscribed; {plan.rate:g} pushes/s")
        base_sent, base_events = sim.sent(), int(sub.read().get("events", 0))  # all quiet
        sim.set_rate(plan.rate)
        lab.sleep(plan.warmup_s)
        before = _snapshot(lab, sim, sub, reps)
        lab.sleep(plan.measure_s)
        after = _snapshot(lab, sim, sub, reps)
        seconds = after["t"] - before["t"]
        res.sent_per_s = (after["sent"] - before["sent"]) / seconds
        res.delivered_per_s = (after["events"] - before["events"]) / seconds
        for r in reps:
            (ua, sa), (ub, sb) = before["cpu"][r.name], after["cpu"][r.name]
            res.replicas.append(
                ReplicaFigures(
                    name=r.name,
                    role=r.role() or "?",
                    cpu_pct=(ub - ua + sb - sa) / seconds * 100,
                    published_per_s=(after["pub"][r.name] - before["pub"][r.name]) / seconds,
                    rss_mb=rss_mb(r.child.pid),
                )
            )
        say(f"fleet: {res.delivered_per_s:,.0f} events/s delivered of {res.sent_per_s:,.0f}")
        sim.set_rate(0)  # drain, then account for every push of the measurement
        last = [-1]

        def quiet() -> bool:
            events = int(sub.read().get("events", 0))
            done, last[0] = events == last[0], events
            return done

        lab.wait_for(quiet, within_s=30, what="the fleet to drain", every_s=1.0)
        res.sent = sim.sent() - base_sent
        res.delivered = int(sub.read().get("events", 0)) - base_events
        sim.set_rate(plan.rate)
        lab.sleep(2.0)
        for n in range(plan.takeovers):
            gap = _takeover(lab, reps, shard=n % plan.shards)
            res.gaps_s.append(gap)
            say(f"fleet: takeover {n + 1}/{plan.takeovers}: {gap:.2f} s from SIGKILL")
    res.load = (load_before, os.getloadavg()[0])
    return res


def _snapshot(lab: Lab, sim: Sim, sub: Child, reps: list[Replica]) -> dict[str, Any]:
    return {
        "t": time.monotonic(),
        "sent": sim.sent(),
        "events": int(sub.read().get("events", 0)),
        "cpu": {r.name: cpu_seconds(r.child.pid) for r in reps},
        "pub": {r.name: r.metric(PUBLISHED) for r in reps},
    }


def _takeover(lab: Lab, reps: list[Replica], *, shard: int) -> float:
    """SIGKILL the shard's leader; seconds until its standby publishes an event. The killed
    replica is restarted (it joins as a standby) before the next round."""
    group = [r for r in reps if r.shard == shard]
    leader = next(r for r in group if r.role() == "leader")
    standby = next(r for r in group if r is not leader)
    published = standby.metric(PUBLISHED)
    killed_at = time.monotonic()
    leader.kill()
    lab.wait_for(
        lambda: standby.metric(PUBLISHED) > published,
        within_s=60,
        what="the standby's first event",
        every_s=0.02,
    )
    gap = time.monotonic() - killed_at
    leader.start()
    lab.wait_for(lambda: leader.role() == "standby", within_s=60, what="the restarted standby")
    lab.sleep(2.0)
    return gap


def fleet_section(res: FleetResult, command: str) -> list[str]:
    plan = res.plan
    gaps = sorted(res.gaps_s)
    lines = [
        "## Fleet",
        "",
        f"`{command}`: {plan.shards} shards x {plan.replicas} replicas (real processes), "
        f"{plan.symbols} symbols (each replica subscribes its shard's half, at most "
        f"{plan.per_conn} per connection), {plan.rate:,.0f} pushes/s offered, "
        f"`FLEET_LEASE_S={plan.lease_s:g}`; "
        f"measured over {plan.measure_s:g} s after {plan.warmup_s:g} s of warm-up; "
        f"{os.cpu_count()} cores, 1-minute load average {res.load[0]:.1f} before and "
        f"{res.load[1]:.1f} after (the replicas share the cores with the simulator, Redis "
        f"and the subscriber, and with whatever else runs).",
        "",
        f"Delivered: {res.delivered_per_s:,.0f} events/s into Redis for "
        f"{res.sent_per_s:,.0f} pushes/s sent. Accounted from the first push until drained: "
        f"{res.sent:,} pushes sent, {res.delivered:,} events delivered on `market_data` "
        f"(one per push: the standbys publish nothing).",
        "",
        "| replica | role | CPU (% of a core) | events published/s | RSS (MB) |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in res.replicas:
        lines.append(
            f"| {r.name} | {r.role} | {r.cpu_pct:.1f} | {r.published_per_s:,.0f} | {r.rss_mb:.1f} |"
        )
    if gaps:
        lines += [
            "",
            f"Takeover gap after SIGKILL of a shard leader, from the kill to the standby's "
            f"first published event, {len(gaps)} rounds: median "
            f"**{statistics.median(gaps):.2f} s** (min {gaps[0]:.2f}, max {gaps[-1]:.2f}); "
            f"the bound is the lease plus one renewal period "
            f"({plan.lease_s * 4 / 3:.2f} s). The gap is shorter than the lease when the "
            f"kill comes late in a renewal period: the lease runs from the last renewal.",
        ]
    lines += [
        "",
        "A standby pays for ingest, windows and ranking like its leader and saves only the "
        "Redis writes; it is what a takeover within seconds costs.",
    ]
    return lines
