"""GET /openapi.json through Quart's in-process test client on MockClock: the packaged
document, byte for byte, under the same GET-only and JSON-error rules as the other routes,
timed under a route label of its own."""

from __future__ import annotations

from importlib import resources

import orjson
import trio
import trio.testing

from screener.core.metrics import Metrics
from screener.core.snapshot import Views
from screener.http.routes import create_app


def packaged() -> bytes:
    return resources.files("screener").joinpath("schemas/openapi.json").read_bytes()


async def test_openapi_json_answers_the_packaged_document(
    autojump_clock: trio.testing.MockClock,
) -> None:
    metrics = Metrics()
    client = create_app(Views.empty(), metrics, stale_after_s=60.0).test_client()
    with trio.fail_after(10):
        response = await client.get("/openapi.json")
        body = await response.get_data()
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert body == packaged()
    assert orjson.loads(body)["openapi"].startswith("3.1.")
    count = metrics.registry.get_sample_value(
        "screener_http_request_duration_seconds_count", {"route": "/openapi.json"}
    )
    assert count == 1
    assert trio.current_time() == 0


async def test_openapi_json_keeps_the_get_only_json_error_rules() -> None:
    client = create_app(Views.empty(), Metrics(), stale_after_s=60.0).test_client()
    with trio.fail_after(10):
        answers = [
            (r.status_code, await r.get_json())
            for r in (
                await client.head("/openapi.json"),
                await client.post("/openapi.json"),
                await client.options("/openapi.json"),
                await client.get("/openapi.yaml"),
            )
        ]
    assert answers == [
        (405, {"error": "method not allowed"}),
        (405, {"error": "method not allowed"}),
        (405, {"error": "method not allowed"}),
        (404, {"error": "not found"}),
    ]
