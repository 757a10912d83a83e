"""Rules no other test pinned, found by the mutation score (bench/mutation.py): each test fails
on the named mutant and passes on the venue."""

from __future__ import annotations

from decimal import Decimal

from exchange.engine import Exchange
from exchange.ledger import Settings, SubAccount
from exchange.limits import leverage_refusal
from exchange.liquidation import AdlCandidate, adl_queue
from exchange.margin import totals
from exchange.orders import ErrorCode, Fill, Order, OrderType, Origin, Side
from exchange.pretrade import Accepted, check_order
from exchange.profile import load_profile
from exchange.settlement import plan_reconciliation

D = Decimal
PROFILE = load_profile("backpack")


def test_adl_ranks_losing_positions_by_pnl_over_leverage():
    """A liquidated long (side +1) is deleveraged against shorts. Scores (spec 11.4):

    * ``winner``: PnL +1,000 on 10,000 entry = +10%, position 9,000 at mark on equity 3,000 =
      3x, score +0.3: first.
    * ``loser-10x``: PnL -1,000 on 10,000 = -10%, 11,000 on equity 1,100 = 10x, score -0.01.
    * ``loser-2x``: PnL -10%, 11,000 on equity 5,500 = 2x, score -0.05: last. Among losers the
      more leveraged goes first (``liquidation-adl-losers-by-leverage`` ranks it last).
    * ``long``: same side as the liquidated position, never in the queue."""
    candidates = [
        AdlCandidate("loser-2x", D(-110), D(-1000), D(10000), D(5500), D(100)),
        AdlCandidate("winner", D(-90), D(1000), D(10000), D(3000), D(100)),
        AdlCandidate("long", D(50), D(-500), D(5000), D(1000), D(100)),
        AdlCandidate("loser-10x", D(-110), D(-1000), D(10000), D(1100), D(100)),
    ]
    queue = adl_queue(candidates, liquidated_side_sign=1)
    assert [c.account for c in queue] == ["winner", "loser-10x", "loser-2x"]
    assert [c.score for c in queue] == [D("0.3"), D("-0.01"), D("-0.05")]


def test_an_order_the_book_refuses_releases_its_reservation():
    """A spot bid for 2 SOL at 300 with SOL's index at 100: the pre-trade check locks 600 USDC,
    then the book refuses the price (band 75-125, 0.75x-1.25x the index) and the lock comes back
    in full: 1,000 available, nothing locked, no order left open."""
    ex = Exchange(PROFILE)
    ex.set_price("SOL", D(100))
    ex.add_account("buyer")
    ex.deposit("buyer", "USDC", D(1000))
    outcome = ex.order("buyer", "SOL_USDC", Side.BID, D(2), D(300))
    assert outcome.rejection is not None and outcome.rejection.code is ErrorCode.INVALID_PRICE
    assert outcome.rejection.details["max_price"] == D(125)
    buyer = ex.accounts["buyer"]
    assert (buyer.balances["USDC"].available, buyer.balances["USDC"].locked) == (D(1000), D(0))
    assert buyer.open_orders == {}
    placed = [e for e in ex.events if e["event"] == "order_placed" and e["actor"] == "account:buyer"]
    assert len(placed) == 1  # it was accepted by the account, then refused by the book
    assert ex.invariant_violations() == []


def _long(account: SubAccount, quantity: Decimal, price: Decimal) -> None:
    market = PROFILE.markets["BTC_USDC_PERP"]
    account.apply_fill(Fill(trade_id=1, market=market.symbol, order_id="o", account=account.id, side=Side.BID,
                            price=price, quantity=quantity, quote_quantity=price * quantity, fee=D(0),
                            fee_asset="USDC", is_maker=True, origin=Origin.USER), market)


def test_continuous_realization_rounds_down_against_the_account():
    """0.00001 BTC bought at 100,000 (cost 1 USDC). At mark 100,001.57 the unrealized PnL is
    exactly 0.0000157 USDC: 0.000015 is realized (rounded down to the 0.000001 step) and
    0.0000007 stays in the basis. At mark 99,998.43 it is -0.0000157: -0.000016 is realized
    (rounded toward minus infinity, against the account) and +0.0000003 stays."""
    for mark, realized, left in ((D("100001.57"), D("0.000015"), D("0.0000007")),
                                 (D("99998.43"), D("-0.000016"), D("0.0000003"))):
        account = SubAccount("a", PROFILE)
        account.deposit("USDC", D(100))
        _long(account, D("0.00001"), D(100000))
        account.set_mark("BTC_USDC_PERP", mark)
        assert account.realize_pnl() == [("BTC_USDC_PERP", realized)]
        pos = account.positions["BTC_USDC_PERP"]
        assert pos.quantity * mark - pos.net_cost == left
        assert account.balances["USDC"].available == D(100) + realized


