"""Gradual liquidation through the direct engine, worked by hand, plus its properties."""

from __future__ import annotations

from decimal import Decimal

import pytest

from exchange import margin
from exchange.decimals import fmt_pct
from exchange.engine import Exchange
from exchange.ledger import Settings
from exchange.lending import Grant
from exchange.liquidation import LiquidationStep, describe_step, mmr_at_marks
from exchange.orders import ErrorCode, Side
from exchange.profile import load_profile

D = Decimal
BTC = "BTC_USDC_PERP"
ETH = "ETH_USDC_PERP"


def ten_x_long(profile_name: str = "backpack", backstop: D | None = None) -> Exchange:
    """A trader with 10,000 USDC at 10x buys 1 BTC at 100,000 from the market maker (taker fee
    50), so its equity at mark 100,000 is 9,950; maintenance at BTC's base MMF is 0.00666667."""
    ex = Exchange(load_profile(profile_name))
    ex.set_price("BTC", D(100000))
    for name, usdc in (("mm", 10_000_000), ("blp", 1_000_000), ("trader", 10_000)):
        ex.add_account(name, settings=Settings(leverage_limit=D(10)))
        ex.deposit(name, "USDC", D(usdc))
    if backstop is not None:
        ex.add_backstop("blp", {BTC: backstop})
    assert ex.order("mm", BTC, Side.ASK, D(1), D(100000)).accepted
    assert ex.order("trader", BTC, Side.BID, D(1), D(100000)).accepted
    return ex


def quote_bid(ex: Exchange, mark: D, below: D = D(10)) -> None:
    """Move the mark and have the market maker bid 5 BTC ``below`` under it."""
    ex.cancel_all("mm", [BTC])
    ex.set_price("BTC", mark)
    assert ex.order("mm", BTC, Side.BID, D(5), mark - below).accepted


def rows(ex: Exchange, account: str = "trader", stage: str | None = None) -> list[tuple]:
    return [
        (s.time_ms, s.stage, s.quantity, s.price, s.fee)
        for s in ex.liquidation_history[account]
        if stage is None or s.stage == stage
    ]


def test_partial_liquidation_leaves_a_balance():
    """The mark falls to 90,450 (bid 90,440): equity 9,950 - 9,550 = 400, maintenance
    90,450 x 0.00666667 = 603.0003, MMR 150.75% (under the 200% auto-close: stage 1).

    Selling x at 90,440 loses x(10 + 90,440 x 0.0005) = 55.22x and frees 603.0003x. One loop
    may sell at most 10% of the position, and each loop needs more than that:
      t=1s  0.1 (of 1),        fee 4.522;    equity 394.478,    MMR 137.57%
      t=2s  0.09 (of 0.9),     fee 4.0698;   equity 389.5082,   MMR 125.40%
      t=3s  0.081 (of 0.81),   fee 3.66282;  equity 385.03538,  MMR 114.17%
      t=4s  0.0729 (of 0.729), fee 3.296538; equity 381.009842, MMR 103.84%
    At t=5s the target is in reach: 395.628498 - 603.0003x < 381.009842 - 55.22x gives
    x > 0.026687, so 0.02669 (fee 1.206922, rounded up) leaves 0.62941 BTC, equity 379.53602
    and MMR 99.9996%; at t=6s the account is healthy and keeps its 379.54 of equity.
    """
    ex = ten_x_long()
    quote_bid(ex, D(90450))
    assert margin.totals(ex.accounts["trader"]).mmr == D("1.50750075375")
    ex.advance_to(6000)
    assert rows(ex, stage="book") == [
        (1000, "book", D("0.1"), D(90440), D("4.522")),
        (2000, "book", D("0.09"), D(90440), D("4.0698")),
        (3000, "book", D("0.081"), D(90440), D("3.66282")),
        (4000, "book", D("0.0729"), D(90440), D("3.296538")),
        (5000, "book", D("0.02669"), D(90440), D("1.206922")),
    ]
    history = ex.liquidation_history["trader"]
    assert [s.stage for s in history] == ["start", "book", "book", "book", "book", "book", "healthy"]
    assert history[0].reason.startswith("MMR 150.75%: net equity 400 against maintenance margin 603")
    trader = ex.accounts["trader"]
    assert trader.positions[BTC].quantity == D("0.62941")
    t = margin.totals(trader)
    assert t.net_equity == D("379.53602") and D("0.99999") < t.mmr < 1
    assert not trader.liquidating and "trader" not in ex.liquidations
    assert ex.invariant_violations() == []


