"""`screener bench --fleet`: the fleet's figures. Two shards of two replicas (four real
`python -m screener` processes) against one simulator and one redis-server: CPU and events/s
per replica at the benchmark's fixed rate, then takeovers of a shard's leader, after SIGKILL
(`takeovers` rounds) and after SIGSTOP (`stops` rounds, SIGCONT a lease after the standby
leads): the gap from the fault to the first event the standby publishes, and, for each
round's pushes, the delivery checker's counts (devtools/delivery.py: lost, duplicated, back
in time; the promise is 0/0/0). The simulator and the subscriber write every push and every
event as `SYMBOL TS` lines for it. `write_section` puts the figures into
docs/performance.md's Fleet section; `--fleet --quick` is a seconds-long smoke run."""

from __future__ import annotations

import os
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from devtools.bench.children import read_keys
from devtools.bench.lab import Child, Lab, Sim, cpu_seconds, open_lab, rss_mb, service_env
from devtools.bench.plan import say
from devtools.delivery import Key, check, settle_sync
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
    takeovers: int = 5  # SIGKILL rounds
    stops: int = 5  # SIGSTOP rounds
    quick: bool = False


QUICK_FLEET = FleetPlan(
    symbols=60,
    per_conn=30,
    rate=300.0,
    lease_s=2.0,
    warmup_s=1.0,
    measure_s=3.0,
    takeovers=1,
    stops=1,
    quick=True,
)
"""`--fleet --quick`: every step once, in well under a minute; its figures mean nothing."""

KINDS = ("SIGKILL", "SIGSTOP")


@dataclass
class Round:
    """One takeover: the fault, the gap, and the window of pushes the checker counts."""

    kind: str
    gap_s: float
    start_ms: int  # a second before the fault: what the leader had not yet published
    end_ms: int  # when the fleet had settled again
    pushes: int = 0
    lost: int = 0
    duplicated: int = 0
    back_in_time: int = 0


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
    rounds: list[Round] = field(default_factory=list)
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

    def signal(self, sig: signal.Signals) -> None:
        self.child.proc.send_signal(sig)


def run_fleet_bench(plan: FleetPlan) -> FleetResult:
    res = FleetResult(plan)
    load_before = os.getloadavg()[0]
    with open_lab() as lab:
        life = plan.warmup_s + plan.measure_s + (plan.takeovers + plan.stops) * 60 + 120
        pushes, events = lab.dir / "pushes.txt", lab.dir / "events.txt"
        sub = lab.start_subscriber(life, events=events)
        sim = Sim(lab, plan.symbols, max_s=life, pushes=pushes)
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
        kinds = ["SIGKILL"] * plan.takeovers + ["SIGSTOP"] * plan.stops
        for n, kind in enumerate(kinds):
            done = _takeover(lab, reps, plan, kind, shard=n % plan.shards)
            res.rounds.append(done)
            say(f"fleet: takeover {n + 1}/{len(kinds)}: {done.gap_s:.2f} s from {kind}")
        if res.rounds:
            sim.set_rate(0)
            _count(lab, res.rounds, read_keys(pushes), lambda: read_keys(events), plan)
    res.load = (load_before, os.getloadavg()[0])
    return res


def _count(
    lab: Lab,
    rounds: list[Round],
    pushes: list[Key],
    events: Callable[[], list[Key]],
    plan: FleetPlan,
) -> None:
    """Once every push of the rounds arrived (or none came for longer than a lease), the
    checker's counts for each round's window of pushes."""
    first = rounds[0].start_ms
    settle_sync(
        [k for k in pushes if k[1] >= first],
        events,
        quiet_s=plan.lease_s + 2,
        within_s=60,
        sleep=lambda _s: lab.sleep(0.5),
    )
    received = events()
    for r in rounds:
        window = [k for k in pushes if r.start_ms <= k[1] <= r.end_ms]
        seen = [k for k in received if r.start_ms <= k[1] <= r.end_ms]
        verdict = check(window, seen, since_ms=r.start_ms)
        r.pushes = verdict.pushed
        r.lost, r.duplicated, r.back_in_time = verdict.counts
        say(f"fleet: {r.kind} round: {verdict.summary()}")


