"""The pre-trade check: accept, or refuse with the reason and the numbers, changing nothing."""

from __future__ import annotations

from decimal import Decimal

import pytest

from exchange import margin
from exchange.decimals import ZERO, floor_to
from exchange.orders import (
    ErrorCode,
    ExpiryReason,
    Fill,
    Order,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Origin,
    Rejection,
    Side,
)
from exchange.pretrade import Accepted, check_order, max_order_quantity, place_order

from .conftest import make_account, perp_fill

D = Decimal
BTC = "BTC_USDC_PERP"


def limit(account, symbol, side, quantity, price, n=1, **flags):
    return Order(f"{account.id}-{n}", account.id, symbol, side, OrderType.LIMIT, D(quantity), D(price), **flags)


def market_order(account, symbol, side, quantity=None, quote=None, n=1, **flags):
    q = D(quantity) if quantity is not None else None
    qq = D(quote) if quote is not None else None
    return Order(f"{account.id}-{n}", account.id, symbol, side, OrderType.MARKET, q, quote_quantity=qq, **flags)


def snapshot(account):
    """Everything a refused order must leave exactly as it was."""
    return repr(
        (
            account.balances,
            account.lends,
            account.borrows,
            account.positions,
            account.open_orders,
            account.order_exposure,
            account.unsettled_equity,
            account.liquidating,
        )
    )


@pytest.fixture
def btc10x(profile):
    """10,000 USDC at the default 10x limit, BTC marked at 100,000: IMF is floored at 0.1."""
    return make_account(profile, usdc=10000, marks={BTC: 100000, "BTC": 100000})


def test_perp_order_refused_with_the_numbers(btc10x):
    """Bid 1.5 BTC at 100,000: Locked = 150,000 x 0.1 = 15,000 > NE 10,000.

    IMR 0% -> 150%, available 10,000 -> -5,000; the largest bid that passes is
    10,000 / (100,000 x 0.1) = 1 BTC. The account is exactly as before.
    """
    before = snapshot(btc10x)
    result = place_order(btc10x, limit(btc10x, BTC, Side.BID, "1.5", "100000"))
    assert isinstance(result, Rejection)
    assert result.code is ErrorCode.INSUFFICIENT_MARGIN
    d = result.details
    assert (d["imr_before"], d["imr_after"]) == (D(0), D("1.5"))
    assert (d["available_before"], d["available_after"]) == (D(10000), D(-5000))
    assert d["max_quantity"] == D(1)
    assert d["imf_after"] == D("0.1") and d["imf_source"] == "leverage_limit"
    assert "IMR from 0% to 150%" in result.message and "largest Bid that passes is 1" in result.message
    assert snapshot(btc10x) == before


def test_perp_order_accepted_then_reserved(btc10x):
    """Bid 1 BTC passes exactly (IMR 100%); the resting order counts in net exposure."""
    result = place_order(btc10x, limit(btc10x, BTC, Side.BID, "1", "100000"))
    assert isinstance(result, Accepted)
    assert btc10x.order_exposure[BTC] == [D(1), D(0)]
    assert margin.totals(btc10x).imr == 1
    # An ask of 0.5 does not add to the worst case (long case +1 still dominates): accepted.
    assert isinstance(place_order(btc10x, limit(btc10x, BTC, Side.ASK, "0.5", "100100", n=2)), Accepted)
    # One more step of bid is refused, and the largest that passes is zero.
    refused = place_order(btc10x, limit(btc10x, BTC, Side.BID, "0.00001", "100000", n=3))
    assert isinstance(refused, Rejection) and refused.details["max_quantity"] == 0


