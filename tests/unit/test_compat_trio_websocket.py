"""screener/core/compat.py's reach-in to trio-websocket (`pending_messages`): it holds only on the
releases it was verified on, so this fails loudly on any other, naming what to check, and
checks on the installed one that the channel still behaves as the connection actor expects.
In-memory streams: no socket, no clock."""

from __future__ import annotations

from importlib import metadata

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, wrap_client_stream, wrap_server_stream

from screener.core.compat import TRIO_WEBSOCKET_VERIFIED, pending_messages


def test_the_installed_trio_websocket_is_a_release_the_reach_in_was_verified_on() -> None:
    installed = metadata.version("trio-websocket")
    assert installed in TRIO_WEBSOCKET_VERIFIED, (
        f"trio-websocket {installed} is not one of {TRIO_WEBSOCKET_VERIFIED}, the releases "
        "screener.core.compat.pending_messages was verified on. Check in trio_websocket/_impl.py "
        "that `WebSocketConnection._recv_channel` is still the memory channel the reader task "
        "fills and `get_message` reads, that this test passes, then add the release (or drop "
        "the reach-in if a public batch read exists)."
    )


async def test_pending_messages_are_the_queue_get_message_reads_in_order_and_once() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            accepted: list[trio.abc.AsyncResource] = []

            async def serve() -> None:
                server = await (await wrap_server_stream(nursery, server_stream)).accept()
                accepted.append(server)
                for text in ("one", "two", b"three"):
                    await server.send_message(text)

            nursery.start_soon(serve)
            ws = await wrap_client_stream(nursery, client_stream, "sim", "/")
            queue = pending_messages(ws)
            assert isinstance(queue, trio.MemoryReceiveChannel)
            await trio.testing.wait_all_tasks_blocked()  # the reader has queued all three

            assert queue.receive_nowait() == "one"
            assert queue.receive_nowait() == "two"
            assert await ws.get_message() == b"three"  # the same queue: nothing twice
            with pytest.raises(trio.WouldBlock):
                queue.receive_nowait()

            await accepted[0].aclose()  # the other side closes
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises((trio.ClosedResourceError, trio.EndOfChannel)):
                queue.receive_nowait()
            with pytest.raises(ConnectionClosed):
                await ws.get_message()
            nursery.cancel_scope.cancel()


def test_a_connection_without_the_queue_reads_through_get_message_only() -> None:
    class Other:
        pass

    assert pending_messages(Other()) is None  # type: ignore[arg-type]
