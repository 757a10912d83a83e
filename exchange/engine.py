"""The whole venue in one process, synchronously: the direct engine.

The engine is the network at zero latency, without Trio. It drives the same machines the actor
runtime does (``exchange.venue``): every effect a machine returns is carried out in order, each
message delivered first in, first out, until nothing is left to deliver; then the calendar
moves to its next entry. No latency, no faults, no interleaving: every participant hears
everything at once, in one order. That makes it the reference the actors are compared with
(``marginsim fuzz --differential``) and the harness the core's multi-account tests drive through
plain method calls.

Nothing here decides anything: every venue rule lives in the machines and the modules they
call. The methods below only speak for a trader (they send what an agent would send, from the
address ``engine``) and read the replies. Time is integer milliseconds; ``advance_to`` runs the
calendar (prices, PnL realization, funding, interest, the liquidation loop) up to a time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import attrs

from exchange.book import OrderBook
from exchange.calendar import Calendar
from exchange.invariants import quiet_violations
from exchange.ledger import Settings, SubAccount
from exchange.lending import Grant, LendingPool
from exchange.limits import max_withdrawal_quantity
from exchange.liquidation import BackstopProvider
from exchange.machine import Effect, Event, Machine, Send
from exchange.orders import Fill, Order, OrderType, OrderUpdate, Rejection, Side
from exchange.profile import Profile
from exchange.protocol import (
    FEED,
    SCHEDULER,
    CancelAll,
    CancelOrder,
    Deposit,
    LoanRequest,
    OrderChanged,
    OrderFilled,
    OrderPlaced,
    OrderRefused,
    PlaceOrder,
    RequestDone,
    RequestRefused,
    TransferOut,
    UpdateSettings,
    Withdraw,
    account_address,
)
from exchange.venue import SETUP, Venue

ENGINE = "engine"  # the address the engine's callers speak from


@attrs.frozen
class OrderOutcome:
    """What one order did: refused, or its own fills and updates until the venue was quiet."""

    order: Order
    rejection: Rejection | None
    fills: tuple[Fill, ...] = ()
    updates: tuple[OrderUpdate, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.rejection is None


# -- reading a trader's replies ---------------------------------------------------------
# What a sub-account answers its trader, read the same way by every caller (the engine's
# methods below, the API over the actors): one home for what a reply means.


def order_answered(order: Order, replies: Iterable[object]) -> bool:
    """Whether the sub-account has taken or refused ``order`` (its other replies may follow)."""
    return any(isinstance(r, (OrderPlaced, OrderRefused)) and r.order.order_id == order.order_id for r in replies)


def order_outcome(order: Order, replies: Iterable[object]) -> OrderOutcome:
    """The order's refusal, or its own fills and updates, among the replies."""
    rejection, fills, updates = None, [], []
    for reply in replies:
        if isinstance(reply, OrderRefused) and reply.order.order_id == order.order_id:
            rejection = reply.rejection
        elif isinstance(reply, OrderFilled) and reply.fill.order_id == order.order_id:
            fills.append(reply.fill)
        elif isinstance(reply, OrderChanged) and reply.update.order_id == order.order_id:
            updates.append(reply.update)
    return OrderOutcome(order, rejection, tuple(fills), tuple(updates))


def cancel_outcome(order_id: str, replies: Iterable[object]) -> OrderUpdate | Rejection | None:
    """The order's final update or the cancel's refusal; None: not answered yet."""
    for reply in replies:
        if isinstance(reply, OrderChanged) and reply.update.order_id == order_id and reply.update.status.is_final:
            return reply.update
        if isinstance(reply, RequestRefused) and reply.request_id == order_id:
            return reply.rejection
    return None


def cancelled(replies: Iterable[object]) -> list[OrderUpdate]:
    """The orders a cancel-all ended, in the order their ends were told."""
    return [r.update for r in replies if isinstance(r, OrderChanged) and r.update.status.is_final]


def request_outcome(request_id: str, replies: Iterable[object]) -> RequestDone | Rejection | None:
    """A deposit's, loan's, withdrawal's or settings change's answer; None: not answered yet."""
    for reply in replies:
        if isinstance(reply, RequestDone) and reply.request_id == request_id:
            return reply
        if isinstance(reply, RequestRefused) and reply.request_id == request_id:
            return reply.rejection
    return None


