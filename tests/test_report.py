"""The --report page: charts that exist and are real PNGs, and a page that shows them and the run."""

from __future__ import annotations

import html
from pathlib import Path

import pytest

from actors.system import RunFailed
from scenarios.loader import load
from scenarios.report import write_report
from scenarios.runner import ScenarioRun, run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# A 10x long wiped out by a 20% gap: straight to the backstop, infinite MMR, bankruptcy. SOL moves
# (its perp gets a chart) and trades spot once (so does SOL_USDC). The second expectation fails.
CRASH = """\
[scenario]
name = "crash-backstop"
description = "A <b>crash</b> & a backstop"
duration = 10
seed = 3

[prices.BTC]
kind = "steps"
points = [[0, 100000], [4, 80000]]

[prices.SOL]
kind = "linear"
points = [[0, 150], [10, 140]]

[[accounts]]
id = "maker"
deposits = { USDC = 10000000, SOL = 100 }
markets = ["BTC_USDC_PERP", "SOL_USDC"]

[[accounts]]
id = "blp"
deposits = { USDC = 5000000 }
markets = ["SOL_USDC"]

[[accounts]]
id = "whale"
deposits = { USDC = 10000 }
markets = ["BTC_USDC_PERP"]

[[backstops]]
account = "blp"
capacity = { BTC_USDC_PERP = 1000000 }

[[actions]]
at = 0.5
account = "maker"
type = "order"
market = "BTC_USDC_PERP"
side = "sell"
quantity = 1
price = 100000

[[actions]]
at = 0.5
account = "maker"
type = "order"
market = "SOL_USDC"
side = "sell"
quantity = 1
price = 150

[[actions]]
at = 1
account = "whale"
type = "order"
market = "BTC_USDC_PERP"
side = "buy"
quantity = 1
price = 100000

[[actions]]
at = 1
account = "blp"
type = "order"
market = "SOL_USDC"
side = "buy"
quantity = 1
price = 150

[[expect]]
kind = "liquidation_stage"
stage = "backstop"
account = "whale"

[[expect]]
kind = "not_liquidated"
account = "whale"
"""


@pytest.fixture(scope="module")
def partial() -> ScenarioRun:
    outcome = run(load("partial-liquidation"))
    assert outcome.result is not None
    return outcome


def _pngs(directory: Path) -> set[str]:
    return {p.name for p in directory.glob("*.png")}


def _assert_real_pngs(directory: Path) -> None:
    for path in directory.glob("*.png"):
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE), path.name
        assert len(data) > 5_000, path.name


def test_partial_liquidation_report_has_every_chart_and_the_run(partial, tmp_path):
    page = write_report(partial, tmp_path / "report")
    assert page == tmp_path / "report" / "index.html"
    directory = page.parent
    # ETH and SOL stood still and never traded: no flat charts for them.
    assert _pngs(directory) == {"prices-BTC_USDC_PERP.png", "account-maker.png", "account-trader.png",
                                "liquidation-trader.png"}
    _assert_real_pngs(directory)
    text = page.read_text(encoding="utf-8")
    for name in _pngs(directory):
        assert f'<img src="{name}"' in text
    assert "<script" not in text and "http" not in text
    assert "partial-liquidation" in text and partial.result.fingerprint in text
    for outcome in partial.outcomes:
        assert html.escape(outcome.description) in text
    assert text.count('<tr class="pass"><td>PASS</td>') == len(partial.outcomes)
    assert "reduce the position on the book" in text  # the liquidation steps, with their reasons


def test_the_same_run_gives_the_same_files(partial, tmp_path):
    first, second = write_report(partial, tmp_path / "a").parent, write_report(partial, tmp_path / "b").parent
    for path in first.iterdir():
        assert path.read_bytes() == (second / path.name).read_bytes(), path.name


def test_backstop_bankruptcy_report_escapes_text_and_shows_the_failure(tmp_path):
    scenario = tmp_path / "crash.toml"
    scenario.write_text(CRASH, encoding="utf-8")
    outcome = run(load(str(scenario)))
    assert outcome.failure is None and not outcome.passed
    directory = write_report(outcome, tmp_path / "report").parent
    assert _pngs(directory) == {
        "prices-BTC_USDC_PERP.png", "prices-SOL_USDC.png", "prices-SOL_USDC_PERP.png",
        "account-maker.png", "account-blp.png", "account-whale.png", "liquidation-whale.png", "fund.png",
    }
    _assert_real_pngs(directory)
    text = (directory / "index.html").read_text(encoding="utf-8")
    assert "A &lt;b&gt;crash&lt;/b&gt; &amp; a backstop" in text and "<b>" not in text
    assert '<tr class="fail"><td>FAIL</td>' in text and "FAILED" in text
    assert "bankruptcy" in text


def test_a_run_that_stopped_early_gets_a_page_saying_why(partial, tmp_path):
    failure = RunFailed("stall", "nothing moved for 60 s", partial.seed, 5000)
    stopped = ScenarioRun(partial.scenario, partial.seed, partial.until_ms, None, failure, ())
    page = write_report(stopped, tmp_path)
    text = page.read_text(encoding="utf-8")
    assert "nothing moved for 60 s" in text and "partial-liquidation" in text
    assert "<img" not in text and not _pngs(tmp_path)


@pytest.fixture(scope="module")
def cascade(tmp_path_factory) -> tuple[ScenarioRun, str]:
    """cascade's run and its report page."""
    outcome = run(load("cascade"))
    return outcome, write_report(outcome, tmp_path_factory.mktemp("cascade")).read_text(encoding="utf-8")


def test_the_fund_chart_follows_the_fund_to_its_end(cascade):
    """cascade's fund pays six bankrupt accounts' shortfalls: the chart's series ends at the
    fund the run's summary reports, and the steps table gives each step's own time to the
    millisecond, as `run` prints it (t01's backstop step at 11.034 s)."""
    from scenarios.report import _fund_series

    outcome, text = cascade
    series = _fund_series(outcome.result.events, "USDC")
    assert series[-1][1] == outcome.result.summary["fund"]["USDC"] < 0
    backstop = next(st for st in outcome.result.history["t01"] if st.stage == "backstop")
    assert backstop.time_ms == 11034
    assert '<img src="fund.png"' in text and "<td>11.034s</td><td>t01</td><td>backstop</td>" in text
    assert "bankrupt: owes the liquidity fund 2568.01 USDC" in text


def test_the_accounts_table_says_how_each_account_ended(cascade):
    """The end-of-run table's status column is run's: t09 ended at MMR 105.75% (IMR 793.13%,
    one BTC long, 929.9 USDC, no liquidation yet), so one is pending; t08 ended mid-liquidation;
    t07, liquidated once, ended at zero."""
    _, text = cascade
    assert ("<tr><td>t09</td><td>590</td><td>793.13%</td><td>105.75%</td><td>929.9 USDC</td><td>1 BTC_USDC_PERP</td>"
            "<td>-</td><td>-</td><td>0</td><td>0</td><td class=\"reason\">liquidation pending: MMR 105.75% &gt;= 100%, "
            "the next loop starts it</td></tr>") in text
    assert '<td class="reason">the run ended mid-liquidation</td>' in text
    assert '<td>1</td><td class="reason">liquidated to zero equity</td>' in text
