"""Order book: pinned numbers from the spec, then a naive reference matcher under hypothesis."""

from __future__ import annotations

import copy
import itertools
import math
import random
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.book import OrderBook
from exchange.decimals import ZERO
from exchange.orders import (
    ErrorCode,
    ExpiryReason,
    Fill,
    MatchResult,
    Order,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Origin,
    Rejection,
    SelfTradePrevention,
    Side,
    TimeInForce,
)
from exchange.profile import Profile, load_profile

D = Decimal
BID, ASK = Side.BID, Side.ASK
GTC, IOC, FOK = TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK
NEW, PARTIAL, FILLED = OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED
CANCELLED, EXPIRED = OrderStatus.CANCELLED, OrderStatus.EXPIRED
R = ExpiryReason
STP = SelfTradePrevention

BACKPACK = load_profile("backpack")
PERP = "ETH_USDC_PERP"
SPOT = "ETH_USDC"
# ETH_USDC with a 0.001 tick: price x quantity (multiples of 1e-7) is finer than the USDC step.
FINE_TICK = load_profile("backpack", overrides={"markets": {SPOT: {"tick_size": "0.001"}}})

_ids = itertools.count(1)


def limit(account: str, side: Side, qty: str, price: str, symbol: str = PERP, **kw: Any) -> Order:
    return Order(f"o{next(_ids)}", account, symbol, side, OrderType.LIMIT, D(qty), D(price), **kw)


def market(account: str, side: Side, qty: str | None, symbol: str = PERP, **kw: Any) -> Order:
    quantity = None if qty is None else D(qty)
    return Order(f"o{next(_ids)}", account, symbol, side, OrderType.MARKET, quantity, **kw)


def final(result: MatchResult, order: Order) -> OrderUpdate:
    """The taker's own last update of a submit."""
    mine = [u for u in result.updates if u.order_id == order.order_id]
    assert mine, result
    return mine[-1]


def trades(result: MatchResult) -> list[tuple[str, str, Decimal, Decimal]]:
    """(maker id, taker id, price, quantity) per trade, checking the two-fill shape on the way."""
    out = []
    for maker, taker in zip(result.fills[::2], result.fills[1::2], strict=True):
        assert maker.is_maker and not taker.is_maker
        assert maker.trade_id == taker.trade_id and maker.side is not taker.side
        assert (maker.price, maker.quantity) == (taker.price, taker.quantity)
        out.append((maker.order_id, taker.order_id, maker.price, maker.quantity))
    return out


def book_with(*orders: Order, profile: Profile = BACKPACK, symbol: str = PERP) -> OrderBook:
    book = OrderBook(profile, symbol)
    for o in orders:
        result = book.submit(o)
        assert result.rejection is None and result.updates[-1].status is NEW, result
    return book


# ---------------------------------------------------------------------------------------
# Fees


def test_f3_perp_fill_fees() -> None:
    """Spec F3: a taker bid 0.0026 @ 3826.15 pays 5 bps: 9.94799 x 0.0005 = 0.004973995 -> 0.004974.

    The maker's 2 bps by hand: 9.94799 x 0.0002 = 0.001989598, rounded up to 1e-6 -> 0.001990.
    Perp fills carry the exact notional and charge fees in USDC.
    """
    maker = limit("m", ASK, "0.0026", "3826.15")
    book = book_with(maker)
    taker = limit("t", BID, "0.0026", "3826.15")
    result = book.submit(taker)
    m, t = result.fills
    assert (m.order_id, m.is_maker, m.fee, m.fee_asset) == (maker.order_id, True, D("0.001990"), "USDC")
    assert (t.order_id, t.is_maker, t.fee, t.fee_asset) == (taker.order_id, False, D("0.004974"), "USDC")
    assert m.trade_id == t.trade_id == 1
    assert m.quote_quantity == t.quote_quantity == D("9.947990")
    assert m.liquidation_fee == t.liquidation_fee == 0
    assert book.fee_income == {"USDC": D("0.006964")}
    assert book.positions == {"m": D("-0.0026"), "t": D("0.0026")}
    assert [(u.order_id, u.status) for u in result.updates] == [(maker.order_id, FILLED), (taker.order_id, FILLED)]
    assert book.last_trade_price == D("3826.15") and len(book) == 0


def test_spot_fees_are_taken_from_the_asset_received() -> None:
    """ETH_USDC, maker 8 bps, taker 10 bps: the bid receives ETH, the ask receives USDC.

    Maker bid 0.5 ETH @ 2000.00: fee 0.5 x 0.0008 = 0.0004 ETH. Taker ask receives 1000 USDC:
    fee 1000 x 0.001 = 1 USDC.
    """
    maker = limit("m", BID, "0.5", "2000.00", SPOT)
    book = book_with(maker, symbol=SPOT)
    result = book.submit(limit("t", ASK, "0.5", "2000.00", SPOT))
    m, t = result.fills
    assert (m.fee, m.fee_asset, m.quote_quantity) == (D("0.0004"), "ETH", D("1000"))
    assert (t.fee, t.fee_asset, t.quote_quantity) == (D("1"), "USDC", D("1000"))
    assert book.fee_income == {"ETH": D("0.0004"), "USDC": D("1")}
    assert book.positions == {}


def test_spot_quote_rounding_goes_against_each_side_into_fee_income() -> None:
    """0.0003 @ 100.001 = 0.0300003 USDC: the bid pays 0.030001, the ask gets 0.030000.

    Fees: the bid (taker, 10 bps) 0.0003 x 0.001 = 3e-7 ETH; the ask (maker, 8 bps)
    0.03 x 0.0008 = 0.000024 USDC. The 1e-6 rounding remainder is income as well.
    """
    maker = limit("m", ASK, "0.0003", "100.001", SPOT)
    book = book_with(maker, profile=FINE_TICK, symbol=SPOT)
    result = book.submit(limit("t", BID, "0.0003", "100.001", SPOT))
    m, t = result.fills
    assert (m.quote_quantity, m.fee, m.fee_asset) == (D("0.030000"), D("0.000024"), "USDC")
    assert (t.quote_quantity, t.fee, t.fee_asset) == (D("0.030001"), D("3E-7"), "ETH")
    assert book.fee_income == {"USDC": D("0.000025"), "ETH": D("3E-7")}


def test_liquidation_fee_is_charged_on_the_liquidation_side_only() -> None:
    """backpack-2025-10: 1% of each liquidation fill. 0.5 @ 3000 = 1500 USDC -> 15 USDC."""
    profile = load_profile("backpack-2025-10")
    book = book_with(limit("m", BID, "0.5", "3000.00"), profile=profile)
    book.apply_position_change("liq", D("0.5"))
    book.apply_position_change("backstop", D("-0.5"))
    order = market("liq", ASK, "0.5", reduce_only=True, time_in_force=IOC, origin=Origin.LIQUIDATION_AUTOCLOSE)
    m, t = book.submit(order).fills
    assert (m.liquidation_fee, m.origin) == (ZERO, Origin.USER)
    assert (t.liquidation_fee, t.origin) == (D("15"), Origin.LIQUIDATION_AUTOCLOSE)
    assert book.liquidation_fees == {"USDC": D("15")}
    assert t.fee == D("0.75")  # the trading fee is separate: 1500 x 5 bps