def test_reduce_only_and_risk_reducing_orders_pass_over_100_percent(profile):
    """Long 1 BTC at 100,000 on 10,000 USDC at 10x, then the mark falls to 95,000.

    NE = 10,000 - 5,000 = 5,000; Locked = 95,000 x 0.1 = 9,500 -> IMR 190%. A reduce-only ask
    and a plain ask that shrinks the position pass; a bid is refused.
    """
    account = make_account(profile, usdc=10000, marks={BTC: 100000, "BTC": 100000})
    perp_fill(profile, account, BTC, Side.BID, "1", "100000", fee="0")
    account.set_mark(BTC, D(95000))
    assert margin.totals(account).imr == D("1.9")
    assert isinstance(check_order(account, limit(account, BTC, Side.ASK, "2", "95000", reduce_only=True)), Accepted)
    shrink = check_order(account, limit(account, BTC, Side.ASK, "0.4", "95000", n=2))
    assert isinstance(shrink, Accepted) and shrink.evaluation.after.imr == D("1.9")
    grow = check_order(account, limit(account, BTC, Side.BID, "0.1", "95000", n=3))
    assert isinstance(grow, Rejection) and grow.code is ErrorCode.INSUFFICIENT_MARGIN


def test_max_quantity_in_the_sqrt_region(profile):
    """500,000 USDC at 50x, BTC at 100,000, flat. The IMF floor is 0.02 (50x); a bid of N USD
    needs N x max(0.02, 0.00002494 sqrt N) <= 500,000. At the floor N would be 25,000,000,
    where the sqrt term is 0.1247 > 0.02, so the answer is in the sqrt region:
    0.00002494 N^1.5 = 500,000 -> N = (500,000 / 0.00002494)^(2/3) ~ 7,379,000 USD,
    i.e. about 73.79 BTC, floored to the 0.00001 step. Found by bisection, verified at the edge.
    """
    account = make_account(profile, usdc=500000, leverage=50, marks={BTC: 100000, "BTC": 100000})
    notional = (D(500000) / D("0.00002494")) ** (D(2) / D(3))
    expected = floor_to(notional / D(100000), D("0.00001"))
    assert D("73.7") < expected < D("73.9")
    got = max_order_quantity(account, BTC, Side.BID, D(100000))
    assert got == expected
    assert isinstance(check_order(account, limit(account, BTC, Side.BID, str(got), "100000")), Accepted)
    over = check_order(account, limit(account, BTC, Side.BID, str(got + D("0.00001")), "100000"))
    assert isinstance(over, Rejection) and over.details["imf_source"] == "size"


def test_max_quantity_closed_form_with_a_position(profile):
    """Short 0.5 BTC on 10,000 USDC at 10x: a bid first unwinds the short (no new risk) and
    then adds a long: |E| <= 10,000 / (100,000 x 0.1) = 1 BTC of long, so 0.5 + 1 = 1.5 BTC."""
    account = make_account(profile, usdc=10000, marks={BTC: 100000, "BTC": 100000})
    perp_fill(profile, account, BTC, Side.ASK, "0.5", "100000", fee="0")
    assert max_order_quantity(account, BTC, Side.BID, D(100000)) == D("1.5")
    assert max_order_quantity(account, BTC, Side.ASK, D(100000)) == D("0.5")
    ro = Order("t", account.id, BTC, Side.BID, OrderType.LIMIT, D(1), D(100000), reduce_only=True)
    assert max_order_quantity(account, BTC, Side.BID, D(100000), ro) == D("0.5")


def test_liquidating_account_refuses_new_risk(btc10x):
    btc10x.liquidating = True
    refused = check_order(btc10x, limit(btc10x, BTC, Side.BID, "0.1", "100000"))
    assert isinstance(refused, Rejection) and refused.code is ErrorCode.ACCOUNT_LIQUIDATING
    system = limit(btc10x, BTC, Side.BID, "0.1", "100000", n=2, origin=Origin.LIQUIDATION_AUTOCLOSE)
    assert isinstance(check_order(btc10x, system), Accepted)


# -- spot -------------------------------------------------------------------------------


@pytest.fixture
def sol_account(profile):
    """1,000 USDC, SOL at 100."""
    return make_account(profile, usdc=1000, marks={"SOL": 100})


def test_spot_bid_locks_quote(sol_account):
    """Bid 5 SOL at 100 locks 500 USDC; the book will never let it spend more (funds_limit)."""
    result = place_order(sol_account, limit(sol_account, "SOL_USDC", Side.BID, "5", "100"))
    assert isinstance(result, Accepted) and result.order.funds_limit == D(500)
    usdc = sol_account.balances["USDC"]
    assert (usdc.available, usdc.locked) == (D(500), D(500))


