"""Cross-margin math pinned to the spec's test vectors (section 18) and its identities."""

from __future__ import annotations

from decimal import Decimal

import pytest

from exchange import margin
from exchange.decimals import ceil_to
from exchange.ledger import SubAccount
from exchange.orders import Side
from exchange.profile import load_profile

from .conftest import make_account, perp_fill

D = Decimal
BTC = "BTC_USDC_PERP"


def btc_account(profile, collateral, quantity, price, side=Side.BID, leverage=100):
    """A single BTC perp position on USDC collateral, no fees (D2-D4 are derived without them).

    The spec's derived vectors use the market functions alone, so the account cap is lifted to
    100x (floor 0.01) where it cannot bind; even 75x would, since 1/75 = 0.013333... is above
    the market's rounded base 0.01333333.
    """
    account = make_account(profile, usdc=collateral, leverage=leverage, marks={BTC: price, "BTC": price})
    perp_fill(profile, account, BTC, side, str(quantity), str(price), fee="0")
    return account


# -- D1: BTC IMF/MMF against notional ---------------------------------------------------


@pytest.mark.parametrize(
    "notional, imf, max_leverage, mmf",
    [
        ("100000", "0.01333333", "75.0", "0.00666667"),
        ("285714", "0.01333333", "75.0", "0.00799645"),
        ("1000000", "0.02494000", "40.10", "0.01496000"),
        ("10000000", "0.07886720", "12.68", "0.04730767"),
    ],
)
def test_d1_btc_margin_fractions(profile, notional, imf, max_leverage, mmf):
    market = profile.markets[BTC]
    n = D(notional)
    assert market.imf.fraction(n).quantize(D("0.00000001")) == D(imf)
    assert market.mmf.fraction(n).quantize(D("0.00000001")) == D(mmf)
    assert (1 / market.imf.fraction(n)).quantize(D(max_leverage)) == D(max_leverage)


@pytest.mark.parametrize(
    "symbol, imf_floor_end, mmf_floor_end",
    [(BTC, 285815, 198589), ("SOL_USDC_PERP", 24606, 26699), ("ETH_USDC_PERP", 45755, 49647)],
)
def test_d1_floor_ends(profile, symbol, imf_floor_end, mmf_floor_end):
    """D1: where each curve leaves its base, (base/factor)^2, to the dollar."""
    market = profile.markets[symbol]
    assert round(market.imf.flat_until) == imf_floor_end
    assert round(market.mmf.flat_until) == mmf_floor_end


# -- D2, D3, D14: the simple long and short ----------------------------------------------


def test_d2_simple_long(profile):
    """C = 10,000 USDC, long 1 BTC at 100,000, mark 100,000.

    Locked = 100,000 x 0.01333333 = 1,333.333; Available = 8,666.667; MF = 0.1;
    IMR = 1,333.333 / 10,000 = 13.33333%; MMR = 666.667 / 10,000 = 6.66667%.
    """
    s = margin.summarize(btc_account(profile, 10000, 1, 100000))
    assert s.net_equity == D("10000")
    assert s.net_equity_locked == D("1333.333")
    assert s.net_equity_available == D("8666.667")
    assert s.margin_fraction == D("0.1")
    assert s.imr == D("0.1333333")
    assert s.mmr == D("0.0666667")
    # D14 identities on the same account.
    assert s.imf == D("0.01333333") == s.net_equity_locked / s.total_exposure_notional
    assert s.imr == s.net_equity_locked / s.net_equity == s.imf / s.margin_fraction
    assert s.mmr == s.maintenance_requirement / s.net_equity == s.mmf / s.margin_fraction
    assert s.net_equity_available == s.net_equity - s.net_equity_locked


def test_d2_liquidation_price_long(profile):
    """(100,000 - 10,000) / (1 - 0.00666667) = 90,604.0268..., shown as 90,604.03."""
    account = btc_account(profile, 10000, 1, 100000)
    est = margin.estimate_liquidation_price(account, BTC)
    assert est.method == "closed form"
    assert est.price.quantize(D("0.01")) == D("90604.03")
    _assert_mmr_crosses_one(account, est.price, D("0.01"), long=True)


