"""`python -m screener.healthcheck`: the container's HEALTHCHECK, exit 0 when /livez is 200.

It probes liveness, not /health or /readyz, because "unhealthy" is a restart signal in many
setups (Swarm, Nomad, ECS, autoheal beside compose): a probe that failed during an exchange or
Redis outage would restart every replica at once, losing every window and warm start exactly
when the feed is needed back, and a restart cures neither. /livez fails only when the
process's event loop no longer runs its heartbeat, which a restart does cure. Whether the
replica serves what it should is /readyz's business (an orchestrator's readiness probe) and
/health's (alerts); `--ready` probes /readyz instead, for setups that route traffic by the
container's health status and never restart on it.

Standard library only, so the image needs no curl. The port comes from the same settings the
service reads, so the probe and the server cannot disagree. Any failure is one short line on
stdout (Docker keeps it in `docker inspect`) and exit 1; a bad configuration exits 1 too,
because to Docker an unparsable setting means unhealthy, not a usage error. With `--rest` it
probes `screener rest` on `REST_SCREENER_PORT` instead of `WS_SCREENER_PORT`.
"""

from __future__ import annotations

import http.client
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

from screener.core.config import ConfigError, load_settings

TIMEOUT_S = 3.0


def probe(env: Mapping[str, str], *, rest: bool = False, ready: bool = False) -> tuple[bool, str]:
    """GET /livez (/readyz with `ready`) on loopback (`screener rest`'s port with `rest`);
    (healthy, reason)."""
    try:
        settings = load_settings(env)
        port = settings.rest.port if rest else settings.http_port
    except ConfigError as exc:
        return False, f"config error: {exc.problems[0]}"
    url = f"http://127.0.0.1:{port}/{'readyz' if ready else 'livez'}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        return False, f"{url}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        return False, f"{url}: {reason}"
    if status != 200:
        return False, f"{url}: HTTP {status}"
    return True, f"{url}: HTTP 200"


def main() -> int:
    args = sys.argv[1:]
    healthy, line = probe(os.environ, rest="--rest" in args, ready="--ready" in args)
    print(line)  # Docker keeps a probe's stdout in the health log; no logging set-up here
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