def test_zero_fee_market_charges_nothing() -> None:
    book = book_with(limit("m", ASK, "10", "1.0001", "USDT_USDC"), symbol="USDT_USDC")
    m, t = book.submit(limit("t", BID, "10", "1.0001", "USDT_USDC")).fills
    assert m.fee == t.fee == 0 and book.fee_income == {}


# ---------------------------------------------------------------------------------------
# Priority and time in force


def test_price_time_priority() -> None:
    a1 = limit("a", ASK, "1", "101.00")
    a2 = limit("b", ASK, "1", "100.00")
    a3 = limit("c", ASK, "1", "101.00")
    a4 = limit("d", ASK, "1", "100.00")
    book = book_with(a1, a2, a3, a4)
    taker = limit("t", BID, "3.5", "101.00", time_in_force=IOC)
    result = book.submit(taker)
    assert trades(result) == [
        (a2.order_id, taker.order_id, D("100.00"), D(1)),
        (a4.order_id, taker.order_id, D("100.00"), D(1)),
        (a1.order_id, taker.order_id, D("101.00"), D(1)),
        (a3.order_id, taker.order_id, D("101.00"), D("0.5")),
    ]
    assert [f.trade_id for f in result.fills] == [1, 1, 2, 2, 3, 3, 4, 4]
    # Fully filled makers end with Filled; the partly filled one gets no update.
    assert [(u.order_id, u.status) for u in result.updates] == [
        (a2.order_id, FILLED), (a4.order_id, FILLED), (a1.order_id, FILLED), (taker.order_id, FILLED),
    ]
    assert book.resting_quantity(a3.order_id, a3.account) == D("0.5")
    assert book.best_ask() == (D("101.00"), D("0.5"))


def test_gtc_remainder_rests_partially_filled() -> None:
    maker = limit("m", ASK, "1", "100.00")
    book = book_with(maker)
    taker = limit("t", BID, "2.5", "100.00")
    update = final(book.submit(taker), taker)
    assert (update.status, update.executed_quantity, update.remaining_quantity) == (PARTIAL, D(1), D("1.5"))
    assert update.executed_quote_quantity == D("100.00")
    assert book.best_bid() == (D("100.00"), D("1.5")) and book.best_ask() is None
    assert book.open_orders("t") == [taker.order_id]


def test_ioc_remainder_expires() -> None:
    book = book_with(limit("m", ASK, "1", "100.00"), limit("m", ASK, "1", "101.00"))
    taker = limit("t", BID, "3", "100.00", time_in_force=IOC)
    result = book.submit(taker)
    update = final(result, taker)
    assert (update.status, update.reason, update.executed_quantity) == (EXPIRED, R.IMMEDIATE_OR_CANCEL, D(1))
    assert len(book) == 1 and book.best_bid() is None


def test_fok_that_cannot_fill_leaves_the_book_untouched() -> None:
    book = book_with(limit("m", ASK, "1", "100.00"), limit("m", ASK, "1", "101.00"))
    taker = limit("t", BID, "2.5", "101.00", time_in_force=FOK)
    result = book.submit(taker)
    assert result.fills == []
    assert [(u.status, u.reason) for u in result.updates] == [(EXPIRED, R.FILL_OR_KILL)]
    assert book.depth(5) == ([], [(D("100.00"), D(1)), (D("101.00"), D(1))])


def test_fok_that_can_fill_fills_completely() -> None:
    book = book_with(limit("m", ASK, "1", "100.00"), limit("m", ASK, "2", "101.00"))
    taker = limit("t", BID, "2.5", "101.00", time_in_force=FOK)
    result = book.submit(taker)
    assert [q for *_, q in trades(result)] == [D(1), D("1.5")]
    assert final(result, taker).status is FILLED


def test_fok_dry_run_stops_at_own_order_like_the_real_match() -> None:
    """RejectTaker would stop at the taker's own ask, so 2 of 3 cannot fill: killed, nothing moves."""
    own = limit("t", ASK, "1", "101.00")
    book = book_with(limit("m", ASK, "1", "100.00"), own, limit("m", ASK, "5", "102.00"))
    result = book.submit(limit("t", BID, "3", "102.00", time_in_force=FOK))
    assert result.fills == [] and result.updates[0].reason is R.FILL_OR_KILL
    assert book.resting_quantity(own.order_id, own.account) == D(1)


def test_post_only_that_would_take_expires() -> None:
    book = book_with(limit("m", ASK, "1", "100.00"))
    crossing = limit("t", BID, "1", "100.00", post_only=True)
    result = book.submit(crossing)
    assert result.fills == [] and [(u.status, u.reason) for u in result.updates] == [(EXPIRED, R.POST_ONLY_TAKER)]
    resting = limit("t", BID, "1", "99.99", post_only=True)
    assert book.submit(resting).updates[0].status is NEW
    assert book.best_bid() == (D("99.99"), D(1))


# ---------------------------------------------------------------------------------------
# Self-trade prevention


def test_stp_reject_taker_stops_the_taker_and_keeps_the_maker() -> None:
    other = limit("m", ASK, "1", "100.00")
    own = limit("t", ASK, "1", "100.00")
    behind = limit("m", ASK, "1", "100.00")
    book = book_with(other, own, behind)
    taker = limit("t", BID, "3", "100.00", self_trade_prevention=STP.REJECT_TAKER)
    result = book.submit(taker)
    assert trades(result) == [(other.order_id, taker.order_id, D("100.00"), D(1))]
    update = final(result, taker)
    assert (update.status, update.reason, update.executed_quantity) == (EXPIRED, R.SELF_TRADE_PREVENTION, D(1))
    assert book.resting_quantity(own.order_id, own.account) == D(1)
    assert book.resting_quantity(behind.order_id, behind.account) == D(1)


def test_stp_reject_maker_removes_own_order_and_continues() -> None:
    own = limit("t", ASK, "1", "100.00")
    other = limit("m", ASK, "1", "100.00")
    book = book_with(own, other)
    taker = limit("t", BID, "1", "100.00", self_trade_prevention=STP.REJECT_MAKER)
    result = book.submit(taker)
    assert result.updates[0] == OrderUpdate(
        own.order_id, "t", PERP, EXPIRED, ZERO, ZERO, ZERO, R.SELF_TRADE_PREVENTION,
    )
    assert trades(result) == [(other.order_id, taker.order_id, D("100.00"), D(1))]
    assert final(result, taker).status is FILLED and len(book) == 0


def test_stp_reject_both_ends_both() -> None:
    own = limit("t", ASK, "1", "100.00")
    book = book_with(own, limit("m", ASK, "1", "100.00"))
    taker = limit("t", BID, "1", "100.00", self_trade_prevention=STP.REJECT_BOTH)
    result = book.submit(taker)
    assert result.fills == []
    assert [(u.order_id, u.status, u.reason) for u in result.updates] == [
        (own.order_id, EXPIRED, R.SELF_TRADE_PREVENTION),
        (taker.order_id, EXPIRED, R.SELF_TRADE_PREVENTION),
    ]
    assert len(book) == 1


# ---------------------------------------------------------------------------------------
# Reduce-only


