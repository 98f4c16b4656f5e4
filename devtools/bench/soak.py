"""`screener bench --soak MINUTES` (issue 6, part 4): the benchmark's processes at one offered
rate for that long instead of the measurements of issue 3. It prints a line a minute (RSS, CPU,
rates, backlog, drops, queue peaks); `soak_report` writes the Soak section of
docs/reliability.md. The question is whether the service stays bounded past its capacity:
memory flat, every push either delivered or counted as dropped."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import httpx

from devtools.bench.lab import (
    BACKLOG,
    DROPPED,
    RECEIVED,
    Lab,
    ServiceProcess,
    Sim,
    cpu_seconds,
    open_lab,
    rss_mb,
    start_service,
)
from devtools.bench.measure import MeasureWindow, Snap, accounting, counters
from devtools.bench.plan import connections, say

MEXC_BUSY_RATE = 2000.0
"""Kline pushes/s of all MEXC USDT perpetuals on a busy day; the soak offers five times it."""


@dataclass(frozen=True)
class SoakPlan:
    """A long run at one offered rate: does memory stay flat, is every push accounted for?"""

    minutes: float = 30.0
    rate: float = 5 * MEXC_BUSY_RATE
    symbols: int = 800
    per_conn: int = 200  # 4 connections, as on MEXC
    warmup_s: float = 30.0  # at full rate after the start-up backfill, before the first sample
    sample_s: float = 60.0  # one progress line and one RSS sample
    probe_s: float = 2.0  # /health and the publish backlog, between the lines


@dataclass
class SoakSample:
    """The state at `minute` (since the first sample) and the rates over the interval before."""

    minute: float
    rss_mb: float
    cpu_pct: float
    sent_per_s: float
    received_per_s: float
    delivered_per_s: float
    backlog: float
    dropped: float  # since the service started
    peaks: dict[str, float]  # screener_queue_peak by queue

    def line(self, total_min: float) -> str:
        peaks = ", ".join(f"{queue} {value:,.0f}" for queue, value in sorted(self.peaks.items()))
        return (
            f"soak {self.minute:4.1f}/{total_min:g} min: RSS {self.rss_mb:.1f} MB, "
            f"CPU {self.cpu_pct:.0f} %, received {self.received_per_s:,.0f}/s, "
            f"delivered {self.delivered_per_s:,.0f}/s, backlog {self.backlog:,.0f}, "
            f"dropped {self.dropped:,.0f}, screener_queue_peak: {peaks}"
        )


@dataclass
class SoakResult:
    """The per-minute samples and the figures of the whole soak."""

    plan: SoakPlan
    samples: list[SoakSample] = field(default_factory=list)  # [0]: after the warm-up
    overall: MeasureWindow | None = None  # from the first sample to the last
    rss_subscribed_mb: float = 0.0  # right after subscribing, before any push
    backfill_s: float = 0.0
    backlog_max: float = 0.0
    probes: int = 0
    unanswered: int = 0  # /health without an answer within the client's 5 s
    codes: dict[int, int] = field(default_factory=dict)
    scrape_failures: int = 0
    totals: dict[str, float] = field(default_factory=dict)  # whole service run, drained

    @property
    def unaccounted(self) -> float:
        t = self.totals
        return t["sent"] - t["delivered"] - t["dropped"]


def rss_slope(samples: list[SoakSample]) -> float | None:
    """Least-squares slope of RSS over time, in MB per 10 minutes."""
    n = len(samples)
    if n < 2:
        return None
    mx = sum(s.minute for s in samples) / n
    my = sum(s.rss_mb for s in samples) / n
    sxx = sum((s.minute - mx) ** 2 for s in samples)
    sxy = sum((s.minute - mx) * (s.rss_mb - my) for s in samples)
    return 10 * sxy / sxx if sxx else None


class _SoakProbe:
    """/health and /metrics every `every_s` between the progress lines. A scrape that fails
    is counted and the last good one stands in, so one slow answer is a figure, not a crash."""

    def __init__(self, svc: ServiceProcess, res: SoakResult, every_s: float) -> None:
        self.svc, self.res, self.every_s = svc, res, every_s
        self.metrics: dict[str, float] = {}
        self.next_at = 0.0

    def scrape(self) -> dict[str, float]:
        try:
            self.metrics = self.svc.metrics()
        except httpx.HTTPError:
            self.res.scrape_failures += 1
        self.res.backlog_max = max(self.res.backlog_max, self.metrics.get(BACKLOG, 0.0))
        return self.metrics

    def __call__(self) -> None:
        if time.monotonic() < self.next_at:
            return
        self.next_at = time.monotonic() + self.every_s
        self.res.probes += 1
        try:
            code = self.svc.lab.http.get(self.svc.url + "/health").status_code
        except httpx.HTTPError:
            self.res.unanswered += 1
        else:
            self.res.codes[code] = self.res.codes.get(code, 0) + 1
        self.scrape()

    def snap(self, lab: Lab) -> Snap:
        stats = {c.name: c.read() for c in lab.children}
        cpu = {"service": cpu_seconds(self.svc.child.pid)}
        return Snap(time.monotonic(), cpu, stats, self.scrape())


def _soak_sample(minute: float, w: MeasureWindow, pid: int) -> SoakSample:
    m = w.b.metrics
    return SoakSample(
        minute=minute,
        rss_mb=rss_mb(pid),
        cpu_pct=w.cpu_pct("service"),
        sent_per_s=w.sent_rate(),
        received_per_s=w.metric(RECEIVED) / w.seconds,
        delivered_per_s=w.rate("sub", "events"),
        backlog=m.get(BACKLOG, 0.0),
        dropped=m.get(DROPPED, 0.0),
        peaks={k.split('"')[1]: v for k, v in m.items() if k.startswith("screener_queue_peak{")},
    )


def run_soak(plan: SoakPlan) -> SoakResult:
    """The benchmark's processes at one offered rate for `plan.minutes`, sampled each minute."""
    res = SoakResult(plan)
    # Long enough for backfill, warm-up, soak and drain; children outliving a crashed bench
    # end by themselves.
    life_s = plan.minutes * 60 + plan.symbols / 5 + plan.warmup_s + 600
    n_conns = connections(plan.symbols, plan.per_conn)
    with open_lab() as lab:
        sub = lab.start_subscriber(life_s)
        sim = Sim(lab, plan.symbols, max_s=life_s)
        say(f"soak: starting python -m screener ({plan.symbols} symbols, {n_conns} connections)")
        svc = start_service(lab, sim, symbols=plan.symbols, per_conn=plan.per_conn, extra={})
        time.sleep(0.5)  # the last sub.kline acks
        pid = svc.child.pid
        res.rss_subscribed_mb = rss_mb(pid)
        start = counters(sim, sub)
        sim.set_rate(plan.rate)
        res.backfill_s = svc.wait_backfill(plan.symbols)
        probe = _SoakProbe(svc, res, plan.probe_s)
        say(f"soak: {plan.warmup_s:g} s warm-up, then {plan.minutes:g} min at {plan.rate:,.0f}/s")
        before = probe.snap(lab)
        lab.sleep(plan.warmup_s, probe)
        first = prev = probe.snap(lab)
        res.samples.append(_soak_sample(0.0, MeasureWindow(before, prev, sim.child.name), pid))
        print(res.samples[0].line(plan.minutes), flush=True)
        total_s = plan.minutes * 60
        for k in range(1, math.ceil(total_s / plan.sample_s) + 1):
            lab.sleep(first.t + min(k * plan.sample_s, total_s) - time.monotonic(), probe)
            now = probe.snap(lab)
            minute = (now.t - first.t) / 60
            res.samples.append(_soak_sample(minute, MeasureWindow(prev, now, sim.child.name), pid))
            print(res.samples[-1].line(plan.minutes), flush=True)
            prev = now
        res.overall = MeasureWindow(first, prev, sim.child.name)
        say("soak: draining")
        svc.drain(sim)
        seen = [-1]

        def caught_up() -> bool:
            events = int(sub.read().get("events", 0))
            done, seen[0] = events == seen[0], events
            return done

        lab.wait_for(caught_up, within_s=60, what="the subscriber to catch up", every_s=1.0)
        res.totals = accounting(sim, sub, svc, start)
        lab.stop(svc.child)
    return res
