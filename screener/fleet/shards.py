"""The fleet's pure parts: which shard a symbol belongs to, what a leader lease allows, and
the global ranking merged from every shard's.

Replicas split the universe into `FLEET_SHARDS` shards; the replicas of one shard elect a
leader through a lease in Redis (actors/fleet.py does the talking). Everything here is a
function of its arguments and the time it is given, so the rules are tested on their own.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal, NamedTuple, TypeAlias

from screener.core.models import Fence, Leadership, Ranking, Role, SymbolStat

FENCE_MARGIN: Final = 0.2
"""Share of the lease a leader gives up as a safety margin: it stops publishing at 80 % of
the lease counted from *before* it sent the renewal, so clocks that drift apart by up to 20 %
over one lease still never see two leaders publish at once."""


def shard_of(symbol: str, shards: int) -> int:
    """Rendezvous hashing: the shard whose (shard, symbol) hash is highest. The hash is
    BLAKE2b, the same in every process and Python version (`hash()` is salted per process);
    a listing added or removed moves no other symbol, and changing the shard count moves
    only the symbols the new shards win."""
    if shards == 1:
        return 0
    name = symbol.encode()

    def score(shard: int) -> int:
        digest = hashlib.blake2b(name, digest_size=8, key=shard.to_bytes(4, "big")).digest()
        return int.from_bytes(digest, "big")

    return max(range(shards), key=score)


TOKEN_SEPARATOR: Final = "#"
"""Between the replica id and the process's nonce in a lease token; never in a replica id
(FLEET_REPLICA_ID allows letters, digits, '_', '.', ':' and '-')."""


def new_token(replica: str) -> str:
    """This process's token: its replica id and a random nonce, so no other process (another
    with the same FLEET_REPLICA_ID, or this one's next run) ever holds the same."""
    return f"{replica}{TOKEN_SEPARATOR}{secrets.token_hex(8)}"


def replica_of(token: str) -> str:
    """The replica id in a token (a token of an older version is its replica id alone)."""
    return token.partition(TOKEN_SEPARATOR)[0]


class Grant(NamedTuple):
    """What Redis answered to one acquire-or-renew: who holds the lease now (a token), the
    shard's term (incremented at every acquisition of a free lease), who held it before this
    acquisition (None: nobody since Redis started; for a renewal or a refusal, `holder`),
    and whether this request took or extended it (False: another holds it, or this replica
    missed its previous answer, so Redis left the lease as it was)."""

    holder: str
    term: int
    previous: str | None
    renewed: bool = True


RefusalReason: TypeAlias = Literal["replica_id", "config"]
REFUSAL_REASONS: Final[tuple[RefusalReason, ...]] = ("replica_id", "config")


class Refusal(NamedTuple):
    """Redis refused this replica any part in its shard's lease: another live process holds
    its replica id, or the fleet on its channel runs another configuration. `problem` names
    the variable and both values (screener/fleet/agreement.py)."""

    reason: RefusalReason
    problem: str


class Late(NamedTuple):
    """The request reached Redis after its deadline (`redis_ms`: Redis's clock then): its
    sender had given up on it, so Redis changed nothing."""

    redis_ms: int


Answer: TypeAlias = Grant | Refusal | Late


