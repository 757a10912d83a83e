"""The actor runtime: races with forced interleavings, long random flows, supervision."""

from __future__ import annotations

from decimal import Decimal

import pytest

from actors.agents import MarketMaker, NoiseTrader, ScriptedTrader
from actors.determinism import stream
from actors.faults import Fault, FaultScript
from actors.paths import Constant, Linear, RandomWalk, Shifted, Steps
from actors.system import RunFailed, System
from exchange.ledger import Settings
from exchange.orders import ErrorCode, Order, OrderType, Side, TimeInForce
from exchange.profile import load_profile
from exchange.protocol import CancelAll, LoanRequest, PlaceOrder, Withdraw

D = Decimal
BTC = "BTC_USDC_PERP"
ETH = "ETH_USDC_PERP"
PROFILE = load_profile("backpack")


def limit(order_id, account, market, side, quantity, price, **flags):
    return PlaceOrder(Order(order_id, account, market, side, OrderType.LIMIT, D(quantity), D(price), **flags))


def market_order(order_id, account, market, side, quantity, **flags):
    return PlaceOrder(Order(order_id, account, market, side, OrderType.MARKET, D(quantity),
                            time_in_force=TimeInForce.IOC, **flags))


def events_of(result, kind, **match):
    return [e for e in result.events if e["event"] == kind and all(e.get(k) == v for k, v in match.items())]


# -- an order racing a price move ---------------------------------------------------------


def price_race(faults):
    """Alice (10,000 USDC, 10x) bids 1 BTC at 100,000 at t=10s, the instant the index jumps
    from 100,000 to 105,000. Which arrives at her sub-account first decides."""
    system = System(PROFILE, seed=3)
    system.set_path("BTC", Steps(((0, D(100000)), (10_000, D(105000)))))
    system.add_account("alice", deposits={"USDC": D(10000)}, markets=[BTC])
    trader = system.add_agent(ScriptedTrader(system, "alice", "alice", [
        (10_000, limit("a1", "alice", BTC, Side.BID, "1", "100000")),
    ]))
    system.add_agent(FaultScript(system.network, faults))
    return system.run(12), trader


def test_an_order_that_arrives_before_the_price_is_checked_on_the_old_price():
    """The feed's message is 50 ms late: the account checks the bid at mark 100,000: locked
    1 x 100,000 x 0.1 = 10,000 = equity, IMR exactly 100%: accepted (on what it had heard)."""
    result, trader = price_race([Fault("delay", "feed", "account:alice", 0, 60_000, 50)])
    assert "a1" in trader.placed and "a1" not in trader.refused
    placed = events_of(result, "order_placed", order_id="a1")[0]
    assert placed["imr_after"] == 1


def test_an_order_that_arrives_after_the_price_is_refused_with_the_numbers():
    """The order is 50 ms late: at mark 105,000 the bid would lock 10,500 of 10,000 equity:
    IMR 0% -> 105%; the largest bid that passes is 10,000 / (105,000 x 0.1) = 0.95238 BTC."""
    result, trader = price_race([Fault("delay", "agent:alice", "account:alice", 0, 60_000, 50)])
    refusal = trader.refused["a1"]
    assert refusal.code is ErrorCode.INSUFFICIENT_MARGIN
    assert (refusal.details["imr_before"], refusal.details["imr_after"]) == (D(0), D("1.05"))
    assert refusal.details["max_quantity"] == D("0.95238")
    logged = events_of(result, "order_rejected", order_id="a1")[0]
    assert logged["imr_after"] == D("1.05") and logged["max_quantity"] == D("0.95238")


# -- the liquidator's reduce-only order racing the user's own close ----------------------


