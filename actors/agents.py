"""Trader agents: they act for one sub-account and hear only what it tells them and the feed.

* ``MarketMaker`` quotes post-only levels around the price it hears, refreshing on a timer: it
  cancels, waits until its cancels are confirmed (so a new quote is never margin-checked next to
  the old one), then quotes again.
* ``NoiseTrader`` places random orders at seeded random intervals: market and limit, both sides,
  sometimes IOC or reduce-only; each new order replaces whatever it still had resting.
* ``ScriptedTrader`` sends a scenario's actions at their times and keeps every reply, so
  expectations ("order X refused with INSUFFICIENT_MARGIN") can be checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Protocol

from actors.determinism import stream
from exchange.decimals import ceil_to, floor_to
from exchange.machine import Machine
from exchange.orders import ErrorCode, Fill, Order, OrderType, Rejection, Side, TimeInForce
from exchange.profile import Market, Profile
from exchange.protocol import (
    FEED,
    SCHEDULER,
    CancelAll,
    Deposit,
    OrderChanged,
    OrderFilled,
    OrderPlaced,
    OrderRefused,
    PlaceOrder,
    PriceSnapshot,
    PriceUpdate,
    RequestDone,
    RequestRefused,
    Schedule,
    Subscribe,
    Tick,
    account_address,
)


class Venue(Protocol):
    """What an agent needs of the run it trades in: the seed its randomness derives from and
    the venue's profile (the actor system and the direct engine both have them)."""

    seed: int
    profile: Profile

BPS = Decimal("0.0001")


class Agent(Machine):
    """An agent's plumbing: its sub-account, its prices, its open orders and every reply."""

    handlers = {
        Tick: "on_tick",
        OrderPlaced: "on_placed",
        OrderRefused: "on_refused",
        OrderFilled: "on_filled",
        OrderChanged: "on_changed",
        RequestDone: "on_request_done",
        RequestRefused: "on_request_refused",
        PriceUpdate: "on_price",
        PriceSnapshot: "on_snapshot",
    }

    def __init__(self, system: Venue, name: str, account_id: str) -> None:
        super().__init__(f"agent:{name}")
        self.name = name
        self.account_id = account_id
        self.target = account_address(account_id)
        self.rng = stream(system.seed, self.address)
        self.prices: dict[str, Decimal] = {}
        self.live: dict[str, Order] = {}
        self.refused: dict[str, Rejection] = {}
        self.placed: dict[str, Order] = {}
        self.fills: list[Fill] = []
        self.requests: dict[str, Rejection | str] = {}  # request id -> refusal, or the done detail
        self._n = 0

    def start(self) -> None:
        """Called when the run starts: subscribe and schedule (override)."""

    def next_id(self) -> str:
        self._n += 1
        return f"{self.name}-{self._n}"

    def place(self, market: str, side: Side, quantity: Decimal | None, price: Decimal | None = None, **flags: Any) -> str:
        """Send an order; returns its id."""
        order_type = OrderType.LIMIT if price is not None else OrderType.MARKET
        order = Order(self.next_id(), self.account_id, market, side, order_type, quantity, price, **flags)
        self.live[order.order_id] = order
        self.send(self.target, PlaceOrder(order))
        return order.order_id

    def reference(self, market: Market) -> Decimal | None:
        """The price this agent quotes around: a perp's mark, or the spot base's index."""
        return self.prices.get(market.symbol if market.is_perp else market.base)

    def on_tick(self, sender: str, message: Tick) -> None:
        """Override."""

    def on_placed(self, sender: str, message: OrderPlaced) -> None:
        self.placed[message.order.order_id] = message.order

    def on_refused(self, sender: str, message: OrderRefused) -> None:
        self.live.pop(message.order.order_id, None)
        self.refused[message.order.order_id] = message.rejection

    def on_filled(self, sender: str, message: OrderFilled) -> None:
        self.fills.append(message.fill)

    def on_changed(self, sender: str, message: OrderChanged) -> None:
        if message.update.status.is_final:
            self.live.pop(message.update.order_id, None)

    def on_request_done(self, sender: str, message: RequestDone) -> None:
        self.requests[message.request_id] = message.detail

    def on_request_refused(self, sender: str, message: RequestRefused) -> None:
        self.requests[message.request_id] = message.rejection

    def on_price(self, sender: str, message: PriceUpdate) -> None:
        self.prices.update(message.prices)

    def on_snapshot(self, sender: str, message: PriceSnapshot) -> None:
        self.prices.update(message.prices)