def long_position(book: OrderBook, account: str, qty: str) -> None:
    """Give ``account`` a long of ``qty`` against ``seller`` through the book itself."""
    book.submit(limit("seller", ASK, qty, "100.00"))
    book.submit(limit(account, BID, qty, "100.00"))
    assert book.positions[account] == D(qty)


def test_reduce_only_order_is_cut_to_the_position_when_placed() -> None:
    book = OrderBook(BACKPACK, PERP)
    long_position(book, "a", "1")
    order = limit("a", ASK, "2", "105.00", reduce_only=True)
    [update] = book.submit(order).updates
    assert (update.status, update.remaining_quantity, update.modified) == (NEW, D(1), True)


def test_resting_reduce_only_order_is_cut_then_expires_when_the_position_closes() -> None:
    book = OrderBook(BACKPACK, PERP)
    long_position(book, "a", "2")
    reducing = limit("a", ASK, "2", "105.00", reduce_only=True)
    assert book.submit(reducing).updates[0].remaining_quantity == D(2)
    book.submit(limit("buyer", BID, "2", "99.00"))
    # Selling 1 elsewhere leaves a position of 1: the resting order is cut from 2 to 1.
    result = book.submit(market("a", ASK, "1"))
    assert result.updates[-2] == OrderUpdate(reducing.order_id, "a", PERP, NEW, ZERO, ZERO, D(1), None, True)
    assert book.resting_quantity(reducing.order_id, reducing.account) == D(1) and book.best_ask() == (D("105.00"), D(1))
    # Closing the position through another order: it no longer reduces anything.
    result = book.submit(market("a", ASK, "1"))
    assert (reducing.order_id, EXPIRED, R.REDUCE_ONLY_NOT_REDUCED) in [
        (u.order_id, u.status, u.reason) for u in result.updates
    ]
    assert book.best_ask() is None and "a" not in book.positions


def test_reduce_only_that_does_not_reduce_expires_at_once() -> None:
    book = OrderBook(BACKPACK, PERP)
    flat = book.submit(limit("a", ASK, "1", "100.00", reduce_only=True))
    assert [(u.status, u.reason) for u in flat.updates] == [(EXPIRED, R.REDUCE_ONLY_NOT_REDUCED)]
    long_position(book, "a", "1")
    same_side = book.submit(limit("a", BID, "1", "100.00", reduce_only=True))
    assert [(u.status, u.reason) for u in same_side.updates] == [(EXPIRED, R.REDUCE_ONLY_NOT_REDUCED)]


def test_reduce_only_taker_never_crosses_zero() -> None:
    book = OrderBook(BACKPACK, PERP)
    long_position(book, "a", "1")
    book.submit(limit("b", BID, "5", "99.00"))
    order = market("a", ASK, "3", reduce_only=True)
    result = book.submit(order)
    assert [q for *_, q in trades(result)] == [D(1)]
    update = final(result, order)
    assert (update.status, update.executed_quantity, update.modified) == (FILLED, D(1), True)
    assert "a" not in book.positions


def test_reduce_only_makers_of_one_account_are_cut_fill_by_fill() -> None:
    """Two resting reduce-only asks of 1 on a long of 1.5: once the first fills, the second is cut."""
    book = OrderBook(BACKPACK, PERP)
    long_position(book, "a", "1.5")
    first = limit("a", ASK, "1", "100.00", reduce_only=True)
    second = limit("a", ASK, "1", "100.00", reduce_only=True)
    book.submit(first)
    book.submit(second)
    result = book.submit(limit("b", BID, "3", "100.00"))
    assert [(m, q) for m, _, _, q in trades(result)] == [(first.order_id, D(1)), (second.order_id, D("0.5"))]
    cut = OrderUpdate(second.order_id, "a", PERP, NEW, ZERO, ZERO, D("0.5"), None, True)
    assert cut in result.updates
    assert "a" not in book.positions and book.positions["b"] == D("1.5")


def test_position_change_from_outside_cuts_reduce_only_orders() -> None:
    book = OrderBook(BACKPACK, PERP)
    book.apply_position_change("a", D(-3))
    book.apply_position_change("backstop", D(3))
    order = limit("a", BID, "3", "90.00", reduce_only=True)
    book.submit(order)
    [update] = book.apply_position_change("a", D(2))
    assert (update.order_id, update.remaining_quantity, update.modified) == (order.order_id, D(1), True)
    [update] = book.apply_position_change("a", D(1))
    assert (update.status, update.reason) == (EXPIRED, R.REDUCE_ONLY_NOT_REDUCED)


# ---------------------------------------------------------------------------------------
# Market orders and price bands


def test_market_buy_stops_at_the_impact_band() -> None:
    """Spec D13: best ask 100, max impact 1.03: it takes 100, 102 and 103 (inclusive), not 104."""
    book = book_with(*(limit("m", ASK, "1", p) for p in ("100.00", "102.00", "103.00", "104.00")))
    order = market("t", BID, "10")
    result = book.submit(order)
    assert [p for *_, p, _ in trades(result)] == [D(100), D(102), D(103)]
    update = final(result, order)
    assert (update.status, update.reason, update.executed_quantity) == (EXPIRED, R.PRICE_IMPACT, D(3))
    assert book.best_ask() == (D("104.00"), D(1))


def test_market_sell_stops_at_the_impact_band() -> None:
    book = book_with(*(limit("m", BID, "1", p) for p in ("100.00", "97.00", "96.99")))
    order = market("t", ASK, "10")
    result = book.submit(order)
    assert [p for *_, p, _ in trades(result)] == [D(100), D(97)]
    assert final(result, order).reason is R.PRICE_IMPACT


def test_market_order_that_runs_out_of_liquidity() -> None:
    book = book_with(limit("m", ASK, "1", "100.00"))
    order = market("t", BID, "2")
    update = final(book.submit(order), order)
    assert (update.status, update.reason, update.executed_quantity) == (EXPIRED, R.INSUFFICIENT_LIQUIDITY, D(1))
    empty = market("t", BID, "2")
    assert final(book.submit(empty), empty).reason is R.INSUFFICIENT_LIQUIDITY


def test_market_order_filled_when_quantity_reached() -> None:
    book = book_with(limit("m", ASK, "5", "100.00"))
    order = market("t", BID, "2")
    assert final(book.submit(order), order).status is FILLED


def test_limit_price_band_around_the_last_active_price() -> None:
    """Spec D13: last active 100 (the index before any trade): 75 and 125 accepted, beyond refused."""
    book = OrderBook(BACKPACK, SPOT)
    book.set_prices(index=D(100))
    for price in ("75.00", "125.00"):
        assert book.submit(limit("a", BID if price == "75.00" else ASK, "1", price, SPOT)).rejection is None
    for price in ("74.90", "125.10"):
        result = book.submit(limit("a", BID, "1", price, SPOT))
        assert result.rejection is not None and result.rejection.code is ErrorCode.INVALID_PRICE
        assert "too far from the last active price 100" in result.rejection.message
        assert result.updates == [] and result.fills == []