def long_then_drop(faults, extra_actions=(), seed=5):
    """Trader: 10,000 USDC at 10x, buys 1 BTC at 100,000 from the maker's ask at t=1s. At
    t=5s the index drops to 90,450 (MMR 150.75%) and the maker bids 5 BTC at 90,440."""
    system = System(PROFILE, seed=seed)
    system.set_path("BTC", Steps(((0, D(100000)), (5_000, D(90450)))))
    system.add_account("maker", deposits={"USDC": D(10_000_000)}, settings=Settings(leverage_limit=D(20)),
                       markets=[BTC])
    system.add_account("trader", deposits={"USDC": D(10000)}, markets=[BTC])
    system.add_agent(ScriptedTrader(system, "maker", "maker", [
        (500, limit("m1", "maker", BTC, Side.ASK, "1", "100000")),
        (5_000, limit("m2", "maker", BTC, Side.BID, "5", "90440")),
    ]))
    trader = system.add_agent(ScriptedTrader(system, "trader", "trader", [
        (1_000, limit("t1", "trader", BTC, Side.BID, "1", "100000")),
        *extra_actions,
    ]))
    system.add_agent(FaultScript(system.network, faults))
    return system, trader


def positions_over_time(result, account):
    return [e["position"] for e in events_of(result, "fill", actor=f"account:{account}") if e["market"] == BTC]


@pytest.mark.parametrize("late", ["liquidator", "agent:trader"])
def test_liquidation_racing_the_users_own_close(late):
    """At t=6s the liquidation loop and the trader's own reduce-only close (1 BTC, market) reach
    the account at the same instant; one link is made 100 ms late to force each order. Whoever
    comes second is cut by the book: the long ends flat and is never flipped short."""
    system, trader = long_then_drop(
        [Fault("delay", late, "account:trader", 5_500, 60_000, 100)],
        [(6_000, market_order("close", "trader", BTC, Side.ASK, "1", reduce_only=True))],
    )
    result = system.run(10)
    positions = positions_over_time(result, "trader")
    assert positions[0] == 1 and positions[-1] == 0
    assert all(p >= 0 for p in positions)
    liquidation_fills = [e for e in events_of(result, "fill", actor="account:trader") if e["origin"] == "LIQUIDATION_AUTOCLOSE"]
    user_fill = [e for e in events_of(result, "fill", actor="account:trader") if e["order_id"] == "close"]
    if late == "liquidator":  # the user's close got there first and took everything
        assert user_fill and user_fill[0]["quantity"] == 1 and not liquidation_fills
    else:  # the liquidator's 10% went first; the close was cut to the 0.9 left
        assert liquidation_fills and liquidation_fills[0]["quantity"] == D("0.1")
        assert user_fill[0]["quantity"] == D("0.9")


# -- two markets filling one sub-account at the same instant ----------------------------


def two_market_fills(seed):
    """Maker rests asks on BTC and ETH perps; at t=2s a taker lifts both at the same instant."""
    system = System(PROFILE, seed=seed)
    system.set_path("BTC", Constant(D(100000)))
    system.set_path("ETH", Constant(D(4000)))
    system.add_account("maker", deposits={"USDC": D(50000)}, settings=Settings(leverage_limit=D(20)),
                       markets=[BTC, ETH])
    system.add_account("taker", deposits={"USDC": D(50000)}, settings=Settings(leverage_limit=D(20)),
                       markets=[BTC, ETH])
    system.add_agent(ScriptedTrader(system, "maker", "maker", [
        (1_000, limit("mb", "maker", BTC, Side.ASK, "0.2", "100010")),
        (1_000, limit("me", "maker", ETH, Side.ASK, "5", "4001")),
    ]))
    system.add_agent(ScriptedTrader(system, "taker", "taker", [
        (2_000, market_order("tb", "taker", BTC, Side.BID, "0.2")),
        (2_000, market_order("te", "taker", ETH, Side.BID, "5")),
    ]))
    return system.run(3)


def test_two_markets_filling_one_account_at_the_same_instant():
    """Whatever order the two markets' fills reach the maker in (it depends on the seed), it
    ends with the same books: short 0.2 BTC and 5 ETH, USDC less the maker fees
    (0.2 x 100,010 x 0.0002 = 4.0004 and 5 x 4,001 x 0.0002 = 4.001)."""
    fingerprints = set()
    finals = set()
    for seed in range(6):
        result = two_market_fills(seed)
        maker = result.summary["accounts"]["maker"]
        finals.add((tuple(sorted(maker["positions"].items())), maker["balances"]["USDC"]))
        fingerprints.add(result.fingerprint)
    assert finals == {(((BTC, D("-0.2")), (ETH, D(-5))), D(50000) - D("4.0004") - D("4.001"))}
    assert len(fingerprints) > 1  # the interleaving really did differ between seeds