def test_one_empty_book_read_is_not_enough_for_the_backstop():
    """The first example, but the market maker's bid is missing at the t=1s loop (between its
    cancel and its new quote): that loop sells nothing, and reads the book again 100 ms later
    (``BOOK_RETRY_MS``), where the bid is back. The first example's steps follow: 0.1, 0.09 and
    0.081 BTC at 90,440, taker fees 4.522, 4.0698 and 3.66282 (0.05% of each notional), the
    first at t=1.1s, although a backstop with room for the whole position is configured. Before,
    the single empty read sent the whole position to the backstop at MMR 150.75%."""
    ex = ten_x_long(backstop=D(10_000_000))
    ex.cancel_all("mm", [BTC])
    ex.set_price("BTC", D(90450))
    ex.advance_to(1000)
    assert rows(ex) == [(1000, "start", D(0), None, D(0))]
    assert ex.order("mm", BTC, Side.BID, D(5), D(90440)).accepted
    ex.advance_to(3000)
    assert rows(ex, stage="book") == [
        (1100, "book", D("0.1"), D(90440), D("4.522")),
        (2000, "book", D("0.09"), D(90440), D("4.0698")),
        (3000, "book", D("0.081"), D(90440), D("3.66282")),
    ]
    assert "backstop" not in [s.stage for s in ex.liquidation_history["trader"]]


def test_a_book_still_empty_on_the_retry_counts_one_failed_loop():
    """No bid at the t=1s loop nor at its retry 100 ms later: one failed loop, not two, so the
    backstop waits. The bid arrives before t=2s and that loop sells 0.1 BTC at 90,440."""
    ex = ten_x_long(backstop=D(10_000_000))
    ex.cancel_all("mm", [BTC])
    ex.set_price("BTC", D(90450))
    ex.advance_to(1500)
    assert rows(ex) == [(1000, "start", D(0), None, D(0))]
    assert ex.order("mm", BTC, Side.BID, D(5), D(90440)).accepted
    ex.advance_to(2000)
    assert rows(ex)[1:] == [(2000, "book", D("0.1"), D(90440), D("4.522"))]


def test_a_maker_refreshing_on_the_loop_beat_does_not_starve_liquidation(tmp_path):
    """liquidation-history with its maker at FORMAT.md's default ``refresh = 1``, on the 1 s
    liquidation loop's beat: the loops at t=6s and t=7s read the book while the maker is between
    its cancel and its quotes. Each reads again 100 ms later, so every loop from the start at
    t=6s to the healthy end sells on the book (t=6.1, 7.1, 8 s), as with ``refresh = 0.999``
    (t=6, 7, 8 s); before, the t=6s and t=9s loops sold nothing and the end came at t=11s."""
    from scenarios import loader, runner

    text = loader.shipped()["liquidation-history"].read_text(encoding="utf-8")
    path = tmp_path / "default-refresh.toml"
    path.write_text(text.replace("refresh = 0.999", "refresh = 1"), encoding="utf-8")
    scenario = loader.load(str(path))
    outcome = runner.run(scenario)
    assert outcome.failure is None
    history = outcome.result.history["trader"]
    book = sorted({s.time_ms for s in history if s.stage == "book"})
    assert book == [6100, 7100, 8000]
    assert [s.stage for s in history][-1] == "healthy" and history[-1].time_ms == 9000


def test_a_liquidation_ends_within_its_loop_bound():
    """The first example with ``max_book_loops = 3``: the three 10% steps of t=1..3s leave MMR
    at 114.17% (as there), so the t=4s loop hands the remaining 0.729 BTC to the backstop at
    mark 90,450 instead of a fourth step, and the liquidation is over."""
    ex = Exchange(load_profile("backpack", overrides={"liquidation": {"max_book_loops": 3}}))
    ex.set_price("BTC", D(100000))
    for name, usdc in (("mm", 10_000_000), ("blp", 1_000_000), ("trader", 10_000)):
        ex.add_account(name, settings=Settings(leverage_limit=D(10)))
        ex.deposit(name, "USDC", D(usdc))
    ex.add_backstop("blp", {BTC: D(10_000_000)})
    assert ex.order("mm", BTC, Side.ASK, D(1), D(100000)).accepted
    assert ex.order("trader", BTC, Side.BID, D(1), D(100000)).accepted
    quote_bid(ex, D(90450))
    ex.advance_to(4000)
    assert [row[:3] for row in rows(ex)] == [
        (1000, "start", D(0)), (1000, "book", D("0.1")), (2000, "book", D("0.09")), (3000, "book", D("0.081")),
        (4000, "backstop", D("0.729")), (4000, "fund", D(0)), (4000, "closed", D(0)),
    ]
    backstop = ex.liquidation_history["trader"][4]
    assert backstop.price == D(90450) and backstop.reason.startswith("3 loops on the book have not brought MMR")
    assert "trader" not in ex.liquidations and ex.invariant_violations() == []


