"""/livez and /readyz: two probes that mean one thing each, beside /health's full report.

Liveness says only whether the process and its event loop work: a task the app runs
(`run_heartbeat`) writes trio's time into a snapshot every `BEAT_PERIOD_S`, and /livez
answers 200 while that beat is younger than `LIVENESS_LIMIT_S`, 503 once the loop has not
run it for that long. It never looks at the exchange, Redis or the fleet: an orchestrator
restarts a container whose liveness fails, and a restart cures none of those (it would only
lose every window and warm start of every replica at once, during an exchange outage).

Readiness is /health's verdict and nothing else (`health_report`): 200 while /health would
answer 200, 503 while it would answer 503, so one alert and one probe never disagree. Why each
verdict is (not) ready, for a load balancer or a rolling update:
- "ok": ready.
- "degraded" (REST failover, a connection down, Redis refusing writes): ready. The market is
  followed and /top5 is current; a replica taken out would serve nobody better.
- a standby ("ok" with `fleet.role` "standby"): ready. It serves the global /top5 like its
  leader and takes over publishing when the lease falls to it.
- "stale" (no fresh feed, no symbol tracked): not ready. Its /top5 is frozen or absent; a
  new pod becomes ready only once it receives pushes, so a rollout waits for that before it
  stops an old one. When every replica is stale (an exchange outage) none is ready: clients
  of /top5 get no answer instead of a frozen ranking, and nothing restarts.
- "refused" (FLEET_REPLICA_ID in use, or settings that differ from its fleet's): not ready.
  It will never publish until an operator fixes it, and a rollout of such a configuration
  halts at its first pod while the old ones keep serving.
- "leaderless" (Redis has refused this shard's lease for more than two leases): not ready.
  Nobody publishes the shard's events; the replicas of the shards Redis still serves answer.
"""

from __future__ import annotations

from typing import Any, Final, NoReturn

import trio

from screener.core.periodic import Ticker
from screener.core.snapshot import Latest, Views
from screener.http.health import health_report

BEAT_PERIOD_S: Final = 1.0
"""The heartbeat's period, on a fixed grid of trio's clock."""

LIVENESS_LIMIT_S: Final = 10.0
"""/livez fails once the loop has not run the heartbeat for this long: ten missed beats.
Nothing the service does holds the loop near that (a ranking round, a batch encoded for
Redis, a contract list decoded take milliseconds), so it means a loop held again and again
(CPU-bound work without a checkpoint, blocking calls) or starved of CPU, not a slow moment.
A loop blocked outright answers nothing at all: there the probe's own timeout is the
failure (3 s in the image's probe), and once the loop runs again the beat, due long ago,
usually runs before the request does (an 11 s block: 200 after 10.3 s). A process frozen
longer (SIGSTOP, a paused VM) may answer one 503 when it wakes; probes fail only after
several failures in a row."""


async def run_heartbeat(
    beat: Latest[float | None],
    *,
    period_s: float = BEAT_PERIOD_S,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Write `trio.current_time()` into `beat` now and every `period_s` (absolute
    deadlines: a late beat is not followed by a burst). Runs until cancelled."""
    ticker = Ticker(period_s)
    beat.set(trio.current_time())
    task_status.started()
    while True:
        await ticker.wait()
        beat.set(trio.current_time())


def livez_report(beat: float | None, now: float) -> tuple[int, dict[str, Any]]:
    """200 "alive" while the last beat is at most `LIVENESS_LIMIT_S` old, else 503 "stalled"
    (also before the first beat). `beat_age_s`: seconds since it, null before it."""
    age = None if beat is None else max(0.0, now - beat)
    alive = age is not None and age <= LIVENESS_LIMIT_S
    body = {
        "status": "alive" if alive else "stalled",
        "beat_age_s": None if age is None else round(age, 3),
        "limit_s": LIVENESS_LIMIT_S,
    }
    return (200 if alive else 503), body


def readyz_report(
    views: Views, now: float, stale_after_s: float, *, rest_mode: bool = False
) -> tuple[int, dict[str, Any]]:
    """/health's code, with a short body: `ready`, /health's `status` and its `problems`
    (present only when there are some)."""
    code, health = health_report(views, now, stale_after_s, rest_mode=rest_mode)
    body: dict[str, Any] = {"ready": code == 200, "status": health["status"]}
    if "problems" in health:
        body["problems"] = health["problems"]
    return code, body
