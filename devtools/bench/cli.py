"""The command line of `screener bench` (also `python -m devtools.bench`): the benchmark, the
soak, and the children the bench starts as `python -m devtools.bench sim|bare|sub ...`."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import time
from pathlib import Path

from devtools.bench.children import add_role_parsers, run_child
from devtools.bench.fleet import QUICK_FLEET, FleetPlan, fleet_section, run_fleet_bench
from devtools.bench.plan import DEFAULT_OUT, QUICK, BenchError, Plan, say
from devtools.bench.report import check_quick, clients_table, render_table, write_report
from devtools.bench.run import run
from devtools.bench.soak import SoakPlan, run_soak
from devtools.bench.soak_report import SOAK_OUT, soak_section, soak_summary, write_section


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="screener bench",
        description="Measure throughput, CPU, latency and memory of the service against a bare "
        "trio-websocket client; print one table and write it to --out.",
    )
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke test")
    parser.add_argument(
        "--out",
        type=Path,
        help=f"report path [{DEFAULT_OUT}; --quick writes none unless given]",
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument(
        "--no-ccxt", action="store_true", help="skip ccxt's MEXC client (the third client)"
    )
    parser.add_argument(
        "--micro",
        action="store_true",
        help="instead: the hot path's per-push and per-write costs against what they replaced",
    )
    parser.add_argument(
        "--soak",
        type=float,
        nargs="?",
        const=SoakPlan.minutes,
        metavar="MINUTES",
        help=f"instead: a soak of MINUTES [{SoakPlan.minutes:g}] at --rate; prints a line a "
        f"minute and writes the Soak section of --out [{SOAK_OUT}]",
    )
    parser.add_argument(
        "--rate",
        type=float,
        help=f"pushes/s offered during --soak [{SoakPlan.rate:,.0f}: 5 x a busy MEXC day]",
    )
    parser.add_argument(
        "--fleet",
        action="store_true",
        help="instead: 2 shards x 2 replicas at 2,000 pushes/s (CPU and events/s per replica), "
        "5 takeovers after SIGKILL and 5 after SIGSTOP of a leader (the gap, and every push "
        "counted: lost, duplicated, back in time); writes the Fleet section of "
        f"--out [{DEFAULT_OUT}; with --quick, a smoke run, none unless given]",
    )
    add_role_parsers(parser)  # the bench's own children
    return parser


def main(argv: list[str] | None = None) -> int:
    """`screener bench [options]`, or one of its children (`sim`, `bare`, `sub`)."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.role is not None:
        return run_child(args)
    if args.micro:
        from devtools.bench import micro  # trio and the service's code: only for this

        return micro.main()
    # SIGTERM unwinds like Ctrl-C, so `finally` stops every child (SIGKILL cannot be caught:
    # the Python children then die by PR_SET_PDEATHSIG, only redis-server would be left).
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    command = " ".join(["screener bench", *argv])
    if args.soak is not None:
        if args.quick or args.soak <= 0 or (args.rate is not None and args.rate <= 0):
            build_parser().error("--soak takes MINUTES > 0, --rate > 0 and no --quick")
        args.rate = SoakPlan.rate if args.rate is None else args.rate
        return soak_main(args, command)
    if args.rate is not None:
        build_parser().error("--rate applies to --soak only")
    if args.fleet:
        return fleet_main(args, command)
    plan = QUICK if args.quick else Plan()
    if args.no_ccxt:
        plan = dataclasses.replace(plan, ccxt=False)
    out: Path | None = args.out or (None if args.quick else DEFAULT_OUT)
    started = time.monotonic()
    try:
        res = run(plan, profile=not args.no_profile)
    except BenchError as exc:
        print(f"screener bench: {exc}", file=sys.stderr)
        return 1
    table = render_table(res)
    print("\n".join([*table, "", *clients_table(res)]))
    if out is not None:
        write_report(out, res, command)
        say(f"wrote {out} in {time.monotonic() - started:.0f} s")
    if plan.quick:
        problems = check_quick(res)
        for problem in problems:
            print(f"screener bench: quick check failed: {problem}", file=sys.stderr)
        return 1 if problems else 0
    return 0


def soak_main(args: argparse.Namespace, command: str) -> int:
    """`--soak`: run it, print its figures, write the Soak section of --out."""
    plan = SoakPlan(minutes=args.soak, rate=args.rate)
    out: Path = args.out or SOAK_OUT
    try:
        res = run_soak(plan)
    except BenchError as exc:
        print(f"screener bench: {exc}", file=sys.stderr)
        return 1
    print("\n".join(soak_summary(res)), flush=True)
    write_section(out, soak_section(res, command), "Reliability")
    say(f"wrote the Soak section of {out}")
    return 0


def fleet_main(args: argparse.Namespace, command: str) -> int:
    """`--fleet`: run it, print its section, write it into --out."""
    out: Path | None = args.out or (None if args.quick else DEFAULT_OUT)
    try:
        res = run_fleet_bench(QUICK_FLEET if args.quick else FleetPlan())
    except BenchError as exc:
        print(f"screener bench: {exc}", file=sys.stderr)
        return 1
    section = fleet_section(res, command)
    print("\n".join(section), flush=True)
    if out is not None:
        write_section(out, section, "Performance")
        say(f"wrote the Fleet section of {out}")
    return 0