def test_the_price_keeps_falling_and_erodes_the_account_to_zero():
    """Continuing the first example from its healthy end (0.62941 BTC, equity 379.53602 at
    90,450), the mark falls 100 a second, the bid follows 10 under it.

      t=7s  mark 90,350: equity 316.59502, MMR 119.75%; sell 10% = 0.06294 at 90,340
            (fee 2.843): equity 313.12262, MMR 108.97%
      t=8s  mark 90,250: equity 256.47562, MMR 132.89%; 0.05664 at 90,240 (fee 2.555597)
            -> equity 253.353623
      t=9s  mark 90,150: equity 202.370623, MMR 151.41%; 0.05098 at 90,140 (fee 2.297669)
            -> equity 199.563154
      t=10s mark 90,050: equity 153.678154, MMR 179.25%; 0.04588 at 90,040 (fee 2.065518)
            -> equity 151.153836, 0.41297 BTC left
      t=11s mark 89,950: equity 151.153836 - 41.297 = 109.856836 against maintenance
            0.41297 x 89,950 x 0.00666667 = 247.65: MMR 225.42% >= 200%: the backstop takes
            the 0.41297 at mark and the 109.856836 left goes to the liquidity fund.
    The account ends with nothing.
    """
    ex = ten_x_long(backstop=D(10_000_000))
    quote_bid(ex, D(90450))
    ex.advance_to(6000)
    mark = D(90450)
    for second in range(7, 12):
        mark -= 100
        quote_bid(ex, mark)
        ex.advance_to(second * 1000)
    assert rows(ex)[7:] == [
        (7000, "start", D(0), None, D(0)),
        (7000, "book", D("0.06294"), D(90340), D("2.843")),
        (8000, "book", D("0.05664"), D(90240), D("2.555597")),
        (9000, "book", D("0.05098"), D(90140), D("2.297669")),
        (10000, "book", D("0.04588"), D(90040), D("2.065518")),
        (11000, "backstop", D("0.41297"), D(89950), D(0)),
        (11000, "fund", D(0), None, D(0)),
        (11000, "closed", D(0), None, D(0)),
    ]
    backstop = ex.liquidation_history["trader"][-3]
    assert backstop.mmr_before.quantize(D("0.0001")) == D("2.2542")
    trader = ex.accounts["trader"]
    assert trader.positions == {} and margin.totals(trader).net_equity == 0
    assert ex.fund == {"USDC": D("109.856836")}
    assert ex.accounts["blp"].positions[BTC].quantity == D("0.41297")
    assert ex.invariant_violations() == []


def test_a_gap_past_auto_close_goes_to_the_backstop():
    """The mark gaps from 100,000 to 90,300: equity 9,950 - 9,700 = 250 against maintenance
    602.0003: MMR 240.8% >= 200%, so the first loop skips the book: the provider takes 1 BTC at
    90,300 and the 250 left goes to the fund."""
    ex = ten_x_long(backstop=D(1_000_000))
    ex.set_price("BTC", D(90300))
    ex.advance_to(1000)
    assert rows(ex) == [
        (1000, "start", D(0), None, D(0)),
        (1000, "backstop", D(1), D(90300), D(0)),
        (1000, "fund", D(0), None, D(0)),
        (1000, "closed", D(0), None, D(0)),
    ]
    assert ex.liquidation_history["trader"][1].reason.startswith("MMR 240.8% reached the auto-close level 200%")
    assert ex.accounts["trader"].positions == {} and ex.fund == {"USDC": D(250)}
    assert ex.accounts["blp"].positions[BTC].quantity == 1
    assert ex.invariant_violations() == []


def test_backstop_capacity_exhausted_then_adl_of_the_best_ranked_short():
    """As the gap above, but the trader bought from short_hi (5,000 USDC, short 1 at 100,000,
    maker fee 20) and the market maker bought 1 from short_lo (100,000 USDC), and the provider
    takes at most 50,000 USD: floor(50,000 / 90,300) = 0.55370 BTC.

    The 0.4463 left goes to ADL. Opposite (short) positions, at 90,300 both up 9,700 (9.7%):
    short_hi equity 4,980 + 9,700 = 14,680, leverage 90,300/14,680 = 6.1512, score 0.5967;
    short_lo equity 109,680, leverage 0.8233, score 0.0799. short_hi is closed first, 0.4463 at
    90,300, realizing 0.4463 x 9,700 = 4,329.11; short_lo is untouched.
    """
    ex = Exchange(load_profile("backpack"))
    ex.set_price("BTC", D(100000))
    for name, usdc in (("mm", 10_000_000), ("blp", 1_000_000), ("trader", 10_000), ("short_hi", 5000),
                       ("short_lo", 100_000)):
        ex.add_account(name, settings=Settings(leverage_limit=D(20)))
        ex.deposit(name, "USDC", D(usdc))
    ex.add_backstop("blp", {BTC: D(50000)})
    assert ex.order("short_hi", BTC, Side.ASK, D(1), D(100000)).accepted
    assert ex.order("trader", BTC, Side.BID, D(1), D(100000)).accepted
    assert ex.order("short_lo", BTC, Side.ASK, D(1), D(100000)).accepted
    assert ex.order("mm", BTC, Side.BID, D(1), D(100000)).accepted
    ex.set_price("BTC", D(90300))
    ex.advance_to(1000)
    assert rows(ex)[1:3] == [
        (1000, "backstop", D("0.5537"), D(90300), D(0)),
        (1000, "adl", D("0.4463"), D(90300), D(0)),
    ]
    assert "closed against short_hi (ADL score 0.596669)" in ex.liquidation_history["trader"][2].reason
    assert ex.accounts["short_hi"].positions[BTC].quantity == D("-0.5537")
    assert ex.accounts["short_hi"].available("USDC") == D(4980) + D("4329.11")
    assert ex.accounts["short_lo"].positions[BTC].quantity == D(-1)
    assert ex.accounts["blp"].positions[BTC].quantity == D("0.5537")
    assert ex.invariant_violations() == []