def test_d3_liquidation_price_short(profile):
    """(10,000 + 100,000) / (1 + 0.00666667) = 109,271.5226..., shown as 109,271.52."""
    account = btc_account(profile, 10000, 1, 100000, side=Side.ASK)
    est = margin.estimate_liquidation_price(account, BTC)
    assert est.price.quantize(D("0.01")) == D("109271.52")
    _assert_mmr_crosses_one(account, est.price, D("0.01"), long=False)


def _assert_mmr_crosses_one(account: SubAccount, price: Decimal, tolerance: Decimal, long: bool) -> None:
    """The estimate is where MMR actually reaches 100%: healthy on one side, liquidatable on the other."""
    healthy, liquidated = (price + tolerance, price - tolerance) if long else (price - tolerance, price + tolerance)
    for mark, expect in ((healthy, False), (liquidated, True)):
        account.set_mark(BTC, mark)
        assert (margin.totals(account).mmr >= 1) is expect, mark


# -- D4: the sqrt region ----------------------------------------------------------------


def test_d4_sqrt_region(profile):
    """C = 500,000, long 50 BTC at 100,000 (N = 5,000,000).

    IMF = 0.00002494 x sqrt(5e6) = 0.0557675 -> Locked 278,837.68, IMR 55.768%;
    MMF = 0.00001496 x sqrt(5e6) = 0.0334516 -> MM 167,257.88, MMR 33.452%.
    """
    account = btc_account(profile, 500000, 50, 100000)
    s = margin.summarize(account)
    (row,) = s.exposures
    assert row.imf.quantize(D("0.0000001")) == D("0.0557675")
    assert row.imf_source == "size"
    assert s.net_equity_locked.quantize(D("0.01")) == D("278837.68")
    assert (s.imr * 100).quantize(D("0.001")) == D("55.768")
    assert row.mmf.quantize(D("0.0000001")) == D("0.0334516")
    assert s.maintenance_requirement.quantize(D("0.01")) == D("167257.88")
    assert (s.mmr * 100).quantize(D("0.001")) == D("33.452")


def test_d4_liquidation_price_by_bisection(profile):
    """D4: the root of 500,000 + 50P - 5,000,000 = 50P x 0.00001496 sqrt(50P) is ~93,000.14.

    There MMF = 0.0322596 and equity = MM = 150,007.2.
    """
    account = btc_account(profile, 500000, 50, 100000)
    est = margin.estimate_liquidation_price(account, BTC)
    assert est.method == "bisection"
    assert abs(est.price - D("93000.14")) < D("0.01")
    account.set_mark(BTC, est.price)
    (row,) = margin.summarize(account).exposures
    assert row.mmf.quantize(D("0.0000001")) == D("0.0322596")
    assert margin.totals(account).net_equity.quantize(D("0.1")) == D("150007.2")
    _assert_mmr_crosses_one(account, est.price, D("0.01"), long=True)


def test_liquidation_price_refuses_complex_accounts(profile):
    """The estimate is only honest for one perp on USDC: other cases say why instead."""
    account = btc_account(profile, 10000, 1, 100000)
    account.set_mark("SOL_USDC_PERP", D(100))
    account.set_mark("SOL", D(100))
    perp_fill(profile, account, "SOL_USDC_PERP", Side.ASK, "10", "100", fee="0")
    est = margin.estimate_liquidation_price(account, BTC)
    assert est.price is None and "SOL_USDC_PERP" in est.reason
    hedged = btc_account(profile, 10000, 1, 100000)
    hedged.set_mark("SOL", D(100))
    hedged.deposit("SOL", D(5))
    est = margin.estimate_liquidation_price(hedged, BTC)
    assert est.price is None and "SOL" in est.reason and "haircut" in est.reason


def test_liquidation_price_zero_when_unreachable(profile):
    """A long backed by more than its cost cannot be liquidated by any positive mark."""
    account = btc_account(profile, 200000, 1, 100000)
    assert margin.estimate_liquidation_price(account, BTC).price == 0


# -- D5: open orders in the net exposure -------------------------------------------------


@pytest.mark.parametrize(
    "position, bids, asks, expected",
    [("1", "0.5", "2", "1.5"), ("1", "0", "3", "-2"), ("0", "0", "0", "0"), ("-1", "2.5", "0", "1.5")],
)
def test_d5_net_exposure_quantity(position, bids, asks, expected):
    assert margin.net_exposure_quantity(D(position), D(bids), D(asks)) == D(expected)


