"""Borrow/lend pools: rates, refusals, hourly interest and the sub-account side of it."""

from __future__ import annotations

from decimal import Decimal

import pytest

from exchange.engine import Exchange
from exchange.ledger import Settings
from exchange.lending import HOUR_MS, Grant, LendingPool
from exchange.orders import ErrorCode, Rejection, Side
from exchange.profile import load_profile

D = Decimal
MINUTE = 60_000


def usdc_profile(**lending):
    return load_profile("backpack", overrides={"assets": {"USDC": {"lending": lending}}})


def test_d9_utilization_and_lend_rate():
    """Lent 5,000,000, borrowed 1,500,000: U = 0.30; borrow APR 5.23% (a flat curve here),
    fee 0.001: lend APR = 0.0523 x 0.30 x 0.999 = 1.567431% (1.569% without the fee)."""
    pool = LendingPool(usdc_profile(r0=D("0.0523"), s1=0, fee=D("0.001")).assets["USDC"])
    pool.lend("lender", D(5_000_000))
    assert isinstance(pool.borrow("borrower", D(1_500_000), HOUR_MS), Grant)
    assert pool.utilization == D("0.3")
    assert pool.borrow_rate() == D("0.0523")
    assert pool.lend_rate() == D("0.01567431")


def test_two_slope_curve():
    """r0 0.01, s1 0.04 to U_opt 0.8, s2 0.60 above: U 0.4 -> 0.01 + 0.04 x 0.5 = 3%;
    U 0.8 -> 5%; U 0.9 -> 0.05 + 0.60 x 0.1/0.2 = 35%."""
    pool = LendingPool(usdc_profile(r0=D("0.01"), s1=D("0.04"), s2=D("0.60"), optimal_utilization=D("0.8")).assets["USDC"])
    assert pool.borrow_rate(D("0.4")) == D("0.03")
    assert pool.borrow_rate(D("0.8")) == D("0.05")
    assert pool.borrow_rate(D("0.9")) == D("0.35")


def test_d10_f9_entry_fee_for_the_rest_of_the_hour():
    """2,000 USDC at 10% APR: hourly interest 2,000 x 0.10 / 8,760 = 0.0228311 USDC; opened at
    12:50 the entry fee is 10/60 of it, 0.0038052 (F9), charged as 0.003806 (rounded up to the
    USDC step); the 13:00 tick then charges (2,000.003806) x 0.10 / 8,760 = 0.022832 (up)."""
    pool = LendingPool(usdc_profile(r0=D("0.10"), s1=0).assets["USDC"])
    pool.lend("lender", D(100_000))
    pool.last_tick_ms = 12 * HOUR_MS
    grant = pool.borrow("b", D(2000), 12 * HOUR_MS + 50 * MINUTE)
    assert (D(2000) * D("0.10") / 8760).quantize(D("0.0000001")) == D("0.0228311")
    assert (D(2000) * D("0.10") / 8760 / 6).quantize(D("0.0000001")) == D("0.0038052")
    assert grant.entry_fee == D("0.003806")
    tick = pool.accrue(13 * HOUR_MS)
    assert tick.borrow_interest == {"b": D("0.022832")}
    assert pool.borrowers["b"] == D("2000.026638")


def test_entry_fee_when_the_tick_is_late():
    """A borrow that lands on the hour before that hour's tick pays no entry fee: the tick
    about to run charges the whole coming hour (no minute is charged twice)."""
    pool = LendingPool(usdc_profile(r0=D("0.10"), s1=0).assets["USDC"])
    pool.lend("lender", D(100_000))
    assert pool.borrow("b", D(2000), HOUR_MS + 20).entry_fee == 0
    assert pool.accrue(HOUR_MS + 50).borrow_interest == {"b": D("0.022832")}