@pytest.mark.parametrize("lent", [False, True], ids=["held", "lent"])
def test_a_spot_margin_borrow_is_liquidated_by_collateral_conversion(lent):
    """F6's account: 1,000 USDC buys 20 SOL at 100 with autoBorrow. The borrow of 1,000 pays an
    entry fee for the first hour at the rate its own utilization (1%) sets: 0.12 x 0.01/0.8 =
    0.15% APR -> 1,000 x 0.0015/8760 = 0.000171 -> 0.000172 up; 20 SOL arrive less the 0.02 fee.

    SOL falls to 55 (bid 54.95): equity 19.98 x 55 x 0.95 - 1,000.000172 = 43.954828 against
    maintenance 0.05 x 1,000.000172 = 50.0000086: MMR 113.75%. The only collateral is SOL:
    repaying q USDC frees 0.05q; covering q sells y = q / (54.95 x 0.97 x 0.999) SOL (rounded
    up to 0.01: priced at the impact band's floor so the sale surely covers q), and selling at
    54.95 recovers the haircut: y x (54.95 x 0.999 - 55 x 0.95) = 2.64505y of equity. The
    smallest q with (50.0000086 - 0.05q) / (43.954828 + 2.64505y) < 1 needs y = 1.14 SOL. The
    sale brings 62.643 - 0.062643 = 62.580357 USDC, which repays the borrow to 937.419815:
    equity 18.84 x 55 x 0.95 - 937.419815 = 46.970185, MMR 99.79%, healthy.

    Lent, the SOL backs the margin at the same weight (spec 9.3), and the liquidation redeems
    it before it plans (9.4): the same steps follow, and nothing stays lent.
    """
    ex = Exchange(load_profile("backpack"))
    ex.set_price("SOL", D(100))
    for name, usdc in (("lender", 100_000), ("mm", 100_000), ("trader", 1000)):
        ex.add_account(name)
        ex.deposit(name, "USDC", D(usdc))
    ex.lend("lender", "USDC", D(100_000))
    ex.deposit("mm", "SOL", D(1000))
    assert ex.order("mm", "SOL_USDC", Side.ASK, D(20), D(100)).accepted
    assert ex.order("trader", "SOL_USDC", Side.BID, D(20), D(100), auto_borrow=True).accepted
    trader = ex.accounts["trader"]
    assert trader.borrows == {"USDC": D("1000.000172")} and trader.available("SOL") == D("19.98")
    if lent:
        assert isinstance(ex.lend("trader", "SOL", D("19.98")), Grant)
    ex.set_price("SOL", D(55))
    assert ex.order("mm", "SOL_USDC", Side.BID, D(50), D("54.95")).accepted
    assert margin.totals(trader).net_equity == D("43.954828")
    ex.advance_to(2000)
    assert rows(ex) == [
        (1000, "start", D(0), None, D(0)),
        (1000, "conversion", D("1.14"), D("54.95"), D("0.062643")),
        (2000, "healthy", D(0), None, D(0)),
    ]
    assert "borrow of 1000.000172 USDC at 1 needs 50" in ex.liquidation_history["trader"][0].reason
    assert trader.borrows == {"USDC": D("937.419815")} and trader.available("SOL") == D("18.84")
    assert not trader.lends.get("SOL")
    assert margin.totals(trader).net_equity == D("46.970185")
    assert ex.invariant_violations() == []


def test_the_liquidation_fee_goes_to_the_fund():
    """backpack-2025-10: 1% of each liquidation fill. The first step of the partial example
    sells 0.1 at 90,440: trading fee 4.522 plus liquidation fee 90.44, which the book books to
    the liquidity fund. At 1% the fee is worth more than BTC's 0.67% maintenance margin, so the
    step raises MMR (150.75% -> 178.49%): the account reaches auto-close sooner."""
    ex = ten_x_long("backpack-2025-10")
    quote_bid(ex, D(90450))
    ex.advance_to(1000)
    step = ex.liquidation_history["trader"][1]
    assert (step.quantity, step.fee) == (D("0.1"), D("4.522") + D("90.44"))
    assert ex.books[BTC].liquidation_fees == {"USDC": D("90.44")}
    assert step.mmr_after > step.mmr_before
    assert ex.invariant_violations() == []


