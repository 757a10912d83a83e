"""Liquidation over random accounts and price shocks, through the direct engine.

In each market the traders are all long or all short and the market maker's liquidity for
their liquidation sits exactly at the mark (random depth, sometimes too thin), so the price a
book step acts on is the mark itself. Properties, checked after every loop:

* a step never raises MMR at the price it acted on (``backpack`` profile: trading fees of
  0.05% are far below every maintenance fraction; the 1% fee profile breaks this on purpose,
  see exchange/liquidation.py);
* reduce-only never flips a position: liquidated positions only shrink toward zero;
* liquidation acts only while MMR >= 100% and stops as soon as it is below;
* every asset is conserved across sub-accounts, providers, pools and the fund, and perp
  positions sum to zero in every market.
"""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from exchange import margin
from exchange.decimals import floor_to
from exchange.engine import Exchange
from exchange.ledger import Settings
from exchange.orders import Side
from exchange.profile import load_profile

D = Decimal
PROFILE = load_profile("backpack")
MARKETS = {"BTC_USDC_PERP": ("BTC", 100000), "ETH_USDC_PERP": ("ETH", 4000), "SOL_USDC_PERP": ("SOL", 150)}


@st.composite
def worlds(draw):
    directions = {m: draw(st.sampled_from([1, -1])) for m in MARKETS}
    traders = []
    for i in range(draw(st.integers(1, 3))):
        legs = [symbol for symbol in MARKETS if draw(st.booleans())] or ["BTC_USDC_PERP"]
        imr = D(draw(st.integers(30, 95))) / 100  # how much of the allowed leverage is used
        leverage = draw(st.sampled_from([10, 20, 50, 50]))
        traders.append((f"t{i}", leverage, draw(st.integers(1000, 50000)), legs, imr))
    # Per second and market: mostly a small drift against the traders with noise (at 20x the
    # window from MMR 100% to 200% is about half a percent of price), sometimes a gap of up to
    # 12%, so paths reach stage 1, the backstop and ADL.
    drift = st.floats(-0.01, 0.001)
    shocks = draw(st.lists(st.fixed_dictionaries({m: drift for m in MARKETS}), min_size=5, max_size=40))
    if draw(st.booleans()):
        when = draw(st.integers(0, len(shocks) - 1))
        shocks[when][draw(st.sampled_from(sorted(MARKETS)))] = draw(st.floats(-0.12, -0.01))
    depth = draw(st.sampled_from([D(500), D(20000), D(10**9)]))  # USD of liquidity at the mark
    capacity = draw(st.sampled_from([None, D(1000), D(50000), D(10_000_000)]))
    return directions, traders, shocks, depth, capacity


def build(directions, traders, capacity) -> Exchange:
    ex = Exchange(PROFILE)
    for symbol, (asset, price) in MARKETS.items():
        ex.set_price(asset, D(price))
    for name in ("mm", "blp"):
        ex.add_account(name, settings=Settings(leverage_limit=D(50)))
        ex.deposit(name, "USDC", D(100_000_000))
    if capacity is not None:
        ex.add_backstop("blp", {symbol: capacity for symbol in MARKETS})
    for name, leverage, usdc, legs, imr in traders:
        ex.add_account(name, settings=Settings(leverage_limit=D(leverage)))
        ex.deposit(name, "USDC", D(usdc))
        for symbol in legs:
            market = PROFILE.markets[symbol]
            price = ex.prices[symbol]
            side = Side.BID if directions[symbol] > 0 else Side.ASK
            # A position using `imr` of what the leverage limit allows, split over the legs (the
            # market's own IMF may allow less: the pre-trade check then refuses and nothing trades).
            quantity = floor_to(D(usdc) * D(leverage) * imr / len(legs) / price, market.step_size)
            if quantity >= market.min_quantity:
                assert ex.order("mm", symbol, side.opposite, quantity, price).accepted
                ex.order(name, symbol, side, quantity, price)
                ex.cancel_all("mm", [symbol])
    return ex


def quote_at_mark(ex: Exchange, directions, depth: D) -> None:
    """The market maker's liquidity where liquidations will trade: ``depth`` USD at the mark."""
    ex.cancel_all("mm")
    for symbol, direction in directions.items():
        market = PROFILE.markets[symbol]
        mark = floor_to(ex.prices[symbol], market.tick_size)
        ex.set_price(symbol, mark)
        side = Side.BID if direction > 0 else Side.ASK  # longs sell into bids, shorts buy asks
        quantity = max(market.min_quantity, floor_to(depth / mark, market.step_size))
        ex.order("mm", symbol, side, quantity, mark)


@settings(max_examples=200, deadline=None)
@given(worlds())
def test_liquidation_properties(world):
    directions, traders, shocks, depth, capacity = world
    ex = build(directions, traders, capacity)
    assert ex.invariant_violations() == []
    signs = {
        (a.id, s): p.quantity > 0 for a in ex.accounts.values() for s, p in a.positions.items() if a.id.startswith("t")
    }
    second = 0
    for shock in shocks + [{}] * 10:  # then ten quiet seconds for running liquidations to finish
        for symbol, move in shock.items():
            asset = MARKETS[symbol][0]
            factor = 1 + D(repr(move)) * directions[symbol]  # a negative move hurts the traders
            ex.set_price(asset, floor_to(ex.prices[asset] * factor, PROFILE.markets[symbol].tick_size))
        quote_at_mark(ex, directions, depth)
        second += 1
        ex.advance_to(second * 1000)
        assert ex.invariant_violations() == []
        for (account, symbol), was_long in signs.items():
            pos = ex.accounts[account].positions.get(symbol)
            assert pos is None or (pos.quantity > 0) == was_long, (account, symbol)
    for account, history in ex.liquidation_history.items():
        for previous, step in zip(history, history[1:]):
            if step.stage == "book":
                assert step.mmr_before >= 1, step
                assert step.mmr_after <= step.mmr_before, step
            if previous.stage == "healthy":
                assert step.stage == "start", step
        for step in history:
            if step.stage == "healthy":
                assert step.mmr_after < 1
        # After the quiet seconds nothing unhealthy is left unattended.
        t = margin.totals(ex.accounts[account])
        assert account in ex.liquidations or t.maintenance == 0 or t.mmr < 1