def test_five_hours_two_lenders_one_borrower():
    """Worked by hand. USDC curve r0 0, s1 0.14016, U_opt 0.8 (so APR = 0.1752 x U below 80%),
    fee 0.1. L1 lends 60,000, L2 lends 40,000; B deposits 20,000 and borrows 50,000 at 0:00.

    0:00  U after the borrow 0.5, APR 8.76%: entry fee for the whole first hour
          50,000 x 0.0876/8760 = 0.5; B owes 50,000.5.
    1:00  U = 50,000.5/100,000 = 0.500005, APR 0.087600876: B's interest
          ceil(50,000.5 x 0.0000100001) = ceil(0.50001000005) = 0.500011 -> owes 50,001.000011.
          Paid since 0:00: 0.5 + 0.500011 = 1.000011; lenders get 90%: 0.9000099, pro rata
          L1 floor(0.54000594) = 0.540005, L2 floor(0.36000396) = 0.360003; exchange 0.100003.
    2:00  U 0.500005500, APR 0.087600963604: B +0.500016 (owes 50,001.500027);
          L1 +0.270008, L2 +0.180005; exchange +0.050003.
    3:00  U 0.500008250, APR 0.087601445409: B +0.500024 (owes 50,002.000051);
          L1 +0.270012, L2 +0.180008; exchange +0.050004. B then repays 30,000.
    4:00  U falls to 0.200016400: APR 0.035042873303: B +0.080015 (owes 20,002.080066);
          L1 +0.043208, L2 +0.028805; exchange +0.008002.
    5:00  U 0.200017056, APR 0.035042988252: B +0.080016 (owes 20,002.160082);
          L1 +0.043208, L2 +0.028805; exchange +0.008003 (0.216015 in all).
    """
    ex = Exchange(usdc_profile(r0=0, s1=D("0.14016"), s2=1, optimal_utilization=D("0.8"), fee=D("0.1")))
    for name in ("L1", "L2", "B"):
        ex.add_account(name)
    ex.deposit("L1", "USDC", D(60000))
    ex.deposit("L2", "USDC", D(40000))
    ex.deposit("B", "USDC", D(20000))
    ex.lend("L1", "USDC", D(60000))
    ex.lend("L2", "USDC", D(40000))
    grant = ex.borrow("B", "USDC", D(50000))
    assert isinstance(grant, Grant) and grant.entry_fee == D("0.5")
    pool = ex.pools["USDC"]
    expected = {
        1: ("50001.000011", "60000.540005", "40000.360003", "0.100003"),
        2: ("50001.500027", "60000.810013", "40000.540008", "0.150006"),
        3: ("50002.000051", "60001.080025", "40000.720016", "0.200010"),
        4: ("20002.080066", "60001.123233", "40000.748821", "0.208012"),
        5: ("20002.160082", "60001.166441", "40000.777626", "0.216015"),
    }
    for hour, (owed, l1, l2, fees) in expected.items():
        ex.advance_to(hour * HOUR_MS)
        assert ex.accounts["B"].borrows["USDC"] == D(owed) == pool.borrowers["B"], hour
        assert ex.accounts["L1"].lends["USDC"] == D(l1) == pool.lenders["L1"], hour
        assert ex.accounts["L2"].lends["USDC"] == D(l2) == pool.lenders["L2"], hour
        assert pool.fee_income == D(fees), hour
        # Borrowers paid exactly what lenders got plus the exchange's fee.
        assert (pool.borrowed - D(50000) + (D(30000) if hour > 3 else 0)) == (
            pool.lent - D(100000) + pool.fee_income
        )
        if hour == 3:
            assert isinstance(ex.repay("B", "USDC", D(30000)), Grant)
        assert ex.invariant_violations() == []


@pytest.fixture
def pool_with_lender():
    pool = LendingPool(load_profile("backpack").assets["USDC"])
    pool.lend("lender", D(1000))
    return pool


def test_refusals_with_the_venue_codes(pool_with_lender):
    pool = pool_with_lender
    too_much = pool.borrow("b", D(901), HOUR_MS)  # 90.1% > the 90% throttle threshold
    assert isinstance(too_much, Rejection) and too_much.code is ErrorCode.INSUFFICIENT_SUPPLY
    assert "throttle threshold 90%" in too_much.message
    # A liquidation may go past the throttle up to the hard cap (95%), never beyond.
    assert isinstance(pool.borrow("liq", D(940), HOUR_MS, liquidation=True), Grant)
    assert pool.borrow("liq2", D(20), HOUR_MS, liquidation=True).code is ErrorCode.INSUFFICIENT_SUPPLY
    assert pool.borrow("lender", D(1), HOUR_MS).code is ErrorCode.BORROW_REQUIRES_LEND_REDEEM
    assert pool.lend("liq", D(1)).code is ErrorCode.LEND_REQUIRES_BORROW_REPAY
    # Redeeming what is lent out is refused too: utilization may not pass its caps.
    assert pool.redeem("lender", D(500)).code is ErrorCode.INSUFFICIENT_SUPPLY
    pool.check_identity()


def test_borrow_limit_and_pool_states():
    """The open borrow/lend limit caps total lends and total borrows, each on its own."""
    limited = LendingPool(usdc_profile(open_borrow_lend_limit=D(1000)).assets["USDC"])
    assert isinstance(limited.lend("lender", D(1000)), Grant)
    assert limited.lend("other", D(1)).code is ErrorCode.LEND_LIMIT
    assert isinstance(limited.borrow("b", D(600), HOUR_MS), Grant)
    assert limited.borrow("b", D(500), HOUR_MS).code is ErrorCode.BORROW_LIMIT
    repay_only = LendingPool(usdc_profile(state="RepayOnly").assets["USDC"])
    assert repay_only.lend("x", D(1)).code is ErrorCode.LEND_LIMIT
    assert repay_only.borrow("x", D(1), 0).code is ErrorCode.INSUFFICIENT_SUPPLY


