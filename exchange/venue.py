"""One venue's machines and how a run wires them at its first instant, for either driver.

A ``Venue`` holds the price feed, the liquidator, a market per symbol, a lending pool per
asset, the sub-accounts and whatever agents trade on them. ``start`` says what happens at
virtual time 0, in order: first prices, subscriptions, deposits, agents' first requests, and
the calendar's venue entries (prices, funding, interest, the liquidation loop, samples). The
direct engine and the actor runtime both start a venue this way, so both runs begin alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any

from exchange.book import OrderBook
from exchange.calendar import Calendar
from exchange.decimals import ZERO
from exchange.feed import FeedMachine, PricePath
from exchange.ledger import Settings, SubAccount
from exchange.lending import LendingPool
from exchange.liquidation import BackstopProvider
from exchange.liquidator import LiquidatorMachine
from exchange.machine import Effect, Machine, Send
from exchange.margin import estimate_liquidation_price, totals
from exchange.market import MarketMachine
from exchange.pool import PoolMachine
from exchange.profile import Profile
from exchange.protocol import FEED, LIQUIDATOR, SCHEDULER, Deposit, Tick, account_address, market_address, pool_address
from exchange.subaccount import SubAccountMachine

SETUP = "setup"  # the sender of the deposits a run starts with


class Venue:
    def __init__(
        self, profile: Profile, *, seed: int = 0, price_interval_ms: int = 1000, sample_ms: int | None = None
    ) -> None:
        self.profile = profile
        self.seed = seed
        self.price_interval_ms = price_interval_ms
        self.sample_ms = sample_ms  # every account logs a health sample this often (None: never)
        self.feed = FeedMachine(profile)
        self.liquidator = LiquidatorMachine(profile)
        self.markets = {s: MarketMachine(OrderBook(profile, s)) for s in profile.markets}
        settle_step = profile.assets[profile.settlement_asset].step
        self.pools = {a: PoolMachine(LendingPool(spec), settle_step) for a, spec in profile.assets.items()}
        self.accounts: dict[str, SubAccountMachine] = {}
        self.agents: list[Machine] = []
        self._deposits: list[tuple[str, str, Decimal]] = []
        self._by_owner: dict[str, list[str]] = {}

    # -- building ---------------------------------------------------------------------------
    def add_account(
        self,
        account_id: str,
        *,
        owner: str | None = None,
        settings: Settings | None = None,
        deposits: Mapping[str, Decimal] | None = None,
        markets: Iterable[str] = (),
    ) -> SubAccountMachine:
        """A sub-account with deposits made at the start; ``markets`` it will trade (it hears
        their prices from the start; any other market it subscribes to when it first orders)."""
        if account_id in self.accounts:
            raise ValueError(f"sub-account {account_id} exists")
        owner = owner if owner is not None else account_id
        account = SubAccount(account_id, self.profile, owner=owner, settings=settings)
        siblings = self._by_owner.setdefault(owner, [])
        machine = SubAccountMachine(account, siblings, markets)
        for sibling in siblings:
            self.accounts[sibling].siblings += (account_id,)
        siblings.append(account_id)
        self.accounts[account_id] = machine
        for asset, quantity in (deposits or {}).items():
            self._deposits.append((account_id, asset, Decimal(quantity)))
        return machine

    def add_agent(self, agent: Machine) -> Machine:
        self.agents.append(agent)
        return agent

    def set_path(self, asset: str, path: PricePath) -> None:
        self.feed.set_path(asset, path)

    def set_premium(self, perp: str, path: PricePath) -> None:
        self.feed.set_premium(perp, path)

    def add_backstop(self, account_id: str, capacity: Mapping[str, Decimal]) -> BackstopProvider:
        """Make a sub-account a backstop liquidity provider, consulted in the order added."""
        provider = BackstopProvider(account_id, dict(capacity))
        self.liquidator.providers.append(provider)
        return provider

    def machines(self) -> list[Machine]:
        """Every machine, in the fixed order a run starts them."""
        return [self.feed, self.liquidator, *self.markets.values(), *self.pools.values(), *self.accounts.values(),
                *self.agents]

    # -- the first instant ------------------------------------------------------------------
    def start(self, calendar: Calendar) -> Iterator[tuple[str, list[Effect]]]:
        """What happens at time 0, in order, as (sender, effects) for the driver to carry out
        before the next is produced; then the calendar gets the venue's entries."""
        feed = self.feed
        feed.prices = feed.evaluate(0)
        for symbol, price in feed.prices.items():
            feed.emit("price", symbol=symbol, price=price)
        yield FEED, feed.take()
        for market in self.markets.values():
            market.subscribe()
            yield market.address, market.take()
        self.liquidator.subscribe()
        yield LIQUIDATOR, self.liquidator.take()
        for machine in self.accounts.values():
            machine.account.marks.update(feed.prices)
            machine.subscribe(s for market in machine.markets for s in machine.symbols_for(market))
            yield machine.address, machine.take()
        yield SETUP, [Send(account_address(a), Deposit(asset, q)) for a, asset, q in self._deposits]
        for agent in self.agents:
            agent.start()  # type: ignore[attr-defined]
            yield agent.address, agent.take()
        schedule = calendar.add
        schedule(FEED, "prices", self.price_interval_ms, self.price_interval_ms)
        for market in self.profile.perp_markets():
            schedule(market_address(market.symbol), "funding", market.funding_interval_ms, market.funding_interval_ms)
        for asset in self.profile.assets:
            schedule(pool_address(asset), "interest", self.profile.interest_interval_ms,
                     self.profile.interest_interval_ms)
        loop = self.profile.liquidation.loop_interval_ms
        schedule(LIQUIDATOR, "liquidation", loop, loop)
        if self.sample_ms:
            for machine in self.accounts.values():
                schedule(machine.address, "sample", 0, self.sample_ms)

    # -- the last instant -------------------------------------------------------------------
    def closing_samples(self, now_ms: int) -> Iterator[tuple[str, list[Effect]]]:
        """With sampling on, every account's health once the run's last instant has settled, so
        a log tells how each account ended (a mark that arrived after the last periodic sample
        is in it; "liquidation pending" is judged from it). Logged only: nothing is sent."""
        if not self.sample_ms:
            return
        for machine in self.accounts.values():
            yield machine.address, machine.handle(SCHEDULER, Tick("closing_sample", now_ms), now_ms)

    # -- reading ----------------------------------------------------------------------------
    @property
    def fund(self) -> dict[str, Decimal]:
        """The liquidity fund: its cash and the liquidation fees the books hold."""
        fund = dict(self.liquidator.fund)
        for market in self.markets.values():
            for asset, fees in market.book.liquidation_fees.items():
                fund[asset] = fund.get(asset, ZERO) + fees
        return fund

    def summary(self, events: Iterable[dict[str, Any]]) -> dict[str, Any]:
        """Per sub-account and per market numbers at the end of a run (JSON-ready values)."""
        accounts = {}
        history = self.liquidator.history
        for account_id, machine in self.accounts.items():
            account = machine.account
            t = totals(account)
            accounts[account_id] = {
                "net_equity": t.net_equity,
                "imr": t.imr,
                "mmr": t.mmr,
                "available": t.available,
                "balances": {a: b.available + b.locked for a, b in account.balances.items() if b.available + b.locked},
                "positions": {s: p.quantity for s, p in account.positions.items()},
                "lends": dict(account.lends),
                "borrows": dict(account.borrows),
                "unsettled_equity": account.unsettled_equity,
                "liquidating": account.liquidating,
                "open_orders": len(account.open_orders),
                "liquidation_prices": {s: estimate_liquidation_price(account, s) for s, p in account.positions.items()
                                       if p.quantity},
                "liquidations": sum(1 for s in history.get(account_id, []) if s.stage == "start"),
            }
        trades: dict[str, list[Any]] = {s: [0, ZERO] for s in self.markets}
        funding: dict[str, Decimal] = {s: ZERO for s in self.markets}
        for event in events:
            kind = event["event"]
            if kind == "trade":
                row = trades[event["actor"].split(":", 1)[1]]
                row[0] += 1
                row[1] += event["quantity"] * event["price"]
            elif kind == "funding_payment" and event["amount"] > 0:
                funding[event["market"]] += event["amount"]
        markets = {
            s: {"trades": trades[s][0], "volume": trades[s][1], "funding_paid": funding[s],
                "last_price": m.book.last_trade_price, "mark": m.mark}
            for s, m in self.markets.items()
        }
        return {"accounts": accounts, "markets": markets, "fund": self.fund}