# -- a price gap while a liquidation step is in flight ----------------------------------


def test_a_price_gap_while_a_liquidation_order_is_in_flight():
    """The trader's orders take 400 ms to reach the book. At t=6s its first liquidation order
    (0.1 BTC) leaves; at t=6.2s the index gaps to 90,300 and the maker's bid moves to 90,290.
    The order fills there, below the 90,440 it was sized on; at the next loop MMR is past 200%
    and the rest goes to the backstop."""
    system, _ = long_then_drop([Fault("delay", "account:trader", "market:BTC_USDC_PERP", 5_500, 60_000, 400)])
    system.set_path("BTC", Steps(((0, D(100000)), (5_000, D(90450)), (6_200, D(90300)))))
    system.add_account("blp", deposits={"USDC": D(1_000_000)}, settings=Settings(leverage_limit=D(50)))
    system.add_backstop("blp", {BTC: D(10_000_000)})
    system.add_agent(ScriptedTrader(system, "maker2", "maker", [
        (6_200, CancelAll(BTC)),
        (6_200, limit("m3", "maker", BTC, Side.BID, "5", "90290")),
    ]))
    result = system.run(10)
    history = result.history["trader"]
    stages = [s.stage for s in history]
    assert stages[:2] == ["start", "book"] and "backstop" in stages
    book_step = history[1]
    assert book_step.price == D(90290) and book_step.quantity == D("0.1")
    assert history[stages.index("backstop")].mmr_before >= 2
    assert result.summary["accounts"]["trader"]["positions"] == {}


# -- long random flows ------------------------------------------------------------------


FAST_CLOCK = load_profile("backpack", overrides={
    "interest_interval": 60,
    "markets": {BTC: {"funding_interval": 60}, "SOL_USDC_PERP": {"funding_interval": 60}},
})


def random_flow(seed, until=300, check_every=1):
    """Ten traders (some spot on margin with auto-borrow, some auto-lending), two gamblers near
    50x, a market maker on two perps and SOL spot, a lender, a backstop; random walks with a
    mark premium, a 6% BTC crash at 150 s; funding and interest every minute: thousands of
    orders and some liquidations, with the observer after every event."""
    system = System(FAST_CLOCK, seed=seed, check_every=check_every)
    rng = stream(seed, "test-flow")
    system.set_path("BTC", Shifted(RandomWalk(D(100000), D(0), D("0.8"), 1000, rng), 150_000, D("0.94")))
    system.set_path("SOL", RandomWalk(D(150), D(0), D("1.2"), 1000, rng))
    system.set_premium(BTC, Constant(D("0.0004")))
    system.set_premium("SOL_USDC_PERP", Linear(((0, D("-0.001")), (300_000, D("0.001")))))
    system.add_account("maker", deposits={"USDC": D(20_000_000), "SOL": D(50_000)},
                       settings=Settings(leverage_limit=D(20)))
    system.add_agent(MarketMaker(system, "mm", "maker", [BTC, "SOL_USDC_PERP", "SOL_USDC"],
                                 size={BTC: D("0.3"), "SOL_USDC_PERP": D(50), "SOL_USDC": D(50)}, refresh_ms=2000))
    system.add_account("lender", deposits={"USDC": D(1_000_000)})
    system.add_agent(ScriptedTrader(system, "lender", "lender", [
        (0, LoanRequest("lend", "lend", "USDC", D(1_000_000))),
    ]))
    system.add_account("blp", deposits={"USDC": D(5_000_000)}, settings=Settings(leverage_limit=D(50)))
    system.add_backstop("blp", {BTC: D(2_000_000), "SOL_USDC_PERP": D(500_000)})
    for name, market, quantity in (("gambler", BTC, "1.2"), ("gambler2", "SOL_USDC_PERP", "150")):
        system.add_account(name, deposits={"USDC": D(5000)}, settings=Settings(leverage_limit=D(50)), markets=[market])
        system.add_agent(ScriptedTrader(system, name, name, [(5_000, market_order(f"{name}-1", name, market, Side.BID, quantity))]))
    for i in range(10):
        leverage = D([5, 10, 20, 50][i % 4])
        system.add_account(f"t{i}", deposits={"USDC": D(5000 + 2000 * i)},
                           settings=Settings(leverage_limit=leverage, auto_lend=i % 3 == 0, auto_repay_borrows=i % 2 == 0))
        system.add_agent(NoiseTrader(system, f"n{i}", f"t{i}", [BTC, "SOL_USDC_PERP"] + (["SOL_USDC"] if i % 2 else []),
                                     interval_ms=400, max_steps={BTC: 20000, "SOL_USDC_PERP": 2000, "SOL_USDC": 2000},
                                     market_share=0.4, within_bps=15, auto_borrow_share=0.5))
    return system.run(until)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_long_random_flow_keeps_every_invariant(seed):
    result = random_flow(seed)
    placed = len(events_of(result, "order_placed"))
    trades = sum(m["trades"] for m in result.summary["markets"].values())
    assert placed > 3000 and trades > 500