def test_a_resting_reduce_only_order_is_never_exposure():
    """Spec 7: reduce-only orders never add risk. A 0.1 BTC long with a reduce-only ask for 0.1
    resting, then closed by another sell before the book cuts the ask: with no position the
    account needs no margin at all (IMR requirement 0, maintenance 0), though the ask still rests."""
    account = SubAccount("a", PROFILE)
    account.deposit("USDC", D(10000))
    account.set_mark("BTC_USDC_PERP", D(100000))
    _long(account, D("0.1"), D(100000))
    ask = Order("ro", "a", "BTC_USDC_PERP", Side.ASK, OrderType.LIMIT, D("0.1"), D(101000), reduce_only=True)
    account.reserve(ask, None, D(0))
    market = PROFILE.markets["BTC_USDC_PERP"]
    account.apply_fill(Fill(trade_id=2, market=market.symbol, order_id="other", account="a", side=Side.ASK,
                            price=D(100000), quantity=D("0.1"), quote_quantity=D(10000), fee=D(0), fee_asset="USDC",
                            is_maker=True, origin=Origin.USER), market)
    assert "ro" in account.open_orders and account.positions == {}
    t = totals(account)
    assert (t.locked, t.maintenance) == (D(0), D(0))


def test_a_spot_limit_ask_is_valued_at_its_limit():
    """Selling 2 of 5 SOL at a limit of 110 with SOL marked at 100: the margin check values the
    sale at the limit, so the account after it is exactly one holding 3 SOL and 1,220 USDC (not
    the 1,200 a valuation at the mark would give)."""
    account = SubAccount("a", PROFILE)
    account.deposit("USDC", D(1000))
    account.deposit("SOL", D(5))
    account.set_mark("SOL", D(100))
    accepted = check_order(account, Order("s", "a", "SOL_USDC", Side.ASK, OrderType.LIMIT, D(2), D(110)))
    assert isinstance(accepted, Accepted) and (accepted.lock_asset, accepted.lock_amount) == ("SOL", D(2))
    after = SubAccount("b", PROFILE)
    after.deposit("USDC", D(1220))
    after.deposit("SOL", D(3))
    after.set_mark("SOL", D(100))
    assert accepted.evaluation is not None and accepted.evaluation.after.net_equity == totals(after).net_equity


def test_the_leverage_limit_cannot_drop_below_what_the_positions_need():
    """10,000 USDC and a 0.5 BTC long at 100,000 (notional 50,000). At 2x the IMF floor is 50%:
    25,000 of initial margin on 10,000 of equity, available -15,000, refused. At 5x the floor is
    20%: 10,000, available exactly 0, allowed. Raising the limit is always allowed."""
    account = SubAccount("a", PROFILE)
    account.deposit("USDC", D(10000))
    account.set_mark("BTC_USDC_PERP", D(100000))
    _long(account, D("0.5"), D(100000))
    refused = leverage_refusal(account, D(2))
    assert refused is not None and refused.code is ErrorCode.INSUFFICIENT_MARGIN
    assert refused.details["available_after"] == D(-15000)
    assert "a 2x limit would take available equity to -15000" in refused.message
    assert leverage_refusal(account, D(5)) is None and leverage_refusal(account, D(20)) is None
    assert account.settings.leverage_limit == PROFILE.default_leverage_limit


def test_a_spot_buyers_fee_is_rounded_up_in_the_base_asset():
    """With a taker fee of 0.12345% the buyer of 0.01 SOL owes exactly 0.000012345 SOL, off the
    0.00000001 grid: it pays 0.00001235 (rounded up, against it) and receives 0.00998765. On the
    shipped fees every spot fee lands on the grid, so only a finer rate shows the rounding."""
    profile = load_profile("backpack", {"markets": {"SOL_USDC": {"taker_fee": "0.0012345"}}})
    ex = Exchange(profile)
    ex.set_price("SOL", D(100))
    ex.add_account("mm")
    ex.deposit("mm", "SOL", D(1))
    assert ex.order("mm", "SOL_USDC", Side.ASK, D(1), D(100)).accepted
    ex.add_account("buyer")
    ex.deposit("buyer", "USDC", D(10))
    outcome = ex.order("buyer", "SOL_USDC", Side.BID, D("0.01"), D(100))
    assert [(f.fee, f.fee_asset) for f in outcome.fills] == [(D("0.00001235"), "SOL")]
    assert ex.accounts["buyer"].balances["SOL"].available == D("0.00998765")


