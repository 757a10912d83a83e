"""Perpetuals over time: funding, PnL realization, and covering a USDC shortfall."""

from __future__ import annotations

from decimal import Decimal

from exchange.engine import Exchange
from exchange.funding import FundingClock, funding_payments
from exchange.ledger import Settings
from exchange.lending import HOUR_MS
from exchange.orders import ErrorCode, Side
from exchange.profile import load_profile

D = Decimal
BTC = "BTC_USDC_PERP"
STEP = D("0.000001")


def test_f8_hourly_rate_is_the_daily_premium_over_24():
    """F8: a steady premium of 0.24% a day is 0.01% per hourly interval (0.08% per 8 h)."""
    profile = load_profile("backpack")
    hourly = FundingClock(profile.markets[BTC])
    hourly.observe(0, D("100.24"), D(100))  # premium 0.24%
    assert hourly.close_interval(HOUR_MS) == D("0.0001")
    eight = FundingClock(load_profile("backpack", overrides={"markets": {BTC: {"funding_interval": 28800}}}).markets[BTC])
    eight.observe(0, D("100.24"), D(100))
    assert eight.close_interval(8 * HOUR_MS) == D("0.0008")


def test_funding_rate_is_time_weighted_and_clamped():
    """Premium 0.48% for the first 15 minutes, then 0 for 45: TWAP 0.12% -> hourly 0.005%;
    a 48% premium would be 2% per hour, clamped to the +100 bps bound."""
    clock = FundingClock(load_profile("backpack").markets[BTC])
    clock.observe(0, D("100.48"), D(100))
    clock.observe(15 * 60_000, D(100), D(100))
    assert clock.close_interval(HOUR_MS) == D("0.00005")
    clock.observe(HOUR_MS, D(148), D(100))
    assert clock.close_interval(2 * HOUR_MS) == D("0.01")


def test_d11_funding_payment():
    """F10's rate -0.0000117704808946259223127855 at mark 64,575.6: a 2 BTC long is owed
    0.0000117704808946... x 2 x 64,575.6 = 1.52017173...; its 2 BTC short counterparty pays
    that rounded up, 1.520172, and the long receives exactly what was paid: D11's +1.520172,
    and the interval sums to zero."""
    rate = D("-0.0000117704808946259223127855")
    exact = -rate * 2 * D("64575.6")
    assert str(exact)[:10] == "1.52017173"
    payments = funding_payments(rate, {"long": D(2), "short": D(-2)}, D("64575.6"), STEP)
    assert payments == {"long": D("1.520172"), "short": D("-1.520172")}
    assert (rate * 24 * 365 * 100).quantize(D("0.01")) == D("-10.31")


def test_funding_remainder_goes_to_the_receivers_rounded_down_most():
    """Rate 0.0001 at mark 100: three longs of 1.23, 0.45 and 2.32 pay 0.0123, 0.0045 and
    0.0232 (exact, nothing to round); shorts of -1.11, -1.11 and -1.78 are owed 0.0111, 0.0111
    and 0.0178 (exact). Now rate 0.0000123: longs pay ceil(0.00151290) = 0.001513,
    ceil(0.00055350) = 0.000554, ceil(0.00285360) = 0.002854 -> 0.004921 paid. The shorts
    share it by size (1.11, 1.11, 1.78 of 4.00): 0.0013655775, 0.0013655775, 0.002189845;
    floored 0.001365, 0.001365, 0.002189 = 0.004919; the 2 steps left go to the largest
    remainders: c (0.845e-6), then a and b tie (0.5775e-6) and a comes first by id."""
    positions = {"l1": D("1.23"), "l2": D("0.45"), "l3": D("2.32"), "a": D("-1.11"), "b": D("-1.11"), "c": D("-1.78")}
    assert funding_payments(D("0.0001"), positions, D(100), STEP) == {
        "a": D("0.0111"), "b": D("0.0111"), "c": D("0.0178"), "l1": D("-0.0123"), "l2": D("-0.0045"), "l3": D("-0.0232"),
    }
    odd = funding_payments(D("0.0000123"), positions, D(100), STEP)
    assert {k: odd[k] for k in ("l1", "l2", "l3")} == {"l1": D("-0.001513"), "l2": D("-0.000554"), "l3": D("-0.002854")}
    assert {k: odd[k] for k in ("a", "b", "c")} == {"a": D("0.001366"), "b": D("0.001365"), "c": D("0.002190")}
    assert sum(odd.values()) == 0