def test_limit_price_band_follows_the_last_trade() -> None:
    book = OrderBook(BACKPACK, SPOT)
    book.set_prices(index=D(100))
    book.submit(limit("m", ASK, "1", "120.00", SPOT))
    book.submit(limit("t", BID, "1", "120.00", SPOT))
    assert book.last_trade_price == D(120)
    assert book.submit(limit("a", ASK, "1", "150.00", SPOT)).rejection is None  # 120 x 1.25
    assert book.submit(limit("a", BID, "1", "89.99", SPOT)).rejection is not None  # below 120 x 0.75


def test_limit_price_band_follows_the_feed_after_a_move_without_trades() -> None:
    """A trade at 120, then the index falls to 70 with no trade since: the reference is the most
    recent price, so the band is 70 x [0.75, 1.25] = [52.50, 87.50]. A perp follows its mark."""
    book = OrderBook(BACKPACK, SPOT)
    book.set_prices(index=D(100))
    book.submit(limit("m", ASK, "1", "120.00", SPOT))
    book.submit(limit("t", BID, "1", "120.00", SPOT))
    book.set_prices(index=D(70))
    assert book.submit(limit("a", BID, "1", "52.50", SPOT)).rejection is None
    refused = book.submit(limit("a", BID, "1", "100.00", SPOT)).rejection
    assert refused is not None and "last active price 70" in refused.message
    perp = OrderBook(BACKPACK, PERP)
    perp.set_prices(mark=D(100), index=D(100))
    perp.set_prices(mark=D(60), index=D(100))
    assert perp.submit(limit("a", BID, "1", "59.00")).rejection is None


def test_mark_price_only_reference_and_no_reference() -> None:
    book = OrderBook(BACKPACK, SPOT)
    assert book.submit(limit("a", BID, "1", "1.00", SPOT)).rejection is None  # nothing known yet
    book.set_prices(mark=D(100))
    assert book.submit(limit("a", BID, "1", "74.99", SPOT)).rejection is not None


def test_perp_mean_mark_band_expires_orders_outside() -> None:
    """The mean-mark band of D13 on its own: mark 100 and no index yet (the premium band has
    nothing to measure against) -> window [90, 110]; outside expires PriceOutOfBounds."""
    book = OrderBook(BACKPACK, PERP)
    book.set_prices(mark=D(100))
    assert book.submit(limit("a", BID, "1", "90.00")).updates[0].status is NEW
    assert book.submit(limit("a", ASK, "1", "110.00")).updates[0].status is NEW
    for price, side in (("110.10", ASK), ("89.99", BID)):
        result = book.submit(limit("a", side, "1", price))
        assert result.rejection is None and result.fills == []
        assert [(u.status, u.reason) for u in result.updates] == [(EXPIRED, R.PRICE_OUT_OF_BOUNDS)]


def test_d13_perp_window_with_both_bands() -> None:
    """Spec D13 corrected for section 14: the F12 filter carries both futures bands.

    Mean-mark band: 100 x [0.9, 1.1] = [90, 110].
    Premium band: mean premium (mark - index) / index = (100 - 100) / 100 = 0; an order at p
    has premium (p - 100) / 100, which must lie in 0 -+ 0.05, so p in [95, 105].
    Both apply: [max(90, 95), min(110, 105)] = [95, 105]. So 94 and 106 are out, and so are
    D13's own edges 90 and 110; [90, 110] is the mean-mark band alone (test above).
    The mark band binds when it is the narrower one: mark 40 on index 100 gives
    40 x [0.9, 1.1] = [36, 44] against 40 -+ 0.05 x 100 = [35, 45], so the window is [36, 44].
    """
    book = OrderBook(BACKPACK, PERP)
    book.set_prices(mark=D(100), index=D(100))
    for price, side in (("95.00", BID), ("105.00", ASK)):
        assert book.submit(limit("a", side, "1", price)).updates[0].status is NEW
    for price, side in (("94.99", BID), ("105.01", ASK), ("94.00", BID), ("106.00", ASK),
                        ("90.00", BID), ("110.00", ASK)):
        result = book.submit(limit("a", side, "1", price))
        assert result.rejection is None and result.fills == []
        assert [(u.status, u.reason) for u in result.updates] == [(EXPIRED, R.PRICE_OUT_OF_BOUNDS)]
    skewed = OrderBook(BACKPACK, PERP)
    skewed.set_prices(mark=D(40), index=D(100))
    for price, side in (("36.00", BID), ("44.00", ASK)):
        assert skewed.submit(limit("a", side, "1", price)).updates[0].status is NEW
    for price, side in (("35.99", BID), ("44.01", ASK)):
        assert skewed.submit(limit("a", side, "1", price)).updates[0].reason is R.PRICE_OUT_OF_BOUNDS


def test_perp_premium_band() -> None:
    """Spec F11: mark 105 on index 100 is a 5% mean premium; tolerance 5% allows premiums 0%..10%."""
    book = OrderBook(BACKPACK, PERP)
    book.set_prices(mark=D(105), index=D(100))
    for price, side in (("100.00", BID), ("110.00", ASK)):
        assert book.submit(limit("a", side, "1", price)).updates[0].status is NEW
    for price, side in (("99.99", BID), ("110.01", ASK)):
        assert book.submit(limit("a", side, "1", price)).updates[0].reason is R.PRICE_OUT_OF_BOUNDS


# ---------------------------------------------------------------------------------------
# Funds limit and quote quantity


def test_funds_limit_caps_what_a_buy_pays() -> None:
    """250 USDC for 3 ETH against 1 @ 100 and 2 @ 101: 1 @ 100, then 150/101 -> 1.4851 @ 101."""
    book = book_with(limit("m", ASK, "1", "100.00", SPOT), limit("m", ASK, "2", "101.00", SPOT), symbol=SPOT)
    order = limit("t", BID, "3", "101.00", SPOT, funds_limit=D(250))
    result = book.submit(order)
    assert [q for *_, q in trades(result)] == [D(1), D("1.4851")]
    update = final(result, order)
    assert (update.status, update.reason) == (EXPIRED, R.INSUFFICIENT_FUNDS)
    assert update.executed_quote_quantity == D("249.9951") <= 250
    assert book.resting_quantity(order.order_id, order.account) is None  # a GTC buy out of funds does not rest


def test_funds_limit_reached_with_the_target_is_filled() -> None:
    book = book_with(limit("m", ASK, "2", "100.00", SPOT), symbol=SPOT)
    order = market("t", BID, "2", SPOT, funds_limit=D(200))
    assert final(book.submit(order), order).status is FILLED


def test_resting_bid_never_pays_more_than_its_funds_limit() -> None:
    """With 0.001 ticks a maker bid 0.0003 @ 100.001 costs 0.030001; funds of 0.03 buy 0.0002."""
    bid = limit("m", BID, "0.0003", "100.001", SPOT, funds_limit=D("0.03"))
    book = book_with(bid, profile=FINE_TICK, symbol=SPOT)
    seller = limit("t", ASK, "0.0003", "100.001", SPOT, time_in_force=IOC)
    result = book.submit(seller)
    assert [q for *_, q in trades(result)] == [D("0.0002")]
    assert result.fills[0].quote_quantity == D("0.020001")
    assert [(u.order_id, u.status, u.reason) for u in result.updates] == [
        (bid.order_id, EXPIRED, R.INSUFFICIENT_FUNDS),
        (seller.order_id, EXPIRED, R.IMMEDIATE_OR_CANCEL),
    ]


