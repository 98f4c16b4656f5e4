"""The packaged JSON Schemas (screener/schemas/) and the OpenAPI description: valid schemas,
real documents (built by the records that emit them) match, broken ones do not, and the
OpenAPI document embeds exactly the packaged schemas with every reference resolving."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from screener.core.models import (
    CANDLE_REST_SOURCE,
    LIVE_SOURCE,
    Charts,
    ClosedCandle,
    FeedStatus,
    Kline,
    MarketData,
    Ranking,
    RedisStatus,
    SymbolStat,
    UniverseStatus,
)
from screener.core.snapshot import Views
from screener.http.charts import symbol_report
from screener.http.health import health_report
from screener.http.probes import livez_report, readyz_report
from screener.http.routes import openapi_document
from screener.redis.batch import encode_event
from tests.contracts import (
    SCHEMA_NAMES,
    TOP5_RANKING,
    component_name,
    embedded_schema,
    packaged_schema,
    schema_errors,
)

M = 1_770_330_480  # 2026-02-05 22:28:00 UTC


def market_data(source: str = "mexc") -> dict[str, Any]:
    kline = Kline(
        symbol="BTC_USDT",
        t=M,
        open=6.86769e-6,
        high=6.86769e-6,
        low=6.8528e-6,
        close=6.85735e-6,
        volume=0.0 if source == "mexc-rest" else 187.0,
        amount=0.1283,
        ts_ms=M * 1000 + 46_237,
        source=source,
    )
    return orjson.loads(encode_event(MarketData(kline=kline, change_pct=-0.15, window_min=15)))


def candle(source: str = LIVE_SOURCE) -> dict[str, Any]:
    closed = ClosedCandle(
        symbol="BTC_USDT",
        t=M,
        open=6.86769e-6,
        high=6.86769e-6,
        low=6.8528e-6,
        close=6.85735e-6,
        volume=187.0,
        amount=0.1283,
        source=source,
        closed_ms=(M + 60) * 1000 + 12,
    )
    return orjson.loads(orjson.dumps(closed.as_dict((M + 60) * 1000 + 15)))


def top_movers() -> dict[str, Any]:
    ranking = Ranking(
        wall_ts=M + 0.7,
        lookback_min=15,
        gainers=(SymbolStat(symbol="A_USDT", change_pct=12.5, price=1.25),),
        losers=(SymbolStat(symbol="C_USDT", change_pct=-4.25, price=0.0125),),
        ranked=2,
    )
    return orjson.loads(orjson.dumps(ranking.as_dict()))


def health(*, stale: bool) -> dict[str, Any]:
    views = Views.empty()
    if not stale:
        views.universe.set(UniverseStatus(symbols=3, chunks=1, error=None))
        views.feed.set(FeedStatus(last_push_at=99.0, conns_up=1, conns_total=1))
        views.redis.set(RedisStatus(up=True, error=None))
    status, body = health_report(views, 100.0, 60.0)
    assert status == (503 if stale else 200)
    return orjson.loads(orjson.dumps(body))


def health_behind() -> dict[str, Any]:
    """A /health document whose closed candles are behind: minutes owed a REST repair and
    candles Redis has not taken, with the problem line that lag_s over 120 s adds."""
    candles = {"unpublished": 3, "owed": 2, "oldest": M, "lag_s": 131.25}
    return {**health(stale=False), "candles": candles, "problems": ["closed candles behind"]}


def livez(beat: float | None) -> dict[str, Any]:
    """A /livez document at trio time 100 after a beat at `beat`."""
    return orjson.loads(orjson.dumps(livez_report(beat, 100.0)[1]))


def readyz(*, stale: bool) -> dict[str, Any]:
    views = Views.empty()
    if not stale:
        views.universe.set(UniverseStatus(symbols=3, chunks=1, error=None))
        views.feed.set(FeedStatus(last_push_at=99.0, conns_up=1, conns_total=1))
    _, body = readyz_report(views, 100.0, 60.0)
    return orjson.loads(orjson.dumps(body))


def live_ranking() -> dict[str, Any]:
    return {
        **top_movers(),
        "stale": False,
        "ranked": 2,
        "sparklines": {"A_USDT": [1.0, 1.25], "C_USDT": []},
    }


def symbol() -> dict[str, Any]:
    kline = Kline("A_USDT", M, 1e-8, 2e-8, 1e-8, 1.5e-8, 3.0, 4.5e-8, M * 1000 + 1, "mexc")
    charts = Charts(wall_ts=M + 20.5, lookback_min=15, candles={"A_USDT": (kline,)})
    doc = symbol_report(charts, "A_USDT")
    assert doc is not None
    return orjson.loads(orjson.dumps(doc))


REAL = [
    pytest.param("live_ranking", live_ranking(), id="live_ranking"),
    pytest.param("symbol", symbol(), id="symbol"),
    pytest.param("market_data", market_data(), id="market_data"),
    pytest.param("market_data", market_data("mexc-rest"), id="market_data-rest"),
    pytest.param("candle", candle(), id="candle"),
    pytest.param("candle", candle(CANDLE_REST_SOURCE), id="candle-rest-kline"),
    pytest.param("top_movers", top_movers(), id="top_movers"),
    pytest.param("top5", {**top_movers(), "stale": False}, id="top5"),
    pytest.param(TOP5_RANKING, {**top_movers(), "stale": True}, id="top5-ranking"),
    pytest.param("top5", {"error": "no data yet"}, id="top5-503"),
    pytest.param("health", health(stale=False), id="health-ok"),
    pytest.param("health", health(stale=True), id="health-stale"),
    pytest.param("health", health_behind(), id="health-candles-behind"),
    pytest.param("livez", livez(99.5), id="livez-alive"),
    pytest.param("livez", livez(80.0), id="livez-stalled"),
    pytest.param("livez", livez(None), id="livez-no-beat"),
    pytest.param("readyz", readyz(stale=False), id="readyz-ready"),
    pytest.param("readyz", readyz(stale=True), id="readyz-not-ready"),
]


def test_real_health_documents_are_the_expected_kinds() -> None:
    assert health(stale=False)["status"] == "ok"
    assert "problems" not in health(stale=False)
    assert health(stale=True)["problems"]
    assert [livez(b)["status"] for b in (99.5, 80.0, None)] == ["alive", "stalled", "stalled"]
    assert readyz(stale=False) == {"ready": True, "status": "ok"}
    not_ready = readyz(stale=True)
    assert (not_ready["ready"], not_ready["status"]) == (False, "stale")
    assert not_ready["problems"]


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_packaged_schema_is_a_strict_2020_12_schema(name: str) -> None:
    schema = packaged_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://screener.example/schemas/{name}.schema.json"
    Draft202012Validator.check_schema(schema)
    closed = orjson.dumps(schema)
    assert b'"additionalProperties":false' in closed or b'"unevaluatedProperties":false' in closed


def test_real_documents_match() -> None:
    """Documents as the service builds them (the served ones over time are checked in
    tests/actors/test_served_contracts.py)."""
    wrong = {case.id: schema_errors(*case.values) for case in REAL}
    assert {name: errors for name, errors in wrong.items() if errors} == {}


def _set(doc: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    broken = copy.deepcopy(doc)
    target: Any = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return broken


def _drop(doc: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != key}


BROKEN = [
    ("market_data", _drop(market_data(), "candle_ts"), "missing field"),
    ("market_data", _set(market_data(), ("ts",), "1770330526237"), "ts as a string"),
    ("market_data", _set(market_data(), ("candle_ts",), 1.5), "fractional seconds"),
    ("market_data", _set(market_data(), ("extra",), 1), "extra field"),
    ("market_data", _set(market_data(), ("source",), "binance"), "unknown source"),
    ("market_data", _set(market_data(), ("interval",), "Min5"), "other interval"),
    ("market_data", _set(market_data(), ("volume",), -1.0), "negative volume"),
    ("market_data", _set(market_data(), ("symbol",), "btc usdt"), "bad symbol"),
    ("candle", _drop(candle(), "published_ts"), "missing published_ts"),
    ("candle", _set(candle(), ("candle_ts",), M + 30), "not a whole minute"),
    ("candle", _set(candle(), ("published_ts",), 1.5), "fractional milliseconds"),
    ("candle", _set(candle(), ("source",), "mexc-rest"), "the ticker approximation"),
    ("candle", _set(candle(), ("type",), "market_data"), "wrong type"),
    ("candle", _set(candle(), ("ts",), M * 1000), "a market_data field"),
    ("candle", _set(candle(), ("interval",), "Min5"), "other interval"),
    ("candle", _set(candle(), ("close",), 0.0), "zero price"),
    ("candle", _set(candle(), ("amount",), -1.0), "negative amount"),
    ("candle", _set(candle(), ("symbol",), "btc usdt"), "bad symbol"),
    ("market_data", candle(), "a candle is not a market_data event"),
    ("top_movers", _drop(top_movers(), "ts_ms"), "missing ts_ms"),
    ("top_movers", _set(top_movers(), ("type",), "market_data"), "wrong type"),
    ("top_movers", _set(top_movers(), ("stale",), False), "stale belongs to /top5 only"),
    ("top_movers", _set(top_movers(), ("top5_gainers", 0, "rank"), 1), "extra entry field"),
    ("top_movers", _set(top_movers(), ("top5_losers", 0, "price"), "0.01"), "price string"),
    ("top_movers", _set(top_movers(), ("ts",), "2026-02-05T22:28:00Z"), "other time format"),
    ("top5", top_movers(), "no stale"),
    ("top5", {**top_movers(), "stale": "no"}, "stale not a boolean"),
    ("top5", {**top_movers(), "stale": False, "x": 1}, "extra field"),
    ("top5", {"error": "no data yet", "stale": True}, "error with extra field"),
    (TOP5_RANKING, {"error": "no data yet"}, "the 503 body is not a 200 ranking"),
    ("health", _drop(health(stale=False), "redis"), "missing redis"),
    ("health", _set(health(stale=False), ("status",), "fine"), "unknown status"),
    ("health", _set(health(stale=False), ("age",), "0.1"), "age as a string"),
    ("health", _set(health(stale=False), ("connections", "down"), 0), "extra nested field"),
    ("health", _set(health(stale=False), ("problems",), []), "empty problems"),
    ("health", _set(health(stale=False), ("feed",), "grpc"), "unknown feed"),
    ("health", _drop(health(stale=False), "candles"), "missing candles"),
    ("health", _set(health_behind(), ("candles", "lag_s"), "131.25"), "lag_s as a string"),
    ("health", _set(health_behind(), ("candles", "oldest"), M + 1), "oldest not a minute"),
    ("health", _set(health_behind(), ("candles", "owed"), -1), "negative owed"),
    ("health", _set(health_behind(), ("candles", "late"), 0), "extra candles field"),
    ("health", _set(health_behind(), ("candles",), {"owed": 0}), "candles keys missing"),
    ("livez", _set(livez(99.5), ("status",), "ok"), "a /health status"),
    ("livez", _drop(livez(99.5), "limit_s"), "missing limit_s"),
    ("livez", _set(livez(99.5), ("beat_age_s",), -1.0), "negative age"),
    ("livez", _set(livez(99.5), ("redis",), "up"), "a dependency's state"),
    ("readyz", _set(readyz(stale=False), ("status",), "ready"), "unknown status"),
    ("readyz", _set(readyz(stale=False), ("ready",), "yes"), "ready not a boolean"),
    ("readyz", _set(readyz(stale=True), ("problems",), []), "empty problems"),
    ("readyz", _drop(readyz(stale=False), "ready"), "missing ready"),
    ("readyz", health(stale=False), "the whole /health document"),
    ("error", {"error": ""}, "empty error"),
    ("live_ranking", _drop(live_ranking(), "sparklines"), "no sparklines"),
    ("live_ranking", _set(live_ranking(), ("sparklines", "a b"), []), "bad sparkline name"),
    ("live_ranking", _set(live_ranking(), ("x",), 1), "extra field"),
    ("symbol", _set(symbol(), ("candles",), []), "no candles"),
    ("symbol", _set(symbol(), ("candles", 0, "source"), "binance"), "unknown source"),
]


def test_broken_documents_do_not_match() -> None:
    """Each broken document is refused: the list names any the schemas let through."""
    accepted = [what for ref, document, what in BROKEN if not schema_errors(ref, document)]
    assert accepted == []
    assert len(BROKEN) == 57


def openapi() -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads(openapi_document())
    return document


def test_openapi_describes_every_route() -> None:
    doc = openapi()
    assert doc["openapi"].startswith("3.1.")
    assert set(doc["paths"]) == {
        "/health",
        "/livez",
        "/readyz",
        "/top5",
        "/metrics",
        "/openapi.json",
        "/",
        "/stream",
        "/symbol/{symbol}",
    }
    for path, item in doc["paths"].items():
        assert set(item) == {"get"}, path
        assert {"200", "404", "405", "500"} <= set(item["get"]["responses"]), path
        assert item["get"]["responses"]["405"]["headers"]["Allow"]["required"], path
    for path in ("/health", "/livez", "/readyz", "/top5", "/stream"):
        assert set(doc["paths"][path]["get"]["responses"]) >= {"503"}, path


def test_openapi_embeds_exactly_the_packaged_schemas() -> None:
    """Each packaged schema, in the form that resolves from the document's root
    (`embedded_schema`): the document cannot drift from the files the tests validate with."""
    embedded = openapi()["components"]["schemas"]
    assert set(embedded) == {component_name(n) for n in SCHEMA_NAMES}
    for name in SCHEMA_NAMES:
        assert embedded[component_name(name)] == embedded_schema(name), name


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _follow(document: Any, ref: str) -> Any:
    """`ref` as a JSON pointer into `document` (RFC 6901), the way OpenAPI tools resolve a
    local reference: no `$id`, no base URI, no network."""
    assert ref.startswith("#/"), f"{ref}: not a reference within the document"
    node = document
    for token in ref[2:].split("/"):
        key = token.replace("~1", "/").replace("~0", "~")
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node


def test_every_reference_in_the_openapi_document_resolves_within_it() -> None:
    doc = openapi()
    refs = _refs(doc)
    assert any("/$defs/" in ref for ref in refs)  # the embedded schemas' own too
    for ref in refs:
        try:
            target = _follow(doc, ref)
        except (KeyError, IndexError, ValueError) as exc:
            raise AssertionError(f"{ref} does not resolve within /openapi.json") from exc
        assert isinstance(target, dict), ref
        assert target, ref
    assert not any("$id" in s for s in doc["components"]["schemas"].values())


def test_the_embedded_schemas_judge_documents_as_the_packaged_ones_do() -> None:
    """Through the OpenAPI document alone (resolved from its root), every real document
    matches and every broken one does not, as with the packaged files."""
    registry = Registry().with_resource("urn:openapi", DRAFT202012.create_resource(openapi()))

    def errors(ref: str, document: Any) -> list[str]:
        name, _, fragment = ref.partition(".schema.json#")
        pointer = f"urn:openapi#/components/schemas/{component_name(name)}"
        validator = Draft202012Validator({"$ref": pointer + fragment}, registry=registry)
        return [e.message for e in validator.iter_errors(document)]

    assert {c.id: errors(*c.values) for c in REAL if errors(*c.values)} == {}
    assert [(ref, why) for ref, doc, why in BROKEN if not errors(ref, doc)] == []
