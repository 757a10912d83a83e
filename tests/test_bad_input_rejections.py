"""A refused request changes nothing: balances, locks, open orders, borrows, lends and pools
stay exactly as they were, and the refusal says why with the numbers.

Each case runs on the direct engine, which drives the same machines as the actors, so the fix
lives once in the machine that owns the rule.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from exchange import margin
from exchange.engine import Exchange
from exchange.orders import ErrorCode, Order, OrderType, Rejection, Side, TimeInForce
from exchange.profile import load_profile

D = Decimal


def state(ex: Exchange) -> dict[str, Any]:
    """Everything a request could change, as plain values."""
    accounts = {
        a: (
            {s: (b.available, b.locked) for s, b in sorted(acc.balances.items())},
            dict(acc.borrows), dict(acc.lends), sorted(acc.open_orders), dict(acc.positions),
            acc.settings,
        )
        for a, acc in sorted(ex.accounts.items())
    }
    pools = {a: (p.lent, p.borrowed, p.cash, p.undistributed, dict(p.lenders), dict(p.borrowers))
             for a, p in sorted(ex.pools.items())}
    books = {s: {a: sorted(b.open_orders(a)) for a in ex.accounts} for s, b in sorted(ex.books.items())}
    health = {a: (t.net_equity, t.imr, t.mmr, t.available) for a, t in
              ((a, margin.totals(acc)) for a, acc in sorted(ex.accounts.items()))}
    return {"accounts": accounts, "pools": pools, "books": books, "health": health}


def venue() -> Exchange:
    ex = Exchange(load_profile("backpack"))
    ex.set_price("BTC", D(100000))
    ex.set_price("SOL", D(150))
    for name, deposits in (("maker", {"USDC": D(1_000_000), "SOL": D(1000), "BTC": D(10)}),
                           ("lender", {"USDC": D(1_000_000)}), ("alice", {"USDC": D(10000)})):
        ex.add_account(name, owner="alice" if name == "alice" else name)
        for asset, quantity in deposits.items():
            ex.deposit(name, asset, quantity)
    ex.add_account("alice-2", owner="alice")
    assert isinstance(ex.lend("lender", "USDC", D(500_000)), object)
    return ex


def limit(account: str, order_id: str, market: str, side: Side, quantity: str, price: str, **flags: Any) -> Order:
    return Order(order_id, account, market, side, OrderType.LIMIT, D(quantity), D(price), None, TimeInForce.GTC,
                 **flags)


def test_a_reused_order_id_is_refused_by_the_account_and_the_first_order_keeps_its_lock():
    """alice rests a spot bid x: 0.05 BTC at 99,000 locks 4,950 USDC. A second order x is
    refused before anything is reserved (the ledger keys orders by id and would forget the
    first). When the maker fills the first x, its lock is released: nothing stays locked."""
    ex = venue()
    first = ex.place(limit("alice", "x", "BTC_USDC", Side.BID, "0.05", "99000"))
    assert first.accepted
    assert ex.accounts["alice"].balances["USDC"].locked == D(4950)
    before = state(ex)
    second = ex.place(limit("alice", "x", "BTC_USDC", Side.BID, "0.05", "98000"))
    assert isinstance(second.rejection, Rejection)
    assert second.rejection.code is ErrorCode.INVALID_ORDER
    assert "order id x is already open" in second.rejection.message
    assert state(ex) == before
    assert ex.place(limit("maker", "m", "BTC_USDC", Side.ASK, "0.05", "99000")).fills
    alice = ex.accounts["alice"]
    assert alice.balances["USDC"].locked == 0 and not alice.open_orders
    assert alice.balances["USDC"].available == D(10000) - D(4950)
    assert ex.invariant_violations() == []


def test_two_accounts_may_use_the_same_order_id_on_one_market():
    """An order id is the account's own (a client id): alice and bob each rest a BTC_USDC bid
    "x" (0.05 at 99,000 and 0.02 at 98,000). Both rest; the maker's ask of 0.05 at 99,000 fills
    alice's alone, and bob's x still rests with its 1,960 USDC (0.02 x 98,000) locked."""
    ex = venue()
    ex.add_account("bob")
    ex.deposit("bob", "USDC", D(10000))
    assert ex.place(limit("alice", "x", "BTC_USDC", Side.BID, "0.05", "99000")).accepted
    bob = ex.place(limit("bob", "x", "BTC_USDC", Side.BID, "0.02", "98000"))
    assert bob.accepted and bob.rejection is None
    assert ex.place(limit("maker", "m", "BTC_USDC", Side.ASK, "0.05", "99000")).fills
    assert not ex.accounts["alice"].open_orders and ex.accounts["alice"].balances["USDC"].locked == 0
    assert list(ex.accounts["bob"].open_orders) == ["x"]
    assert ex.accounts["bob"].balances["USDC"].locked == D(1960)
    assert ex.invariant_violations() == []


def test_a_post_only_auto_borrow_order_that_would_cross_gives_its_borrow_back():
    """alice holds 10 SOL and no USDC; a post-only bid for 2 SOL at 151 with autoBorrow borrows
    302 USDC plus an entry fee of 0.000004 (interest to the next hour), then expires because
    it would take the maker's ask at 150. The borrow is repaid and its entry fee waived, so no
    USDC borrow is left behind and the pool is exactly as before."""
    ex = venue()
    ex.deposit("alice", "SOL", D(10))
    assert ex.withdraw("alice", "USDC", D(10000)) == D(10000)
    ex.advance_to(1000)
    assert ex.place(limit("maker", "ask", "SOL_USDC", Side.ASK, "5", "150")).accepted
    before = state(ex)
    outcome = ex.place(limit("alice", "po", "SOL_USDC", Side.BID, "2", "151", post_only=True, auto_borrow=True))
    assert outcome.updates and outcome.updates[-1].status.value == "Expired" and not outcome.fills
    borrows = [e for e in ex.events if e["event"] == "borrow" and e["actor"] == "account:alice"]
    assert borrows and borrows[-1]["quantity"] == D(302) and borrows[-1]["entry_fee"] == D("0.000004")
    waived = [e for e in ex.events if e["event"] == "entry_fee_waived"]
    assert waived and waived[-1]["quantity"] == D("0.000004")
    assert state(ex) == before
    assert ex.invariant_violations() == []


def test_a_withdrawal_over_the_balance_changes_nothing_and_names_the_most_that_passes():
    """10,000 USDC held, 20,000 asked: refused with the largest withdrawal, 10,000."""
    ex = venue()
    before = state(ex)
    refused = ex.withdraw("alice", "USDC", D(20000))
    assert isinstance(refused, Rejection) and refused.code is ErrorCode.INSUFFICIENT_FUNDS
    assert refused.details["max_quantity"] == D(10000)
    assert "20000 USDC asked, 10000 available" in refused.message
    assert state(ex) == before
    logged = [e for e in ex.events if e["event"] == "withdrawal_refused"]
    assert logged[-1]["quantity"] == D(20000) and logged[-1]["max_quantity"] == D(10000)


def test_a_transfer_over_the_balance_changes_nothing():
    """The same rule for a sibling transfer: 20,000 of 10,000 USDC is refused, both sides kept."""
    ex = venue()
    before = state(ex)
    refused = ex.transfer("alice", "alice-2", "USDC", D(20000))
    assert isinstance(refused, Rejection) and refused.code is ErrorCode.INSUFFICIENT_FUNDS
    assert refused.details["max_quantity"] == D(10000)
    assert state(ex) == before


def test_a_transfer_to_a_stranger_changes_nothing():
    ex = venue()
    before = state(ex)
    refused = ex.transfer("alice", "maker", "USDC", D(10))
    assert isinstance(refused, Rejection) and "maker is not a sub-account of alice" in refused.message
    assert state(ex) == before
    logged = [e for e in ex.events if e["event"] == "transfer_refused"]
    assert logged[-1]["target"] == "maker" and logged[-1]["quantity"] == D(10)


def test_loan_refusals_change_nothing():
    """Repaying 5 USDC owed 0, redeeming 5 of a lend of 0, lending 20,000 of 10,000: each refused
    with the numbers, nothing moved."""
    ex = venue()
    before = state(ex)
    for action, quantity, words in (("repay", D(5), "alice owes 0"), ("redeem", D(5), "alice has lent 0"),
                                    ("lend", D(20000), "10000 available")):
        refused = ex.loan("alice", action, "USDC", quantity)
        assert isinstance(refused, Rejection) and refused.code is ErrorCode.INSUFFICIENT_FUNDS, action
        assert words in refused.message
        assert state(ex) == before, action


def test_a_post_only_auto_lend_redeem_order_that_would_cross_lends_again():
    """alice lends her 10,000 USDC; a post-only bid for 2 SOL at 151 with autoLendRedeem
    redeems 302 USDC (2 x 151) to lock, then expires because it would cross the ask at 150.
    The 302 go back to the pool: her lend is 10,000 again and the pool as before."""
    ex = venue()
    assert ex.lend("alice", "USDC", D(10000)).quantity == D(10000)
    ex.advance_to(1000)
    assert ex.place(limit("maker", "ask", "SOL_USDC", Side.ASK, "5", "150")).accepted
    before = state(ex)
    outcome = ex.place(limit("alice", "po", "SOL_USDC", Side.BID, "2", "151", post_only=True, auto_lend_redeem=True))
    assert outcome.updates and outcome.updates[-1].status.value == "Expired" and not outcome.fills
    redeems = [e for e in ex.events if e["event"] == "redeem" and e["actor"] == "account:alice"]
    assert redeems and redeems[-1]["quantity"] == D(302)
    assert state(ex) == before
    assert ex.accounts["alice"].lends == {"USDC": D(10000)}
    assert ex.invariant_violations() == []


def test_a_leverage_cut_refused_for_margin_changes_nothing_and_says_why():
    """alice holds 0.5 BTC-PERP at 100,000 on 10,000 USDC (IMF at 10x is 0.1: 5,000 of margin,
    less 25 of fees). A 1x limit would need 50,000: refused with the available equity it would
    leave, 9,975 - 50,000 = -40,025; her settings and every margin number stay."""
    ex = venue()
    assert ex.place(limit("maker", "m", "BTC_USDC_PERP", Side.ASK, "0.5", "100000")).accepted
    assert ex.place(limit("alice", "a", "BTC_USDC_PERP", Side.BID, "0.5", "100000")).fills
    before = state(ex)
    from exchange.protocol import UpdateSettings

    refused = ex._request("alice", UpdateSettings("s1", D(1)))
    assert isinstance(refused, Rejection) and refused.code is ErrorCode.INSUFFICIENT_MARGIN
    assert refused.details["available_after"] == D("-40025")
    assert refused.message == "a 1x limit would take available equity to -40025"
    assert state(ex) == before
    logged = [e for e in ex.events if e["event"] == "settings_refused"]
    assert logged[-1]["leverage_limit"] == D(1) and logged[-1]["available_after"] == D("-40025")


def test_a_refused_leverage_change_changes_nothing():
    """A leverage limit of 80 is outside 1..50: refused, the settings stay."""
    from exchange.protocol import UpdateSettings

    ex = venue()
    before = state(ex)
    refused = ex._request("alice", UpdateSettings("s1", D(80)))
    assert isinstance(refused, Rejection) and "outside 1..50" in refused.message
    assert state(ex) == before
    assert ex.accounts["alice"].settings.leverage_limit == D(10)


def test_a_cancel_of_an_unknown_order_changes_nothing():
    ex = venue()
    assert ex.place(limit("alice", "rest", "BTC_USDC", Side.BID, "0.01", "90000")).accepted
    before = state(ex)
    refused = ex.cancel("alice", "BTC_USDC", "nope")
    assert isinstance(refused, Rejection)
    assert state(ex) == before


ACTORS_SCENARIO = """\
[scenario]
name = "refusals"
duration = 4