def test_market_buy_by_quote_quantity() -> None:
    """Spend 250 USDC: 1 @ 100, then floor(150/101, 0.0001) = 1.4851 @ 101; the rest buys no step."""
    book = book_with(limit("m", ASK, "1", "100.00", SPOT), limit("m", ASK, "2", "101.00", SPOT), symbol=SPOT)
    order = market("t", BID, None, SPOT, quote_quantity=D(250))
    result = book.submit(order)
    assert [q for *_, q in trades(result)] == [D(1), D("1.4851")]
    update = final(result, order)
    assert (update.status, update.executed_quote_quantity) == (FILLED, D("249.9951"))


def test_market_sell_by_quote_quantity_and_quantity_whichever_first() -> None:
    book = book_with(limit("m", BID, "5", "100.00", SPOT), symbol=SPOT)
    by_quote = market("t", ASK, "3", SPOT, quote_quantity=D(150))
    result = book.submit(by_quote)
    assert [q for *_, q in trades(result)] == [D("1.5")] and final(result, by_quote).status is FILLED
    by_quantity = market("t", ASK, "1", SPOT, quote_quantity=D(1000))
    result = book.submit(by_quantity)
    assert [q for *_, q in trades(result)] == [D(1)] and final(result, by_quantity).status is FILLED


def test_market_sell_by_quote_gives_no_more_base_than_its_account_locked() -> None:
    """Its account locked 1.5 ETH (``funds_limit``) to receive 300 USDC, expecting about 200 a
    coin; the bids stand lower, 1 @ 100 and 5 @ 98, inside the impact band from the best bid
    (down to 97). It sells 1 @ 100 and 0.5 @ 98 (149 USDC) and stops there: expired, out of
    funds, instead of selling the 3.0408 ETH the target would take. FOK, the same order is
    killed whole; a target of 149 it reaches exactly, Filled."""
    bids = (limit("m", BID, "1", "100.00", SPOT), limit("m", BID, "5", "98.00", SPOT))
    book = book_with(*bids, symbol=SPOT)
    ioc = market("t", ASK, None, SPOT, quote_quantity=D(300), funds_limit=D("1.5"))
    result = book.submit(ioc)
    assert [(p, q) for *_, p, q in trades(result)] == [(D(100), D(1)), (D(98), D("0.5"))]
    update = final(result, ioc)
    assert (update.status, update.reason, update.executed_quantity, update.executed_quote_quantity) == (
        EXPIRED, R.INSUFFICIENT_FUNDS, D("1.5"), D(149))
    book = book_with(*bids, symbol=SPOT)
    fok = market("t", ASK, None, SPOT, quote_quantity=D(300), funds_limit=D("1.5"), time_in_force=FOK)
    result = book.submit(fok)
    assert result.fills == [] and (final(result, fok).status, final(result, fok).reason) == (EXPIRED, R.FILL_OR_KILL)
    enough = market("t", ASK, None, SPOT, quote_quantity=D(149), funds_limit=D("1.5"), time_in_force=FOK)
    result = book_with(*bids, symbol=SPOT).submit(enough)
    assert final(result, enough).status is FILLED and final(result, enough).executed_quantity == D("1.5")


def test_quote_quantity_worth_less_than_the_minimum_is_refused() -> None:
    """0.009 USDC buys less than one 0.0001 ETH step at 100: refused instead of "Filled" with nothing."""
    book = book_with(limit("m", ASK, "1", "100.00", SPOT), symbol=SPOT)
    result = book.submit(market("t", BID, None, SPOT, quote_quantity=D("0.009")))
    assert result.rejection is not None and result.rejection.code is ErrorCode.INVALID_QUANTITY
    assert result.updates == [] and book.resting_quantity(result.order.order_id, result.order.account) is None


def test_fok_market_order_on_an_empty_side_is_killed() -> None:
    book = OrderBook(BACKPACK, PERP)
    order = market("t", BID, "1", time_in_force=FOK)
    assert [(u.status, u.reason) for u in book.submit(order).updates] == [(EXPIRED, R.FILL_OR_KILL)]


# ---------------------------------------------------------------------------------------
# Cancels, refusals and views


def test_cancel_and_cancel_all() -> None:
    a1, a2, b1 = limit("a", BID, "1", "99.00"), limit("a", ASK, "1", "101.00"), limit("b", BID, "2", "99.00")
    a3 = limit("a", BID, "1", "98.00")
    book = book_with(a1, a2, b1, a3)
    refused = book.cancel(b1.order_id, "a")
    assert isinstance(refused, Rejection) and refused.code is ErrorCode.RESOURCE_NOT_FOUND
    assert isinstance(book.cancel("nope", "a"), Rejection)
    update = book.cancel(a1.order_id, "a")
    assert isinstance(update, OrderUpdate) and (update.status, update.remaining_quantity) == (CANCELLED, ZERO)
    assert isinstance(book.cancel(a1.order_id, "a"), Rejection)
    assert book.best_bid() == (D("99.00"), D(2))  # the cancelled head no longer counts
    assert [u.order_id for u in book.cancel_all("a")] == [a2.order_id, a3.order_id]
    assert book.cancel_all("a") == [] and len(book) == 1 and book.open_orders("b") == [b1.order_id]
    assert book.resting_quantity(b1.order_id, b1.account) == b1.quantity
    assert book.resting_quantity(a1.order_id, a1.account) is None


def test_refusals_come_back_as_values() -> None:
    book = OrderBook(BACKPACK, PERP)
    off_tick = book.submit(limit("a", BID, "1", "100.001"))
    assert off_tick.rejection is not None and off_tick.rejection.code is ErrorCode.INVALID_PRICE
    first = limit("a", BID, "1", "100.00")
    book.submit(first)
    again = book.submit(first)
    assert again.rejection is not None and again.rejection.code is ErrorCode.INVALID_ORDER
    assert again.updates == [] and len(book) == 1


def test_depth_and_views_skip_cancelled_orders() -> None:
    orders = [limit("a", BID, "1", p) for p in ("99.00", "99.00", "98.00", "97.00")]
    orders += [limit("b", ASK, "2", p) for p in ("101.00", "102.00")]
    book = book_with(*orders)
    book.cancel(orders[1].order_id, "a")  # not the head: stays in its queue, dead
    book.cancel(orders[2].order_id, "a")  # a whole level goes
    assert book.depth(2) == ([(D("99.00"), D(1)), (D("97.00"), D(1))], [(D("101.00"), D(2)), (D("102.00"), D(2))])
    assert len(book) == 4 and book.resting_quantity(orders[1].order_id, orders[1].account) is None
    # The dead order behind the head must not be matched when the head goes.
    result = book.submit(market("c", ASK, "2"))
    assert [m for m, *_ in trades(result)] == [orders[0].order_id, orders[3].order_id]


