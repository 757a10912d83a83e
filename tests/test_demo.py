"""The live demo: a paced run shows (and returns) the very run ``marginsim run`` makes, and the
dashboard's state and renderers, tested on hand-made events without trio or a terminal."""

from __future__ import annotations

import io
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.live import Live

from exchange.decimals import INFINITY
from scenarios import demo
from scenarios.loader import library_dir, load
from scenarios.runner import run

D = Decimal

# A margin refusal after the liquidation, so the feed shows all three kinds of line.
REFUSAL = """
[[actions]]
at = 20
account = "maker"
type = "order"
id = "too-big"
market = "BTC_USDC_PERP"
side = "buy"
quantity = 5000
price = 80000

[[expect]]
kind = "refused"
order = "too-big"
code = "INSUFFICIENT_MARGIN"
"""


def recording_console(width: int = 120) -> Console:
    return Console(file=io.StringIO(), width=width, force_terminal=False, record=True)


def test_demo_runs_partial_liquidation_and_shows_it(tmp_path: Path) -> None:
    path = tmp_path / "partial-liquidation.toml"
    shipped = (library_dir() / "partial-liquidation.toml").read_text(encoding="utf-8")
    path.write_text(shipped + REFUSAL, encoding="utf-8")
    scenario = load(str(path))
    console = recording_console()
    started = time.monotonic()
    outcome = demo.run_demo(scenario, rate=200, console=console, interactive=False)
    elapsed = time.monotonic() - started
    assert outcome.passed, [o for o in outcome.outcomes if not o.passed]
    assert elapsed >= 30 / 200  # paced: 30 virtual seconds at 200x
    # Pacing holds the run without touching it: the same events as an unpaced run.
    plain = run(scenario)
    assert outcome.result is not None and plain.result is not None
    assert outcome.result.fingerprint == plain.result.fingerprint
    text = console.export_text()
    for expected in ("partial-liquidation", "maker", "trader", "MMR", "BTC_USDC_PERP", "done",
                     "liq book       trader sell 0.02669 BTC_USDC_PERP @ 90440  MMR 103.83% -> 99.99%",
                     "liq healthy    trader",
                     "refused  maker buy 5000 BTC_USDC_PERP @ 80000  INSUFFICIENT_MARGIN  IMR 0.18% -> 2399.22%",
                     "fill     trader sell 0.02669 BTC_USDC_PERP @ 90440",
                     "PASS", "all expectations hold"):
        assert expected in text, expected


def test_state_watches_what_the_scenario_trades() -> None:
    state = demo.DemoState.for_scenario(load("partial-liquidation"), 1, 30_000, 5.0)
    assert state.watched == ("BTC", "BTC_USDC_PERP")
    assert list(state.books) == ["BTC_USDC_PERP"]
    assert state.accounts == ("maker", "trader")


FED: list[dict[str, Any]] = [
    {"event": "price", "actor": "feed", "t": 0, "symbol": "BTC", "price": D(100000)},
    {"event": "price", "actor": "feed", "t": 0, "symbol": "ETH", "price": D(4000)},
    {"event": "price", "actor": "feed", "t": 5000, "symbol": "BTC", "price": D(90000)},
    {"event": "book_top", "actor": "market:BTC_USDC_PERP", "t": 5000, "bid": D(89990), "bid_quantity": D(2),
     "ask": None, "ask_quantity": None},
    {"event": "health", "actor": "account:trader", "t": 6000, "net_equity": D(400), "imr": D("2.5"),
     "mmr": D("1.5"), "available": D(-600), "positions": {"BTC_USDC_PERP": D(1)}, "borrows": {},
     "liquidating": True},
    {"event": "liquidation_step", "actor": "liquidator", "t": 6000, "account": "trader", "stage": "book",
     "market": "BTC_USDC_PERP", "side": "Ask", "quantity": D("0.1"), "price": D(89990), "fee": D(4),
     "mmr_before": D("1.5"), "mmr_after": D("1.37"), "reason": "reduce the position on the book"},
]


def fed_state() -> demo.DemoState:
    state = demo.DemoState("example", 7, 30_000, 5.0, ("BTC", "BTC_USDC_PERP"), ("trader",), interactive=True)
    for event in FED:
        state.on_event(event)
        state.advance(event["t"])
    return state


def test_state_follows_the_events() -> None:
    state = fed_state()
    assert state.now_ms == 6000
    assert set(state.prices) == {"BTC"}  # ETH is not watched
    assert list(state.prices["BTC"].samples) == [D(100000), D(90000), D(90000)]  # at 0, 5 and 6 s
    book, health = state.books["BTC_USDC_PERP"], state.health["trader"]
    assert book is not None and book["bid"] == D(89990)
    assert health is not None and health["mmr"] == D("1.5")
    assert [e["event"] for e in state.feed] == ["liquidation_step"]


