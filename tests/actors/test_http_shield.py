"""`shield_sends`: the server's work inside the app's `send` survives the app's cancellation
(quart-trio cancels the request's task while hypercorn is still closing the connection in
`send`), within `SEND_S`; the app sees its cancellation after `send` returned. Plain ASGI
callables on MockClock."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from screener.http.server import SEND_S, shield_sends

HTTP: Any = {"type": "http"}


async def test_send_finishes_although_the_app_is_cancelled_inside_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    steps: list[str] = []

    async def server_send(message: Any) -> None:  # hypercorn: write, then close the socket
        steps.append("written")
        await trio.sleep(0.5)  # the close awaits: the cancellation lands here
        steps.append("closed")

    async def app(scope: Any, receive: Any, send: Any) -> None:  # quart-trio's shape
        async with trio.open_nursery() as nursery:
            # "http.disconnect" arrives while the server is inside `send`: cancel everything.
            nursery.cancel_scope.deadline = trio.current_time() + 0.1
            try:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                steps.append(f"send returned at {trio.current_time():.1f}")
            await trio.sleep(1)  # never reached: the cancellation is seen here
            steps.append("not cancelled")

    await shield_sends(app)(HTTP, None, server_send)
    assert steps == ["written", "closed", "send returned at 0.5"]


async def test_a_send_that_hangs_is_cut_at_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def server_send(message: Any) -> None:
        await trio.sleep_forever()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        with trio.CancelScope() as cancelled:
            cancelled.cancel()
            await send({"type": "http.response.body", "body": b""})

    await shield_sends(app)(HTTP, None, server_send)
    assert trio.current_time() == SEND_S


async def test_other_scopes_pass_through_unshielded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def server_send(message: Any) -> None:
        await trio.sleep(1)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        with trio.move_on_after(0.1):
            await send({"type": "lifespan.startup.complete"})

    await shield_sends(app)({"type": "lifespan"}, None, server_send)
    assert trio.current_time() == 0.1
