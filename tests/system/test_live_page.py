"""The live page in a real browser: Debian's chromium, headless, driven by Playwright (never
Playwright's own browser downloads), against the whole service fed by the simulator with a
full window of REST history.

The page's gainers and losers are /top5's; the page follows new rankings by itself, without a
reload; a sparkline has as many points as its symbol's window has minutes (/symbol); a click
opens the symbol's candles; on a phone-sized screen no table is wider than its box; a single
instance (one shard, one replica) shows no fleet line, a fleet's status does. A screenshot
goes to the test's directory, and to `$SCREENSHOT_TO` too when set (`SCREENSHOT_TO=
docs/screenshot.png`: the README's picture).

The browser runs in a worker thread (Playwright's synchronous API), the service in trio.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from devtools.devredis import RedisServer
from devtools.simulator import SimConfig
from tests.system.service_harness import running, simulator

CHROMIUM = Path("/usr/bin/chromium")
# The network is closed here: without these chromium waits on lookups and update checks.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 20_000

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (/usr/bin/chromium)"
)

# Read in one evaluation, so the tables and the ranking time are of one ranking.
SHOWN = """() => {
  const rows = (id) => [...document.querySelectorAll(`#${id} tbody tr[data-symbol]`)].map((tr) => ({
    symbol: tr.dataset.symbol,
    change: tr.querySelector(".change").textContent,
    price: tr.querySelector(".price").textContent,
    points: Number(tr.querySelector("svg.spark").dataset.points),
    drawn: (tr.querySelector("svg.spark polyline")?.getAttribute("points") || "")
      .split(" ").filter(Boolean).length,
  }));
  return { ts_ms: Number(document.getElementById("ranking-ts").dataset.tsMs || 0),
           gainers: rows("gainers"), losers: rows("losers"),
           feed: document.getElementById("feed").textContent };
}"""


def _shown_matches_top5(page: Any, http: httpx.Client) -> dict[str, Any]:
    """The page's ranking and /top5's, once both are the same ranking (rankings come every
    second: retried until a read falls between two)."""
    for _ in range(50):
        shown = page.evaluate(SHOWN)
        top5 = http.get("/top5").json()
        if shown["ts_ms"] == top5["ts_ms"]:
            for side in ("gainers", "losers"):
                movers = top5[f"top5_{side}"]
                assert [r["symbol"] for r in shown[side]] == [m["symbol"] for m in movers]
                for row, mover in zip(shown[side], movers, strict=True):
                    arrow = (
                        "▲" if mover["change_pct"] > 0 else "▼" if mover["change_pct"] < 0 else "■"
                    )
                    assert row["change"].startswith(arrow), (row, mover)
                    assert row["change"].endswith(f"{abs(mover['change_pct']):.2f}%")
            return shown
        page.wait_for_timeout(100)
    raise AssertionError("the page never showed the ranking /top5 served")


def _sparkline_is_the_window(page: Any, http: httpx.Client) -> int:
    """A listed symbol's sparkline has one point per minute of its window (/symbol)."""
    for _ in range(50):
        shown = page.evaluate(SHOWN)
        row = shown["gainers"][0]
        doc = http.get(f"/symbol/{row['symbol']}").json()
        if doc["ts_ms"] == shown["ts_ms"]:  # the candles of the ranking shown
            assert row["points"] == doc["window_min"] == len(doc["closes"])
            assert row["drawn"] == row["points"]
            return int(doc["window_min"])
        page.wait_for_timeout(100)
    raise AssertionError("the page and /symbol never agreed on a ranking")


# What the page calls a fleet, for each kind of `fleet` block /health can carry.
IS_FLEET = """() => [
  { shard: 0, shards: 1, role: "leader", leader: "a", replica: "a" },  // alone
  { shard: 0, shards: 1, role: "standby", leader: null, replica: "a" },  // no lease answer yet
  { shard: 0, shards: 1, role: "standby", leader: "a", replica: "b" },  // a standby
  { shard: 1, shards: 2, role: "leader", leader: "b", replica: "b" },  // one of two shards
  undefined,
].map(isFleet)"""
SHOW_STATUS = """(doc) => {
  onStatus(doc);
  const line = document.getElementById("fleet");
  return line.hidden ? null : line.textContent;
}"""


