"""Follow the screener's closed candles (`candle` events on CANDLES_CHANNEL) and keep a
gap-free series per symbol, ordered by candle_ts.

Candles come once per (symbol, candle_ts), in candle_ts order per symbol, except a minute
repaired from the REST kline endpoint (source mexc-rest-kline), which may come after later
minutes closed live. So this consumer orders by candle_ts, not by arrival: a candle waits
until every earlier minute of its symbol is in, or was declared missing. It prints:

    candle SYMBOL candle_ts=T close=C source=S   next in the symbol's series
    missing SYMBOL candle_ts=T                   a hole still open once the symbol has
                                                 closed --gap-min minutes past it
    late SYMBOL candle_ts=T close=C source=S     a minute before the series' position (after
                                                 it was declared missing, or before the
                                                 first candle this consumer saw)
    duplicate SYMBOL candle_ts=T                 seen before and ignored (there should be none)

A hole is judged by candle time (the symbol's newest candle_ts), not by this machine's clock:
the verdict is the same however late the consumer reads. The service gives up on a repair
after LOOKBACK_MIN minutes, so --gap-min LOOKBACK_MIN gives a final verdict.

    python examples/consume_candles.py --port 6379 --gap-min 15 --validate
    python examples/consume_candles.py --port 6379 --stream --start 0   # PUBLISH_MODE=stream|both
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Generator
from typing import Any

import redis
from common import Checker, connect, redis_options, summary

MINUTE = 60
DUPLICATE_MEMORY_MIN = 1440
"""Minutes of candle_ts kept per symbol to recognise a duplicate (a day)."""


class Series:
    """One symbol's series: the next minute it expects, the candles that wait behind a
    hole, and the minutes already seen (for duplicates)."""

    def __init__(self, symbol: str, first_ts: int, gap_min: int) -> None:
        self.symbol = symbol
        self.gap_s = gap_min * MINUTE
        self.next_ts = first_ts
        self.waiting: dict[int, dict[str, Any]] = {}
        self.seen: set[int] = set()

    def add(self, candle: dict[str, Any]) -> list[str]:
        """The lines `candle` brings: itself and what it unblocks, in candle_ts order."""
        t: int = candle["candle_ts"]
        if t in self.seen:
            return [f"duplicate {self.symbol} candle_ts={t}"]
        self._remember(t)
        if t < self.next_ts:
            return [line("late", candle)]
        self.waiting[t] = candle
        lines = self._release()
        newest = max(self.waiting, default=self.next_ts)
        while self.waiting and newest - self.next_ts >= self.gap_s:
            lines.append(f"missing {self.symbol} candle_ts={self.next_ts}")
            self.next_ts += MINUTE
            lines += self._release()
        return lines

    def _release(self) -> list[str]:
        lines = []
        while (candle := self.waiting.pop(self.next_ts, None)) is not None:
            lines.append(line("candle", candle))
            self.next_ts += MINUTE
        return lines

    def _remember(self, t: int) -> None:
        self.seen.add(t)
        if len(self.seen) > 2 * DUPLICATE_MEMORY_MIN:
            oldest = self.next_ts - DUPLICATE_MEMORY_MIN * MINUTE
            self.seen = {s for s in self.seen if s >= oldest}


def line(kind: str, candle: dict[str, Any]) -> str:
    """`candle SYMBOL candle_ts=T close=C source=S`, with `kind` in place of `candle`."""
    return kind + summary(candle).removeprefix("candle")


Messages = Generator[bytes, None, None]


def from_pubsub(client: redis.Redis, channel: str) -> Messages:
    """Each message on `channel`. Pub/sub keeps nothing for an absent subscriber."""
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    try:
        for message in pubsub.listen():
            if message["type"] == "message":
                yield message["data"]
    finally:
        pubsub.close()


def from_stream(client: redis.Redis, stream: str, start: str, block_ms: int) -> Messages:
    """Each entry of `stream` after `start` (XREAD; consume_stream.py shows a consumer group,
    which resumes where it left off). `$` is resolved once to the newest id, so nothing
    added between two reads is missed."""
    position = start
    if start == "$":
        newest: Any = client.xrevrange(stream, count=1)
        position = newest[0][0] if newest else "0-0"
    while True:
        answer: Any = client.xread({stream: position}, count=100, block=block_ms)
        for _, entries in answer or []:
            for entry_id, fields in entries:
                position = entry_id
                yield fields[b"data"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    redis_options(parser)
    parser.add_argument("--channel", default="candles", help="CANDLES_CHANNEL (default candles)")
    parser.add_argument(
        "--stream", action="store_true", help="read the stream named --channel instead"
    )
    parser.add_argument("--start", default="$", help="with --stream: read after this id")
    parser.add_argument("--block-ms", type=int, default=1000, help="with --stream: XREAD BLOCK")
    parser.add_argument(
        "--gap-min",
        type=int,
        default=5,
        help="declare a hole missing once its symbol closed this many minutes past it",
    )
    args = parser.parse_args(argv)
    checker = Checker() if args.validate else None
    client = connect(args)
    series: dict[str, Series] = {}
    if args.stream:
        messages = from_stream(client, args.channel, args.start, args.block_ms)
    else:
        messages = from_pubsub(client, args.channel)
    seen = 0
    try:
        for data in messages:
            candle = json.loads(data)
            if checker is not None and (errors := checker.errors(candle)):
                print(f"invalid {args.channel}: {errors}", file=sys.stderr)
                return 1
            symbol = candle["symbol"]
            if symbol not in series:
                series[symbol] = Series(symbol, candle["candle_ts"], args.gap_min)
            for text in series[symbol].add(candle):
                print(text, flush=True)
            seen += 1
            if seen == args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        messages.close()
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
