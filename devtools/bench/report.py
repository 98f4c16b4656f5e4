"""The report of a run: the table of figures against the baseline (printed, and written with
the details, the set-up and the profile to docs/performance.md), and the checks of `--quick`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from devtools.bench.analysis import CHANGES, obstacles
from devtools.bench.measure import MeasureWindow, hist_max, percentile, quantile
from devtools.bench.plan import LOOKBACK_MIN, connections
from devtools.bench.provenance import provenance
from devtools.bench.run import Results, Trial
from devtools.bench.side_env import CCXT_VERSION


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}{unit}"


def _ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else value / base


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else (" (met)" if ok else " (missed)")


def table_rows(res: Results) -> list[tuple[str, str, str, str, str]]:
    """The figures of issue 3: value, baseline, ratio and target, one row each."""
    p = res.plan
    rate = f"{p.fixed_rate:,.0f} msg/s"
    rows: list[tuple[str, str, str, str, str]] = []
    bare_max = res.bare_max.rate("bare", "received") if res.bare_max else None
    best = res.sustained
    svc_max = best.window.rate("sub", "events") if best else None
    r = _ratio(svc_max, bare_max)
    rows.append(
        (
            f"max sustained throughput, events/s reaching Redis ({p.symbols} symbols, "
            "no loss, backlog flat)",
            _fmt(svc_max, "", 0),
            _fmt(bare_max, " msg/s received", 0),
            _fmt(r, "x", 2),
            "≥ 0.75x" + _verdict(None if r is None else r >= 0.75),
        )
    )
    bare_cpu = res.bare_fixed.cpu_pct("bare") if res.bare_fixed else None
    svc_cpu = res.svc_fixed.cpu_pct("service") if res.svc_fixed else None
    r = _ratio(svc_cpu, bare_cpu)
    rows.append(
        (
            f"CPU at {rate}, % of one core",
            _fmt(svc_cpu, " %"),
            _fmt(bare_cpu, " %"),
            _fmt(r, "x", 2),
            "≤ 1.25x" + _verdict(None if r is None else r <= 1.25),
        )
    )
    for q, target in ((0.5, None), (0.99, 10.0)):
        svc = percentile(res.svc_fixed.hist("sub"), q) if res.svc_fixed else None
        base = percentile(res.bare_fixed.hist("bare"), q) if res.bare_fixed else None
        rows.append(
            (
                f"push-to-Redis latency p{round(q * 100)} at {rate} (baseline: push-to-receive)",
                _fmt(svc, " ms"),
                _fmt(base, " ms"),
                _fmt(_ratio(svc, base), "x", 2),
                "—"
                if target is None
                else f"≤ {target:g} ms" + _verdict(None if svc is None else svc <= target),
            )
        )
    delay = res.candles_fixed.delay_quantile(0.99) if res.candles_fixed else None
    rows.append(
        (
            f"closed candle delay p99 at {rate}, from the minute's close (the next minute's "
            "first push) to Redis",
            _fmt(None if delay is None else delay * 1000, " ms"),
            "—",
            "—",
            "≤ 2000 ms" + _verdict(None if delay is None else delay <= 2.0),
        )
    )
    if p.quick:
        label = f"resident memory ({p.symbols} symbols, windows not full: quick mode)"
    else:
        label = f"resident memory, {p.mem_symbols} symbols x {LOOKBACK_MIN} candles"
    mem = res.rss_full_mb if not p.quick else res.rss_start_mb
    rows.append(
        (
            label,
            _fmt(mem, " MB"),
            "—",
            "—",
            "≤ 100 MB" + _verdict(None if mem is None or p.quick else mem <= 100),
        )
    )
    for q, target in ((0.5, None), (0.99, 10.0)):
        value = quantile(res.top5_ms, q)
        rows.append(
            (
                f"/top5 latency p{round(q * 100)} at {p.top5_rps:g} req/s during {rate} ingest",
                _fmt(value, " ms", 2),
                "—",
                "—",
                "—"
                if target is None
                else f"≤ {target:g} ms" + _verdict(None if value is None else value <= target),
            )
        )
    return rows


def render_table(res: Results) -> list[str]:
    """The Markdown table of `table_rows`: printed on stdout and the report's Figures."""
    lines = [
        "| figure | value | baseline (bare client) | ratio to baseline | target |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    lines += [f"| {' | '.join(row)} |" for row in table_rows(res)]
    return lines


def clients_table(res: Results) -> list[str]:
    """The screener, the bare loop and ccxt side by side: CPU at the fixed rate and the most
    each takes in (for the screener: events into Redis, sustained; the others: received)."""
    p = res.plan
    bare_cpu = res.bare_fixed.cpu_pct("bare") if res.bare_fixed else None
    bare_max = res.bare_max.rate("bare", "received") if res.bare_max else None
    best = res.sustained
    rows = [
        (
            "bare trio-websocket loop (receives only)",
            bare_cpu,
            bare_max,
        ),
        (
            "ccxt.pro mexc `watch_ohlcv` (receives, parses, caches)",
            res.ccxt_fixed.cpu_pct("ccxt") if res.ccxt_fixed else None,
            res.ccxt_max.rate("ccxt", "received") if res.ccxt_max else None,
        ),
        (
            "screener (windows, events into Redis, ranking, HTTP)",
            res.svc_fixed.cpu_pct("service") if res.svc_fixed else None,
            best.window.rate("sub", "events") if best else None,
        ),
    ]
    lines = [
        f"| client | CPU at {p.fixed_rate:,.0f} msg/s, % of one core | ratio to bare | "
        "max msg/s (screener: sustained events/s into Redis) | ratio to bare |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, cpu, top in rows:
        lines.append(
            f"| {name} | {_fmt(cpu, ' %')} | {_fmt(_ratio(cpu, bare_cpu), 'x', 2)} | "
            f"{_fmt(top, '', 0)} | {_fmt(_ratio(top, bare_max), 'x', 2)} |"
        )
    if res.ccxt_note:
        lines += ["", f"ccxt: {res.ccxt_note}."]
    return lines


def details(res: Results) -> list[str]:
    """The raw numbers behind the table, per phase and per process."""
    lines = [
        "| phase | offered (sim sent/s) | received / delivered per s | CPU % of one core "
        "(user + sys) by process | publish backlog max / last | events dropped |",
        "| --- | ---: | ---: | --- | ---: | ---: |",
    ]

    def cpu(w: MeasureWindow) -> str:
        ours = [name for name in w.a.cpu if name != "machine"]
        other = w.cpu_pct("machine") - sum(w.cpu_pct(name) for name in ours)
        shown = [
            f"{name} {w.cpu_pct(name):.0f} ({w.cpu_pct(name, 'user'):.0f} + "
            f"{w.cpu_pct(name, 'sys'):.0f})"
            for name in ours
        ]
        return ", ".join([*shown, f"**rest of the machine {max(other, 0):.0f}**"])

    fixed = f"{res.plan.fixed_rate:,.0f}/s"
    phases: list[tuple[str, MeasureWindow | None, str, str, Trial | None]] = [
        ("bare client, saturated", res.bare_max, "bare", "received", None),
        (f"bare client, {fixed}", res.bare_fixed, "bare", "received", None),
        ("ccxt, saturated", res.ccxt_max, "ccxt", "received", None),
        (f"ccxt, {fixed}", res.ccxt_fixed, "ccxt", "received", None),
    ]
    for each in res.trials:
        offered = "saturated" if each.window is res.svc_max else f"{each.rate:,.0f}/s"
        verdict = "sustained" if each.sustained else "not sustained"
        phases.append((f"service, {offered}: {verdict}", each.window, "sub", "events", each))
    phases.append((f"service, {fixed}", res.svc_fixed, "sub", "events", None))
    for name, w, child, key, t in phases:
        if w is None:
            continue
        backlog = t.backlog if t else []
        shown = f"{max(backlog, default=0):,.0f} / {backlog[-1]:,.0f}" if backlog else "—"
        lines.append(
            f"| {name} | {w.sent_rate():,.0f} | {w.rate(child, key):,.0f} | {cpu(w)} | {shown} "
            f"| {'—' if t is None else f'{t.dropped:,.0f}'} |"
        )
    lines.append("")
    if res.svc_max is not None:
        w = res.svc_max
        lines.append(
            f"- Saturated, the service read "
            f"{w.metric('screener_messages_received_total') / w.seconds:,.0f} msg/s from its "
            "sockets. Events are dropped when the publish buffer exceeds PUBLISH_BUFFER (the "
            "newest per symbol is kept); each trial starts from a drained pipeline. A rate is "
            "sustained with no drop, delivery within 2 % of the offered rate, and a publish "
            "backlog under one second of input that does not grow."
        )
    if res.during_backfill is not None:
        w, hist = res.during_backfill, res.during_backfill.hist("sub")
        lines.append(
            f"- The service's start-up backfill of {res.plan.symbols} symbols from REST klines "
            f"took {res.backfill_s:.0f} s; every figure above is measured after it. During it, "
            f"at {res.plan.fixed_rate:g} msg/s: service CPU {w.cpu_pct('service'):.0f} %, "
            f"push-to-Redis p50 {percentile(hist, 0.5) or 0:.1f} ms, "
            f"p99 {percentile(hist, 0.99) or 0:.1f} ms, max {hist_max(hist):.1f} ms."
        )
    if res.loss:
        unaccounted = res.loss["sent"] - res.loss["delivered"] - res.loss["dropped"]
        lines.append(
            f"- Whole service run, drained at the end: the simulator sent {res.loss['sent']:,.0f} "
            f"pushes, the subscriber received {res.loss['delivered']:,.0f} events, the service "
            f"counted {res.loss['dropped']:,.0f} dropped and {res.loss['late']:,.0f} late: "
            f"{unaccounted:,.0f} unaccounted for."
        )
    for label, c in (
        (f"at {res.plan.fixed_rate:g} msg/s (the figure above)", res.candles_fixed),
        ("over the whole service run, saturation included", res.candles),
    ):
        if not c:
            continue
        p50, p99 = c.delay_quantile(0.5), c.delay_quantile(0.99)
        lines.append(
            f"- Closed candles {label}: {c['live']:,.0f} closed live and "
            f"{c['rest']:,.0f} from the REST kline endpoint (the lookback before start), "
            f"{c['skipped']:,.0f} skipped as published already, {c['dropped']:,.0f} dropped, "
            f"{c['late']:,.0f} late pushes; delay from the close to Redis p50 "
            f"{(p50 or 0) * 1000:.0f} ms, p99 {(p99 or 0) * 1000:.0f} ms (interpolated in the "
            "histogram's buckets)."
        )
    for label, w, child in (
        ("push-to-Redis latency", res.svc_fixed, "sub"),
        ("bare client push-to-receive latency", res.bare_fixed, "bare"),
        ("ccxt push-to-receive latency", res.ccxt_fixed, "ccxt"),
    ):
        if w is not None and (hist := w.hist(child)):
            lines.append(
                f"- {label} at {res.plan.fixed_rate:g} msg/s: {sum(hist.values()):,} samples, "
                + ", ".join(
                    f"p{q * 100:g} {percentile(hist, q) or 0:.1f} ms"
                    for q in (0.5, 0.9, 0.99, 0.999)
                )
                + f", max {hist_max(hist):.1f} ms."
            )
    for label, samples in (("during ingest", res.top5_ms), ("feed idle", res.top5_idle_ms)):
        if samples:
            lines.append(
                f"- /top5 {label}: {len(samples)} requests, p50 {quantile(samples, 0.5):.2f} ms, "
                f"p99 {quantile(samples, 0.99):.2f} ms, max {max(samples):.2f} ms"
                + (f", {res.top5_errors} not 200." if samples is res.top5_ms else ".")
            )
    if res.rss_full_mb is not None:
        lines.append(
            f"- Memory: {res.rss_start_mb:.1f} MB right after subscribing (empty windows), "
            f"{res.rss_full_mb:.1f} MB with {res.full_symbols} symbols at "
            f"window_min = {LOOKBACK_MIN}."
        )
    return lines


# The hot path: the figures before its rework, from the report of commit 2cc304c (run at
# 2026-12-02 09:05 UTC on a quiet machine: the rest of the machine used 0-10 % of a core).
BEFORE_COMMIT = "2cc304c"
BEFORE: dict[str, float] = {
    "cpu": 33.0,
    "bare_cpu": 11.7,
    "max": 14_137.0,
    "bare_max": 33_033.0,
    "p50": 9.9,
    "p99": 20.7,
    "top5_p99": 12.17,
    "rss": 68.7,
}


def before_after(res: Results) -> list[str]:
    """The hot path's before/after table: the figures of `BEFORE` against this run's."""
    b = BEFORE
    p = res.plan
    bare_cpu = res.bare_fixed.cpu_pct("bare") if res.bare_fixed else None
    bare_max = res.bare_max.rate("bare", "received") if res.bare_max else None
    cpu = res.svc_fixed.cpu_pct("service") if res.svc_fixed else None
    best = res.sustained
    top = best.window.rate("sub", "events") if best else None
    hist = res.svc_fixed.hist("sub") if res.svc_fixed else {}
    rows = [
        (
            f"CPU at {p.fixed_rate:,.0f} msg/s (ratio to the bare loop of the same run)",
            f"{b['cpu']:.1f} % ({b['cpu'] / b['bare_cpu']:.2f}x)",
            f"{_fmt(cpu, ' %')} ({_fmt(_ratio(cpu, bare_cpu), 'x', 2)})",
            "≤ 1.25x",
        ),
        (
            "max sustained events/s into Redis (ratio to the bare loop)",
            f"{b['max']:,.0f} ({b['max'] / b['bare_max']:.2f}x)",
            f"{_fmt(top, '', 0)} ({_fmt(_ratio(top, bare_max), 'x', 2)})",
            "≥ 0.75x",
        ),
        (
            f"push-to-Redis p50 / p99 at {p.fixed_rate:,.0f} msg/s",
            f"{b['p50']:.1f} / {b['p99']:.1f} ms",
            f"{_fmt(percentile(hist, 0.5), '')} / {_fmt(percentile(hist, 0.99), ' ms')}",
            "p99 ≤ 10 ms",
        ),
        (
            "/top5 p99 during ingest",
            f"{b['top5_p99']:.2f} ms",
            _fmt(quantile(res.top5_ms, 0.99), " ms", 2),
            "≤ 10 ms",
        ),
        (
            f"RSS, {p.mem_symbols} full windows",
            f"{b['rss']:.1f} MB",
            _fmt(res.rss_full_mb, " MB"),
            "≤ 100 MB",
        ),
    ]
    return [
        f"| figure | before (commit {BEFORE_COMMIT}, quiet machine) | after (this run) | target |",
        "| --- | ---: | ---: | --- |",
        *(f"| {' | '.join(row)} |" for row in rows),
    ]


def write_report(path: Path, res: Results, command: str) -> None:
    """Write docs/performance.md (or `path`) whole: figures, set-up, details, profile."""
    p = res.plan
    n_conns = connections(p.symbols, p.per_conn)
    lines = [
        "# Performance",
        "",
        "Written by `screener bench` (devtools/bench); the figures of issues 3 and 11.",
        "",
        *provenance(command),
        *(
            [
                f"- Load average (1 min) at start / end: {res.load[0]:.2f} / {res.load[-1]:.2f} "
                f"on {os.cpu_count()} CPUs (the machine is shared: above about "
                f"{os.cpu_count()}, other work competed for the cores and every figure suffers)"
            ]
            if len(res.load) == 2
            else []
        ),
        "",
        "## Figures",
        "",
        *render_table(res),
        "",
        "### Three clients, one run",
        "",
        *clients_table(res),
        "",
        "Set-up: every part is its own process on loopback: a private redis-server, the "
        f"simulator ({p.symbols} symbols, pushes round-robin in 10 ms bursts), the service "
        f"(`python -m screener`, {n_conns} connections of {p.per_conn} symbols, LOG_LEVEL="
        "WARNING, otherwise production defaults), a redis-py subscriber that times each event "
        "against the simulator's `ts`, and the baseline: a bare trio-websocket client that "
        "subscribes the same way and only receives and counts; and ccxt "
        f"{CCXT_VERSION}'s MEXC client (ccxt.pro over asyncio and aiohttp, in its own virtual "
        "environment, its swap REST and WebSocket URLs pointed at the simulator, one "
        "`watch_ohlcv(symbol, '1m')` loop per symbol, all on the one connection ccxt opens). "
        "The maximum rates are reached "
        f"with the simulator asked for {p.max_rate:,.0f} pushes/s, so it is paced by "
        "backpressure from its reader. CPU is utime + stime from /proc/<pid>/stat over the "
        f"window ({p.cpu_s:g} s), as % of one core. The machine's cores are shared by all "
        "processes, so the maximum rates are those of this whole set-up, not of an isolated "
        "service. /top5 is timed in the bench process (httpx, one request at a time, kept-alive "
        "connection, absolute deadlines)."
        + (
            ""
            if p.quick
            else f" Memory is VmRSS with the simulator's clock running {p.mem_warp:g}x faster, "
            "so windows fill in seconds."
        ),
        "",
        "## Details",
        "",
        *details(res),
        "",
    ]
    if res.notes:
        lines += [*res.notes, ""]
    if res.profile:
        lines += [
            f"## Where the time goes (py-spy, service at {p.fixed_rate:,.0f} msg/s)",
            "",
            *res.profile,
            "",
        ]
    if not p.quick:
        lines += ["## The hot path: before and after", "", *before_after(res), ""]
        lines += [*CHANGES, *obstacles(res)]
    lines += kept_sections(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n")


KEPT_SECTIONS: Final = ("## Fleet",)
"""Sections other runs write into the same file (`screener bench --fleet`): a run of the
benchmark rewrites the rest and keeps these as they are."""


def kept_sections(path: Path) -> list[str]:
    """The `KEPT_SECTIONS` of the report already at `path`, each up to the next `## `."""
    if not path.exists():
        return []
    kept: list[str] = []
    keeping = False
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            keeping = line.strip() in KEPT_SECTIONS
            if keeping:
                kept.append("")
        if keeping:
            kept.append(line)
    return kept


def check_quick(res: Results) -> list[str]:
    """Quick mode asserts delivery only, never a speed."""
    problems = []
    if not res.bare_fixed or res.bare_fixed.rate("bare", "received") <= 0:
        problems.append("the bare client received nothing")
    if not res.svc_fixed or res.svc_fixed.rate("sub", "events") <= 0:
        problems.append("no event reached Redis at the fixed rate")
    if not res.svc_max or res.svc_max.rate("sub", "events") <= 0:
        problems.append("no event reached Redis at the maximum rate")
    if not res.top5_ms or res.top5_errors:
        problems.append(f"/top5 did not answer 200 ({res.top5_errors} errors)")
    if res.loss.get("delivered", 0) <= 0:
        problems.append("no events delivered over the run")
    return problems
