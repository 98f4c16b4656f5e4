"""Where the service reaches into a dependency's private interfaces: one clearly named function
per reach-in, each with the versions it was verified on. tests/unit/test_compat_*.py fail
loudly when an installed version moves beyond them, so an upgrade is a decision, not a
surprise. Everything else uses public interfaces only.
"""

from __future__ import annotations

from typing import Final

import trio
from trio_websocket import WebSocketConnection

# --- trio-websocket: the messages its reader has already queued ------------------------------

TRIO_WEBSOCKET_VERIFIED: Final = ("0.12.0", "0.12.1", "0.12.2")
"""trio-websocket releases `pending_messages` was verified on (the floor pyproject.toml allows
up to the locked one; tests/unit/test_compat_trio_websocket.py fails on any other)."""


def pending_messages(ws: WebSocketConnection) -> trio.MemoryReceiveChannel[str | bytes] | None:
    """The channel trio-websocket's reader task puts each received message on, the one its
    `get_message` reads: what is already there can be taken with `receive_nowait`, in the
    same order and never twice, without a checkpoint. None when a release no longer has it:
    the caller then reads with `get_message` only (same messages, slower).

    Why: the connection actor reads a burst of pushes in one go, and counts them with one
    `inc(n)` once the queue is empty. `get_message` is the only public read and yields to the
    scheduler on every message, even when the next one is already queued: 6.4-11 us of CPU a
    message against 0.2 us taken from the queue (`screener bench --micro`, 2026-12-07, load
    average 2.6-3.3 from other work), at 2,000 pushes a second about 1.3 % of a core, some 5 %
    of the service's CPU. trio-websocket (0.12.2, the newest) has no public batch read and no
    public queue length, so no public way costs nothing.

    The attribute is `_recv_channel`, a `trio.MemoryReceiveChannel` made in
    `WebSocketConnection.__init__` (buffer `message_queue_size`) and closed by the reader when
    the connection closes (then `receive_nowait` raises `ClosedResourceError` or
    `EndOfChannel`, and `get_message` raises `ConnectionClosed`)."""
    queue = getattr(ws, "_recv_channel", None)
    return queue if isinstance(queue, trio.MemoryReceiveChannel) else None