def test_d5_exposure_notional_counts_orders_only_for_imf(profile):
    """q = +1, asks 3 -> net exposure -2: IMF is charged on 2 x mark, MMF on the position (1)."""
    account = btc_account(profile, 100000, 1, 100000)
    account.order_exposure[BTC] = [D(0), D(3)]
    (row,) = margin.summarize(account).exposures
    assert row.net_exposure_quantity == D(-2)
    assert row.exposure_notional == D(200000)
    assert row.position_notional == D(100000)
    assert row.initial_requirement == D(200000) * D("0.01333333")
    assert row.maintenance_requirement == D(100000) * D("0.00666667")


# -- F2 and D6: the ETH position snapshot and its break-even price -----------------------


def test_f2_d6_eth_position_snapshot(profile):
    """F2 reproduced from the fills of D6.

    Fills (taker, 5 bps): 0.0026 @ 3826.15, fee ceil6(4.973995e-3) = 0.004974, and
    0.0010 @ 3828.81, fee ceil6(1.914405e-3) = 0.001915; funding paid 0.009218.
    netCost = 9.94799 + 3.82881 = 13.7768; entry = 13.7768 / 0.0036 = 3826.888...;
    at mark 3787.46813304: notional 13.634885278944, uPnL = 13.634885278944 - 13.7768 =
    -0.141914721056 (the venue truncates to -0.141914); IMF 0.02, MMF 0.0125 (flat);
    breakEven = entry + (0.004974 + 0.001915 + 0.009218) / 0.0036 = 3831.36305555...
    The venue prints 29 digits; the core's 28-digit context agrees on all 28 it keeps. The
    account runs at 50x, whose floor 0.02 equals ETH's base, as the sample's IMF 0.02 implies.
    """
    eth = "ETH_USDC_PERP"
    account = make_account(profile, usdc=1000, leverage=50, marks={eth: "3787.46813304", "ETH": "3787.46813304"})
    perp_fill(profile, account, eth, Side.BID, "0.0026", "3826.15", order_id="o1", trade_id=1)
    perp_fill(profile, account, eth, Side.BID, "0.0010", "3828.81", order_id="o2", trade_id=2)
    pos = account.positions[eth]
    assert pos.fees_paid == D("0.004974") + D("0.001915")
    pos.cumulative_funding = D("-0.009218")  # the funding payments F2 reports
    assert pos.quantity == D("0.0036")
    assert pos.net_cost == D("13.7768")
    assert pos.entry_price == D("3826.888888888888888888888889")
    assert pos.unrealized_pnl(account.marks[eth]) == D("-0.141914721056")
    assert str(pos.break_even_price) == "3831.363055555555555555555556"
    (row,) = margin.summarize(account).exposures
    assert row.net_exposure_quantity == D("0.0036")
    assert row.exposure_notional == D("13.634885278944")
    assert row.imf == D("0.02") and row.mmf == D("0.0125")


# -- F4, D7: collateral with everything lent --------------------------------------------


def test_f4_d7_collateral_all_lent(profile):
    """F4: USDC 10.6524044577 and SOL 0.0699302874, all lent; SOL weight 0.95.

    D7 gives the SOL price the sample implies: 9.630096779592616743 / (0.95 x 0.0699302874)
    = 144.9578481. Lent balances count in full: value = 0.0699302874 x 144.9578481 x 0.95
    = 9.630096779592616743; net equity = 10.6524044577 + that = 20.282501237292616743.
    """
    account = SubAccount("f4", profile)
    account.set_mark("SOL", D("144.9578481"))
    account.lends["USDC"] = D("10.6524044577")
    account.lends["SOL"] = D("0.0699302874")
    s = margin.summarize(account)
    rows = {r.symbol: r for r in s.collateral}
    assert rows["USDC"].collateral_weight == 1
    assert rows["USDC"].collateral_value == D("10.6524044577")
    assert rows["SOL"].collateral_weight == D("0.95")
    assert rows["SOL"].collateral_value == D("9.630096779592616743")
    assert rows["SOL"].lend_quantity == rows["SOL"].total_quantity and rows["SOL"].available_quantity == 0
    assert s.net_equity == s.assets_value == D("20.282501237292616743")
    assert (D("9.630096779592616743") / (D("0.95") * D("0.0699302874"))) == D("144.9578481")