class Exchange:
    """A venue driven by method calls: its machines, a first-in first-out queue and a calendar.

    ``Exchange(profile)`` starts an empty venue at once; ``Exchange(profile, venue=...)`` starts
    one built elsewhere (a scenario's accounts, agents and price paths). Every event it logs is
    in ``events``, in the schema the actors log.
    """

    def __init__(self, profile: Profile, *, venue: Venue | None = None) -> None:
        self.profile = profile
        self.venue = venue if venue is not None else Venue(profile)
        self.seed = self.venue.seed
        self.settle = profile.settlement_asset
        self.now_ms = 0
        self.calendar = Calendar()
        self.events: list[Event] = []
        self.external: dict[str, Decimal] = {}  # deposits minus withdrawals, per asset
        self._machines: dict[str, Machine] = {m.address: m for m in self.venue.machines()}
        self._queue: deque[tuple[str, str, object]] = deque()
        self._replies: list[object] = []
        self._ids = 0
        for sender, effects in self.venue.start(self.calendar):
            self._carry_out(sender, effects)
        self._pump()
        # What tests and studies read, as the machines keep it: index prices and perp marks as
        # published; the liquidity fund's cash outside the books (the books hold the liquidation
        # fees they charged; it may go negative: the venue's loss); the liquidation history and
        # the liquidations running now, by sub-account.
        self.prices = self.venue.feed.prices
        self.fund = self.venue.liquidator.fund
        self.liquidation_history = self.venue.liquidator.history
        self.liquidations = self.venue.liquidator.cases

    # -- the zero-latency network -----------------------------------------------------------
    def _carry_out(self, sender: str, effects: Iterable[Effect]) -> None:
        queue, log = self._queue, self._log
        for effect in effects:
            if type(effect) is Send:
                queue.append((sender, effect.recipient, effect.message))
            else:
                log(effect.event)  # type: ignore[union-attr]

    def _pump(self) -> None:
        """Deliver until nothing is left to deliver."""
        queue, machines, now = self._queue, self._machines, self.now_ms
        while queue:
            sender, recipient, message = queue.popleft()
            if recipient == SCHEDULER:
                self.calendar.on_schedule(sender, message)  # type: ignore[arg-type]
            elif recipient == ENGINE:
                self._replies.append(message)
            elif recipient != SETUP:
                self._carry_out(recipient, machines[recipient].handle(sender, message, now))

    def _log(self, event: Event) -> None:
        kind = event["event"]
        if kind == "deposit" or kind == "withdrawal":
            sign = 1 if kind == "deposit" else -1
            self.external[event["asset"]] = self.external.get(event["asset"], Decimal(0)) + sign * event["quantity"]
        self.events.append(event)

    def _ask(self, account_id: str, message: object) -> list[object]:
        """Send ``message`` to a sub-account as its trader; every reply until quiet."""
        if account_id not in self.venue.accounts:
            raise KeyError(f"no sub-account {account_id}")
        self._replies = []
        self._queue.append((ENGINE, account_address(account_id), message))
        self._pump()
        return self._replies

    def _request_id(self) -> str:
        self._ids += 1
        return f"{ENGINE}-{self._ids}"

    def advance_to(self, now_ms: int) -> None:
        """Run every calendar entry due up to ``now_ms``, in time order."""
        calendar = self.calendar
        while True:
            due = calendar.next_ms()
            if due is None or due > now_ms:
                break
            self.now_ms = due
            for address, tick in calendar.due():
                self._queue.append((SCHEDULER, address, tick))
            self._pump()
        self.now_ms = max(self.now_ms, now_ms)

    def close(self) -> None:
        """End the run at the current instant: the accounts' closing health samples."""
        for address, effects in self.venue.closing_samples(self.now_ms):
            self._carry_out(address, effects)
        self._pump()

    # -- building ---------------------------------------------------------------------------
    def add_account(self, account_id: str, *, owner: str | None = None, settings: Settings | None = None) -> SubAccount:
        """A sub-account that hears every price, as the whole venue does here."""
        machine = self.venue.add_account(account_id, owner=owner, settings=settings)
        machine.account.marks.update(self.venue.feed.prices)
        self._machines[machine.address] = machine
        machine.now_ms = self.now_ms
        machine.subscribe([*self.profile.assets, *(m.symbol for m in self.profile.perp_markets())])
        self._carry_out(machine.address, machine.take())
        self._pump()
        return machine.account

    def add_backstop(self, account_id: str, capacity: Mapping[str, Decimal]) -> BackstopProvider:
        return self.venue.add_backstop(account_id, capacity)

    def set_price(self, symbol: str, price: Decimal) -> None:
        """Publish an index price (asset) or a mark (perp market) as the feed would.

        Setting an asset's index also sets the mark of the perps on it (set the perp after the
        index for a mark of its own).
        """
        prices = {symbol: price}
        if symbol in self.profile.assets:
            prices.update({m.symbol: price for m in self.profile.perp_markets() if m.base == symbol})
        feed = self.venue.feed
        feed.now_ms = self.now_ms
        feed.publish(prices)
        self._carry_out(FEED, feed.take())
        self._pump()

    # -- a trader's requests ----------------------------------------------------------------
    def order(self, account_id: str, symbol: str, side: Side, quantity: Decimal | None,
              price: Decimal | None = None, **flags: Any) -> OrderOutcome:
        """Convenience: build an order (limit if a price is given, else market) and place it."""
        order_type = OrderType.LIMIT if price is not None else OrderType.MARKET
        return self.place(Order(f"{account_id}-{self._request_id()}", account_id, symbol, side, order_type, quantity,
                                price, **flags))

    def place(self, order: Order) -> OrderOutcome:
        return order_outcome(order, self._ask(order.account, PlaceOrder(order)))

    def cancel(self, account_id: str, symbol: str, order_id: str) -> OrderUpdate | Rejection:
        answer = cancel_outcome(order_id, self._ask(account_id, CancelOrder(symbol, order_id)))
        if answer is None:
            raise AssertionError(f"the cancel of {order_id} was not answered")
        return answer

    def cancel_all(self, account_id: str, symbols: Iterable[str] | None = None) -> list[OrderUpdate]:
        replies: list[object] = []
        for symbol in symbols if symbols is not None else (None,):
            replies += self._ask(account_id, CancelAll(symbol))
        return cancelled(replies)

    def _request(self, account_id: str, message: Any) -> RequestDone | Rejection:
        answer = request_outcome(message.request_id, self._ask(account_id, message))
        if answer is None:
            raise AssertionError(f"{type(message).__name__} {message.request_id} was not answered")
        return answer

    def deposit(self, account_id: str, asset: str, quantity: Decimal) -> Decimal:
        """Deposit; returns the part that repaid a debt to the liquidity fund."""
        seen = len(self.events)
        done = self._request(account_id, Deposit(asset, quantity, self._request_id()))
        if isinstance(done, Rejection):
            raise ValueError(done.message)
        return next(e["repaid_debt"] for e in self.events[seen:]
                    if e["event"] == "deposit" and e["actor"] == account_address(account_id))

    def loan(self, account_id: str, action: str, asset: str, quantity: Decimal) -> Grant | Rejection:
        """Lend, redeem, borrow or repay (``action``); a borrow past IMR 100% is refused with the
        numbers. ``lend``, ``redeem``, ``borrow`` and ``repay`` name the action."""
        done = self._request(account_id, LoanRequest(self._request_id(), action, asset, quantity))
        return done if isinstance(done, Rejection) else done.grants[0]

    def lend(self, account_id: str, asset: str, quantity: Decimal) -> Grant | Rejection:
        return self.loan(account_id, "lend", asset, quantity)

    def redeem(self, account_id: str, asset: str, quantity: Decimal) -> Grant | Rejection:
        return self.loan(account_id, "redeem", asset, quantity)

    def borrow(self, account_id: str, asset: str, quantity: Decimal) -> Grant | Rejection:
        return self.loan(account_id, "borrow", asset, quantity)

    def repay(self, account_id: str, asset: str, quantity: Decimal) -> Grant | Rejection:
        return self.loan(account_id, "repay", asset, quantity)

    def withdraw(self, account_id: str, asset: str, quantity: Decimal, *, auto_borrow: bool = False
                 ) -> Decimal | Rejection:
        """Withdraw ``quantity`` if available equity stays >= 0 (see ``limits.outflow_plan``)."""
        done = self._request(account_id, Withdraw(self._request_id(), asset, quantity, auto_borrow))
        return done if isinstance(done, Rejection) else quantity

    def transfer(self, source: str, target: str, asset: str, quantity: Decimal, *, auto_borrow: bool = False
                 ) -> Decimal | Rejection:
        """Move funds between sub-accounts of one owner under the withdrawal rule (spec 13)."""
        done = self._request(source, TransferOut(self._request_id(), target, asset, quantity, auto_borrow))
        return done if isinstance(done, Rejection) else quantity

    def update_settings(self, account_id: str, **changes: Any) -> RequestDone | Rejection:
        """PATCH a sub-account's settings (``leverage_limit``, ``auto_lend``, ...); a leverage
        limit the account's exposure does not fit is refused with the numbers."""
        return self._request(account_id, UpdateSettings(self._request_id(), **changes))

    def reconcile(self, account_id: str) -> None:
        """Let a sub-account settle after its ledger was changed from outside (tests do)."""
        machine = self.venue.accounts[account_id]
        machine.now_ms = self.now_ms
        machine.settle()
        self._carry_out(machine.address, machine.take())
        self._pump()

    # -- reading ----------------------------------------------------------------------------
    @property
    def accounts(self) -> dict[str, SubAccount]:
        return {a: m.account for a, m in self.venue.accounts.items()}

    @property
    def books(self) -> dict[str, OrderBook]:
        return {s: m.book for s, m in self.venue.markets.items()}

    @property
    def pools(self) -> dict[str, LendingPool]:
        return {a: m.pool for a, m in self.venue.pools.items()}

    def max_withdrawal_quantity(self, account_id: str, asset: str, *, auto_borrow: bool = False) -> Decimal:
        return max_withdrawal_quantity(self.accounts[account_id], asset, auto_borrow=auto_borrow)

    def invariant_violations(self) -> list[str]:
        """Every system-wide invariant, checked on the whole venue (see exchange.invariants)."""
        return quiet_violations(list(self.accounts.values()), list(self.books.values()), list(self.pools.values()),
                                self.fund, self.settle, self.external)