def test_orders_that_add_risk_are_refused_while_liquidating():
    ex = ten_x_long()
    assert ex.order("trader", BTC, Side.ASK, D("0.5"), D(101000)).accepted  # a resting take-profit
    quote_bid(ex, D(90450))
    ex.advance_to(1000)
    trader = ex.accounts["trader"]
    assert trader.liquidating and trader.open_orders == {}  # the take-profit was cancelled first
    refused = ex.order("trader", BTC, Side.BID, D("0.1"), D(90500))
    assert refused.rejection is not None and refused.rejection.code is ErrorCode.ACCOUNT_LIQUIDATING
    assert ex.order("trader", BTC, Side.ASK, D("0.1"), D(90440), reduce_only=True).accepted


def test_the_estimate_is_a_reference_for_a_complex_account():
    """A pair trade: long 0.5 BTC at 100,000 and short 10 ETH at 4,000 on 10,000 USDC at 10x.
    Alone, the BTC leg's estimated liquidation price would be (50,000 + 25 - 9,955) /
    (0.5 x (1 - 0.00666667)) = 80,677.85. But liquidation judges the whole sub-account: BTC
    drifts to 98,000 while ETH rallies 10 a second, and the short ETH leg's losses bring MMR to
    100% with BTC still near 98,000, some 17,000 above the estimate. The core refuses to give one
    estimate for this account and the history's first row names both legs and their PnL."""
    ex = Exchange(load_profile("backpack"))
    ex.set_price("BTC", D(100000))
    ex.set_price("ETH", D(4000))
    for name, usdc in (("mm", 10_000_000), ("pair", 10_000)):
        ex.add_account(name, settings=Settings(leverage_limit=D(10)))
        ex.deposit(name, "USDC", D(usdc))
    assert ex.order("mm", BTC, Side.ASK, D("0.5"), D(100000)).accepted
    assert ex.order("pair", BTC, Side.BID, D("0.5"), D(100000)).accepted
    assert ex.order("mm", ETH, Side.BID, D(10), D(4000)).accepted
    assert ex.order("pair", ETH, Side.ASK, D(10), D(4000)).accepted
    pair = ex.accounts["pair"]
    assert margin.estimate_liquidation_price(pair, BTC).reason == "other positions move equity too: ETH_USDC_PERP"
    alone = Exchange(load_profile("backpack"))
    alone.set_price("BTC", D(100000))
    alone.add_account("mm")
    alone.deposit("mm", "USDC", D(10_000_000))
    alone.add_account("solo", settings=Settings(leverage_limit=D(10)))
    alone.deposit("solo", "USDC", D(9955))  # the pair's USDC after both entry fees (25 + 20)
    assert alone.order("mm", BTC, Side.ASK, D("0.5"), D(100000)).accepted
    assert alone.order("solo", BTC, Side.BID, D("0.5"), D(100000)).accepted
    estimate = margin.estimate_liquidation_price(alone.accounts["solo"], BTC).price
    assert estimate.quantize(D("0.01")) == D("80677.85")
    btc, eth = D(100000), D(4000)
    for second in range(1, 120):
        btc, eth = max(btc - 20, D(98000)), eth + 10
        for symbol, price in (("BTC", btc), ("ETH", eth)):
            ex.set_price(symbol, price)
        ex.cancel_all("mm")
        assert ex.order("mm", BTC, Side.BID, D(5), btc - 10).accepted
        assert ex.order("mm", ETH, Side.ASK, D(50), eth + 1).accepted
        ex.advance_to(second * 1000)
        if "pair" in ex.liquidation_history:
            break
    start = ex.liquidation_history["pair"][0]
    assert start.stage == "start" and btc >= D(98000) and btc - estimate > 17000
    assert "BTC_USDC_PERP" in start.reason and "ETH_USDC_PERP" in start.reason and "PnL" in start.reason
    ex.advance_to(ex.now_ms + 30_000)
    markets = {s.market for s in ex.liquidation_history["pair"] if s.stage == "book"}
    assert ETH in markets
    assert ex.invariant_violations() == []


def test_history_reads_as_plain_words():
    """The first book step sells 0.1 BTC at 90,440 against mark 90,450: notional 9,044, taker
    fee 0.05% = 4.522, and no liquidation fee under the current profile (the venue FAQ), shown
    apart so nobody reads the taker fee as a liquidation fee; 0.9 BTC is left."""
    ex = ten_x_long()
    quote_bid(ex, D(90450))
    ex.advance_to(2000)
    lines = [describe_step(s) for s in ex.liquidation_history["trader"]]
    assert lines[1] == (
        "t=1.000s book: Ask 0.1 BTC_USDC_PERP at 90440 (mark 90450), taker fee 4.522, liquidation fee 0; "
        "MMR 150.75% -> 137.57%; 0.9 left (reduce the position on the book)"
    )


