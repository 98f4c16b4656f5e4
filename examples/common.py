"""What the example consumers share: the Redis options, one printed line per event and the
optional check against the JSON Schemas the screener ships (screener/schemas/)."""

from __future__ import annotations

import argparse
import json
from importlib import resources
from typing import Any

import redis

SCHEMAS = ("market_data", "candle", "top_movers", "top5", "health", "error")


def redis_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="Redis host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=6379, help="Redis port (default 6379)")
    parser.add_argument("--password", default=None, help="Redis password (REDIS_PASSWORD)")
    parser.add_argument(
        "--count", type=int, default=0, help="exit after this many messages (0: never)"
    )
    parser.add_argument(
        "--validate",
        action="store_true",
        help="check each document against the packaged JSON Schemas (needs jsonschema)",
    )


def connect(args: argparse.Namespace) -> redis.Redis:
    return redis.Redis(host=args.host, port=args.port, password=args.password)


class Checker:
    """Validates documents by their `type` against the schemas installed with the screener
    package (`pip install screener` carries them), resolving cross-file refs offline."""

    def __init__(self) -> None:
        from jsonschema import Draft202012Validator
        from referencing import Registry, Resource

        files = resources.files("screener").joinpath("schemas")
        loaded = [json.loads(files.joinpath(f"{n}.schema.json").read_text()) for n in SCHEMAS]
        registry: Registry[Any] = Registry().with_resources(
            (s["$id"], Resource.from_contents(s)) for s in loaded
        )
        self.validators = {
            name: Draft202012Validator(schema, registry=registry)
            for name, schema in zip(SCHEMAS, loaded, strict=True)
        }

    def errors(self, document: Any) -> list[str]:
        kind = document.get("type") if isinstance(document, dict) else None
        if kind not in ("market_data", "candle", "top_movers"):
            return [f"unknown document type {kind!r}"]
        return [e.message for e in self.validators[kind].iter_errors(document)]


def summary(document: dict[str, Any]) -> str:
    """One line per event: what a consumer would act on."""
    if document.get("type") == "market_data":
        return (
            f"market_data {document['symbol']} candle_ts={document['candle_ts']} "
            f"ts={document['ts']} close={document['close']!r} "
            f"change_pct={document['change_pct']:.4f} source={document['source']}"
        )
    if document.get("type") == "candle":
        return (
            f"candle {document['symbol']} candle_ts={document['candle_ts']} "
            f"close={document['close']!r} source={document['source']}"
        )
    if document.get("type") == "top_movers":
        gainers = ",".join(m["symbol"] for m in document["top5_gainers"])
        losers = ",".join(m["symbol"] for m in document["top5_losers"])
        return f"top_movers ts_ms={document['ts_ms']} gainers={gainers} losers={losers}"
    return f"unknown {document!r}"
