"""The Soak section of docs/reliability.md, written in place: the figures of a soak (printed
too), its set-up and a row a minute; the rest of the document is left as it is."""

from __future__ import annotations

from pathlib import Path

from devtools.bench.lab import DROPPED, RECEIVED
from devtools.bench.plan import connections
from devtools.bench.provenance import provenance
from devtools.bench.soak import MEXC_BUSY_RATE, SoakResult, rss_slope

SOAK_OUT = Path("docs/reliability.md")


def soak_summary(res: SoakResult) -> list[str]:
    """The figures of a soak: a table, then the accounting of the whole run."""
    p, w, t = res.plan, res.overall, res.totals
    first, last = res.samples[0], res.samples[-1]
    slope = rss_slope(res.samples)
    peaks = ", ".join(f"{queue} {value:,.0f}" for queue, value in sorted(last.peaks.items()))
    codes = ", ".join(f"{n:,} x {code}" for code, n in sorted(res.codes.items())) or "none"
    rows = [
        ("RSS right after subscribing (no push yet)", f"{res.rss_subscribed_mb:.1f} MB"),
        (
            f"RSS at start (after the {res.backfill_s:.0f} s backfill and {p.warmup_s:g} s of "
            "warm-up at full rate)",
            f"{first.rss_mb:.1f} MB",
        ),
        (f"RSS at end (minute {last.minute:.1f})", f"{last.rss_mb:.1f} MB"),
        ("RSS max of the samples", f"{max(s.rss_mb for s in res.samples):.1f} MB"),
        (
            f"RSS slope, least squares over the {len(res.samples)} per-minute samples",
            "—" if slope is None else f"{slope:+.2f} MB per 10 min",
        ),
    ]
    if w is not None and w.seconds > 0:
        sent = w.sent_rate()
        dropped = w.metric(DROPPED) / w.seconds
        rows += [
            ("offered / sent by the simulator", f"{p.rate:,.0f} / {sent:,.0f} pushes/s"),
            ("received by the service", f"{w.metric(RECEIVED) / w.seconds:,.0f} messages/s"),
            ("delivered to the Redis subscriber", f"{w.rate('sub', 'events'):,.0f} events/s"),
            (
                "dropped by the newest-per-symbol rule",
                f"{dropped:,.0f} events/s ({dropped / sent:.1%} of sent)" if sent else "—",
            ),
            ("service CPU, % of one core", f"{w.cpu_pct('service'):.0f} %"),
        ]
    rows += [
        (f"publish backlog max (sampled every {p.probe_s:g} s)", f"{res.backlog_max:,.0f}"),
        ("screener_queue_peak at end", peaks),
        (
            f"/health answered (every {p.probe_s:g} s, 5 s timeout)",
            f"{res.probes - res.unanswered:,} of {res.probes:,} ({codes})",
        ),
        ("/metrics scrapes without an answer", f"{res.scrape_failures:,}"),
    ]
    lines = ["| figure | value |", "| --- | ---: |", *(f"| {a} | {b} |" for a, b in rows), ""]
    lines.append(
        f"Whole service run, from subscribing to drained (backfill and warm-up included): the "
        f"simulator sent {t['sent']:,.0f} pushes, the subscriber received "
        f"{t['delivered']:,.0f} events, the service dropped {t['dropped']:,.0f} (counted in "
        f"screener_events_dropped_total) and rejected {t['late']:,.0f} as late: "
        f"{res.unaccounted:,.0f} unaccounted for (sent - delivered - dropped)."
    )
    if t["dropped"]:
        lines.append(
            f"The service dropped {t['dropped'] / t['sent']:.1%} of the pushes by the "
            "newest-per-symbol rule, each one counted."
        )
    else:
        lines.append("Nothing was dropped: at this rate the service kept up.")
    return lines


def soak_section(res: SoakResult, command: str) -> list[str]:
    """The Soak section of docs/reliability.md: its figures, the set-up, a row a minute."""
    p = res.plan
    n_conns = connections(p.symbols, p.per_conn)
    queues = sorted(res.samples[-1].peaks)
    lines = [
        "## Soak",
        "",
        f"Written by `screener bench --soak` (devtools/bench): {p.minutes:g} minutes at "
        f"{p.rate:,.0f} pushes/s offered, {p.rate / MEXC_BUSY_RATE:g} times the "
        f"~{MEXC_BUSY_RATE:,.0f}/s of a busy MEXC day.",
        "",
        *provenance(command),
        "",
        *soak_summary(res),
        "",
        "Set-up: the processes of the benchmark ([performance.md](performance.md)), each on "
        f"loopback: a private redis-server, the simulator ({p.symbols} symbols, real-time "
        f"clock), the service (`python -m screener`, {n_conns} connections of {p.per_conn} "
        "symbols, production defaults: BACKFILL=on, PUBLISH_BUFFER=20000, LOG_LEVEL=WARNING) "
        "and a redis-py subscriber counting `market_data` events. RSS is VmRSS of the service "
        "from /proc, CPU its utime + stime. Past its sustained capacity the service keeps up "
        "by coalescing in the publish buffer (newest event per symbol) and counts what it "
        "drops; the run shows whether that stays bounded: memory flat, every push either "
        "delivered or counted.",
        "",
        "### Per minute",
        "",
        "| minute | RSS MB | CPU % | sent/s | received/s | delivered/s | backlog | dropped "
        "(total) | " + " | ".join(f"peak {q}" for q in queues) + " |",
        "| " + " | ".join(["---:"] * (8 + len(queues))) + " |",
    ]
    for s in res.samples:
        lines.append(
            f"| {s.minute:.1f} | {s.rss_mb:.1f} | {s.cpu_pct:.0f} | {s.sent_per_s:,.0f} | "
            f"{s.received_per_s:,.0f} | {s.delivered_per_s:,.0f} | {s.backlog:,.0f} | "
            f"{s.dropped:,.0f} | " + " | ".join(f"{s.peaks.get(q, 0):,.0f}" for q in queues) + " |"
        )
    return lines


def write_section(path: Path, section: list[str], title: str) -> None:
    """Replace the section of `path` that starts with `section[0]` (up to the next `## `
    heading), or append it; the rest of the document is left as it is."""
    text = path.read_text() if path.exists() else f"# {title}\n"
    lines = text.rstrip("\n").split("\n")
    start = next((i for i, line in enumerate(lines) if line.strip() == section[0]), None)
    if start is None:
        lines += ["", *section]
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        lines[start:end] = [*section, ""] if end < len(lines) else section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n")