def test_dead_orders_behind_a_long_lived_head_are_compacted() -> None:
    head = limit("a", BID, "1", "99.00")
    churn = [limit("b", BID, "1", "99.00") for _ in range(100)]
    last = limit("c", BID, "1", "99.00")
    book = book_with(head, *churn, last)
    for order in churn:
        book.cancel(order.order_id, "b")
    assert len(book._bids[D("99.00")]) <= 2 * 33  # internal: the queue does not keep 100 dead orders
    assert book.best_bid() == (D("99.00"), D(2))
    result = book.submit(market("t", ASK, "2"))
    assert [m for m, *_ in trades(result)] == [head.order_id, last.order_id]


# =======================================================================================
# Property tests against a naive reference matcher
#
# The reference keeps one plain list of resting orders, sorts it on every step, computes every
# limit with fractions, and decides FOK by running the order on a deep copy of itself and
# keeping the copy only if the order filled. It shares the rules with the book, not the code.


@dataclass
class RefOrder:
    order: Order
    remaining: Fraction
    seq: int = 0
    executed: Fraction = Fraction(0)
    executed_quote: Fraction = Fraction(0)


@dataclass
class Reference:
    is_perp: bool
    step: Fraction
    quote_step: Fraction
    impact: tuple[Fraction, Fraction]  # (min, max) multipliers
    min_quantity: Fraction
    resting: list[RefOrder] = field(default_factory=list)
    positions: dict[str, Fraction] = field(default_factory=dict)
    seq: int = 0
    fills: list[tuple] = field(default_factory=list)
    updates: list[tuple] = field(default_factory=list)

    @classmethod
    def for_market(cls, book: OrderBook) -> Reference:
        m = book.market
        quote_step = Fraction(book.profile.assets[m.quote].step)
        return cls(m.is_perp, Fraction(m.step_size), quote_step,
                   (Fraction(m.bands.min_impact_multiplier), Fraction(m.bands.max_impact_multiplier)),
                   Fraction(m.min_quantity))

    # -- helpers

    def legs(self, price: Fraction, qty: Fraction) -> tuple[Fraction, Fraction]:
        """(bid pays, ask receives): spot rounds each against its side, perps use the notional."""
        notional = price * qty
        if self.is_perp:
            return notional, notional
        return (math.ceil(notional / self.quote_step) * self.quote_step,
                math.floor(notional / self.quote_step) * self.quote_step)

    def fit(self, quote: Fraction, price: Fraction, paying: bool) -> Fraction:
        """Most steps whose leg stays within ``quote`` (a paying leg rounded up, else the notional)."""
        steps = math.floor(quote / (price * self.step))
        while steps > 0:
            qty = steps * self.step
            if (self.legs(price, qty)[0] if paying else price * qty) <= quote:
                break
            steps -= 1
        return steps * self.step

    def update(self, r: RefOrder, status: OrderStatus, reason: ExpiryReason | None = None,
               modified: bool = False) -> None:
        remaining = ZERO if status.is_final else r.remaining
        self.updates.append((r.order.order_id, status, reason, r.executed, r.executed_quote, remaining, modified))

    def end(self, r: RefOrder, status: OrderStatus, reason: ExpiryReason | None = None) -> None:
        self.resting = [x for x in self.resting if x is not r]
        self.update(r, status, reason)

    def book_side(self, side: Side) -> list[RefOrder]:
        mine = [r for r in self.resting if r.order.side is side]
        sign = -1 if side is BID else 1
        return sorted(mine, key=lambda r: (sign * r.order.price, r.seq))

    def rest(self, r: RefOrder, modified: bool) -> None:
        self.seq += 1
        r.seq = self.seq
        self.resting.append(r)
        self.update(r, NEW if r.executed == 0 else PARTIAL, None, modified)

    def move(self, account: str, delta: Fraction) -> None:
        position = self.positions.get(account, Fraction(0)) + delta
        self.positions[account] = position
        if position == 0:
            del self.positions[account]
        for r in sorted(self.resting, key=lambda r: r.seq):
            if r.order.account != account or not r.order.reduce_only:
                continue
            reduces = (position > 0 and r.order.side is ASK) or (position < 0 and r.order.side is BID)
            if not reduces:
                self.end(r, EXPIRED, R.REDUCE_ONLY_NOT_REDUCED)
            elif r.remaining > abs(position):
                r.remaining = abs(position)
                self.update(r, NEW if r.executed == 0 else PARTIAL, None, True)

    # -- operations

    def submit(self, order: Order) -> bool:
        """Play one order; False when it is refused before reaching the book."""
        if order.quote_quantity is not None:
            others = self.book_side(ASK if order.side is BID else BID)
            if others:
                best = Fraction(others[0].order.price)
                if self.fit(Fraction(order.quote_quantity), best, order.side is BID) < self.min_quantity:
                    return False
        quantity = None if order.quantity is None else Fraction(order.quantity)
        modified = False
        taker = RefOrder(order, quantity if quantity is not None else Fraction(10**30))
        if order.reduce_only:
            position = self.positions.get(order.account, Fraction(0))
            if position == 0 or (position > 0) == (order.side is BID):
                self.update(taker, EXPIRED, R.REDUCE_ONLY_NOT_REDUCED)
                return True
            if taker.remaining > abs(position):
                modified = quantity is not None
                taker.remaining = abs(position)
        if order.time_in_force is FOK:
            fills, updates = self.fills, self.updates
            self.fills, self.updates = [], []
            trial = copy.deepcopy(self)
            self.fills, self.updates = fills, updates
            trial.execute(copy.deepcopy(taker), modified)
            if trial.updates[-1][:2] == (order.order_id, FILLED):
                trial.fills, trial.updates = fills + trial.fills, updates + trial.updates
                self.__dict__.update(trial.__dict__)
            else:
                self.update(taker, EXPIRED, R.FILL_OR_KILL, modified)
            return True
        self.execute(taker, modified)
        return True

    def execute(self, taker: RefOrder, modified: bool) -> None:
        order = taker.order
        is_bid = order.side is BID
        opposite = ASK if is_bid else BID
        others = self.book_side(opposite)
        if order.price is None:
            if not others:
                self.update(taker, EXPIRED, R.INSUFFICIENT_LIQUIDITY, modified)
                return
            best = Fraction(others[0].order.price)
            limit_price = best * (self.impact[1] if is_bid else self.impact[0])
        else:
            limit_price = Fraction(order.price)
            best_price = others[0].order.price if others else None
            crosses = best_price is not None and (best_price <= order.price if is_bid else best_price >= order.price)
            if order.post_only and crosses:
                self.update(taker, EXPIRED, R.POST_ONLY_TAKER, modified)
                return
        quote_target = None if order.quote_quantity is None else Fraction(order.quote_quantity)
        funds = Fraction(order.funds_limit) if order.funds_limit is not None and is_bid else None
        stop = self.walk(taker, limit_price, quote_target, funds)
        if stop == "done":
            self.update(taker, FILLED, None, modified)
        elif stop in (R.SELF_TRADE_PREVENTION, R.INSUFFICIENT_FUNDS):
            self.update(taker, EXPIRED, stop, modified)
        elif order.price is None:
            reason = R.PRICE_IMPACT if stop == "limit" else R.INSUFFICIENT_LIQUIDITY
            self.update(taker, EXPIRED, reason, modified)
        elif order.time_in_force is GTC:
            self.rest(taker, modified)
        else:
            self.update(taker, EXPIRED, R.IMMEDIATE_OR_CANCEL, modified)

    def walk(self, taker: RefOrder, limit_price: Fraction, quote_target: Fraction | None,
             funds: Fraction | None) -> object:
        order = taker.order
        is_bid = order.side is BID
        while True:
            others = self.book_side(ASK if is_bid else BID)
            if not others:
                return "empty"
            maker = others[0]
            price = Fraction(maker.order.price)
            if (price > limit_price) if is_bid else (price < limit_price):
                return "limit"
            qty = taker.remaining
            if quote_target is not None:
                room = self.fit(quote_target - taker.executed_quote, price, is_bid)
                if room == 0:
                    return "done"
                qty = min(qty, room)
            if funds is not None:
                room = self.fit(funds - taker.executed_quote, price, True)
                if room == 0:
                    return R.INSUFFICIENT_FUNDS
                qty = min(qty, room)
            if maker.order.account == order.account:
                mode = order.self_trade_prevention
                if mode is STP.REJECT_TAKER:
                    return R.SELF_TRADE_PREVENTION
                self.end(maker, EXPIRED, R.SELF_TRADE_PREVENTION)
                if mode is STP.REJECT_BOTH:
                    return R.SELF_TRADE_PREVENTION
                continue
            maker_funds = maker.order.funds_limit if maker.order.side is BID else None
            if maker_funds is not None:
                room = self.fit(Fraction(maker_funds) - maker.executed_quote, price, True)
                if room == 0:
                    self.end(maker, EXPIRED, R.INSUFFICIENT_FUNDS)
                    continue
                qty = min(qty, room)
            qty = min(qty, maker.remaining)
            paid, received = self.legs(price, qty)
            maker_leg, taker_leg = (received, paid) if is_bid else (paid, received)
            self.fills.append((maker.order.order_id, order.order_id, price, qty, maker_leg, taker_leg))
            for r, leg in ((maker, maker_leg), (taker, taker_leg)):
                r.remaining -= qty
                r.executed += qty
                r.executed_quote += leg
            if maker.remaining == 0:
                self.end(maker, FILLED)
            if self.is_perp:
                self.move(maker.order.account, -qty if is_bid else qty)
                self.move(order.account, qty if is_bid else -qty)
            if taker.remaining == 0:
                return "done"

    def cancel(self, order_id: str, account: str) -> bool:
        for r in self.resting:
            if r.order.order_id == order_id and r.order.account == account:
                self.end(r, CANCELLED)
                return True
        return False

    def cancel_all(self, account: str) -> None:
        for r in sorted(self.resting, key=lambda r: r.seq):
            if r.order.account == account:
                self.end(r, CANCELLED)

    def depth(self) -> tuple[list[tuple[Fraction, Fraction]], list[tuple[Fraction, Fraction]]]:
        sides = []
        for side in (BID, ASK):
            levels: dict[Fraction, Fraction] = {}
            for r in self.book_side(side):
                price = Fraction(r.order.price)
                levels[price] = levels.get(price, Fraction(0)) + r.remaining
            sides.append(list(levels.items()))
        return sides[0], sides[1]