def perp_venue(**profile_overrides):
    """A venue with a BTC perp at 100,000, a market maker and two traders."""
    ex = Exchange(load_profile("backpack", overrides=profile_overrides))
    ex.set_price("BTC", D(100000))
    for name in ("mm", "long", "short"):
        ex.add_account(name, settings=Settings(leverage_limit=D(20)))
        ex.deposit(name, "USDC", D(100000))
    return ex


def trade(ex, buyer, seller, quantity, price):
    """The seller rests an ask, the buyer takes it: one fill each side."""
    assert ex.order(seller, BTC, Side.ASK, D(quantity), D(price)).accepted
    outcome = ex.order(buyer, BTC, Side.BID, D(quantity), D(price))
    assert outcome.accepted and outcome.fills
    return outcome


def test_funding_paid_at_the_interval_end_sums_to_zero():
    """Mark 100,100 over index 100,000 the whole hour: premium 0.1% -> rate 0.1%/24 =
    0.0000416666...; the 1 BTC long pays ceil(0.0000416666 x 100,100) = 4.170834, the short
    receives it. Positive rate: longs pay shorts."""
    ex = perp_venue()
    trade(ex, "long", "short", "1", "100000")
    ex.set_price(BTC, D(100100))
    long_usdc = ex.accounts["long"].available("USDC")
    short_usdc = ex.accounts["short"].available("USDC")
    ex.advance_to(HOUR_MS - 1)
    long_before = ex.accounts["long"].available("USDC")
    ex.advance_to(HOUR_MS)
    paid = [e for e in ex.events if e["event"] == "funding_payment"]
    assert {e["actor"]: e["amount"] for e in paid} == {"account:long": D("-4.170834"), "account:short": D("4.170834")}
    assert ex.accounts["long"].positions[BTC].cumulative_funding == D("-4.170834")
    assert ex.accounts["long"].available("USDC") == long_before - D("4.170834")
    assert long_usdc != short_usdc  # (the fills' fees differ: maker vs taker)
    assert ex.invariant_violations() == []


def test_continuous_realization_moves_pnl_into_usdc_every_10_seconds():
    """Long 1 BTC at 100,000 (taker fee 50 USDC), mark to 101,000: at the next 10 s boundary
    the 1,000 of PnL moves into USDC; the entry price stays 100,000 for display and the
    break-even price stays entry + fee/qty = 100,050."""
    ex = perp_venue()
    trade(ex, "long", "short", "1", "100000")
    long = ex.accounts["long"]
    assert long.available("USDC") == D(100000) - D(50)
    ex.set_price(BTC, D(101000))
    ex.advance_to(10_000)
    pos = long.positions[BTC]
    assert long.available("USDC") == D(100000) - D(50) + D(1000)
    assert pos.unrealized_pnl(D(101000)) == 0 and pos.realized_pnl == D(1000)
    assert pos.entry_price == D(100000) and pos.break_even_price == D(100050)
    assert ex.accounts["short"].available("USDC") == D(100000) - D(20) - D(1000)
    assert ex.invariant_violations() == []


def test_legacy_mode_realizes_only_on_reduce():
    ex = perp_venue(realize_interval=0)
    trade(ex, "long", "short", "1", "100000")
    ex.set_price(BTC, D(101000))
    ex.advance_to(60_000)
    long = ex.accounts["long"]
    assert long.available("USDC") == D(99950) and long.positions[BTC].unrealized_pnl(D(101000)) == D(1000)
    trade(ex, "short", "long", "0.4", "101000")  # the long rests an ask for 0.4, the short takes it
    assert long.positions[BTC].realized_pnl == D(400)  # 0.4 x (101,000 - 100,000), on the reduce only
    assert ex.invariant_violations() == []


