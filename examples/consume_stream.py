"""Follow the screener's Redis streams (PUBLISH_MODE=stream or both) with a consumer group:
each entry is printed, then acknowledged (XACK), so a consumer that stops or crashes resumes
where it left off: entries it received but never acknowledged first, then the new ones.

    python examples/consume_stream.py --group screener-demo --consumer c1 --count 10

Run several consumers with the same --group and different --consumer names to share the
work; each entry goes to one of them.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import redis
from common import Checker, connect, redis_options, summary


def ensure_groups(client: redis.Redis, streams: list[str], group: str, start: str) -> None:
    """Create the group on each stream (and the stream itself if nothing was written yet);
    an existing group keeps its position, which is what makes a restart resume."""
    for stream in streams:
        try:
            client.xgroup_create(stream, group, id=start, mkstream=True)
        except redis.ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    redis_options(parser)
    parser.add_argument(
        "--stream",
        action="append",
        help="stream to follow (repeatable; default market_data and top_movers)",
    )
    parser.add_argument("--group", default="screener-examples", help="consumer group name")
    parser.add_argument("--consumer", default="consumer-1", help="this consumer's name")
    parser.add_argument(
        "--start",
        default="0",
        help="where a new group starts: 0 = the oldest entry kept, $ = only new ones",
    )
    parser.add_argument("--block-ms", type=int, default=1000, help="XREADGROUP BLOCK")
    args = parser.parse_args(argv)
    streams: list[str] = args.stream or ["market_data", "top_movers"]
    checker = Checker() if args.validate else None
    client = connect(args)
    ensure_groups(client, streams, args.group, args.start)
    # "0": this consumer's pending entries (delivered before a crash, never acknowledged);
    # once none are left, ">": entries never delivered to anyone in the group.
    position = "0"
    seen = 0
    try:
        while True:
            answer: Any = client.xreadgroup(
                args.group,
                args.consumer,
                dict.fromkeys(streams, position),
                count=100,
                block=None if position == "0" else args.block_ms,
            )
            entries = [(s.decode(), i, f) for s, batch in answer or [] for i, f in batch]
            if position == "0" and not entries:
                position = ">"
                continue
            for stream, entry_id, fields in entries:
                if fields is None:  # trimmed by MAXLEN while pending: nothing left to handle
                    client.xack(stream, args.group, entry_id)
                    continue
                document = json.loads(fields[b"data"])
                if checker is not None and (errors := checker.errors(document)):
                    print(f"invalid {stream} {entry_id.decode()}: {errors}", file=sys.stderr)
                    return 1
                print(f"{stream} {entry_id.decode()} {summary(document)}", flush=True)
                client.xack(stream, args.group, entry_id)
                seen += 1
                if seen == args.count:
                    return 0
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