def test_a_refused_pool_action_changes_nothing(pool_with_lender):
    pool = pool_with_lender
    before = (pool.lent, pool.borrowed, pool.cash, dict(pool.lenders), dict(pool.borrowers))
    for refused in (pool.borrow("b", D(5000), 0), pool.redeem("lender", D(2000)), pool.repay("b", D(1))):
        assert isinstance(refused, Rejection)
    assert (pool.lent, pool.borrowed, pool.cash, dict(pool.lenders), dict(pool.borrowers)) == before


def test_borrow_past_imr_100_percent_is_refused_with_the_numbers():
    """1,000 USDC of equity at 10x: a USDC borrow adds its cash and its debt (equity stays
    1,000) and locks 10% of it: at most 10,000 can be borrowed; 12,000 would lock 1,200."""
    ex = Exchange(load_profile("backpack"))
    ex.add_account("lender")
    ex.deposit("lender", "USDC", D(100_000))
    ex.lend("lender", "USDC", D(100_000))
    ex.add_account("b")
    ex.deposit("b", "USDC", D(1000))
    refused = ex.borrow("b", "USDC", D(12000))
    assert isinstance(refused, Rejection) and refused.code is ErrorCode.INSUFFICIENT_MARGIN
    d = refused.details
    assert (d["available_before"], d["available_after"], d["max_quantity"]) == (D(1000), D(-200), D(10000))
    assert ex.accounts["b"].borrows == {} and ex.pools["USDC"].borrowed == 0
    assert isinstance(ex.borrow("b", "USDC", D(10000)), Grant)


def test_auto_lend_and_redeem_on_demand():
    """With auto-lend on, idle USDC is lent; an order that needs it redeems it first."""
    ex = Exchange(load_profile("backpack"))
    ex.set_price("SOL", D(100))
    ex.add_account("mm")
    ex.deposit("mm", "SOL", D(100))
    assert ex.order("mm", "SOL_USDC", Side.ASK, D(10), D(100)).accepted
    ex.add_account("saver", settings=Settings(leverage_limit=D(10), auto_lend=True))
    ex.deposit("saver", "USDC", D(1000))
    saver = ex.accounts["saver"]
    assert saver.lends == {"USDC": D(1000)} and saver.available("USDC") == 0
    outcome = ex.order("saver", "SOL_USDC", Side.BID, D(5), D(100))
    assert outcome.accepted and outcome.fills
    # 500 redeemed and spent; SOL received (less the 0.1% fee in SOL) is lent in turn.
    assert saver.lends == {"USDC": D(500), "SOL": D("4.995")}
    assert ex.invariant_violations() == []


def test_auto_repay_borrows():
    ex = Exchange(load_profile("backpack"))
    ex.add_account("lender")
    ex.deposit("lender", "USDC", D(10_000))
    ex.lend("lender", "USDC", D(10_000))
    ex.add_account("b", settings=Settings(leverage_limit=D(10), auto_repay_borrows=True))
    ex.deposit("b", "USDC", D(100))
    ex.borrow("b", "USDC", D(50))
    ex.deposit("b", "USDC", D(1))  # any later change lets the free balance repay the borrow
    assert ex.accounts["b"].borrows == {}
    assert ex.invariant_violations() == []


def test_a_spot_order_that_cannot_borrow_keeps_its_lend():
    """Auto-lend account with 10,000 USDC lent orders 400 SOL at 100 with autoBorrow: it would
    redeem the 10,000 and borrow 30,000, but the USDC pool has nothing to lend. The redeem and
    the borrow are one atomic draw on the pool, so the refusal leaves the lend where it was."""
    ex = Exchange(load_profile("backpack"))
    ex.set_price("SOL", D(100))
    ex.add_account("mm")
    ex.deposit("mm", "SOL", D(1000))
    assert ex.order("mm", "SOL_USDC", Side.ASK, D(400), D(100)).accepted
    ex.add_account("saver", settings=Settings(leverage_limit=D(10), auto_lend=True))
    ex.deposit("saver", "USDC", D(10000))
    outcome = ex.order("saver", "SOL_USDC", Side.BID, D(400), D(100), auto_borrow=True)
    assert outcome.rejection is not None and outcome.rejection.code is ErrorCode.INSUFFICIENT_SUPPLY
    assert outcome.rejection.reason.value == "InsufficientBorrowableQuantity"
    assert ex.accounts["saver"].lends == {"USDC": D(10000)} and ex.pools["USDC"].lenders == {"saver": D(10000)}
    assert ex.invariant_violations() == []