def test_usdc_shortfall_redeems_then_borrows_then_converts():
    """A loser with 1,000 USDC lent and SOL collateral loses 3,000 on a BTC long: the realized
    loss takes its USDC below zero; the lend is redeemed first, then USDC is borrowed
    (autoBorrowSettlements). With that flag off, SOL is sold on SOL_USDC instead, and lent SOL
    just as well: the conversion redeems what it sells, and the fund pays nothing."""
    for auto_borrow, sol_lent in ((True, False), (False, False), (False, True)):
        ex = perp_venue()
        ex.set_price("SOL", D(100))
        ex.add_account("lender")
        ex.deposit("lender", "USDC", D(1_000_000))
        ex.lend("lender", "USDC", D(1_000_000))
        ex.add_account("bidder")
        ex.deposit("bidder", "USDC", D(100_000))
        assert ex.order("bidder", "SOL_USDC", Side.BID, D(100), D(99)).accepted
        ex.add_account("loser", settings=Settings(leverage_limit=D(20), auto_borrow_settlements=auto_borrow))
        ex.deposit("loser", "USDC", D(1000))
        ex.lend("loser", "USDC", D(1000))
        ex.deposit("loser", "SOL", D(100))
        if sol_lent:
            ex.lend("loser", "SOL", D(100))
        trade(ex, "loser", "short", "1", "100000")  # the 50 USDC fee is itself a shortfall
        loser = ex.accounts["loser"]
        ex.set_price(BTC, D(97000))
        ex.advance_to(10_000)
        kinds = [e["event"] for e in ex.events if e["actor"] == "account:loser"]
        assert "redeem" in kinds
        assert loser.lends.get("USDC", D(0)) == 0
        if auto_borrow:
            # 1,000 lent covered 50 + 950 of the loss; the other 2,050 were borrowed.
            assert loser.borrows["USDC"] >= D(2050)
            assert loser.balances["SOL"].available == D(100)
        else:
            assert "USDC" not in loser.borrows
            assert 0 < loser.available("SOL") + loser.lends.get("SOL", D(0)) < D(100)
            assert loser.available("USDC") >= 0
            assert loser.unsettled_equity == 0 and ex.fund.get("USDC", D(0)) == 0
        assert ex.invariant_violations() == []


def test_a_shortfall_nobody_covers_is_a_debt_that_deposits_repay():
    """An empty account loses 300 USDC to a winner; no lend, no pool supply, no collateral:
    the liquidity fund pays the 300 and the account owes it (unsettled equity -300). A later
    deposit of 500 repays the 300 to the fund first and credits the other 200."""
    ex = perp_venue()
    ex.add_account("broke")
    broke = ex.accounts["broke"]
    broke.debit("USDC", D(300))
    ex.accounts["short"].credit("USDC", D(300))
    ex.reconcile("broke")
    assert broke.unsettled_equity == D(-300) and broke.available("USDC") == 0
    assert ex.fund["USDC"] == D(-300)
    assert ex.invariant_violations() == []
    assert ex.deposit("broke", "USDC", D(500)) == D(300)
    assert broke.unsettled_equity == 0 and broke.available("USDC") == D(200)
    assert ex.fund["USDC"] == 0
    assert ex.invariant_violations() == []


def test_withdrawal_and_transfer_keep_available_equity():
    """10,000 USDC at 20x holding 1 BTC long at 100,000: IMF 0.05 locks 5,000 (after the 50 fee,
    available 4,950): at most 4,950 can leave; a transfer to another owner is refused."""
    ex = Exchange(load_profile("backpack"))
    ex.set_price("BTC", D(100000))
    ex.add_account("mm", settings=Settings(leverage_limit=D(20)))
    ex.deposit("mm", "USDC", D(1_000_000))
    ex.add_account("alice/main", owner="alice", settings=Settings(leverage_limit=D(20)))
    ex.add_account("alice/hedge", owner="alice")
    ex.add_account("bob", owner="bob")
    ex.deposit("alice/main", "USDC", D(10000))
    trade(ex, "alice/main", "mm", "1", "100000")
    assert ex.max_withdrawal_quantity("alice/main", "USDC") == D(4950)
    refused = ex.withdraw("alice/main", "USDC", D(5000))
    assert refused.details["max_quantity"] == D(4950)
    assert ex.transfer("alice/main", "bob", "USDC", D(10)).code.name == "INVALID_ORDER"
    assert ex.transfer("alice/main", "alice/hedge", "USDC", D(4950)) == D(4950)
    assert ex.accounts["alice/hedge"].available("USDC") == D(4950)
    assert ex.invariant_violations() == []