[prices.BTC]
kind = "constant"
price = 100000

[[accounts]]
id = "maker"
deposits = { BTC = 1 }
markets = ["BTC_USDC"]

[[accounts]]
id = "alice"
owner = "alice"
deposits = { USDC = 10000 }
markets = ["BTC_USDC"]

[[accounts]]
id = "alice-2"
owner = "alice"

[[actions]]
at = 0.5
account = "alice"
type = "withdraw"
asset = "USDC"
quantity = 20000

[[actions]]
at = 0.6
account = "alice"
type = "transfer"
target = "alice-2"
asset = "USDC"
quantity = 20000

[[actions]]
at = 1
account = "alice"
type = "order"
id = "x"
market = "BTC_USDC"
side = "buy"
quantity = 0.05
price = 99000

[[actions]]
at = 1.5
account = "alice"
type = "order"
id = "x"
market = "BTC_USDC"
side = "buy"
quantity = 0.05
price = 98000

[[actions]]
at = 2
account = "maker"
type = "order"
id = "m"
market = "BTC_USDC"
side = "sell"
quantity = 0.05
price = 99000

[[expect]]
kind = "balance"
account = "alice"
asset = "USDC"
min = 5050
max = 5050
"""


def test_the_actors_refuse_the_same_way_and_nothing_stays_locked(tmp_path):
    """Through the actor runtime: the withdrawal and transfer of 20,000 of 10,000 USDC are
    refused and logged (they once crashed the account actor while logging), the second order x
    is refused, the first fills for 4,950 USDC (0.05 x 99,000; alice's fee is charged in the
    BTC she receives), and alice ends with 10,000 - 4,950 = 5,050 USDC, none of it locked."""
    from scenarios import loader, runner

    path = tmp_path / "s.toml"
    path.write_text(ACTORS_SCENARIO, encoding="utf-8")
    scenario = loader.load(str(path))
    system, scripts = runner.build(scenario, scenario.seed)
    result = system.run(scenario.duration_ms / 1000)
    assert all(runner.judge(e, result, scripts).passed for e in scenario.expectations)
    usdc = system.accounts["alice"].account.balances["USDC"]
    assert (usdc.available, usdc.locked) == (D(5050), 0)
    assert not system.accounts["alice"].account.open_orders
    events = result.events
    kinds = [e["event"] for e in events if e["actor"] == "account:alice"]
    assert "withdrawal_refused" in kinds and "transfer_refused" in kinds
    refusals = [e for e in events if e["event"] == "order_rejected" and e["order_id"] == "x"]
    assert len(refusals) == 1 and "already open on sub-account alice" in refusals[0]["message"]
    closed = [e for e in events if e["event"] == "order_closed" and e["order_id"] == "x"]
    assert closed and closed[-1]["status"] == "Filled"


def test_an_order_borrow_kept_past_an_interest_tick_keeps_its_entry_fee():
    """The same auto-borrow bid, resting below the ask this time, across the hourly tick: the
    tick shares the entry fee out to lenders, so cancelling the order repays the 302 USDC but
    waives nothing. What stays owed is the entry fee (0.000004) plus the hour's interest the
    tick charged on 302.000004, read from its own event."""
    ex = venue()
    ex.deposit("alice", "SOL", D(10))
    assert ex.withdraw("alice", "USDC", D(10000)) == D(10000)
    ex.advance_to(1000)
    assert ex.place(limit("maker", "ask", "SOL_USDC", Side.ASK, "5", "150")).accepted
    assert ex.place(limit("alice", "rest", "SOL_USDC", Side.BID, "2", "149", auto_borrow=True)).accepted
    fee = next(e for e in ex.events if e["event"] == "borrow" and e["actor"] == "account:alice")["entry_fee"]
    assert fee > 0
    ex.advance_to(3_600_000)
    interest = next(e for e in ex.events if e["event"] == "interest" and e["actor"] == "account:alice")
    assert isinstance(ex.cancel("alice", "SOL_USDC", "rest"), object)
    assert not [e for e in ex.events if e["event"] == "entry_fee_waived"]
    assert ex.accounts["alice"].borrows == {"USDC": fee + interest["borrow_interest"]}
    assert ex.invariant_violations() == []
