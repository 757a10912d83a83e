"""Properties of the margin model that must hold on every account, not just the spec's vectors."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import event, given, settings
from hypothesis import strategies as st

from exchange import margin
from exchange.decimals import floor_to
from exchange.ledger import Settings, SubAccount
from exchange.orders import Order, OrderType, Rejection, Side
from exchange.pretrade import Accepted, check_order, place_order
from exchange.profile import load_profile

from .conftest import perp_fill
from .test_pretrade import snapshot

D = Decimal
PROFILE = load_profile("backpack")
PERPS = {"BTC_USDC_PERP": 100000, "ETH_USDC_PERP": 4000, "SOL_USDC_PERP": 150}
SPOTS = {"BTC": 100000, "ETH": 4000, "SOL": 150}


def _scaled(base: int, factor: float) -> Decimal:
    return floor_to(D(base) * D(repr(factor)), D("0.01"))


@st.composite
def accounts(draw) -> SubAccount:
    """A random sub-account: USDC and maybe other collateral, lends, a USDC borrow, up to three
    perp positions opened at one price and marked at another, and risk-increasing orders."""
    account = SubAccount(
        "p", PROFILE, settings=Settings(leverage_limit=D(draw(st.integers(1, 50))))
    )
    account.deposit("USDC", D(draw(st.integers(0, 200000))))
    for asset, price in SPOTS.items():
        account.set_mark(asset, _scaled(price, draw(st.floats(0.3, 2.0))))
        if draw(st.booleans()):
            account.deposit(asset, D(draw(st.integers(0, 2000))) / 100)
    if draw(st.booleans()):
        account.lends["USDC"] = D(draw(st.integers(0, 50000)))
    if draw(st.booleans()):
        account.borrows["USDC"] = D(draw(st.integers(1, 50000)))
    for symbol, price in PERPS.items():
        market = PROFILE.markets[symbol]
        account.set_mark(symbol, _scaled(price, draw(st.floats(0.3, 2.0))))
        if draw(st.booleans()):
            steps = draw(st.integers(1, 10**6)) * draw(st.sampled_from((1, -1)))
            entry = floor_to(_scaled(price, draw(st.floats(0.5, 1.5))), market.tick_size)
            quantity = abs(steps) * market.step_size * (10 if symbol != "BTC_USDC_PERP" else 1)
            side = Side.BID if steps > 0 else Side.ASK
            perp_fill(PROFILE, account, symbol, side, quantity, entry, fee="0")
        if draw(st.booleans()):
            bids = D(draw(st.integers(0, 1000))) * market.step_size * 100
            asks = D(draw(st.integers(0, 1000))) * market.step_size * 100
            if bids or asks:
                account.order_exposure[symbol] = [bids, asks]
    return account


@st.composite
def perp_orders(draw, account: SubAccount) -> Order:
    symbol = draw(st.sampled_from(sorted(PERPS)))
    market = PROFILE.markets[symbol]
    quantity = D(draw(st.integers(1, 10**7))) * market.step_size
    price = floor_to(account.marks[symbol] * D(repr(draw(st.floats(0.8, 1.2)))), market.tick_size)
    return Order(
        "x", account.id, symbol, draw(st.sampled_from(Side)), OrderType.LIMIT, quantity,
        max(price, market.tick_size), reduce_only=draw(st.booleans()),
    )


@settings(max_examples=300, deadline=None)
@given(accounts())
def test_imr_at_100_percent_exactly_when_available_is_gone(account):
    s = margin.summarize(account)
    t = margin.totals(account)
    assert (s.imr >= 1) == (s.net_equity_available <= 0)
    assert (t.net_equity, t.locked, t.maintenance) == (s.net_equity, s.net_equity_locked, s.maintenance_requirement)
    assert s.net_equity == s.assets_value - s.liabilities_value


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_orders_that_do_not_add_risk_never_raise_imr(data):
    """Reduce-only orders leave IMR unchanged; any order the check classifies as not lowering
    available equity does not raise IMR (perp orders do not move equity at the mark)."""
    account = data.draw(accounts())
    order = data.draw(perp_orders(account))
    result = check_order(account, order)
    if order.reduce_only:
        assert isinstance(result, Accepted) and result.evaluation is None
        return
    assert isinstance(result, (Accepted, Rejection))
    ev = margin.evaluate_change(
        account,
        margin.Change(perp=(order.market, D(0), order.quantity if order.side is Side.BID else D(0),
                            order.quantity if order.side is Side.ASK else D(0))),
    )
    if ev.after.available >= ev.before.available:
        assert ev.after.imr <= ev.before.imr
        assert isinstance(result, Accepted)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_reducing_fill_at_the_mark_never_raises_imr(data):
    """Closing part of a position at the mark, fee aside, moves PnL from unrealized to the
    USDC balance (equity unchanged) and shrinks the exposure: IMR cannot rise."""
    account = data.draw(accounts())
    account.order_exposure.clear()
    account.risk_cache.clear()
    if not account.positions:
        return
    symbol = data.draw(st.sampled_from(sorted(account.positions)))
    market = PROFILE.markets[symbol]
    pos = account.positions[symbol]
    steps = int(abs(pos.quantity) / market.step_size)
    close = data.draw(st.integers(1, steps)) * market.step_size
    side = Side.ASK if pos.quantity > 0 else Side.BID
    mark = floor_to(account.marks[symbol], market.tick_size)
    account.set_mark(symbol, mark)
    before = margin.totals(account)
    perp_fill(PROFILE, account, symbol, side, close, mark, fee="0")
    after = margin.totals(account)
    assert after.locked <= before.locked
    assert after.imr <= before.imr
    assert abs(after.net_equity - before.net_equity) < D("0.000001")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_rejected_order_changes_nothing(data):
    account = data.draw(accounts())
    if data.draw(st.booleans()):
        order = data.draw(perp_orders(account))
    else:
        symbol = data.draw(st.sampled_from(["BTC_USDC", "ETH_USDC", "SOL_USDC"]))
        market = PROFILE.markets[symbol]
        quantity = D(data.draw(st.integers(1, 10**5))) * market.step_size * 10
        price = floor_to(account.marks[market.base] * D(repr(data.draw(st.floats(0.8, 1.2)))), market.tick_size)
        order = Order("y", account.id, symbol, data.draw(st.sampled_from(Side)), OrderType.LIMIT, quantity, price)
    before = snapshot(account)
    result = place_order(account, order)
    event(f"{type(result).__name__} {getattr(result, 'code', '')}")
    if isinstance(result, Rejection):
        assert snapshot(account) == before