def test_taker_and_liquidation_fees_are_kept_apart():
    """Under the 2025-10 profile (1% liquidation fee) the same sale pays taker fee 4.522 and
    liquidation fee 1% x 9,044 = 90.44; ``fee`` stays their sum, 94.962. The fee is above BTC's
    MMF, so this step raises MMR (150.75% -> 178.49%), as the module docstring warns."""
    ex = ten_x_long("backpack-2025-10")
    quote_bid(ex, D(90450))
    ex.advance_to(1000)
    step = ex.liquidation_history["trader"][1]
    assert (step.taker_fee, step.liquidation_fee, step.fee) == (D("4.522"), D("90.44"), D("94.962"))
    assert (step.mark, step.position_after, step.planned_mark) == (D(90450), D("0.9"), None)
    assert "taker fee 4.522, liquidation fee 90.44; MMR 150.75% -> 178.49%" in describe_step(step)


def test_mmr_at_other_marks_puts_the_account_marks_back():
    """The trader holds 1 BTC bought at 100,000 and 9,950 USDC. At mark 90,450 equity is
    9,950 + 90,450 - 100,000 = 400 against maintenance 90,450 x 0.00666667 = 603.0003 (MMR
    150.75%); at 95,000 it is 4,950 against 633.33365 (MMR 12.79%). The account keeps its own mark."""
    ex = ten_x_long()
    account = ex.accounts["trader"]
    own = account.marks[BTC]
    assert fmt_pct(mmr_at_marks(account, {BTC: D(90450)})) == "150.75%"
    assert mmr_at_marks(account, {BTC: D(95000)}) == D("633.33365") / D(4950)
    assert account.marks[BTC] == own


def test_a_step_says_when_a_new_mark_arrived_during_it():
    """A row whose loop was planned at 97,485.1 and whose fills landed at mark 97,461.2 gives
    MMR after at both, so before and after can be read at one mark."""
    step = LiquidationStep(time_ms=12025, stage="book", market=BTC, side="Ask", quantity=D("0.18"),
                           price=D("97436.3"), fee=D("8.769267"), taker_fee=D("8.769267"), mark=D("97461.2"),
                           planned_mark=D("97485.1"), mmr_after_at_planned_mark=D("1.128"), position_after=D("1.62"),
                           mmr_before=D("1.2302"), mmr_after=D("1.1766"), reason="reduce the position on the book")
    assert describe_step(step) == (
        "t=12.025s book: Ask 0.18 BTC_USDC_PERP at 97436.3 (mark 97461.2), taker fee 8.769267, liquidation fee 0; "
        "MMR 123.02% -> 117.66%; 1.62 left; the mark moved 97485.1 -> 97461.2 during the step: at 97485.1 it took "
        "MMR 123.02% -> 112.8% (reduce the position on the book)")


def test_an_adl_step_says_whether_a_backstop_existed():
    """ten_x_long gapped to 85,000 (equity -5,050): without a backstop the ADL step says there is
    no provider; with blp's 1,000 USD of capacity (used up by 1,000/85,000 BTC) it says the
    capacity ran out."""
    reasons = {}
    for backstop in (None, D(1000)):
        ex = ten_x_long(backstop=backstop)
        ex.set_price("BTC", D(85000))
        ex.advance_to(1000)
        adl = [s for s in ex.liquidation_history["trader"] if s.stage == "adl"]
        reasons[backstop] = adl[0].reason
    assert reasons[None].startswith("no backstop provider; closed against mm")
    assert reasons[D(1000)].startswith("backstop capacity exhausted; closed against mm")


@pytest.mark.parametrize("profile_name", ["backpack", "backpack-2025-10"])
def test_bankruptcy_leaves_a_debt_that_deposits_repay(profile_name):
    """A gap far past zero equity with no backstop: ADL closes the long against the market
    maker at mark, the account's USDC goes negative, the fund pays it and the account owes it;
    the next deposit repays the fund first."""
    ex = ten_x_long(profile_name)
    ex.set_price("BTC", D(85000))  # equity 9,950 - 15,000 = -5,050
    ex.advance_to(1000)
    trader = ex.accounts["trader"]
    assert trader.positions == {} and trader.unsettled_equity == D(-5050)
    assert ex.liquidation_history["trader"][-1].stage == "bankruptcy"
    assert ex.fund["USDC"] == D(-5050)
    assert ex.deposit("trader", "USDC", D(6000)) == D(5050)
    assert trader.unsettled_equity == 0 and trader.available("USDC") == D(950)
    assert ex.invariant_violations() == []


def test_liquidated_positions_answer_the_faq():
    """"How can I view liquidated positions": the partial example summed per market. The five
    book steps sold 0.1 + 0.09 + 0.081 + 0.0729 + 0.02669 = 0.37059 BTC at 90,440 (fees
    4.522 + 4.0698 + 3.66282 + 3.296538 + 1.206922 = 16.758080)."""
    from exchange.liquidation import liquidated_positions

    ex = ten_x_long()
    quote_bid(ex, D(90450))
    ex.advance_to(6000)
    (summary,) = liquidated_positions(ex.liquidation_history["trader"])
    assert (summary.market, summary.side, summary.stages) == (BTC, "Ask", ("book",))
    assert (summary.quantity, summary.average_price, summary.fees) == (D("0.37059"), D(90440), D("16.75808"))
    assert (summary.first_ms, summary.last_ms) == (1000, 5000)


