"""Rules no other test pinned, found by the mutation score (bench/mutation.py): each test fails
on the named mutant and passes on the venue."""

from __future__ import annotations

from decimal import Decimal

from exchange.engine import Exchange
from exchange.ledger import SubAccount
from exchange.liquidation import AdlCandidate, adl_queue
from exchange.orders import ErrorCode, Fill, Origin, Side
from exchange.profile import load_profile

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