class MarketMaker(Agent):
    """Post-only quotes: ``levels`` per side, the first ``spread_bps``/2 from the reference
    price, then every ``spacing_bps``; ``size`` base units per level; refreshed every
    ``refresh_ms`` (cancel all, then quote again) unless no reference price moved and every
    quote still rests: a maker does not churn a book nothing has touched."""

    def __init__(self, system: Venue, name: str, account_id: str, markets: Sequence[str], *, size: Decimal | dict[str, Decimal],
                 spread_bps: Decimal = Decimal(10), levels: int = 5, spacing_bps: Decimal = Decimal(5),
                 refresh_ms: int = 1000) -> None:
        super().__init__(system, name, account_id)
        self.markets = [system.profile.markets[m] for m in markets]
        self.size = size
        self.spread = spread_bps * BPS
        self.levels = levels
        self.spacing = spacing_bps * BPS
        self.refresh_ms = refresh_ms
        self._waiting = False
        # The last round of quotes: the references it used, the fills so far, its order ids.
        self._round: tuple[tuple[Decimal | None, ...], int, tuple[str, ...]] | None = None

    def start(self) -> None:
        symbols = tuple(dict.fromkeys(m.symbol if m.is_perp else m.base for m in self.markets))
        self.send(FEED, Subscribe(symbols))
        self.send(SCHEDULER, Schedule("agent", 0, self.refresh_ms))

    def on_tick(self, sender: str, message: Tick) -> None:
        if self._untouched():
            return
        if self.live:
            self._waiting = True
            self.send(self.target, CancelAll())
        else:
            self._quote()

    def on_changed(self, sender: str, message: OrderChanged) -> None:
        super().on_changed(sender, message)
        if self._waiting and not self.live:
            self._waiting = False
            self._quote()

    def on_refused(self, sender: str, message: OrderRefused) -> None:
        super().on_refused(sender, message)
        if self._waiting and not self.live:
            self._waiting = False
            self._quote()

    def _size_for(self, market: Market) -> Decimal:
        size = self.size[market.symbol] if isinstance(self.size, dict) else self.size
        return max(floor_to(size, market.step_size), market.min_quantity)

    def _references(self) -> tuple[Decimal | None, ...]:
        return tuple(self.reference(market) for market in self.markets)

    def _untouched(self) -> bool:
        """No reference moved, nothing filled, and every quote of the last round was answered
        and, if accepted, still rests."""
        if self._round is None:
            return False
        references, fills, ids = self._round
        if references != self._references() or fills != len(self.fills):
            return False
        if any(oid not in self.placed and oid not in self.refused for oid in ids):
            return False
        return set(self.live) == {oid for oid in ids if oid in self.placed}

    def _quote(self) -> None:
        ids: list[str] = []
        for market in self.markets:
            ref = self.reference(market)
            if ref is None:
                continue
            size = self._size_for(market)
            for i in range(self.levels):
                offset = self.spread / 2 + self.spacing * i
                bid = floor_to(ref * (1 - offset), market.tick_size)
                ask = ceil_to(ref * (1 + offset), market.tick_size)
                if bid > 0:
                    ids.append(self.place(market.symbol, Side.BID, size, bid, post_only=True))
                ids.append(self.place(market.symbol, Side.ASK, size, ask, post_only=True))
        self._round = (self._references(), len(self.fills), tuple(ids))