def test_f7_lenders_are_made_whole_in_usd_when_a_borrower_goes_bankrupt():
    """F7. The lender lends 10 BTC. A deposits 10,000 USDC, borrows 0.4 BTC (borrow IMF 0.2:
    8,000 locked) and sells it on BTC_USDC into the maker's bid at 100,000 (39,960 after the
    0.1% fee). The borrow carries its entry fee: the pool's rate at 4% utilization is
    0.05 x 0.04 / 0.8 = 0.25%, for the first hour 0.4 x 0.0025 / 8760 = 0.000000114 -> 0.00000012
    up: A owes 0.40000012 BTC.

    BTC triples to 300,000 and nobody sells BTC: equity 49,960 - 120,000.036 < 0. The loop finds
    no book to buy back on and no backstop, so the borrow is written off: the lender's lend
    falls by 0.40000012 BTC and the fund pays it 0.40000012 x 300,000 = 120,000.036 USDC (the
    lender gets USD value, not the BTC). A's 49,960 USDC go against its debt to the fund at
    once: A owes 70,040.036, the fund is down the same."""
    ex = Exchange(load_profile("backpack"))
    ex.set_price("BTC", D(100000))
    for name in ("lender", "mm", "a"):
        ex.add_account(name)
    ex.deposit("lender", "BTC", D(10))
    ex.lend("lender", "BTC", D(10))
    ex.deposit("mm", "USDC", D(1_000_000))
    assert ex.order("mm", "BTC_USDC", Side.BID, D(1), D(100000)).accepted
    ex.deposit("a", "USDC", D(10000))
    assert isinstance(ex.borrow("a", "BTC", D("0.4")), Grant)
    a = ex.accounts["a"]
    assert a.borrows == {"BTC": D("0.40000012")}
    assert ex.order("a", "BTC_USDC", Side.ASK, D("0.4"), None).accepted
    assert a.available("USDC") == D(49960)
    ex.set_price("BTC", D(300000))
    ex.advance_to(1000)
    lender = ex.accounts["lender"]
    assert lender.lends["BTC"] == D(10) - D("0.40000012")
    assert lender.available("USDC") == D("120000.036")
    assert a.borrows == {} and a.available("USDC") == 0
    assert a.unsettled_equity == D("-70040.036") and ex.fund["USDC"] == D("-70040.036")
    assert ex.liquidation_history["a"][-1].stage == "bankruptcy"
    assert ex.invariant_violations() == []


def usdc_borrower(profile_name: str) -> Exchange:
    """B deposits 100 SOL (SOL at 100), borrows 6,000 USDC from the lender's 100,000 and
    withdraws it. The entry fee at 6% utilization: 0.12 x 0.06 / 0.8 = 0.9% APR for an hour,
    6,000 x 0.009 / 8760 = 0.006164 -> 0.006165 up. SOL falls to 66: collateral
    100 x 66 x 0.95 = 6,270, net equity 269.993835 against maintenance 0.05 x 6,000.006165 =
    300.00030825: MMR 111.11%. Nobody bids for SOL."""
    ex = Exchange(load_profile(profile_name))
    ex.set_price("SOL", D(100))
    for name in ("lender", "mm", "b", "blp"):
        ex.add_account(name)
    ex.deposit("lender", "USDC", D(100_000))
    ex.lend("lender", "USDC", D(100_000))
    ex.deposit("b", "SOL", D(100))
    assert isinstance(ex.borrow("b", "USDC", D(6000)), Grant)
    assert ex.withdraw("b", "USDC", D(6000)) == D(6000)
    ex.set_price("SOL", D(66))
    assert margin.totals(ex.accounts["b"]).net_equity == D("269.993835")
    return ex