def test_same_seed_same_log_and_different_seeds_differ():
    one, again, other = random_flow(4, 60), random_flow(4, 60), random_flow(5, 60)
    assert one.fingerprint == again.fingerprint and one.event_count == again.event_count
    assert other.fingerprint != one.fingerprint


# -- supervision --------------------------------------------------------------------------


def test_an_actor_that_raises_ends_the_run_with_the_cause():
    system = System(PROFILE, seed=1)
    system.set_path("BTC", Constant(D(100000)))
    system.add_account("alice", deposits={"USDC": D(1000)})
    system.add_agent(ScriptedTrader(system, "alice", "alice", [(1_000, "not a message")]))
    with pytest.raises(RunFailed) as info:
        system.run(10)
    failure = info.value
    assert failure.kind == "crash" and failure.time_ms == 1000
    assert "account:alice crashed handling str from agent:alice" in str(failure)
    assert "has no handler for str" in str(failure)


def test_a_stalled_run_is_diagnosed():
    """Alice lends at t=1s but the link to the pool is held for good: nothing else happens
    (constant prices, no other traders), so after 30 s of silence the run stops and says why."""
    system = System(PROFILE, seed=1, stall_ms=30_000)
    system.set_path("BTC", Constant(D(100000)))
    system.add_account("alice", deposits={"USDC": D(1000)})
    system.add_agent(ScriptedTrader(system, "alice", "alice", [(1_000, LoanRequest("l1", "lend", "USDC", D(500)))]))
    system.add_agent(FaultScript(system.network, [Fault("hold", "account:alice", "pool:USDC", 0, 10**9)]))
    with pytest.raises(RunFailed) as info:
        system.run(3600)
    failure = info.value
    assert failure.kind == "stall" and failure.time_ms <= 61_000
    assert "link account:alice -> pool:USDC is held with 1 message(s)" in str(failure)
    assert "alice waits for the pool's answer" in str(failure)


class Thief(ScriptedTrader):
    """A deliberate bug for the observer to catch: at 2 s it adds 1 USDC to an account's
    ledger directly, with no message and no event. Agents are handled inside the scheduler's
    delivery at 2 s; the observer looks after the next message an actor handles, the feed's
    price tick at that same instant, so it is caught at 2 s."""

    def __init__(self, system, *args):
        super().__init__(system, *args)
        self.victim = system.accounts[self.account_id].account

    def on_tick(self, sender, message):
        self.victim.credit("USDC", D(1))