def test_pnl_realized_on_a_partial_close_is_rounded_down():
    """Bought 0.00001 BTC at 100,000 and 0.00002 at 100,000.1: cost 3.000002 USDC. Selling
    0.00001 at 100,000 closes a third of it: exactly 1 - 1.000000666... = -0.000000666... USDC,
    realized as -0.000001 (rounded down, against the account); the cost basis left is 2.000001."""
    account = SubAccount("a", PROFILE)
    account.deposit("USDC", D(100))
    _long(account, D("0.00001"), D(100000))
    _long(account, D("0.00002"), D("100000.1"))
    market = PROFILE.markets["BTC_USDC_PERP"]
    effect = account.apply_fill(Fill(trade_id=3, market=market.symbol, order_id="s", account="a", side=Side.ASK,
                                     price=D(100000), quantity=D("0.00001"), quote_quantity=D(1), fee=D(0),
                                     fee_asset="USDC", is_maker=True, origin=Origin.USER), market)
    assert effect.realized_pnl == D("-0.000001")
    assert account.positions["BTC_USDC_PERP"].net_cost == D("2.000001")
    assert account.balances["USDC"].available == D("99.999999")


def test_a_redeem_the_pool_cannot_pay_says_what_it_holds():
    """100 USDC lent, 90 borrowed (the entry fee adds to the debt, not the cash): the pool holds
    10. A redeem of 20 is refused for supply,
    naming what it needs and what the pool holds (not a utilization figure)."""
    ex = Exchange(PROFILE)
    for name, deposit in (("lender", D(100)), ("borrower", D(1000))):
        ex.add_account(name)
        ex.deposit(name, "USDC", deposit)
    ex.lend("lender", "USDC", D(100))
    ex.borrow("borrower", "USDC", D(90))
    pool = ex.pools["USDC"]
    assert pool.cash == D(10)
    refused = pool.redeem("lender", D(20))
    assert refused.code is ErrorCode.INSUFFICIENT_SUPPLY
    assert refused.message == "redeeming 20 needs 20 USDC and the pool holds 10"


def test_a_shortfall_is_covered_by_selling_the_largest_haircut_first():
    """100 USDC short (no borrow allowed), holding 10 SOL at 100 (weight 0.95) and 50 USDT
    (weight 0.98): SOL goes first. It nets 100 x (1 - 0.1% fee) x 0.97 (the impact band) =
    96.903 per SOL, so 100 / 96.903 = 1.0319... rounds up to 1.04 SOL, which covers it all and
    leaves the USDT alone."""
    account = SubAccount("a", PROFILE, settings=Settings(leverage_limit=D(10), auto_borrow_settlements=False))
    account.deposit("USDT", D(50))
    account.deposit("SOL", D(10))
    account.set_mark("SOL", D(100))
    account.set_mark("USDT", D(1))
    account.debit("USDC", D(100))
    plan = plan_reconciliation(account)
    assert plan is not None and plan.shortfall == D(100) and (plan.redeem, plan.borrow) == (D(0), D(0))
    assert [(c.asset, c.market, c.quantity) for c in plan.conversions] == [("SOL", "SOL_USDC", D("1.04"))]
    assert plan.uncovered == 0


def test_a_perp_order_by_quote_counts_as_exposure_until_it_fills():
    """A BTC perp market bid for 5,000 USDC at mark 100,000: the margin check counts
    ceil(5,000 / 100,000, 0.00001) = 0.05 BTC of open bids. Reserved, the account holds that
    0.05 as order exposure, so its IMR on the way to the book is the IMR the check accepted. A
    fill of 0.04999 at 100,010 (the quote spent) leaves 0.00001 open until the final update."""
    account = SubAccount("a", PROFILE)
    account.deposit("USDC", D(1000))
    account.set_mark("BTC", D(100000))
    account.set_mark("BTC_USDC_PERP", D(100000))
    order = Order("q", "a", "BTC_USDC_PERP", Side.BID, OrderType.MARKET, None, quote_quantity=D(5000))
    accepted = check_order(account, order)
    assert isinstance(accepted, Accepted) and accepted.exposure == D("0.05")
    account.reserve(accepted.order, accepted.lock_asset, accepted.lock_amount, accepted.exposure)
    assert account.order_exposure == {"BTC_USDC_PERP": [D("0.05"), D(0)]}
    assert accepted.evaluation is not None and totals(account).imr == accepted.evaluation.after.imr
    market = PROFILE.markets["BTC_USDC_PERP"]
    account.apply_fill(Fill(trade_id=1, market=market.symbol, order_id="q", account="a", side=Side.BID,
                            price=D(100010), quantity=D("0.04999"), quote_quantity=D("4999.4999"),
                            fee=D("2.49975"), fee_asset="USDC", is_maker=False, origin=Origin.USER), market)
    assert account.order_exposure == {"BTC_USDC_PERP": [D("0.00001"), D(0)]}