def test_a_solvent_borrower_without_a_buyer_waits_instead_of_being_written_off():
    """No bid and no backstop: the t=1s loop finds nothing to sell into and tries again, the
    t=2s loop turns to the backstop and finds nobody. The borrow is not written off while B
    holds 100 SOL and equity is positive; the history says it waits. Once the market maker bids 65.9 (after the t=3s
    loop found nothing), that loop's read again at t=3.1s sells 4.75 SOL (the plan sizes the sale at the impact band's floor, as in F6):
    4.75 x 65.9 = 313.025 less the 0.1% taker fee 0.313025 repays 312.711975, leaving
    5,687.29419; equity 95.25 x 66 x 0.95 - 5,687.29419 = 284.88081, MMR 99.82%: healthy."""
    ex = usdc_borrower("backpack")
    b = ex.accounts["b"]
    ex.advance_to(3000)
    assert [s.stage for s in ex.liquidation_history["b"]] == ["start", "waiting"]
    assert "still holds 100 SOL" in ex.liquidation_history["b"][1].reason
    assert b.borrows == {"USDC": D("6000.006165")} and b.available("SOL") == D(100)
    assert ex.accounts["lender"].available("USDC") == 0 and ex.fund == {}
    ex.deposit("mm", "USDC", D(100_000))
    assert ex.order("mm", "SOL_USDC", Side.BID, D(50), D("65.9")).accepted
    ex.advance_to(5000)
    assert rows(ex, "b") == [
        (1000, "start", D(0), None, D(0)),
        (2000, "waiting", D(0), None, D(0)),
        (3100, "conversion", D("4.75"), D("65.9"), D("0.313025")),
        (4000, "healthy", D(0), None, D(0)),
    ]
    assert b.borrows == {"USDC": D("5687.294190")} and margin.totals(b).net_equity == D("284.88081")
    assert ex.invariant_violations() == []


def test_past_auto_close_with_nobody_to_take_the_borrow_the_book_is_still_tried():
    """Found by the fuzzer (seed 4819). B's SOL falls to 63.5: equity 100 x 63.5 x 0.95 -
    6,000.006165 = 32.493835 against maintenance 300: MMR 923%, past auto-close, so the t=1s
    loop goes to stage 2, where nobody takes a USDC borrow. Before, every later loop went
    to stage 2 again (MMR was still past 200%) and the book was never tried; now, with the
    backstop tried, the maker's bid at 63.4 (after the t=1s loop) is used from t=2s."""
    ex = usdc_borrower("backpack")
    ex.set_price("SOL", D("63.5"))
    ex.advance_to(1000)
    assert [s.stage for s in ex.liquidation_history["b"]] == ["start", "waiting"]
    ex.deposit("mm", "USDC", D(100_000))
    assert ex.order("mm", "SOL_USDC", Side.BID, D(100), D("63.4")).accepted
    ex.advance_to(3000)
    steps = ex.liquidation_history["b"]
    assert [(s.time_ms, s.stage) for s in steps[2:4]] == [(2000, "conversion"), (3000, "conversion")]
    assert steps[2].price == D("63.4") and ex.accounts["b"].borrows["USDC"] < D("6000.006165")


def test_a_usdc_borrow_moves_to_the_backstop_by_a_collateral_purchase_at_mark():
    """With the 1% liquidation fee and a provider ready to take 50,000 USDC of borrows: the book
    has no bid for two loops (t=1s, t=2s), so the provider buys SOL at mark 66 for what B owes grossed up by the fee:
    6,000.006165 / 0.99 = 6,060.612288 (up), i.e. 6,060.612288 / 66 = 91.82745891 SOL (up).
    The fee 60.606123 (1%, up) goes to the fund and 6,000.006165 repays the borrow exactly; the
    8.17254109 SOL left are residual equity, which goes to the fund (spec 11.3 default)."""
    ex = usdc_borrower("backpack-2025-10")
    ex.deposit("blp", "USDC", D(100_000))
    ex.add_backstop("blp", {"USDC": D(50_000)})
    ex.advance_to(2000)
    b, blp = ex.accounts["b"], ex.accounts["blp"]
    assert rows(ex, "b") == [
        (1000, "start", D(0), None, D(0)),
        (2000, "backstop", D("91.82745891"), D(66), D("60.606123")),
        (2000, "fund", D(0), None, D(0)),
        (2000, "closed", D(0), None, D(0)),
    ]
    assert b.borrows == {} and b.available("SOL") == 0 and b.unsettled_equity == 0
    assert blp.available("SOL") == D("91.82745891") and blp.available("USDC") == D(100_000) - D("6060.612288")
    assert ex.fund == {"USDC": D("60.606123"), "SOL": D("8.17254109")}
    assert ex.invariant_violations() == []


def test_a_liquidation_case_moves_only_by_its_transition_table():
    """Start -> running (book loops) -> backstop -> back to the book or ended; an outcome the
    table does not allow (a bankruptcy reported before the case started) raises."""
    from exchange.liquidation import CaseState, IllegalTransition, Outcome, next_state

    state = next_state(CaseState.STARTING, Outcome.STARTED)
    assert state is CaseState.RUNNING
    assert next_state(state, Outcome.STEPPED) is CaseState.RUNNING
    assert next_state(next_state(state, Outcome.BACKSTOP), Outcome.STEPPED) is CaseState.RUNNING
    assert next_state(CaseState.BACKSTOP, Outcome.BANKRUPTCY) is CaseState.ENDED
    with pytest.raises(IllegalTransition, match="starting cannot take the outcome bankruptcy"):
        next_state(CaseState.STARTING, Outcome.BANKRUPTCY)
    with pytest.raises(IllegalTransition):
        next_state(CaseState.RUNNING, Outcome.CLOSED)
