"""Follow the screener on Redis pub/sub: subscribe to `market_data` and `top_movers` and print
one line per event.

Pub/sub is fire and forget: what is published while this consumer is away is lost (use
PUBLISH_MODE=stream and consume_stream.py to resume instead).

    python examples/consume_pubsub.py --host 127.0.0.1 --port 6379 --count 10 --validate
"""

from __future__ import annotations

import argparse
import json
import sys

from common import Checker, connect, redis_options, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    redis_options(parser)
    parser.add_argument(
        "--channel",
        action="append",
        help="channel to follow (repeatable; default market_data and top_movers)",
    )
    args = parser.parse_args(argv)
    checker = Checker() if args.validate else None
    client = connect(args)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(*(args.channel or ["market_data", "top_movers"]))
    seen = 0
    try:
        for message in pubsub.listen():
            if message["type"] != "message":
                continue
            document = json.loads(message["data"])
            if checker is not None and (errors := checker.errors(document)):
                print(f"invalid {message['channel'].decode()}: {errors}", file=sys.stderr)
                return 1
            print(summary(document), flush=True)
            seen += 1
            if seen == args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        pubsub.close()
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