def test_a_broken_invariant_stops_the_run_with_the_event_and_the_seed():
    system = System(PROFILE, seed=9)
    system.set_path("BTC", Linear(((0, D(100000)), (10_000, D(101000)))))
    system.add_account("alice", deposits={"USDC": D(1000)})
    system.add_agent(Thief(system, "thief", "alice", [(2_000, None)]))
    with pytest.raises(RunFailed) as info:
        system.run(10)
    failure = info.value
    assert failure.kind == "invariant" and failure.time_ms == 2000 and failure.seed == 9
    text = str(failure)
    assert "invariant 'conservation' broken" in text
    assert "USDC not conserved: 1001 held in the system, 1000 deposited net (difference 1)" in text
    assert "last event: {'actor': 'feed', 'symbol': 'BTC_USDC_PERP', 'price': Decimal('100200.0')" in text


def test_refused_cancels_and_deposits_are_answered():
    from exchange.protocol import CancelOrder, Deposit

    system = System(PROFILE, seed=1)
    system.set_path("BTC", Constant(D(100000)))
    system.add_account("alice", deposits={"USDC": D(1000)})
    agent = system.add_agent(ScriptedTrader(system, "alice", "alice", [
        (1_000, CancelOrder(BTC, "nope")),
        (1_000, Deposit("DOGE", D(5), "d1")),
        (1_000, Deposit("USDC", D(5), "d2")),
    ]))
    system.run(2)
    assert agent.requests["nope"].code is ErrorCode.RESOURCE_NOT_FOUND
    assert agent.requests["d1"].code is ErrorCode.INVALID_QUANTITY and "DOGE" in agent.requests["d1"].message
    assert agent.requests["d2"] == "5 USDC"


def test_real_time_mode_runs_the_clock_at_a_rate():
    """At 100 virtual seconds per real second, 3 virtual seconds take at least 30 ms."""
    import time

    system = System(PROFILE, seed=1)
    system.set_path("BTC", Linear(((0, D(100000)), (3_000, D(101000)))))
    start = time.perf_counter()
    result = system.run(3, realtime_rate=100)
    assert time.perf_counter() - start >= 0.03
    assert [e["price"] for e in result.events if e["event"] == "price" and e["symbol"] == "BTC"][-1] == D(101000)


# -- a borrower whose buyer is away -------------------------------------------------------


def test_a_solvent_borrower_is_not_written_off_while_the_book_is_empty():
    """The engine test's borrower through the actors: 100 SOL, 6,000 USDC borrowed and
    withdrawn, SOL falls to 66 at t=2s (MMR 111.11%) with no bid and no backstop. The loop finds
    no book for SOL and the backstop round finds nobody: the borrow must not be written off (the
    fund would pay the lender while B kept its SOL). B waits with its 100 SOL; when the maker
    bids at t=6s the next loop converts SOL on the book, the borrow shrinks, B is healthy."""
    system = System(PROFILE, seed=5)
    system.set_path("SOL", Steps(((0, D(100)), (2_000, D(66)))))
    system.add_account("lender", deposits={"USDC": D(100_000)})
    system.add_account("b", deposits={"SOL": D(100)})
    system.add_account("mm", deposits={"USDC": D(100_000)})
    system.add_agent(ScriptedTrader(system, "lender", "lender", [(0, LoanRequest("l", "lend", "USDC", D(100_000)))]))
    system.add_agent(ScriptedTrader(system, "b", "b", [
        (500, LoanRequest("b1", "borrow", "USDC", D(6000))),
        (1_000, Withdraw("w1", "USDC", D(6000))),
    ]))
    system.add_agent(ScriptedTrader(system, "mm", "mm", [(6_000, limit("bid", "mm", "SOL_USDC", Side.BID, "50", "65.9"))]))
    result = system.run(9)
    stages = [s.stage for s in result.history["b"]]
    assert stages == ["start", "waiting", "conversion", "healthy"]
    assert not events_of(result, "lenders_compensated")
    account = result.summary["accounts"]["b"]
    assert D(5600) < D(account["borrows"]["USDC"]) < D(6000)
    assert D(account["balances"]["SOL"]) < D(100)