def test_f6_spot_margin_end_to_end():
    """F6: 1,000 USDC buys 2,000 USDC of SOL with autoBorrow: 1,000 USDC is borrowed (plus the
    entry fee for the rest of the hour at the pool's rate), 20 SOL arrive less the 0.1% taker fee
    in SOL (0.02), and IMR is about 11.1% (D12: 900 of equity, 100 locked)."""
    ex = Exchange(load_profile("backpack"))
    ex.set_price("SOL", D(100))
    ex.add_account("lender")
    ex.deposit("lender", "USDC", D(100_000))
    ex.lend("lender", "USDC", D(100_000))
    ex.add_account("mm")
    ex.deposit("mm", "SOL", D(100))
    assert ex.order("mm", "SOL_USDC", Side.ASK, D(20), D(100)).accepted
    ex.add_account("trader")
    ex.deposit("trader", "USDC", D(1000))
    ex.advance_to(50 * 60_000)
    outcome = ex.order("trader", "SOL_USDC", Side.BID, D(20), D(100), auto_borrow=True)
    assert outcome.accepted
    trader = ex.accounts["trader"]
    fee = ex.pools["USDC"].borrowers["trader"] - D(1000)
    assert 0 < fee < D("0.01")
    assert trader.borrows["USDC"] == D(1000) + fee
    assert trader.balances["SOL"].available == D("19.98")
    assert trader.available("USDC") == 0
    from exchange.margin import summarize

    s = summarize(trader)
    assert abs(s.imr - D(100) / D(900)) < D("0.001")
    assert ex.invariant_violations() == []


def test_withdrawal_redeems_and_may_borrow_all_or_nothing():
    """500 USDC available and 500 lent: withdrawing 800 redeems 300 of the lend. Withdrawing
    1,200 needs auto-borrow (the whole lend redeemed, 200 borrowed); refused without it, and a
    refusal leaves the lend where it was."""
    ex = Exchange(load_profile("backpack"))
    ex.add_account("lender")
    ex.deposit("lender", "USDC", D(100_000))
    ex.lend("lender", "USDC", D(100_000))
    ex.add_account("a")
    ex.set_price("SOL", D(100))
    ex.deposit("a", "SOL", D(100))
    ex.deposit("a", "USDC", D(1000))
    ex.lend("a", "USDC", D(500))
    assert ex.withdraw("a", "USDC", D(800)) == D(800)
    a = ex.accounts["a"]
    assert a.lends == {"USDC": D(200)} and a.available("USDC") == 0
    refused = ex.withdraw("a", "USDC", D(400))
    assert refused.code is ErrorCode.INSUFFICIENT_FUNDS and a.lends == {"USDC": D(200)}
    assert ex.withdraw("a", "USDC", D(400), auto_borrow=True) == D(400)
    assert a.lends == {} and a.borrows["USDC"] >= D(200)
    assert ex.invariant_violations() == []


def test_a_withdrawal_beyond_what_is_held_and_lent_says_the_most_that_can_leave():
    """800 USDC deposited, 300 of it lent, no position. Asking 1,000 without auto-borrow is refused
    for funds; the most that can leave is what is held and lent, 500 + 300 = 800, and the
    refusal says auto-borrow would borrow the rest. Nothing moves."""
    ex = Exchange(load_profile("backpack"))
    ex.add_account("a")
    ex.deposit("a", "USDC", D(800))
    ex.lend("a", "USDC", D(300))
    refused = ex.withdraw("a", "USDC", D(1000))
    assert refused.code is ErrorCode.INSUFFICIENT_FUNDS
    assert refused.details == {"needed": D(1000), "available": D(800), "max_quantity": D(800)}
    assert refused.message == "1000 USDC asked, 800 available and lent (auto-borrow would borrow the rest)"
    a = ex.accounts["a"]
    assert a.available("USDC") == D(500) and a.lends == {"USDC": D(300)}
