"""The benchmark run: the baseline (the bare client), then the service (throughput search,
CPU and latency at a fixed rate, /top5 under load, profile, accounting), then memory with
full windows, each phase a measurement window over the same processes."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from devtools.bench.lab import (
    BACKLOG,
    DROPPED,
    Child,
    Lab,
    ServiceProcess,
    Sim,
    open_lab,
    rss_mb,
    start_service,
)
from devtools.bench.measure import (
    CandleFigures,
    MeasureWindow,
    accounting,
    counters,
    measure,
    snap,
)
from devtools.bench.plan import LOOKBACK_MIN, BenchError, Plan, connections, say
from devtools.bench.profile import run_profile
from devtools.bench.side_env import CCXT_VERSION, ensure_ccxt, env_dir


@dataclass
class Trial:
    """One attempt at a fixed offered rate during the throughput search."""

    rate: float
    window: MeasureWindow
    backlog: list[float]
    dropped: float  # since the rate was set, warm-up included
    sustained: bool


@dataclass
class Results:
    """Raw figures; `None` where a phase was skipped."""

    plan: Plan
    bare_max: MeasureWindow | None = None
    bare_fixed: MeasureWindow | None = None
    ccxt_max: MeasureWindow | None = None
    ccxt_fixed: MeasureWindow | None = None
    ccxt_note: str | None = None  # why ccxt was not measured, or failed
    load: list[float] = field(default_factory=list)  # 1-minute load average, start and end
    svc_max: MeasureWindow | None = None
    trials: list[Trial] = field(default_factory=list)
    svc_fixed: MeasureWindow | None = None
    top5_ms: list[float] = field(default_factory=list)
    top5_errors: int = 0
    top5_idle_ms: list[float] = field(default_factory=list)
    loss: dict[str, float] = field(default_factory=dict)
    candles: CandleFigures | None = None  # the whole service run's closed candles
    candles_fixed: CandleFigures | None = None  # those closed at the fixed rate
    backfill_s: float = 0.0
    during_backfill: MeasureWindow | None = None
    rss_start_mb: float | None = None
    rss_full_mb: float | None = None
    full_symbols: int = 0
    profile: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def sustained(self) -> Trial | None:
        return next((t for t in self.trials if t.sustained), None)


def run(plan: Plan, *, profile: bool) -> Results:
    """Every phase of `plan`; a failed memory phase leaves a note, the other figures stand."""
    res = Results(plan)
    res.load.append(os.getloadavg()[0])  # the machine is shared: say how busy it was
    # Long enough for every phase; children outliving a crashed bench end by themselves.
    life_s = 1800.0
    with open_lab() as lab:
        sub = lab.start_subscriber(life_s)
        sim = Sim(lab, plan.symbols, max_s=life_s)
        baseline_phases(lab, sim, plan, res, life_s)
        if plan.ccxt:
            ccxt_phases(lab, sim, plan, res, life_s)
        else:
            res.ccxt_note = "not run (quick mode or --no-ccxt)"
        service_phases(lab, sim, sub, plan, res, profile=profile)
        lab.stop(sim.child)
        if not plan.quick:
            try:
                memory_phase(lab, plan, res, life_s)
            except BenchError as exc:  # the other figures still stand
                res.notes.append(f"Memory phase failed: {str(exc).splitlines()[0]}")
                say(f"memory phase failed: {exc}")
    res.load.append(os.getloadavg()[0])
    return res


def baseline_phases(lab: Lab, sim: Sim, plan: Plan, res: Results, life_s: float) -> None:
    """The bare client: its maximum receive rate, then its CPU at the fixed rate."""
    n_conns = connections(plan.symbols, plan.per_conn)
    say(f"baseline: bare trio-websocket client, {plan.symbols} symbols, {n_conns} conns")
    bare = lab.spawn_role(
        "bare",
        "bare",
        f"--rest={sim.rest_url}",
        f"--ws={sim.ws_url}",
        f"--per-conn={plan.per_conn}",
        f"--max-s={life_s}",
    )
    lab.wait_for(
        lambda: bare.read().get("up") == n_conns and sim.child.read().get("conns") == n_conns,
        within_s=30,
        what="the bare client's subscriptions",
    )
    time.sleep(0.5)  # the last sub.kline acks
    watch = {"bare": bare.pid, "sim": sim.child.pid}  # the subscriber and Redis are idle
    sim.set_rate(plan.max_rate)
    lab.sleep(plan.warmup_s)
    say(f"baseline: maximum receive rate for {plan.max_s:g} s")
    res.bare_max = measure(lab, sim, watch, plan.max_s)
    sim.set_rate(plan.fixed_rate)
    lab.sleep(plan.warmup_s)
    say(f"baseline: CPU at {plan.fixed_rate:g} msg/s for {plan.cpu_s:g} s")
    res.bare_fixed = measure(lab, sim, watch, plan.cpu_s)
    sim.set_rate(0)
    lab.stop(bare)


def ccxt_phases(lab: Lab, sim: Sim, plan: Plan, res: Results, life_s: float) -> None:
    """ccxt's MEXC client, in its own virtual environment: its maximum receive rate, then its
    CPU at the fixed rate. If it cannot be installed or fails, the run goes on and says so."""
    say(f"ccxt: preparing ccxt {CCXT_VERSION} in {env_dir()} (installed once)")
    env = ensure_ccxt()
    if env.python is None:
        res.ccxt_note = env.reason
        say(f"ccxt: not measured: {env.reason}")
        return
    say(f"ccxt: ccxt.pro mexc watch_ohlcv, {plan.symbols} symbols, one connection")
    stats = lab.dir / "ccxt.json"
    stats.unlink(missing_ok=True)
    client = lab.spawn(
        "ccxt",
        [
            str(Path(__file__).with_name("ccxt_client.py")),
            f"--rest={sim.rest_url}",
            f"--ws={sim.ws_url}",
            f"--stats={stats}",
            f"--max-s={life_s}",
        ],
        python=str(env.python),
    )
    try:
        lab.wait_for(
            lambda: (
                "error" in client.read()
                or (client.read().get("up") == 1 and sim.child.read().get("conns") == 1)
            ),
            within_s=60,
            what="ccxt's subscriptions",
        )
        if "error" in client.read():
            raise BenchError(str(client.read()["error"]))
        time.sleep(0.5)
        watch = {"ccxt": client.pid, "sim": sim.child.pid}
        sim.set_rate(plan.max_rate)
        lab.sleep(plan.warmup_s)
        say(f"ccxt: maximum receive rate for {plan.max_s:g} s")
        res.ccxt_max = measure(lab, sim, watch, plan.max_s)
        sim.set_rate(plan.fixed_rate)
        lab.sleep(plan.warmup_s)
        say(f"ccxt: CPU at {plan.fixed_rate:g} msg/s for {plan.cpu_s:g} s")
        res.ccxt_fixed = measure(lab, sim, watch, plan.cpu_s)
        if "error" in client.read():
            raise BenchError(str(client.read()["error"]))
    except BenchError as exc:
        res.ccxt_note = f"ccxt failed: {str(exc).splitlines()[0][:300]}"
        res.ccxt_max = res.ccxt_fixed = None
        say(res.ccxt_note)
    finally:
        sim.set_rate(0)
        lab.stop(client)
        time.sleep(1.0)  # the simulator lets the closed connection go


def is_sustained(w: MeasureWindow, backlog: list[float], dropped: float) -> bool:
    """No event dropped since the rate was set (warm-up included), everything offered
    delivered (within 2 %), a publish backlog under one second of input and not growing by
    more than 100 ms of input between the first and the last third of the window."""
    offered = w.sent_rate()
    third = max(1, len(backlog) // 3)
    growth = sum(backlog[-third:]) / third - sum(backlog[:third]) / third if backlog else 0.0
    return (
        dropped == 0
        and max(backlog, default=0.0) <= offered
        and w.rate("sub", "events") >= 0.98 * offered
        and growth <= 0.1 * offered
    )


def service_phases(
    lab: Lab, sim: Sim, sub: Child, plan: Plan, res: Results, *, profile: bool
) -> None:
    """The service: the throughput search, CPU and latency at the fixed rate, /top5 under load,
    the profile and the accounting of every push."""
    say("service: starting python -m screener")
    svc = start_service(
        lab, sim, symbols=plan.symbols, per_conn=plan.per_conn, extra=plan.service_env
    )
    time.sleep(0.5)
    start = counters(sim, sub)
    redis_pid = lab.redis.proc.pid if lab.redis.proc else 0
    watch = {"service": svc.child.pid, "sim": sim.child.pid, "sub": sub.pid, "redis": redis_pid}
    # The start-up backfill is a transient: measured on its own, at the fixed rate, and
    # waited out before the steady-state figures.
    sim.set_rate(plan.fixed_rate)
    before = snap(lab, watch, svc)
    res.backfill_s = svc.wait_backfill(plan.symbols)
    if res.backfill_s >= 2:  # long enough to say something about it
        res.during_backfill = MeasureWindow(before, snap(lab, watch, svc), sim.child.name)

    def window(seconds: float, backlog: list[float]) -> MeasureWindow:
        def sample() -> None:
            with contextlib.suppress(httpx.HTTPError):
                backlog.append(svc.metrics().get(BACKLOG, 0.0))

        return measure(lab, sim, watch, seconds, svc, sample)

    def trial(rate: float, label: str) -> Trial:
        svc.drain(sim)  # what the previous phase left queued must not count against this one
        dropped = svc.metrics().get(DROPPED, 0.0)
        sim.set_rate(rate)
        lab.sleep(plan.warmup_s)
        say(f"service: {label} for {plan.max_s:g} s")
        backlog: list[float] = []
        w = window(plan.max_s, backlog)
        lost = w.b.metrics.get(DROPPED, 0.0) - dropped
        return Trial(rate, w, backlog, lost, is_sustained(w, backlog, lost))

    saturated = trial(plan.max_rate, "saturated")
    res.svc_max = saturated.window
    res.trials.append(saturated)
    rate = round(saturated.window.rate("sub", "events") * 0.9, -2)
    for _ in range(0 if saturated.sustained or plan.quick else plan.search_steps):
        res.trials.append(trial(rate, f"{rate:,.0f} msg/s (sustained?)"))
        if res.trials[-1].sustained:
            break
        rate = round(rate * 0.9, -2)
    sim.set_rate(plan.fixed_rate)
    lab.sleep(plan.warmup_s)
    say(f"service: CPU and push-to-Redis latency at {plan.fixed_rate:g} msg/s")
    candles_before, fixed_since = CandleFigures.of(svc.metrics()), time.time()
    res.svc_fixed = measure(lab, sim, watch, plan.cpu_s, svc)
    say(f"service: /top5 at {plan.top5_rps:g} requests/s for {plan.top5_s:g} s")
    res.top5_ms, res.top5_errors = top5_load(lab, svc, plan, plan.top5_s)
    res.candles_fixed = candles_at_fixed_rate(
        lab, svc, candles_before, fixed_since, wait=not plan.quick
    )
    if plan.quick:
        res.rss_start_mb = rss_mb(svc.child.pid)
    if profile and plan.profile_s > 0:
        say(f"service: py-spy for {plan.profile_s:g} s at {plan.fixed_rate:g} msg/s")
        res.profile = run_profile(lab, svc.child.pid, plan.profile_s)
    svc.drain(sim)
    lab.sleep(1.0)  # the subscriber reads what was published last
    res.loss = accounting(sim, sub, svc, start)
    res.candles = CandleFigures.of(svc.metrics())
    if not plan.quick:
        say("service: /top5 with the feed idle, for reference")
        res.top5_idle_ms, _ = top5_load(lab, svc, plan, plan.top5_s / 2)
    lab.stop(svc.child)


def candles_at_fixed_rate(
    lab: Lab, svc: ServiceProcess, before: CandleFigures, since: float, *, wait: bool
) -> CandleFigures:
    """The closed candles of the fixed-rate phases: at least one minute's end must fall in
    them (and its candles be out), so the feed goes on at the fixed rate until it has
    (`wait`; the quick smoke run takes what it got)."""
    boundary = (since // 60 + 1) * 60
    if wait and time.time() < boundary + 5:
        say("service: at the fixed rate until a minute ends, for the closed candles' delay")
        lab.sleep(boundary + 5 - time.time())
    return CandleFigures.of(svc.metrics()).since(before)


def top5_load(lab: Lab, svc: ServiceProcess, plan: Plan, seconds: float) -> tuple[list[float], int]:
    """GET /top5 on absolute deadlines; one request at a time over a kept-alive connection."""
    lab.wait_for(
        lambda: lab.http.get(svc.url + "/top5").status_code == 200,
        within_s=30,
        what="the first ranking (/top5 200)",
    )
    period = 1.0 / plan.top5_rps
    samples: list[float] = []
    errors = 0
    start = time.monotonic()
    for k in range(int(seconds * plan.top5_rps)):
        delay = start + k * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t0 = time.perf_counter()
        response = lab.http.get(svc.url + "/top5")
        samples.append((time.perf_counter() - t0) * 1000)
        errors += response.status_code != 200
    lab.check()
    return samples, errors


def memory_phase(lab: Lab, plan: Plan, res: Results, life_s: float) -> None:
    """RSS with full windows: the simulator's clock runs `mem_warp` times faster."""
    say(f"memory: {plan.mem_symbols} symbols, simulated clock x{plan.mem_warp:g}")
    sim = Sim(lab, plan.mem_symbols, warp=plan.mem_warp, max_s=life_s)
    svc = start_service(
        lab, sim, symbols=plan.mem_symbols, per_conn=plan.per_conn, extra=plan.service_env
    )
    res.rss_start_mb = rss_mb(svc.child.pid)
    sim.set_rate(plan.mem_rate)
    sub = next(c for c in lab.children if c.name == "sub")
    minutes_s = (LOOKBACK_MIN + 2) * 60 / plan.mem_warp
    lab.wait_for(
        lambda: sub.read().get("full", 0) >= plan.mem_symbols,
        within_s=minutes_s * 4 + 30,
        what=f"{plan.mem_symbols} full windows",
    )
    svc.wait_backfill(plan.mem_symbols)
    samples: list[float] = []
    lab.sleep(max(3.0, 120 / plan.mem_warp), lambda: samples.append(rss_mb(svc.child.pid)))
    res.rss_full_mb = max(samples)
    res.full_symbols = int(sub.read().get("full", 0))
    lab.stop(svc.child)
    lab.stop(sim.child)
