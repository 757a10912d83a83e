"""Random sequences of lend/borrow/repay/redeem/trade/price moves/time through the direct engine.

After every step: each asset is conserved across sub-accounts, pools, fee pots and the fund;
pools balance and agree with the accounts; perp positions sum to zero; no balance is negative
without a borrow. Each funding interval's payments sum to zero. A refused action changes
nothing anywhere.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.engine import Exchange
from exchange.ledger import Settings
from exchange.lending import Grant
from exchange.orders import Rejection, Side
from exchange.profile import load_profile

D = Decimal
PROFILE = load_profile("backpack")
TRADERS = ("a", "b", "c", "d")
ASSETS = ("USDC", "SOL", "BTC")


def venue(flags) -> Exchange:
    ex = Exchange(PROFILE)
    ex.set_price("BTC", D(100000))
    ex.set_price("SOL", D(100))
    ex.add_account("mm", settings=Settings(leverage_limit=D(10)))
    ex.deposit("mm", "USDC", D(10_000_000))
    ex.deposit("mm", "SOL", D(10_000))
    ex.deposit("mm", "BTC", D(100))
    for name, (auto_lend, auto_repay, auto_borrow) in zip(TRADERS, flags):
        ex.add_account(name, settings=Settings(D(10), auto_lend, auto_borrow, auto_repay))
        ex.deposit(name, "USDC", D(50_000))
        ex.deposit(name, "SOL", D(100))
    # Lenders so that borrowing has supply.
    ex.lend("mm", "SOL", D(5000))
    ex.lend("mm", "BTC", D(50))
    return ex


def state(ex: Exchange) -> str:
    accounts = [
        (a.id, a.balances, a.lends, a.borrows, a.positions, a.open_orders, a.unsettled_equity)
        for a in ex.accounts.values()
    ]
    pools = [(p.asset, p.lent, p.borrowed, p.cash, p.fee_income, p.lenders, p.borrowers) for p in ex.pools.values()]
    return repr((accounts, pools, ex.fund))


quantity = st.sampled_from([D("0.5"), D(1), D(3), D(10), D(250), D(4000), D(90000)])
actions = st.one_of(
    st.tuples(st.just("lend"), st.sampled_from(TRADERS), st.sampled_from(ASSETS), quantity),
    st.tuples(st.just("redeem"), st.sampled_from(TRADERS), st.sampled_from(ASSETS), quantity),
    st.tuples(st.just("borrow"), st.sampled_from(TRADERS), st.sampled_from(ASSETS), quantity),
    st.tuples(st.just("repay"), st.sampled_from(TRADERS), st.sampled_from(ASSETS), quantity),
    st.tuples(st.just("perp"), st.sampled_from(TRADERS), st.sampled_from(Side), st.sampled_from([D("0.01"), D("0.2"), D(1)])),
    st.tuples(st.just("spot"), st.sampled_from(TRADERS), st.sampled_from(Side), st.sampled_from([D(1), D(20), D(400)])),
    st.tuples(st.just("price"), st.sampled_from(["BTC", "SOL", "BTC_USDC_PERP"]), st.floats(0.7, 1.3), st.none()),
    st.tuples(st.just("time"), st.sampled_from([1_000, 10_000, 600_000, 3_600_000]), st.none(), st.none()),
)


@settings(max_examples=200, deadline=None)
@given(
    flags=st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=4, max_size=4),
    steps=st.lists(actions, min_size=1, max_size=25),
)
def test_random_sequences_keep_every_invariant(flags, steps):
    ex = venue(flags)
    assert ex.invariant_violations() == []
    for step in steps:
        kind = step[0]
        before = state(ex)
        result = None
        cleanup = None
        if kind in ("lend", "redeem", "borrow", "repay"):
            _, who, asset, qty = step
            result = getattr(ex, kind)(who, asset, qty)
            assert isinstance(result, (Grant, Rejection))
        elif kind == "perp":
            _, who, side, qty = step
            mark = ex.prices["BTC_USDC_PERP"]
            price = mark - mark % D("0.1")
            # The market maker rests the other side at the mark; the trader takes it.
            assert ex.order("mm", "BTC_USDC_PERP", side.opposite, qty, price).accepted
            before = state(ex)
            result = ex.order(who, "BTC_USDC_PERP", side, qty, price)
            cleanup = "BTC_USDC_PERP"
        elif kind == "spot":
            _, who, side, qty = step
            price = ex.prices["SOL"] - ex.prices["SOL"] % D("0.01")
            assert ex.order("mm", "SOL_USDC", side.opposite, qty, price).accepted
            before = state(ex)
            result = ex.order(who, "SOL_USDC", side, qty, price, auto_borrow=True)
            cleanup = "SOL_USDC"
        elif kind == "price":
            _, symbol, factor, _ = step
            ex.set_price(symbol, (ex.prices[symbol] * D(repr(factor))).quantize(D("0.1")))
        else:
            ex.advance_to(ex.now_ms + step[1])
        refused = isinstance(result, Rejection) or getattr(result, "rejection", None) is not None
        if refused:
            assert state(ex) == before, step
        if cleanup is not None:
            ex.cancel_all("mm", [cleanup])  # the maker's unfilled quote goes away
        assert ex.invariant_violations() == [], step
    by_interval = defaultdict(lambda: D(0))
    for event in ex.events:
        if event["event"] == "funding_payment":
            by_interval[(event["t"], event["market"])] += event["amount"]
    assert all(total == 0 for total in by_interval.values())