def norm(values: tuple) -> tuple:
    """Decimals as fractions, so the book's numbers compare with the reference's."""
    return tuple(Fraction(v) if isinstance(v, Decimal) else v for v in values)


def seen_fills(fills: list[Fill]) -> list[tuple]:
    out = []
    for maker, taker in zip(fills[::2], fills[1::2], strict=True):
        assert maker.is_maker and not taker.is_maker and maker.trade_id == taker.trade_id
        out.append((maker.order_id, taker.order_id, maker.price, maker.quantity,
                    maker.quote_quantity, taker.quote_quantity))
    return out


def seen_updates(updates: list[OrderUpdate]) -> list[tuple]:
    return [(u.order_id, u.status, u.reason, u.executed_quantity, u.executed_quote_quantity, u.remaining_quantity,
             u.modified) for u in updates]


@dataclass
class Ledger:
    """What the stream of fills and updates says about each order, checked against the book."""

    effective: dict[str, Decimal] = field(default_factory=dict)
    filled: dict[str, Decimal] = field(default_factory=dict)
    final: dict[str, OrderUpdate] = field(default_factory=dict)
    positions: dict[str, Decimal] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    last_trade_id: int = 0

    def submitted(self, order: Order, position_before: Decimal) -> None:
        if order.quantity is None or order.quote_quantity is not None:
            return  # a quote target can end the order Filled before its base quantity
        quantity = order.quantity
        if order.reduce_only and position_before != 0:
            quantity = min(quantity, abs(position_before))
        self.effective[order.order_id] = quantity
        self.owners[order.order_id] = order.account
        self.filled[order.order_id] = ZERO

    def record(self, fills: list[Fill], updates: list[OrderUpdate]) -> None:
        for f in fills:
            if f.order_id in self.filled:
                self.filled[f.order_id] += f.quantity
            self.positions[f.account] = self.positions.get(f.account, ZERO) + f.side.sign * f.quantity
        for maker in fills[::2]:
            assert maker.trade_id == self.last_trade_id + 1
            self.last_trade_id = maker.trade_id
        for u in updates:
            assert u.order_id not in self.final, f"{u.order_id} updated after its final update"
            if u.status.is_final:
                self.final[u.order_id] = u
            elif u.modified and u.order_id in self.effective:
                self.effective[u.order_id] = u.executed_quantity + u.remaining_quantity

    def check(self, book: OrderBook) -> None:
        for order_id, effective in self.effective.items():
            filled = self.filled[order_id]
            resting = book.resting_quantity(order_id, self.owners[order_id])
            end = self.final.get(order_id)
            if end is None:
                assert resting is not None, f"{order_id} vanished without a final update"
                assert filled + resting == effective
            else:
                assert resting is None and end.executed_quantity == filled
                if end.status is FILLED:
                    assert filled == effective
                else:
                    assert filled < effective


def check_book(book: OrderBook, ref: Reference, ledger: Ledger) -> None:
    bid, ask = book.best_bid(), book.best_ask()
    if bid is not None and ask is not None:
        assert bid[0] < ask[0], "crossed book"
    bids, asks = book.depth(1000)
    ref_bids, ref_asks = ref.depth()
    assert [(Fraction(p), Fraction(q)) for p, q in bids] == ref_bids
    assert [(Fraction(p), Fraction(q)) for p, q in asks] == ref_asks
    assert bid == (bids[0] if bids else None) and ask == (asks[0] if asks else None)
    assert len(book) == len(ref.resting)
    assert {a: Fraction(p) for a, p in book.positions.items()} == ref.positions
    assert sum(book.positions.values(), ZERO) == 0
    ledger.check(book)


ACCOUNTS = st.sampled_from(["a", "b", "c"])
SIDES = st.sampled_from([BID, ASK])
STPS = st.sampled_from(list(SelfTradePrevention))
TIFS = st.sampled_from([GTC, GTC, GTC, GTC, IOC, FOK])


