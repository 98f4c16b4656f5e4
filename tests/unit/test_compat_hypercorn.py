"""screener/core/compat.py reaches into hypercorn's internals: this fails loudly when the installed
hypercorn is not one the reach-in was verified on, and checks that what it subclasses and
calls is still there. Verify a new release with tests/system/test_http_connections.py and
tests/system/test_http_stalled_client.py, then add it to `HYPERCORN_VERIFIED`."""

from __future__ import annotations

import inspect
from importlib.metadata import version

from hypercorn.trio.tcp_server import TCPServer

from screener.core.compat import HYPERCORN_VERIFIED


def test_installed_hypercorn_is_one_the_reach_in_was_verified_on() -> None:
    installed = version("hypercorn")
    assert installed in HYPERCORN_VERIFIED, (
        f"hypercorn {installed} is installed, but screener/core/compat.py was verified on "
        f"{', '.join(HYPERCORN_VERIFIED)} only: it subclasses hypercorn's private TCPServer. "
        "Run the HTTP system tests on it, then add it to HYPERCORN_VERIFIED."
    )


def test_what_the_reach_in_overrides_and_uses_is_still_there() -> None:
    """A renamed method would silently stop being overridden (no error, the fault back)."""
    for name in ("run", "protocol_send", "_read_data", "_close"):
        assert inspect.iscoroutinefunction(getattr(TCPServer, name)), name
    init = inspect.signature(TCPServer.__init__).parameters
    assert list(init) == ["self", "app", "config", "context", "state", "stream"]
    source = inspect.getsource(TCPServer)
    for attribute in ("self.idle_task", "self.send_lock", "self.stream", "self.protocol"):
        assert attribute in source, attribute