def test_a_usdc_borrow_goes_to_the_backstop_through_messages():
    """The same borrower, 1% liquidation fee, a provider with 50,000 USDC of borrow capacity.
    Borrowing at t=0.5s pays the entry fee for the 3,599.5 s left of the hour:
    6,000 x 0.009 x 3,599.5 / 3,600 / 8,760 = 0.0061635 -> 0.006164 up. The provider buys
    6,000.006164 / 0.99 = 6,060.612287 (up) of SOL at 66: 91.8274589 (up, to the 1e-8 step);
    the fee 60.606123 goes to the fund, 6,000.006164 repays the borrow, the 8.1725411 SOL left
    go to the fund as residual equity. Every transfer crosses the wire as a message."""
    system = System(load_profile("backpack-2025-10"), seed=5)
    system.set_path("SOL", Steps(((0, D(100)), (2_000, D(66)))))
    system.add_account("lender", deposits={"USDC": D(100_000)})
    system.add_account("b", deposits={"SOL": D(100)})
    system.add_account("blp", deposits={"USDC": D(100_000)})
    system.add_backstop("blp", {"USDC": D(50_000)})
    system.add_agent(ScriptedTrader(system, "lender", "lender", [(0, LoanRequest("l", "lend", "USDC", D(100_000)))]))
    system.add_agent(ScriptedTrader(system, "b", "b", [
        (500, LoanRequest("b1", "borrow", "USDC", D(6000))),
        (1_000, Withdraw("w1", "USDC", D(6000))),
    ]))
    result = system.run(5)
    history = result.history["b"]
    assert [s.stage for s in history] == ["start", "backstop", "fund", "closed"]
    assert (history[1].quantity, history[1].price, history[1].fee) == (D("91.8274589"), D(66), D("60.606123"))
    accounts = result.summary["accounts"]
    assert accounts["b"]["borrows"] == {} and accounts["b"]["balances"] == {}
    assert D(accounts["blp"]["balances"]["SOL"]) == D("91.8274589")
    assert D(accounts["blp"]["balances"]["USDC"]) == D(100_000) - D("6060.612287")
    assert result.summary["fund"] == {"USDC": D("60.606123"), "SOL": D("8.1725411")}


def test_an_order_outside_the_price_band_is_refused_by_the_book_with_its_numbers():
    """Found by the fuzzer: the book's band refusal names the market and the price, as the
    order does, and logging both crashed the sub-account. A bid at 200,000 with the last
    active price at 100,000 is outside the band; the refusal reaches the trader and the log
    keeps the band's limits."""
    system = System(PROFILE, seed=1)
    system.set_path("BTC", Constant(D(100000)))
    system.add_account("alice", deposits={"USDC": D(10000)}, markets=[BTC])
    trader = system.add_agent(ScriptedTrader(system, "alice", "alice", [
        (1_000, limit("far", "alice", BTC, Side.BID, "0.001", "200000", post_only=True)),
    ]))
    result = system.run(2)
    (refused,) = events_of(result, "order_rejected", order_id="far")
    assert refused["code"] == ErrorCode.INVALID_PRICE and refused["price"] == D(200000)
    assert refused["max_price"] < D(200000) and refused["last_active_price"] == D(100000)
    assert trader.refused["far"].code is ErrorCode.INVALID_PRICE


def crowd(idle: int) -> System:
    """One trader buying from a maker every second, beside ``idle`` sub-accounts holding USDC."""
    system = System(PROFILE, seed=3, check_every=1)
    system.set_path("BTC", Constant(D(100000)))
    system.add_account("mm", deposits={"USDC": D(1_000_000)}, markets=[BTC])
    system.add_account("trader", deposits={"USDC": D(100_000)}, markets=[BTC])
    for i in range(idle):
        system.add_account(f"idle{i}", deposits={"USDC": D(1000)})
    system.add_agent(MarketMaker(system, "maker", "mm", [BTC], size=D("0.1")))
    system.add_agent(ScriptedTrader(system, "bot", "trader",
                                    [(1000 * s, market_order(f"b{s}", "trader", BTC, Side.BID, "0.01"))
                                     for s in range(1, 10)]))
    return system


