"""A replica's shard and name from its Kubernetes pod name (`FLEET_POD_NAME`).

The manifests (docker/kubernetes/) run one StatefulSet per shard, named `<name>-<shard>`, so
its pods are `<name>-<shard>-<ordinal>`. The pod name, given to the container through the
downward API, then says which shard the replica serves, and it is unique among live pods: a
stable `FLEET_REPLICA_ID` across restarts. Why per-shard StatefulSets rather than one with
`shard = ordinal % FLEET_SHARDS`: scaling one of those moves replicas between shards, and
neither anti-affinity nor a PodDisruptionBudget can select "the replicas of shard k" by a label.

A name of another shape, or one whose shard is outside the fleet, is refused at start in one
line, like any bad value: a mislabelled pod must not silently serve shard 0.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

_POD = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?-(?P<shard>[0-9]{1,3})-(?P<ordinal>[0-9]{1,5})")
MAX_NAME: Final = 63
"""A pod's hostname is at most one DNS label; it also fits a FLEET_REPLICA_ID (64)."""


@dataclass(frozen=True, kw_only=True)
class PodName:
    """A StatefulSet pod's name, read as `<name>-<shard>-<ordinal>`."""

    name: str
    shard: int
    ordinal: int


def pod_name(raw: str) -> PodName | None:
    """The parser of FLEET_POD_NAME: empty means not on Kubernetes (None)."""
    if not raw:
        return None
    match = _POD.fullmatch(raw)
    if match is None or len(raw) > MAX_NAME:
        raise ValueError(
            "must be a StatefulSet pod name <name>-<shard>-<ordinal> (lower-case letters, "
            f"digits and '-', at most {MAX_NAME}), e.g. screener-0-1"
        )
    return PodName(name=raw, shard=int(match["shard"]), ordinal=int(match["ordinal"]))


def apply_pod_name(values: dict[str, Any], env: Mapping[str, str]) -> list[str]:
    """With a pod name among the parsed `values`, set FLEET_SHARD from it and, unless
    FLEET_REPLICA_ID is given, the replica id to it; or one problem line why not (its shard
    is not in the fleet, or FLEET_SHARD says another)."""
    pod = values.get("FLEET_POD_NAME")
    if pod is None:
        return []
    shown = f"FLEET_POD_NAME={pod.name!r}"
    shards = values.get("FLEET_SHARDS")
    if shards is not None and pod.shard >= shards:
        return [f"{shown}: names shard {pod.shard}, which must be below FLEET_SHARDS={shards}"]
    if "FLEET_SHARD" in env and values.get("FLEET_SHARD", pod.shard) != pod.shard:
        return [
            f"{shown}: names shard {pod.shard}, but FLEET_SHARD={env['FLEET_SHARD']!r} "
            "(unset FLEET_SHARD, or name the StatefulSet for its shard)"
        ]
    values["FLEET_SHARD"] = pod.shard
    if not env.get("FLEET_REPLICA_ID"):
        values["FLEET_REPLICA_ID"] = pod.name
    return []


def derived_from_pod(env: Mapping[str, str]) -> dict[str, str]:
    """The variables a valid FLEET_POD_NAME in `env` sets, as text (for `check-config`)."""
    try:
        pod = pod_name(env.get("FLEET_POD_NAME", ""))
    except ValueError:
        return {}
    if pod is None:
        return {}
    derived = {"FLEET_SHARD": str(pod.shard)}
    if not env.get("FLEET_REPLICA_ID"):
        derived["FLEET_REPLICA_ID"] = pod.name
    return derived