class Lease:
    """One replica's view of its shard's lease, by its own monotonic clock.

    `valid_until` counts from the moment the request was *sent*, never from the answer, so a
    process frozen between the two (SIGSTOP, a VM pause) wakes with a lease already expired
    by its own clock and publishes nothing until Redis confirms it again. `heard` says
    whether the last request's answer came within its deadline; the next request carries
    it, and Redis extends or grants the lease only to a replica that heard its previous
    answer: one whose answers come back late never learns that it holds the lease, so it
    must not keep it from a standby.
    """

    def __init__(
        self,
        replica: str,
        lease_s: float,
        *,
        keys: tuple[str, str] = ("lease", "term"),
        token: str | None = None,
    ) -> None:
        self.replica = replica
        self.lease_s = lease_s
        self.keys = keys  # the shard's lease and term keys in Redis
        self.token = replica if token is None else token  # what the lease key holds for us
        self.role: Role = "standby"
        self.leader: str | None = None  # the holder's replica id
        self.term = 0
        self.valid_until = float("-inf")
        self.error: str | None = "no lease answer yet"  # why the last request got no grant
        self.refusal: Refusal | None = None  # why Redis refuses this replica, while it does
        self.leaderless_since: float | None = None  # refused by Redis since then
        self.took_over = False  # the last answer made this replica leader after another
        self.heard = True  # the last request's answer came in time (or none was sent yet)

    @property
    def renew_every_s(self) -> float:
        return self.lease_s / 3

    @property
    def timeout_s(self) -> float:
        """How long a request may take, and so its deadline in Redis: one renewal period."""
        return self.renew_every_s

    def answered(self, grant: Grant, *, sent_at: float) -> Leadership:
        """Record a grant (or a refusal: another holder) and say what the publisher may do."""
        was_leader, known_term = self.role == "leader", self.term
        self.error = None
        self.refusal = None
        self.heard = True
        self.leaderless_since = None
        self.leader = replica_of(grant.holder) or None
        self.term = grant.term
        if grant.holder != self.token:
            self.role = "standby"
            self.valid_until = float("-inf")
            self.took_over = False
            return Leadership("standby", self.valid_until, self.term)
        self.role = "leader"
        if grant.renewed:
            self.valid_until = sent_at + self.lease_s * (1 - FENCE_MARGIN)
        # Another replica led in between when the last acquisition was another's, or when
        # the term moved by more than the one acquisition this answer can be (answers missed).
        skipped = known_term > 0 and grant.term > known_term + 1
        fresh = (grant.previous is None or grant.previous == self.token) and not skipped
        self.took_over = not was_leader and not fresh
        fence = Fence(*self.keys, token=self.token, term=self.term)
        return Leadership("leader", self.valid_until, self.term, fence=fence)

    def refused(self, refusal: Refusal) -> Leadership:
        """Redis refused this replica (its id, its configuration): a standby until an
        answer says otherwise; what it holds is its shard leader's to publish."""
        self.error = None
        self.heard = True
        self.refusal = refusal
        self.role = "standby"
        self.valid_until = float("-inf")
        self.took_over = False
        return Leadership("standby", self.valid_until, self.term)

    def failed(self, reason: str, *, refused: bool, now: float, heard: bool = True) -> None:
        """No grant: nothing is known, the role stays and its validity keeps running out.
        `refused`: Redis answered with an error (OOM, READONLY, ...): no replica can hold
        the lease there, so the shard is leaderless from now unless this one still is.
        `heard` False: the request may have reached Redis but its answer did not come in
        time (the next request says so)."""
        self.error = reason
        self.took_over = False
        self.heard = heard
        if refused and not self.may_publish(now) and self.leaderless_since is None:
            self.leaderless_since = now

    def may_publish(self, now: float) -> bool:
        return self.role == "leader" and now < self.valid_until


# --- the shard rankings in Redis and their merge ---------------------------------------


def encode_shard_ranking(ranking: Ranking, shard: int) -> dict[str, Any]:
    """A shard's part of the global ranking: its own top-N both ways, and how many it
    ranked; the global top-N lies within the union of the shards' top-Ns."""
    return {
        "shard": shard,
        "wall_ts": ranking.wall_ts,
        "lookback_min": ranking.lookback_min,
        "ranked": ranking.ranked,
        "gainers": [list(s) for s in ranking.gainers],
        "losers": [list(s) for s in ranking.losers],
    }


def decode_shard_ranking(doc: Mapping[str, Any]) -> Ranking:
    """The inverse of `encode_shard_ranking`; raises KeyError/TypeError/ValueError on a
    document of another shape (a replica of another version, or garbage)."""

    def stats(rows: Iterable[Any]) -> tuple[SymbolStat, ...]:
        return tuple(SymbolStat(str(s), float(c), float(p)) for s, c, p in rows)

    return Ranking(
        wall_ts=float(doc["wall_ts"]),
        lookback_min=int(doc["lookback_min"]),
        gainers=stats(doc["gainers"]),
        losers=stats(doc["losers"]),
        ranked=int(doc["ranked"]),
    )


def merge_rankings(
    own: Ranking, others: Mapping[int, Ranking], *, shard: int, shards: int, top_n: int
) -> Ranking:
    """The global top-N from this shard's ranking and the others' (exact: each shard's
    top-N holds every one of its symbols that can be in the global top-N). Dated by `own`;
    the shards missing from `others` are named in the result."""
    parts = [own, *(r for i, r in others.items() if i != shard)]
    stats = [s for part in parts for s in part.gainers + part.losers]
    unique = {s.symbol: s for s in stats}.values()
    reporting = {shard, *others}
    return own._replace(
        gainers=tuple(sorted(unique, key=lambda s: (-s.change_pct, s.symbol))[:top_n]),
        losers=tuple(sorted(unique, key=lambda s: (s.change_pct, s.symbol))[:top_n]),
        ranked=sum(part.ranked for part in parts),
        shards_total=shards,
        shards_missing=tuple(i for i in range(shards) if i not in reporting),
    )