def drive(url: str, out: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    seen: dict[str, Any] = {"errors": []}
    with sync_playwright() as pw, httpx.Client(base_url=url, timeout=5) as http:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 440})
            page.set_default_timeout(TIMEOUT_MS)
            page.on("pageerror", lambda exc: seen["errors"].append(str(exc)))
            page.on("console", lambda m: m.type == "error" and seen["errors"].append(m.text))
            page.goto(url + "/")
            page.wait_for_selector("#gainers tbody tr[data-symbol]")
            page.wait_for_selector("#feed.ok")

            first = _shown_matches_top5(page, http)
            seen["first"] = first

            # A new ranking replaces the tables without a reload (the marker would be lost).
            page.evaluate("() => { window.sameDocument = true; }")
            # Polled with evaluate: wait_for_function compiles its text inside the page, which
            # the page's CSP (no unsafe-eval) forbids in older Playwright releases.
            shown_ts = "() => Number(document.getElementById('ranking-ts').dataset.tsMs)"
            deadline = time.monotonic() + TIMEOUT_MS / 1000
            while page.evaluate(shown_ts) <= first["ts_ms"]:
                assert time.monotonic() < deadline, "the page never showed a newer ranking"
                page.wait_for_timeout(50)
            assert page.evaluate("() => window.sameDocument") is True
            seen["later"] = _shown_matches_top5(page, http)

            seen["window_min"] = _sparkline_is_the_window(page, http)
            # Prices from 1e-8 to 1e5: six significant figures (five below 1e-7), no exponent.
            seen["prices"] = page.evaluate(
                "() => [1.23456789e-8, 0.000123456789, 1.5, 98765.4321, 100000].map(price)"
            )
            page.wait_for_timeout(300)  # let the push age tick once: a settled picture
            page.screenshot(path=str(out / "live-page.png"))

            # A row opens the symbol's candles.
            symbol = page.evaluate(SHOWN)["losers"][0]["symbol"]
            page.click(f"#losers tbody tr[data-symbol='{symbol}']")
            page.wait_for_selector("#detail[open] #detail-chart rect")
            seen["detail_title"] = page.text_content("#detail-title")
            seen["detail_candles"] = page.locator("#detail-chart rect").count()
            seen["symbol_candles"] = len(http.get(f"/symbol/{symbol}").json()["candles"])
            page.screenshot(path=str(out / "live-page-detail.png"))
            page.keyboard.press("Escape")

            # A phone: everything fits the width, nothing scrolls sideways.
            page.set_viewport_size({"width": 390, "height": 844})
            page.wait_for_timeout(200)
            seen["phone_overflow"] = page.evaluate(
                """() => Math.max(document.documentElement.scrollWidth - window.innerWidth,
                    ...[...document.querySelectorAll("table")].map(
                        (t) => t.scrollWidth - t.parentElement.clientWidth))"""
            )
            page.screenshot(path=str(out / "live-page-phone.png"), full_page=True)
            seen["symbol"] = symbol

            # One shard, one replica: no fleet line. The status of a fleet shows it.
            seen["fleet_block"] = http.get("/health").json()["fleet"]
            seen["fleet_hidden"] = page.evaluate("() => document.getElementById('fleet').hidden")
            seen["is_fleet"] = page.evaluate(IS_FLEET)
            status = http.get("/health").json() | {"fleet": {**seen["fleet_block"], "shards": 2}}
            seen["fleet_line"] = page.evaluate(SHOW_STATUS, status)
        finally:
            browser.close()
    return seen


async def test_the_live_page_in_chromium_follows_the_service(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with (
        simulator(SimConfig(symbols=40, rate_per_s=80)) as (_, sim),
        running(sim, redis_server.port, BACKFILL="on", RANK_INTERVAL_S="1") as (svc, _http),
    ):
        seen = await trio.to_thread.run_sync(drive, f"http://127.0.0.1:{svc.http_port}", tmp_path)
    assert seen["errors"] == []
    assert seen["later"]["ts_ms"] > seen["first"]["ts_ms"]
    assert len(seen["first"]["gainers"]) == len(seen["first"]["losers"]) == 5
    assert seen["window_min"] == 15  # a full LOOKBACK_MIN of history
    assert seen["prices"] == [
        "0.000000012346",
        "0.000123457",
        "1.50000",
        "98,765.4",
        "100,000",
    ]
    assert seen["detail_title"] == seen["symbol"].replace("_", " / ")
    assert seen["detail_candles"] == seen["symbol_candles"] > 1
    assert seen["phone_overflow"] <= 0
    fleet = seen["fleet_block"]
    assert (fleet["shards"], fleet["role"], fleet["leader"]) == (1, "leader", fleet["replica"])
    assert seen["fleet_hidden"] is True
    assert seen["is_fleet"] == [False, False, True, True, False]
    assert seen["fleet_line"].startswith("Fleet: shard 0 of 2")
    shot = tmp_path / "live-page.png"
    assert shot.stat().st_size > 10_000
    target = os.environ.get("SCREENSHOT_TO")
    if target:
        shutil.copyfile(shot, target)