def test_the_observer_looks_at_what_changed_not_at_every_account():
    """With 500 idle sub-accounts beside two that trade, a check after every message looks at
    the accounts that handled or logged something since the last (one or two here) and a sweep
    of ``SWEEP`` more in turn, not at all 502; only the check at the end looks at every one."""
    from actors.observer import SWEEP

    system = crowd(500)
    system.run(10)
    observer = system.observer
    assert observer.checks > 500  # every deposit at t=0 is a message, then the trading
    assert (observer.looked - 502) / (observer.checks - 1) <= SWEEP + 3


class SilentThief(ScriptedTrader):
    """Adds 1 USDC straight into another sub-account's ledger at 5 s: no message, no event."""

    def __init__(self, system, name, account_id, victim):
        super().__init__(system, name, account_id, [(5_000, None)])
        self.victim = system.accounts[victim].account

    def on_tick(self, sender, message):
        self.victim.credit("USDC", D(1))


def test_a_silent_change_to_an_account_nobody_touches_is_found_by_the_sweep():
    """The victim handles nothing after t=0, so only the sweep looks at it; with 101 accounts
    and ``SWEEP`` a check, it is reached within ceil(101 / SWEEP) = 7 checks (one per message
    here), and conservation, the first invariant checked, is what breaks."""
    system = crowd(99)
    system.add_agent(SilentThief(system, "thief", "trader", "idle57"))
    with pytest.raises(RunFailed) as info:
        system.run(10)
    assert "USDC not conserved" in str(info.value) and info.value.time_ms == 5000


@pytest.mark.parametrize("every", [1, 200])
def test_an_account_left_unliquidated_breaks_timeliness_however_sparse_the_checks(every):
    """The liquidator's messages to the trader are held from t=4s: at t=5s the trader is at MMR
    150.75% and nothing starts its liquidation. The grace is two loops plus a second (3 s), so
    the first check after t=8s fails (at the next event, t=10s, or at the end with sparse
    checks), naming t=5s, when the trader's own health report found it unhealthy, however
    often the observer checks."""
    system, _ = long_then_drop([Fault("hold", "liquidator", "account:trader", 4_000, 20_000)])
    system.observer.every = every
    with pytest.raises(RunFailed) as info:
        system.run(12)
    text = str(info.value)
    assert "invariant 'liquidation is timely'" in text
    assert "trader has been at MMR 1.5075 >= 100% since t=5.000s and is not being liquidated" in text
    assert info.value.time_ms == (10_000 if every == 1 else 12_000)


def test_a_liquidation_buy_back_redeems_the_accounts_own_lend_first():
    """Found by the fuzzer (seed 726). T auto-lends its USDC, borrows 15 SOL and sells them at
    100 into the maker's bid: 2,500 USDC less the fee, all lent. SOL steps to 155 at t=5s:
    liability 15 x 155 = 2,325 against about 2,498.5 USDC, equity ~173 against maintenance
    0.10 x 2,325 = 232.5: MMR ~134%, a book liquidation. Its buy-back of SOL needs USDC the
    account has lent: the order must wait for the redeem, not lock funds it does not hold
    (which left USDC available negative)."""
    system = System(PROFILE, seed=3)
    system.set_path("SOL", Steps(((0, D(100)), (5_000, D(155)))))
    system.add_account("maker", deposits={"USDC": D(1_000_000), "SOL": D(1000)})
    system.add_account("lender", deposits={"SOL": D(1000)})
    system.add_account("t", deposits={"USDC": D(1000)}, settings=Settings(leverage_limit=D(10), auto_lend=True))
    system.add_agent(ScriptedTrader(system, "lender", "lender", [(0, LoanRequest("l", "lend", "SOL", D(1000)))]))
    system.add_agent(ScriptedTrader(system, "maker", "maker", [
        (800, limit("mb", "maker", "SOL_USDC", Side.BID, "15", "100")),
        (5_200, limit("ma", "maker", "SOL_USDC", Side.ASK, "20", "155.5")),
    ]))
    system.add_agent(ScriptedTrader(system, "t", "t", [
        (500, LoanRequest("b", "borrow", "SOL", D(15))),
        (1_000, market_order("s", "t", "SOL_USDC", Side.ASK, "15")),
    ]))
    result = system.run(9)
    stages = [s.stage for s in result.history["t"]]
    assert stages[0] == "start" and "conversion" in stages
    redeems = events_of(result, "redeem", actor="account:t")
    buy_back = next(e for e in events_of(result, "order_placed", actor="account:t") if e["origin"] == "LIQUIDATION_AUTOCLOSE")
    assert redeems and redeems[0]["seq"] < buy_back["seq"]  # the lend is redeemed, then the order goes out
    assert D(result.summary["accounts"]["t"]["borrows"]["SOL"]) < D(15)