def run(book: OrderBook, ops: list[tuple]) -> None:
    """Play ``ops`` into the book and the reference; compare and check invariants after each."""
    ref = Reference.for_market(book)
    ledger = Ledger()
    placed: list[Order] = []
    for op in ops:
        kind = op[0]
        start = len(ref.fills), len(ref.updates)
        got_fills: list[Fill] = []
        got_updates: list[OrderUpdate] = []
        if kind == "order":
            order: Order = attrs.evolve(op[1], order_id=f"p{next(_ids)}")
            position = book.positions.get(order.account, ZERO)
            result = book.submit(order)
            if not ref.submit(order):
                assert result.rejection is not None and result.rejection.code is ErrorCode.INVALID_QUANTITY
                assert result.fills == result.updates == [] and not book.resting_quantity(order.order_id, order.account)
                continue
            assert result.rejection is None, result.rejection
            ledger.submitted(order, position)
            got_fills, got_updates = result.fills, result.updates
            placed.append(order)
        elif kind == "cancel":
            if not placed:
                continue
            target = placed[op[1] % len(placed)]
            account = target.account if op[2] else op[3]
            got = book.cancel(target.order_id, account)
            if ref.cancel(target.order_id, account):
                assert isinstance(got, OrderUpdate)
                got_updates = [got]
            else:
                assert isinstance(got, Rejection) and got.code is ErrorCode.RESOURCE_NOT_FOUND
        elif kind == "cancel_all":
            got_updates = book.cancel_all(op[1])
            ref.cancel_all(op[1])
        else:  # a position transfer from outside the book (backstop / ADL)
            _, source, target_account, qty = op
            got_updates = book.apply_position_change(source, -qty) + book.apply_position_change(target_account, qty)
            ref.move(source, -Fraction(qty))
            ref.move(target_account, Fraction(qty))
            ledger.positions[source] = ledger.positions.get(source, ZERO) - qty
            ledger.positions[target_account] = ledger.positions.get(target_account, ZERO) + qty
        want_fills, want_updates = ref.fills[start[0]:], ref.updates[start[1]:]
        assert [norm(f) for f in seen_fills(got_fills)] == [norm(f) for f in want_fills]
        assert [norm(u) for u in seen_updates(got_updates)] == [norm(u) for u in want_updates]
        ledger.record(got_fills, got_updates)
        check_book(book, ref, ledger)
        if book.market.is_perp:
            assert {a: p for a, p in ledger.positions.items() if p} == book.positions


@st.composite
def perp_orders(draw: st.DrawFn) -> tuple:
    account, side, stp = draw(ACCOUNTS), draw(SIDES), draw(STPS)
    qty = D(draw(st.integers(1, 6))) / 2
    reduce_only = draw(st.integers(0, 2)) == 0
    tif = draw(TIFS)
    if draw(st.integers(0, 3)) == 0:
        return ("order", Order("x", account, PERP, side, OrderType.MARKET, qty, time_in_force=tif,
                               reduce_only=reduce_only, self_trade_prevention=stp))
    price = D(draw(st.integers(100, 106)))  # wider than the 3% impact band around 100
    post_only = tif is GTC and draw(st.integers(0, 4)) == 0
    return ("order", Order("x", account, PERP, side, OrderType.LIMIT, qty, price, time_in_force=tif,
                           post_only=post_only, reduce_only=reduce_only, self_trade_prevention=stp))


CANCELS = st.tuples(st.just("cancel"), st.integers(0, 200), st.integers(0, 5).map(bool), ACCOUNTS)
TRANSFERS = st.tuples(st.just("transfer"), ACCOUNTS, ACCOUNTS, st.integers(1, 4).map(lambda n: D(n) / 2))
PERP_OPS = st.one_of(
    perp_orders(), perp_orders(), perp_orders(), perp_orders(), TRANSFERS, CANCELS,
    st.tuples(st.just("cancel_all"), ACCOUNTS),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(PERP_OPS, min_size=20, max_size=80))
def test_perp_book_matches_the_reference(ops: list[tuple]) -> None:
    run(OrderBook(BACKPACK, PERP), ops)


@st.composite
def spot_orders(draw: st.DrawFn) -> tuple:
    """Fine-tick spot orders: quote legs round, funds limits and quote targets bite."""
    account, side, stp = draw(ACCOUNTS), draw(SIDES), draw(STPS)
    qty = D(draw(st.integers(1, 30))) / 10000
    tif = draw(TIFS)
    funds = D(draw(st.integers(1, 3000))) / 1000 if side is BID and draw(st.booleans()) else None
    if draw(st.integers(0, 2)) == 0:
        quote = D(draw(st.integers(1, 3000))) / 1000 if draw(st.booleans()) else None
        quantity = None if quote is not None and draw(st.booleans()) else qty
        return ("order", Order("x", account, SPOT, side, OrderType.MARKET, quantity, quote_quantity=quote,
                               time_in_force=tif, self_trade_prevention=stp, funds_limit=funds))
    price = D(99997 + draw(st.integers(0, 6))) / 1000
    post_only = tif is GTC and draw(st.integers(0, 4)) == 0
    return ("order", Order("x", account, SPOT, side, OrderType.LIMIT, qty, price, time_in_force=tif,
                           post_only=post_only, self_trade_prevention=stp, funds_limit=funds))


SPOT_OPS = st.one_of(spot_orders(), spot_orders(), spot_orders(), CANCELS, st.tuples(st.just("cancel_all"), ACCOUNTS))


@settings(max_examples=200, deadline=None)
@given(st.lists(SPOT_OPS, min_size=20, max_size=80))
def test_spot_book_matches_the_reference(ops: list[tuple]) -> None:
    run(OrderBook(FINE_TICK, SPOT), ops)


@pytest.mark.parametrize("symbol", [PERP, SPOT])
def test_fee_income_adds_up(symbol: str) -> None:
    """Every fee and rounding remainder lands in fee_income, per asset."""
    book = OrderBook(BACKPACK, symbol)
    for i in range(5):
        book.submit(limit("m", ASK, "0.3", f"{100 + i}.00", symbol))
    result = book.submit(market("t", BID, "1.3", symbol))
    totals: dict[str, Decimal] = {}
    for f in result.fills:
        totals[f.fee_asset] = totals.get(f.fee_asset, ZERO) + f.fee
    assert book.fee_income == totals


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_long_stream_on_few_levels_matches_the_reference(seed: int) -> None:
    """Long queues with churn: cancels of recent orders pile up dead entries behind live heads,
    so levels get compacted; rare takers then walk the compacted queues."""
    rng = random.Random(seed)
    ops: list[tuple] = []
    placed = 0
    for _ in range(2000):
        roll = rng.random()
        account = rng.choice("abcdef")
        side = rng.choice([BID, ASK])
        if roll < 0.5:
            price = D(rng.choice([99, 100]) if side is BID else rng.choice([101, 102]))
            qty = D(rng.randint(1, 4)) / 2
            stp = rng.choice(list(SelfTradePrevention))
            order = Order("x", account, PERP, side, OrderType.LIMIT, qty, price, self_trade_prevention=stp)
            ops.append(("order", order))
            placed += 1
        elif roll < 0.97:
            ops.append(("cancel", rng.randrange(max(0, placed - 40), placed + 1), True, account))
        else:
            ops.append(("order", Order("x", account, PERP, side, OrderType.MARKET, D(rng.randint(1, 12)) / 2)))
            placed += 1
    run(OrderBook(BACKPACK, PERP), ops)
