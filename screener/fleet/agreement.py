"""What every replica publishing to one channel must agree on, and the lines that say why a
replica that disagrees may not lead.

Replicas that publish to the same Redis database and channel are one fleet, whatever their
FLEET_KEY_PREFIX: the lease script registers this document under a key named by the
channel (and one named by the prefix), and refuses a replica whose document differs
(screener/fleet/lease.py). Pure: the document, its encoding, and the problem lines.
"""

from __future__ import annotations

from typing import Final, NamedTuple

import orjson

from screener.core.config import Settings

CHANNEL_KEY: Final = "screener:channel:{channel}"
"""Where a channel's fleet registers its configuration: named by the channel, not by the
prefix, so replicas with different prefixes on one channel still meet."""

VARIABLES: Final = (
    "MARKET_DATA_CHANNEL",
    "FLEET_KEY_PREFIX",
    "FLEET_SHARDS",
    "SYMBOL_WHITELIST",
    "MAX_SYMBOLS",
)
"""The settings that must be equal across a fleet, in the order a disagreement is named:
where it publishes, which keys hold its leases, how the universe is split, which symbols
the universe holds (USDT perpetuals, after the whitelist, capped at MAX_SYMBOLS)."""


class Agreement(NamedTuple):
    """This replica's values of `VARIABLES`, as text."""

    channel: str
    prefix: str
    shards: int
    whitelist: tuple[str, ...]  # sorted; empty: every live USDT perpetual
    max_symbols: int

    @classmethod
    def of(cls, settings: Settings) -> Agreement:
        return cls(
            channel=settings.redis.market_data_channel,
            prefix=settings.fleet.key_prefix,
            shards=settings.fleet.shards,
            whitelist=tuple(sorted(settings.exchange.whitelist)),
            max_symbols=settings.exchange.max_symbols,
        )

    def values(self) -> dict[str, str]:
        return dict(
            zip(
                VARIABLES,
                (
                    self.channel,
                    self.prefix,
                    str(self.shards),
                    ",".join(self.whitelist),
                    str(self.max_symbols),
                ),
                strict=True,
            )
        )

    def document(self) -> bytes:
        """The registered form: compact JSON with sorted keys, compared byte for byte."""
        return orjson.dumps(self.values(), option=orjson.OPT_SORT_KEYS)

    def channel_key(self) -> str:
        return CHANNEL_KEY.format(channel=self.channel)


def _shown(value: str) -> str:
    return value if value else "(empty)"


def disagreement(ours: Agreement, stored: bytes, *, where: str) -> str:
    """The problem line for a refusal: the first variable whose value differs, named with
    both values. `where`: "channel" (the fleet on our channel registered `stored`) or
    "prefix" (the fleet under our prefix did)."""
    fleet = (
        f"the fleet on channel {ours.channel}"
        if where == "channel"
        else f"the fleet under FLEET_KEY_PREFIX={ours.prefix}"
    )
    try:
        theirs = orjson.loads(stored)
        if not isinstance(theirs, dict):
            raise TypeError(type(theirs).__name__)
    except (orjson.JSONDecodeError, TypeError):
        return f"{fleet} registered a configuration this version cannot read: {stored[:80]!r}"
    for name, value in ours.values().items():
        other = theirs.get(name)
        if other != value:
            runs = "publishes to" if name == "MARKET_DATA_CHANNEL" else "runs"
            return (
                f"{name}={_shown(value)} here, but {fleet} {runs} "
                f"{name}={_shown(str(other)) if other is not None else '(unset)'}"
            )
    return f"{fleet} registered another configuration: {stored[:80]!r}"


def clash(replica: str, lease_s: float) -> str:
    """The problem line when another live process holds this replica id."""
    return (
        f"FLEET_REPLICA_ID={replica} is in use by another live process of this fleet; this "
        f"one will not lead while it runs (after a restart, the previous process's "
        f"registration expires within FLEET_LEASE_S={lease_s:g}s)"
    )