def test_spot_bid_without_funds_is_refused(sol_account):
    """F6 without Margin: 1,000 USDC cannot pay for 20 SOL at 100 (2,000 USDC)."""
    before = snapshot(sol_account)
    result = place_order(sol_account, limit(sol_account, "SOL_USDC", Side.BID, "20", "100"))
    assert isinstance(result, Rejection)
    assert result.code is ErrorCode.INSUFFICIENT_FUNDS and result.reason is ExpiryReason.INSUFFICIENT_FUNDS
    assert (result.details["needed"], result.details["available"]) == (D(2000), D(1000))
    assert snapshot(sol_account) == before


def test_f6_d12_spot_margin_auto_borrow(sol_account):
    """F6: 1,000 USDC buying 2,000 USDC of SOL with autoBorrow borrows 1,000 USDC.

    After the fill (D12): NE = 20 x 100 x 0.95 - 1,000 = 900, Locked = 1,000 x 0.10 = 100,
    IMR = 11.11%.
    """
    result = check_order(sol_account, limit(sol_account, "SOL_USDC", Side.BID, "20", "100", auto_borrow=True))
    assert isinstance(result, Accepted)
    assert (result.borrow, result.redeem, result.lock_amount) == (D(1000), D(0), D(2000))
    after = result.evaluation.after
    assert after.net_equity == D(900) and after.locked == D(100)
    assert (after.imr * 100).quantize(D("0.01")) == D("11.11")
    with pytest.raises(ValueError):
        place_order(sol_account, result.order)


def test_borrow_requires_lend_redeem(profile):
    """500 USDC lent and 500 available: borrowing while lending the same asset is refused
    unless the order may redeem the lend first (then it redeems 500 and borrows 1,000)."""
    account = make_account(profile, usdc=500, marks={"SOL": 100})
    account.lends["USDC"] = D(500)
    order = limit(account, "SOL_USDC", Side.BID, "20", "100", auto_borrow=True)
    refused = check_order(account, order)
    assert isinstance(refused, Rejection) and refused.code is ErrorCode.BORROW_REQUIRES_LEND_REDEEM
    assert refused.reason is ExpiryReason.BORROW_REQUIRES_LEND_REDEEM
    ok = check_order(account, limit(account, "SOL_USDC", Side.BID, "20", "100", auto_borrow=True, auto_lend_redeem=True))
    assert isinstance(ok, Accepted) and (ok.redeem, ok.borrow) == (D(500), D(1000))


def test_spot_market_bid_lock_is_capped_by_funds(sol_account):
    """Market bid 9.9 SOL at mark 100: the cost at the mark (990) is fundable, the band estimate
    (9.9 x 100 x 1.03 = 1,019.70) is not, so the lock is the 1,000 available."""
    result = check_order(sol_account, market_order(sol_account, "SOL_USDC", Side.BID, quantity="9.9"))
    assert isinstance(result, Accepted) and result.lock_amount == D(1000) == result.order.funds_limit
    too_big = check_order(sol_account, market_order(sol_account, "SOL_USDC", Side.BID, quantity="10.01"))
    assert isinstance(too_big, Rejection) and too_big.code is ErrorCode.INSUFFICIENT_FUNDS


def test_spot_sell_of_haircut_collateral_is_risk_reducing(profile):
    """An account over 100% IMR may still sell SOL (weight 0.95) for USDC (weight 1): it raises
    available equity by the haircut it recovers."""
    account = make_account(profile, marks={"SOL": 100, BTC: 100000, "BTC": 100000})
    account.deposit("SOL", D(100))
    perp_fill(profile, account, BTC, Side.BID, "1", "100000", fee="0")
    assert margin.totals(account).imr > 1
    result = check_order(account, limit(account, "SOL_USDC", Side.ASK, "50", "100"))
    assert isinstance(result, Accepted)
    assert result.evaluation.after.available - result.evaluation.before.available == D(250)