def test_a_usdc_shortfall_converts_lent_collateral_after_redeeming_it():
    """L (1,000 USDC and 100 SOL, both auto-lent; no autoBorrowSettlements) buys 1 BTC perp at
    100,000 (fee 50) and BTC falls to 97,000 at t=5s: the loss of 3,000 realized at t=10s takes
    its USDC below zero. The USDC lend is redeemed (950 of it is left), then SOL is sold into the
    maker's bid at 99. Its SOL is all lent: the conversion must redeem it first, not reserve SOL
    the account does not hold, and the fund must pay nothing.

    The sale is sized to cover 2,050 at the impact band's floor after the 0.1% taker fee:
    2,050 / (100 x 0.999 x 0.97) = 21.155 -> 21.16 SOL. It fills at 99: 2,094.84 less the fee
    2.09484 is 2,092.74516, and the 42.74516 over the shortfall is auto-lent again."""
    system = System(PROFILE, seed=3)
    system.set_path("BTC", Steps(((0, D(100000)), (5_000, D(97000)))))
    system.set_path("SOL", Constant(D(100)))
    system.add_account("maker", deposits={"USDC": D(1_000_000), "SOL": D(1000)}, markets=[BTC, "SOL_USDC"])
    system.add_account("l", deposits={"USDC": D(1000), "SOL": D(100)}, markets=[BTC, "SOL_USDC"],
                       settings=Settings(leverage_limit=D(20), auto_lend=True, auto_borrow_settlements=False))
    system.add_agent(ScriptedTrader(system, "maker", "maker", [
        (500, limit("ma", "maker", BTC, Side.ASK, "1", "100000")),
        (500, limit("mb", "maker", "SOL_USDC", Side.BID, "100", "99")),
    ]))
    system.add_agent(ScriptedTrader(system, "l", "l", [(1_000, limit("lb", "l", BTC, Side.BID, "1", "100000"))]))
    result = system.run(15)
    conversion = next(e for e in events_of(result, "order_placed", actor="account:l")
                      if e["origin"] == "COLLATERAL_CONVERSION")
    sol_redeems = events_of(result, "redeem", actor="account:l", asset="SOL")
    assert [e["quantity"] for e in sol_redeems] == [D("21.16")] and sol_redeems[0]["seq"] < conversion["seq"]
    assert events_of(result, "fill", actor="account:l", order_id=conversion["order_id"])
    assert not events_of(result, "fund_cover", actor="account:l")
    final = result.summary["accounts"]["l"]
    assert D(final["balances"].get("USDC", 0)) >= 0 and D(final["unsettled_equity"]) == 0
    assert final["lends"] == {"SOL": D("78.84"), "USDC": D("42.74516")} and not final["balances"]


def test_an_event_log_calls_every_listener_in_order() -> None:
    """One listener is called directly; a second turns it into a fan-out, first comer first."""
    from actors.events import EventLog

    log = EventLog()
    heard: list[tuple[str, int]] = []
    log.listen(lambda e: heard.append(("observer", e["seq"])))
    log.append({"event": "a", "actor": "x", "t": 0})
    log.listen(lambda e: heard.append(("view", e["seq"])))
    log.append({"event": "b", "actor": "x", "t": 0})
    assert heard == [("observer", 1), ("observer", 2), ("view", 2)]