# -- D8: the inverse-sqrt haircut --------------------------------------------------------


def test_d8_inverse_sqrt_haircut(profile):
    """base 0.95, pcp 0.0001 (the SOL curve here): flat to N = ((1.1/0.95 - 1)/0.0001)^2
    = 2,493,075; at N = 10,000,000 the weight is 1.1 / (1 + 0.0001 x 3162.278) = 0.835722."""
    haircut = profile.assets["SOL"].haircut
    assert haircut.weight_at(D(10)) == D("0.95")
    assert haircut.weight_at(D(100000)) == D("0.95")
    assert round(haircut.flat_until) == 2493075
    assert haircut.weight_at(D(10000000)).quantize(D("0.000001")) == D("0.835722")


def test_marginal_haircut_mode_values_the_curve_piecewise():
    """Marginal mode integrates the weight: below the kink it equals the average mode; above
    it the value exceeds N x w(N) (earlier dollars kept the higher weight) but stays under N x 0.95."""
    marginal = load_profile("backpack", overrides={"haircut_mode": "marginal"})
    haircut = marginal.assets["SOL"].haircut
    n = D(10000000)
    value = haircut.marginal_value(n)
    assert haircut.marginal_value(D(1000)) == D(1000) * D("0.95")
    assert n * haircut.weight_at(n) < value < n * D("0.95")


# -- D12 (and F6's numbers): spot margin health ------------------------------------------


def test_d12_spot_margin_health(profile):
    """20 SOL held, 1,000 USDC borrowed, SOL at 100 (weight 0.95), USDC borrow IMF 0.10, MMF 0.05.

    NE = 20 x 100 x 0.95 - 1,000 = 900; Locked = 1,000 x 0.10 = 100; IMR = 100/900 = 11.11%;
    MM = 50, so liquidation when 19P - 1,000 <= 50, i.e. P <= 1050/19 = 55.263.
    """
    account = make_account(profile, marks={"SOL": 100}, leverage=10)
    account.deposit("SOL", D(20))
    account.borrows["USDC"] = D(1000)
    s = margin.summarize(account)
    assert s.net_equity == D(900)
    assert s.borrow_liability == D(1000)
    assert s.net_equity_locked == D(100)
    assert (s.imr * 100).quantize(D("0.01")) == D("11.11")
    account.set_mark("SOL", D("55.26"))
    assert margin.totals(account).mmr >= 1
    account.set_mark("SOL", D("55.27"))
    assert margin.totals(account).mmr < 1


# -- D14: identities on accounts that are not simple ------------------------------------


def test_d14_identities_on_a_mixed_account(profile):
    account = make_account(
        profile, usdc=5000, leverage=20, marks={BTC: 100000, "BTC": 100000, "SOL_USDC_PERP": 150, "SOL": 150}
    )
    account.deposit("SOL", D(12))
    perp_fill(profile, account, BTC, Side.BID, "0.3", "99000")
    perp_fill(profile, account, "SOL_USDC_PERP", Side.ASK, "40", "151")
    account.borrows["USDC"] = D(700)
    s = margin.summarize(account)
    t = margin.totals(account)
    assert t.net_equity == s.net_equity and t.locked == s.net_equity_locked
    assert s.imr == s.net_equity_locked / s.net_equity
    assert s.mmr == s.maintenance_requirement / s.net_equity
    assert s.net_equity_available == s.net_equity - s.net_equity_locked
    assert s.imf == s.net_equity_locked / s.total_exposure_notional
    assert (s.imr >= 1) == (s.net_equity_available <= 0)


def test_leverage_limit_floors_imf(profile):
    """At 10x the floor 1/10 binds over BTC's 0.01333 base: Locked = 100,000 x 0.1."""
    account = btc_account(profile, 50000, 1, 100000, leverage=10)
    (row,) = margin.summarize(account).exposures
    assert row.imf == D("0.1") and row.imf_source == "leverage_limit"
    assert row.mmf == D("0.00666667")


def test_fees_round_up_to_the_micro_dollar():
    """F3's rule, as the fixtures apply it: 0.0026 x 3826.15 x 0.0005 = 0.004973995 -> 0.004974."""
    assert ceil_to(D("0.0026") * D("3826.15") * D("0.0005"), D("0.000001")) == D("0.004974")