def test_shape_errors_come_first(btc10x):
    bad_tick = check_order(btc10x, limit(btc10x, BTC, Side.BID, "1", "100000.05"))
    assert isinstance(bad_tick, Rejection) and bad_tick.code is ErrorCode.INVALID_PRICE
    bad_step = check_order(btc10x, limit(btc10x, BTC, Side.BID, "0.000001", "100000"))
    assert isinstance(bad_step, Rejection) and bad_step.code is ErrorCode.INVALID_QUANTITY
    unknown = check_order(btc10x, limit(btc10x, "DOGE_USDC_PERP", Side.BID, "1", "1"))
    assert isinstance(unknown, Rejection) and unknown.code is ErrorCode.INVALID_ORDER


def _spot_fill(account, order_id, quantity, price, trade_id):
    q, p = D(quantity), D(price)
    return Fill(trade_id=trade_id, market="SOL_USDC", order_id=order_id, account=account.id, side=Side.BID, price=p,
                quantity=q, quote_quantity=q * p, fee=ZERO, fee_asset="SOL", is_maker=False)


def _update(account, order_id, status, executed, price, remaining):
    e = D(executed)
    return OrderUpdate(order_id, account.id, "SOL_USDC", status, e, e * D(price), D(remaining))


def test_final_update_before_its_fills_waits_for_them(sol_account, profile):
    """Bid 5 SOL at 100 (500 USDC locked), filled 2 then 3, with the final ``Filled`` update
    overtaking both fills on the way. The order must stay open, its lock held, until the last
    fill is booked: releasing early would let the 500 USDC be spent twice.

    Exposure: the update already says 5 executed, so the bid exposure drops 5 -> 0 on the update
    and the fills must not take it below zero.
    """
    market = profile.markets["SOL_USDC"]
    place_order(sol_account, limit(sol_account, "SOL_USDC", Side.BID, "5", "100"))
    order_id = "a-1"
    assert sol_account.apply_update(_update(sol_account, order_id, OrderStatus.FILLED, "5", "100", "0")) is None
    usdc = sol_account.balances["USDC"]
    assert (usdc.available, usdc.locked) == (D(500), D(500))
    assert order_id in sol_account.open_orders and "SOL_USDC" not in sol_account.order_exposure
    effect = sol_account.apply_fill(_spot_fill(sol_account, order_id, "2", "100", 1), market)
    assert effect.ended_order is None and (usdc.available, usdc.locked) == (D(500), D(300))
    effect = sol_account.apply_fill(_spot_fill(sol_account, order_id, "3", "100", 2), market)
    assert effect.ended_order is not None and effect.ended_order.final.status is OrderStatus.FILLED
    assert (usdc.available, usdc.locked) == (D(500), ZERO)
    assert sol_account.balances["SOL"].available == D(5)
    assert order_id not in sol_account.open_orders and not sol_account.order_exposure


def test_update_that_overtakes_a_fill_is_not_counted_twice(sol_account, profile):
    """Bid 5 SOL: a cut-down update (2 executed, 1 left after cutting 2) arrives before the fill
    of 2 it counts. Remaining is 1 after the update and stays 1 after that fill; a stale ``New``
    update (0 executed, 5 left) arriving last cannot grow it back (5 - 2 booked = 3 > 1)."""
    market = profile.markets["SOL_USDC"]
    place_order(sol_account, limit(sol_account, "SOL_USDC", Side.BID, "5", "100"))
    entry = sol_account.open_orders["a-1"]
    sol_account.apply_update(_update(sol_account, "a-1", OrderStatus.PARTIALLY_FILLED, "2", "100", "1"))
    assert entry.remaining == D(1) and sol_account.order_exposure["SOL_USDC"] == [D(1), ZERO]
    sol_account.apply_fill(_spot_fill(sol_account, "a-1", "2", "100", 1), market)
    assert entry.remaining == D(1) and sol_account.order_exposure["SOL_USDC"] == [D(1), ZERO]
    sol_account.apply_update(_update(sol_account, "a-1", OrderStatus.NEW, "0", "100", "5"))
    assert entry.remaining == D(1) and sol_account.order_exposure["SOL_USDC"] == [D(1), ZERO]
