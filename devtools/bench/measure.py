"""Measurement windows: what happened between two snapshots of the lab (CPU from /proc,
counters and latency histograms from the stats files, /metrics of the service), the
percentiles of those histograms and of timed samples, and the accounting of a whole run."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from devtools.bench.lab import (
    DROPPED,
    LATE,
    Child,
    Lab,
    ServiceProcess,
    Sim,
    cpu_seconds,
    machine_seconds,
)
from devtools.bench.stats_file import BUCKETS_PER_MS


def _hist_diff(after: dict[str, int], before: dict[str, int]) -> dict[int, int]:
    return {int(k): v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def percentile(hist: dict[int, int], q: float) -> float | None:
    """The q-quantile in ms (upper edge of its 0.1 ms bucket); None for an empty histogram."""
    total = sum(hist.values())
    if not total:
        return None
    rank, seen = q * total, 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen >= rank:
            return (bucket + 1) / BUCKETS_PER_MS
    return (max(hist) + 1) / BUCKETS_PER_MS


def hist_max(hist: dict[int, int]) -> float:
    return (max(hist, default=0) + 1) / BUCKETS_PER_MS


def quantile(samples: list[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Snap:
    """The lab at one instant: CPU seconds by process, every child's stats, /metrics."""

    t: float
    cpu: dict[str, tuple[float, float]]
    stats: dict[str, dict[str, Any]]
    metrics: dict[str, float]


def snap(lab: Lab, watch: dict[str, int], service: ServiceProcess | None = None) -> Snap:
    stats = {c.name: c.read() for c in lab.children}
    metrics = service.metrics() if service is not None else {}
    cpu = {name: cpu_seconds(pid) for name, pid in watch.items()}
    cpu["bench"] = cpu_seconds(os.getpid())
    cpu["machine"] = machine_seconds()
    return Snap(time.monotonic(), cpu, stats, metrics)


@dataclass
class MeasureWindow:
    """What happened between two snapshots."""

    a: Snap
    b: Snap
    sim: str

    @property
    def seconds(self) -> float:
        return self.b.t - self.a.t

    def cpu_pct(self, name: str, part: str = "all") -> float:
        (ua, sa), (ub, sb) = self.a.cpu[name], self.b.cpu[name]
        spent = {"user": ub - ua, "sys": sb - sa, "all": ub - ua + sb - sa}[part]
        return spent / self.seconds * 100

    def rate(self, child: str, key: str) -> float:
        a, b = self.a.stats[child], self.b.stats[child]
        return float(b.get(key, 0) - a.get(key, 0)) / float(b["t"] - a["t"])

    def sent_rate(self) -> float:
        return self.rate(self.sim, "sent")

    def hist(self, child: str) -> dict[int, int]:
        return _hist_diff(self.b.stats[child].get("hist", {}), self.a.stats[child].get("hist", {}))

    def metric(self, name: str) -> float:
        return self.b.metrics.get(name, 0.0) - self.a.metrics.get(name, 0.0)


def measure(
    lab: Lab,
    sim: Sim,
    watch: dict[str, int],
    seconds: float,
    service: ServiceProcess | None = None,
    every: Callable[[], None] | None = None,
) -> MeasureWindow:
    a = snap(lab, watch, service)
    lab.sleep(seconds, every)
    return MeasureWindow(a, snap(lab, watch, service), sim.child.name)


def counters(sim: Sim, sub: Child) -> tuple[int, int]:
    """(pushes sent, events delivered) so far: where the accounting of a run starts."""
    return sim.sent(), int(sub.read().get("events", 0))


def accounting(
    sim: Sim, sub: Child, svc: ServiceProcess, start: tuple[int, int]
) -> dict[str, float]:
    """Every push since `start`, once drained: sent, delivered, dropped (counted by the
    service) and rejected as late; sent - delivered - dropped is what went unaccounted."""
    final = svc.metrics()
    return {
        "sent": sim.sent() - start[0],
        "delivered": int(sub.read().get("events", 0)) - start[1],
        "dropped": final.get(DROPPED, 0.0),
        "late": final.get(LATE, 0.0),
    }


CANDLE_DELAY = "screener_candle_delay_seconds"


class CandleFigures(dict[str, float]):
    """The service's closed candles over a run, from its /metrics: counts by outcome and
    the delay histogram's cumulative buckets (`le` seconds -> count)."""

    @classmethod
    def of(cls, metrics: dict[str, float]) -> CandleFigures:
        figures = cls(
            live=metrics.get('screener_candles_published_total{source="mexc"}', 0.0),
            rest=metrics.get('screener_candles_published_total{source="mexc-rest-kline"}', 0.0),
            skipped=metrics.get("screener_candles_skipped_total", 0.0),
            dropped=sum(v for k, v in metrics.items() if k.startswith("screener_candles_dropped")),
            late=metrics.get("screener_candle_late_pushes_total", 0.0),
        )
        prefix = CANDLE_DELAY + '_bucket{le="'
        for name, value in metrics.items():
            if name.startswith(prefix):
                figures[f"le {name[len(prefix) : -2]}"] = value
        return figures

    def since(self, before: CandleFigures) -> CandleFigures:
        """What happened between `before` and this reading (counts and buckets alike)."""
        return CandleFigures({k: v - before.get(k, 0.0) for k, v in self.items()})

    def delay_quantile(self, q: float) -> float | None:
        """The q-quantile of the delay in seconds, interpolated within its bucket as
        Prometheus's histogram_quantile does; None without samples."""
        buckets = sorted(
            (float(k[3:]), v) for k, v in self.items() if k.startswith("le ") and k != "le +Inf"
        )
        total = self.get("le +Inf", 0.0)
        if not total:
            return None
        rank = q * total
        lower, below = 0.0, 0.0
        for upper, count in buckets:
            if count >= rank:
                share = (rank - below) / (count - below) if count > below else 1.0
                return lower + (upper - lower) * share
            lower, below = upper, count
        return buckets[-1][0] if buckets else None