class NoiseTrader(Agent):
    """Random orders every ``interval_ms`` on average (uniform in [interval/2, 3 interval/2]):
    ``market_share`` of them market orders, the rest limits within ``within_bps`` of the price;
    sizes up to ``max_steps`` steps; some IOC or post-only, some reduce-only on perps, some spot
    orders with ``autoBorrow`` (``auto_borrow_share``). With ``top_up``, it answers an order
    refused because its sub-account is being liquidated with a deposit of that much USDC: a
    trader meeting a margin call, and a deposit arriving mid-liquidation."""

    def __init__(self, system: Venue, name: str, account_id: str, markets: Sequence[str], *, interval_ms: int = 1000,
                 max_steps: int | dict[str, int] = 10, market_share: float = 0.3, within_bps: int = 20,
                 reduce_only_share: float = 0.1, ioc_share: float = 0.2, auto_borrow_share: float = 0.0,
                 post_only_share: float = 0.0, top_up: Decimal = Decimal(0)) -> None:
        super().__init__(system, name, account_id)
        self.markets = [system.profile.markets[m] for m in markets]
        self.interval_ms = interval_ms
        self.max_steps = max_steps
        self.market_share = market_share
        self.within_bps = within_bps
        self.reduce_only_share = reduce_only_share
        self.ioc_share = ioc_share
        self.auto_borrow_share = auto_borrow_share
        self.post_only_share = post_only_share
        self.top_up = top_up
        self.settle_asset = system.profile.settlement_asset

    def on_refused(self, sender: str, message: OrderRefused) -> None:
        super().on_refused(sender, message)
        if self.top_up and message.rejection.code is ErrorCode.ACCOUNT_LIQUIDATING:
            self.send(self.target, Deposit(self.settle_asset, self.top_up, self.next_id()))

    def start(self) -> None:
        symbols = tuple(dict.fromkeys(m.symbol if m.is_perp else m.base for m in self.markets))
        self.send(FEED, Subscribe(symbols))
        self._next(0)

    def _next(self, now: int) -> None:
        wait = self.rng.randint(self.interval_ms // 2, self.interval_ms * 3 // 2)
        self.send(SCHEDULER, Schedule("agent", now + max(wait, 1)))

    def on_tick(self, sender: str, message: Tick) -> None:
        self._next(message.time_ms)
        if self.live:
            # Its previous resting order is replaced, not left to go stale on the book (the
            # cancel reaches the market first: same links, in order).
            self.send(self.target, CancelAll())
        market = self.rng.choice(self.markets)
        ref = self.reference(market)
        if ref is None:
            return
        steps = self.max_steps[market.symbol] if isinstance(self.max_steps, dict) else self.max_steps
        quantity = max(market.step_size * self.rng.randint(1, steps), market.min_quantity)
        side = Side.BID if self.rng.random() < 0.5 else Side.ASK
        flags: dict[str, Any] = {}
        if market.is_perp and self.rng.random() < self.reduce_only_share:
            flags["reduce_only"] = True
        if not market.is_perp and self.rng.random() < self.auto_borrow_share:
            flags["auto_borrow"] = True
        if self.rng.random() < self.market_share:
            self.place(market.symbol, side, quantity, None, time_in_force=TimeInForce.IOC, **flags)
            return
        away = Decimal(self.rng.randint(-self.within_bps, self.within_bps)) * BPS
        price = floor_to(ref * (1 + away), market.tick_size)
        roll = self.rng.random()
        if roll < self.ioc_share:
            flags["time_in_force"] = TimeInForce.IOC
        elif roll < self.ioc_share + self.post_only_share:
            flags["post_only"] = True
        if price > 0:
            self.place(market.symbol, side, quantity, price, **flags)


class ScriptedTrader(Agent):
    """Sends ``actions`` (time_ms, message for the sub-account) at their times, in order."""

    def __init__(self, system: Venue, name: str, account_id: str, actions: Sequence[tuple[int, object]]) -> None:
        super().__init__(system, name, account_id)
        self.actions = sorted(actions, key=lambda a: a[0])  # stable: same-time actions keep their order

    def start(self) -> None:
        for when in dict.fromkeys(t for t, _ in self.actions):
            self.send(SCHEDULER, Schedule(f"script@{when}", when))

    def on_tick(self, sender: str, message: Tick) -> None:
        for when, action in self.actions:
            if when == message.time_ms:
                if isinstance(action, PlaceOrder):
                    self.live[action.order.order_id] = action.order
                self.send(self.target, action)