def _snapshot(lab: Lab, sim: Sim, sub: Child, reps: list[Replica]) -> dict[str, Any]:
    return {
        "t": time.monotonic(),
        "sent": sim.sent(),
        "events": int(sub.read().get("events", 0)),
        "cpu": {r.name: cpu_seconds(r.child.pid) for r in reps},
        "pub": {r.name: r.metric(PUBLISHED) for r in reps},
    }


def _takeover(lab: Lab, reps: list[Replica], plan: FleetPlan, kind: str, *, shard: int) -> Round:
    """SIGKILL or SIGSTOP the shard's leader; seconds until its standby publishes an event.
    A killed replica is restarted, a stopped one continued a lease after the standby leads;
    either is a standby again before the next round."""
    group = [r for r in reps if r.shard == shard]
    leader = next(r for r in group if r.role() == "leader")
    standby = next(r for r in group if r is not leader)
    published = standby.metric(PUBLISHED)
    start_ms = int(time.time() * 1000) - 1000
    faulted_at = time.monotonic()
    if kind == "SIGKILL":
        leader.kill()
    else:
        leader.signal(signal.SIGSTOP)
    try:
        lab.wait_for(
            lambda: standby.metric(PUBLISHED) > published,
            within_s=60,
            what="the standby's first event",
            every_s=0.02,
        )
        gap = time.monotonic() - faulted_at
        if kind == "SIGKILL":
            leader.start()
        else:
            lab.sleep(plan.lease_s)
    finally:
        if kind == "SIGSTOP":
            leader.signal(signal.SIGCONT)
    lab.wait_for(lambda: leader.role() == "standby", within_s=60, what=f"{leader.name} standby")
    lab.sleep(2.0)
    return Round(kind, gap, start_ms, int(time.time() * 1000))


def fleet_section(res: FleetResult, command: str) -> list[str]:
    plan = res.plan
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
    if res.rounds:
        lines += ["", *takeover_table(res)]
    lines += [
        "",
        "A standby pays for ingest, windows and ranking like its leader and saves only the "
        "Redis writes; it is what a takeover within seconds costs.",
    ]
    return lines


def takeover_table(res: FleetResult) -> list[str]:
    """The takeovers by fault: the gap, and what the checker counted of their pushes."""
    plan = res.plan
    lines = [
        "Takeovers of a shard's leader: the gap from the fault to the standby's first "
        "published event, and every push of each round (from a second before the fault "
        "until the fleet settled again) held against every event received "
        "(devtools/delivery.py; the promise is 0 lost, 0 duplicated, 0 back in time). "
        f"The bound on the gap is the lease plus one renewal period "
        f"({plan.lease_s * 4 / 3:.2f} s); it is shorter than the lease when the fault comes "
        f"late in a renewal period: the lease runs from the last renewal. A stopped leader "
        f"is continued a lease after its standby leads.",
        "",
        "| fault | rounds | gap median (min-max) | pushes | lost | duplicated | back in time |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in KINDS:
        rounds = [r for r in res.rounds if r.kind == kind]
        if not rounds:
            continue
        gaps = sorted(r.gap_s for r in rounds)
        lines.append(
            f"| {kind} of the leader | {len(rounds)} | **{statistics.median(gaps):.2f} s** "
            f"({gaps[0]:.2f}-{gaps[-1]:.2f}) | {sum(r.pushes for r in rounds):,} "
            f"| {sum(r.lost for r in rounds):,} | {sum(r.duplicated for r in rounds):,} "
            f"| {sum(r.back_in_time for r in rounds):,} |"
        )
    return lines