def test_dashboard_renders_the_state() -> None:
    console = recording_console()
    console.print(demo.dashboard(fed_state(), 120))
    text = console.export_text()
    for expected in ("example", "seed 7", "90000", "-10%", "89990", "trader", "400", "250%", "150%", "liquidating",
                     "1 BTC_USDC_PERP", "liq book       trader sell 0.1 BTC_USDC_PERP @ 89990  MMR 150% -> 137%"):
        assert expected in text, expected


@pytest.mark.parametrize(("ratio", "style"), [
    (D("0.5"), "green"), (D("0.8"), "yellow"), (D("0.9999"), "yellow"), (D(1), "red"), (D("1.2"), "red"),
    (INFINITY, "red"),
])
def test_ratio_colours(ratio: Decimal, style: str) -> None:
    assert demo.ratio_style(ratio) == style
    assert demo.ratio_bar(ratio).style == style


def test_ratio_bar_fills_in_eighths_up_to_full() -> None:
    assert demo.ratio_bar(D("0.5"), width=8).plain == "████     " + "  50%".rjust(8)
    assert demo.ratio_bar(D("0.0625"), width=4).plain.startswith("▎   ")  # 1/16 of 4 cells: 2 eighths
    over = demo.ratio_bar(D("1.2"), width=8)
    assert over.plain.startswith("█" * 8) and over.plain.endswith("120%")
    assert demo.ratio_bar(INFINITY, width=4).plain.endswith("inf")


def test_sparkline() -> None:
    assert demo.sparkline([D(1), D(8)]) == "▁█"
    assert demo.sparkline([D(5), D(5), D(5)]) == "▄▄▄"
    assert demo.sparkline([]) == ""


def test_refusal_line_gives_the_imr_move_and_the_largest_size() -> None:
    line = demo.feed_line({
        "event": "order_rejected", "actor": "account:whale", "t": 1000, "order_id": "w", "market": "BTC_USDC_PERP",
        "side": "Bid", "quantity": D(100), "price": D(99000), "code": "INSUFFICIENT_MARGIN", "message": "...",
        "imr_before": D(0), "imr_after": D("3.94"), "max_quantity": D("40.06412"),
    })
    assert line.plain == ("   1.000s refused  whale buy 100 BTC_USDC_PERP @ 99000  INSUFFICIENT_MARGIN  IMR 0% -> 394%"
                          "  largest that passes 40.06412")
    assert line.style == "yellow"


def test_keys_pause_step_speed_and_finish() -> None:
    state = demo.DemoState("example", 1, 30_000, 4.0, (), ())
    pacer = demo._Demo(state, Live(console=recording_console(), auto_refresh=False), keys_fd=None)
    state.advance(2500)
    pacer.on_key(" ")
    assert state.paused and pacer.limit_ms() == 2500
    pacer.on_key("s")
    assert pacer.limit_ms() == 3500
    pacer.on_key("+")
    pacer.on_key("+")
    pacer.on_key("-")
    assert state.rate == 8.0
    pacer.on_key("q")
    assert state.finishing
    pacer.wait_until(60_000)  # finishing: never held


def test_listener_chain_calls_the_observer_first() -> None:
    calls: list[str] = []
    chained = demo._chain(lambda e: calls.append("observer"), lambda e: calls.append("demo"))
    chained({})
    assert calls == ["observer", "demo"]


@pytest.fixture(scope="module")
def cascade_state() -> demo.DemoState:
    from scenarios.loader import load
    from scenarios.runner import run

    scenario = load("cascade")
    outcome = run(scenario)
    state = demo.DemoState.for_scenario(scenario, 1, scenario.duration_ms, 5.0)
    for event in outcome.result.events:
        state.on_event(event)
        state.advance(event["t"])
    return state


def test_a_lecture_sees_bankrupt_accounts_the_fund_backstop_and_adl(cascade_state) -> None:
    """cascade's end: its six bankrupt accounts stay on the screen with their debt (no IMR or MMR
    beside a negative equity), and the fund panel shows the backstop blp took 1.02579 BTC at mark
    97,485.1 = 99,999.24 of its 100,000 (0.76 left) and that ADL closed against the whale."""
    shown = demo._shown_accounts(cascade_state)
    assert {"t01", "t02", "t03", "t04", "t05", "t06"} <= set(shown)
    console = recording_console()
    console.print(demo.dashboard(cascade_state, 140))
    text = console.export_text()
    assert "bankrupt: owes the liquidity fund" in text and "2568.01 USDC" in text  # the end, as `run` words it
    assert "backstop blp BTC_USDC_PERP: 0.76 of 100000 left" in text and "ADL against: whale" in text


