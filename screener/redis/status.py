"""Redis's status as the publisher's writes show it, and the lines that say when it changes.

Only what Redis does with a write decides it. A failed or timed-out write marks it down (one
warning per outage, however many retries) until a write is answered (one `redis up at`
line); a PING answer is no proof (`CLIENT PAUSE WRITE` answers it) and changes the status only
at start, before any write failed. Commands Redis refuses for now (OOM, READONLY, ...) make
it degraded: up, `refused` (one warning, then `redis writes accepted again`). The status goes
to /health (`Latest[RedisStatus]`) and `screener_redis_up`; the backoff between retries lives
here, as an outage and its end reset it. No I/O: the publisher calls it with what happened.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from loguru import logger

from screener.core.config import RedisSettings
from screener.core.metrics import Metrics
from screener.core.models import RedisStatus
from screener.core.snapshot import Latest
from screener.core.supervise import Backoff, failure_text
from screener.redis.batch import BatchResult

HELD_RETRY_CAP_S: Final = 2.0


class RedisHealth:
    """The publisher's view of Redis: status, backoff, and whether to PING before writing."""

    def __init__(
        self,
        settings: RedisSettings,
        status: Latest[RedisStatus],
        metrics: Metrics,
        rand: Callable[[], float],
    ) -> None:
        self.target = settings.safe_target()
        self.status = status
        self.metrics = metrics
        self.backoff = Backoff(first_s=0.5, cap_s=30.0, rand=rand)
        # Between retries of what Redis refused for now (OOM, READONLY): Redis answers, so
        # a retry is cheap, and delivery resumes within HELD_RETRY_CAP_S of its recovery.
        self.held_backoff = Backoff(first_s=0.25, cap_s=HELD_RETRY_CAP_S, rand=rand)
        self.probe = not status.value.up  # PING before the next write: at start, after a failure
        self.holding = False  # Redis refuses for now: warned once, its end will be logged
        self.log = logger.bind(actor="publisher")

    def pinged(self) -> None:
        """A PING was answered: writes may be tried. Up only at start (no failure yet)."""
        self.probe = False
        if self.status.value == RedisStatus(up=False, error=None):
            self.log.info("redis up at {target}", target=self.target)
            self._set(RedisStatus(up=True, error=None))

    def lease_answered(self) -> None:
        """A standby's lease was answered. A standby never writes, so without this its
        status would keep the last outage it saw long after Redis came back."""
        if not self.status.value.up:
            self.log.info("redis up at {target}", target=self.target)
            self.probe = False
            self._set(RedisStatus(up=True, error=None))

    def went_down(self, exc: BaseException) -> float:
        """Record the outage (one warning per outage); returns the delay before a retry."""
        reason = failure_text(exc)
        was = self.status.value
        if was.up or was.error is None:
            self.log.warning(
                "redis unavailable at {target} ({reason}); buffering, newest event per symbol kept",
                target=self.target,
                reason=reason,
            )
        self.probe = True
        self.holding = False
        self._set(RedisStatus(up=False, error=reason))
        return self.backoff.next_delay()

    def answered(self, result: BatchResult) -> bool:
        """Redis answered a write: the link works; whatever it refused degrades the status.
        Returns True when held lanes may go at once (Redis took a write whole again)."""
        refused = result.hold or result.refusal
        was = self.status.value
        if refused is None and was.up and was.refused is None:  # the usual case: all is well
            self.backoff.reset()
            return False
        if not was.up:
            self.log.info("redis up at {target}", target=self.target)
        released = False
        if result.held:
            if not self.holding:
                self.holding = True
                self.log.warning(
                    "redis refuses writes at {target} ({reason}); events kept and retried",
                    target=self.target,
                    reason=result.hold,
                )
        else:
            if self.holding:
                self.holding = False
                self.log.info("redis writes accepted again at {target}", target=self.target)
            self.backoff.reset()
            self.held_backoff.reset()
            released = True
        self._set(RedisStatus(up=True, error=None, refused=refused))
        return released

    def _set(self, status: RedisStatus) -> None:
        self.status.set(status)
        self.metrics.redis_up.set(1 if status.up and status.refused is None else 0)