def test_the_last_frame_says_how_each_account_ended(cascade_state) -> None:
    """At cascade's closing samples (t=50 s) the status column says what ``run`` says: t09 is at
    MMR 105.75% with no liquidation under way, so one is pending (its last periodic sample, at
    49.004 s, read 99.17%); t08 is mid-liquidation; t01 owes the fund 2,568.01; t07, liquidated
    once (the demo counts its start step) and left with nothing, ended at zero. The column keeps
    its width: the long words wrap, the ratios beside them stay whole."""
    t09 = cascade_state.health["t09"]
    assert t09 is not None and t09["closing"] and t09["t"] == 50000
    status = demo._status(cascade_state, "t09", t09).plain
    assert status == "liquidation pending: MMR 105.75% >= 100%, the next loop starts it"
    assert demo._status(cascade_state, "t08", cascade_state.health["t08"]).plain == "the run ended mid-liquidation"
    assert (demo._status(cascade_state, "t01", cascade_state.health["t01"]).plain
            == "bankrupt: owes the liquidity fund 2568.01 USDC")
    assert demo._status(cascade_state, "t07", cascade_state.health["t07"]).plain == "liquidated to zero equity"
    console = recording_console(140)
    console.print(demo.dashboard(cascade_state, 140))
    lines = console.export_text().splitlines()
    row = next(i for i, line in enumerate(lines) if line.strip("│ ").startswith("t09 "))
    assert "105.75%  1 BTC_USDC_PERP" in lines[row] and "liquidation pending: MMR 105.75%" in lines[row]
    assert ">= 100%, the next loop starts it" in lines[row + 1]


def test_feed_labels_never_run_into_the_account() -> None:
    line = demo.feed_line({"event": "liquidation_step", "t": 11994, "at": 11990, "account": "t01",
                           "stage": "bankruptcy", "quantity": D(0), "reason": "nothing left to liquidate"})
    assert line.plain.startswith("  11.990s liq bankruptcy t01  nothing left")


def test_pause_on_stops_at_what_the_lecture_asked_for() -> None:
    state = fed_state()
    state.pause_on = frozenset({"bankruptcy", "refusal"})
    step = {"event": "liquidation_step", "stage": "book"}
    assert not state.should_pause(step)
    assert state.should_pause({**step, "stage": "bankruptcy"}) and state.should_pause({"event": "order_rejected"})
    state.pause_on = frozenset({"liquidation"})
    assert state.should_pause(step) and not state.should_pause({"event": "order_rejected"})


def test_b_steps_back_a_second_and_redraws_every_panel_from_that_instant() -> None:
    """Live at t=6 s (trader liquidating at MMR 150%, one liquidation line in the feed), ``b``
    pauses and shows t=5 s: BTC already at 90,000 (-10%) and the book's bid 89,990 (both logged at
    5 s), but no health sample yet (it came at 6 s), so no ratio and no liquidation line. A
    second ``b`` shows t=4 s, before the drop: BTC 100,000 and an empty book. ``s`` walks forward
    through what was seen, and back at the live instant the live frame is on screen again,
    untouched by the looking back."""
    state = fed_state()
    console = recording_console()
    pacer = demo._Demo(state, Live(console=console, auto_refresh=False), keys_fd=None, events=FED)

    def screen() -> str:
        out = recording_console()
        out.print(demo.dashboard(pacer.frame(), 120))
        return out.export_text()

    pacer.on_key("b")
    assert state.paused and pacer.limit_ms() == 6000  # the run itself stays held where it was
    text = screen()
    for expected in ("t 5.0s / 30s", "looking back (the run is at 6.0s)", "b back 1s", "90000", "-10%", "89990",
                     "nothing yet"):
        assert expected in text, expected
    assert "150%" not in text and "liquidating" not in text and "liq book" not in text
    row = next(line for line in text.splitlines() if line.strip("│ ").startswith("trader"))
    assert row.strip("│ ").split() == ["trader", "-", "-", "-", "-"]
    pacer.on_key("b")
    text = screen()
    assert "t 4.0s / 30s" in text and "100000" in text and "89990" not in text and "-10%" not in text
    pacer.on_key("s")
    assert pacer.frame().now_ms == 5000 and "89990" in screen()
    pacer.on_key("s")
    assert pacer.view is None and pacer.frame() is state
    text = screen()
    assert "t 6.0s / 30s" in text and "looking back" not in text and "150%" in text and "liq book" in text
    assert state.now_ms == 6000 and len(state.feed) == 1
