"""Deliberately broken variants of the venue, each a realistic race bug, for the fuzzer to find.

Each mutant is a context manager that patches one piece of the running system and restores it
on exit. Only tests switch them on, and only in their own process (a worker process would not
inherit the patch under every start method), so campaigns with mutants run with ``jobs=1``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest

from actors.network import Hook, Network
from exchange import book, lending, liquidation, pretrade
from exchange.decimals import ZERO, floor_to
from exchange.funding import FundingClock, funding_payments
from exchange.ledger import SubAccount
from exchange.liquidation import Outcome
from exchange.machine import Machine
from exchange.margin import Change, Evaluation, Totals, totals
from exchange.market import MarketMachine
from exchange.orders import ErrorCode, OrderUpdate, Rejection
from exchange.protocol import (
    LIQUIDATOR,
    CancelAllOnBook,
    FillNotice,
    FundingNotice,
    LiquidationReport,
    Tick,
    account_address,
    market_address,
)
from exchange.subaccount import SubAccountMachine


@contextmanager
def _patched(owner: object, name: str, replacement: object) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(owner, name, replacement)
        yield


@contextmanager
def _handler(actor: type[Machine], name: str, replacement: Callable[..., None]) -> Iterator[None]:
    """Replace an actor's message handler (its dispatch table is resolved once per class)."""
    functions = {message: replacement if method == name else actor._functions[message]
                 for message, method in actor.handlers.items()}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(actor, name, replacement)
        patch.setattr(actor, "_functions", functions)
        yield


@contextmanager
def stale_liquidator() -> Iterator[None]:
    """The sub-account starts a liquidation on the liquidator's word: it does not re-check its
    own MMR, so a report that went stale (the price came back, a deposit arrived) liquidates a
    healthy account. Expected catch: "rule:liquidation-trigger"."""

    def on_start_liquidation(self: Any, sender: str, message: Any) -> None:
        account = self.account
        if account.liquidating:
            return
        t = totals(account)
        account.liquidating = True
        self.emit("liquidating", mmr=t.mmr)
        for market in self._markets_with_orders():
            self.send(market_address(market), CancelAllOnBook(account.id))
        self.send(LIQUIDATOR, LiquidationReport(message.loop, Outcome.STARTED, t.mmr, "on the liquidator's report"))
        self._report()

    with _handler(SubAccountMachine, "on_start_liquidation", on_start_liquidation):
        yield


@contextmanager
def open_orders_ignored() -> Iterator[None]:
    """The pre-trade check sizes a perp order as if the market had none of the account's other
    open orders: two bids can each pass alone and together take IMR past 100%. Expected catch:
    "the pre-trade check is honest" (the IMR it logs is not the account's true IMR)."""
    real = pretrade.evaluate_change

    def ignoring(account: SubAccount, change: Change, before: Totals | None = None) -> Evaluation:
        before = before if before is not None else totals(account)
        if change.perp is None:
            return real(account, change, before)
        sides = account.order_exposure.pop(change.perp[0], None)
        try:
            return real(account, change, before)
        finally:
            if sides is not None:
                account.order_exposure[change.perp[0]] = sides

    with _patched(pretrade, "evaluate_change", ignoring):
        yield


@contextmanager
def fills_out_of_order() -> Iterator[None]:
    """A final order update releases the order at once, even when fills it counts are still on
    the way: the funds they spend are unlocked (and may be lent out or spent) before they land.
    Expected catch: "no negative balance" or "conservation", under reordering faults."""

    def apply_update(self: SubAccount, update: OrderUpdate) -> Any:
        entry = self.open_orders.get(update.order_id)
        if entry is None:
            return None
        self._set_remaining(entry, update.remaining_quantity)
        if not update.status.is_final:
            return None
        entry.final = update
        self._release(entry)
        del self.open_orders[update.order_id]
        return entry

    with _patched(SubAccount, "apply_update", apply_update):
        yield


@contextmanager
def fills_applied_twice() -> Iterator[None]:
    """A held link, once released, replays its fills (a reconnect that resends its stream) and
    the sub-account books each of them again. Expected catch: "conservation" or "positions"."""
    real = Network.remove

    def remove(self: Network, hook: Hook) -> None:
        replayed = [m for m in hook.held if isinstance(m[2], FillNotice)]
        real(self, hook)
        for sender, recipient, message in replayed:
            self.send(sender, recipient, message)

    with _patched(Network, "remove", remove):
        yield


@contextmanager
def funding_on_stale_positions() -> Iterator[None]:
    """The market pays funding on the positions it held at its last price update, not at the
    funding instant: a position closed in between still pays or receives. Expected catch:
    "funding is paid on held positions"."""
    real_on_price = MarketMachine.on_price

    def on_price(self: Any, sender: str, message: Any) -> None:
        real_on_price(self, sender, message)
        self.funding_positions = dict(self.book.positions)

    def on_tick(self: Any, sender: str, message: Tick) -> None:
        if message.kind != "funding" or self.funding is None:
            return
        rate = self.funding.close_interval(message.time_ms)
        self.emit("funding_rate", rate=rate, mark=self.mark)
        if self.mark is None or not rate:
            return
        step = self.book.profile.assets[self.market.quote].step
        positions = getattr(self, "funding_positions", self.book.positions)
        payments = funding_payments(rate, positions, self.mark, step)
        if payments:
            self.emit("funding", rate=rate, mark=self.mark,
                          payments={a: (positions.get(a), amount) for a, amount in payments.items()})
        for account, amount in payments.items():
            self.send(account_address(account), FundingNotice(self.market.symbol, rate, amount))

    with _handler(MarketMachine, "on_price", on_price), _handler(MarketMachine, "on_tick", on_tick):
        yield


@contextmanager
def pool_over_lends() -> Iterator[None]:
    """A pool that only checks that something is lent before granting a borrow, not that it is
    still there (or what the borrow does to utilization): it lends out supply already lent.
    Expected catch: "pools" (cash below zero)."""
    real = lending.LendingPool._borrow_refusal

    def borrow_refusal(self: lending.LendingPool, account: str, quantity: Decimal, liquidation: bool,
                       redeemed: Decimal = Decimal(0)) -> Rejection | None:
        refused = real(self, account, quantity, liquidation, redeemed)
        if refused is not None and refused.code is ErrorCode.INSUFFICIENT_SUPPLY and self.lent > redeemed:
            return None
        return refused

    with _patched(lending.LendingPool, "_borrow_refusal", borrow_refusal):
        yield


@contextmanager
def funding_sign_flipped() -> Iterator[None]:
    """The premium is read index over mark: shorts pay longs while the mark is over the index.
    Every total still balances. Expected catch: "rule:funding-direction"."""

    def observe(self: FundingClock, now_ms: int, mark: Decimal, index: Decimal) -> None:
        self._accumulate(now_ms)
        self._premium = (index - mark) / index if index else Decimal(0)

    with _patched(FundingClock, "observe", observe):
        yield


@contextmanager
def whole_position_per_loop() -> Iterator[None]:
    """A liquidation loop may sell the whole position, not 10% of it. Expected catch:
    "rule:liquidation-fraction" (the checker holds the real cap)."""
    with _patched(liquidation, "loop_cap", lambda size, fraction, step: size):
        yield


@contextmanager
def fees_rounded_down() -> Iterator[None]:
    """The book rounds every fee down, in the account's favour; conservation holds (the fee pot
    gets what the account paid). Expected catch: "rule:fee-rounding"."""
    with _patched(book, "ceil_to", floor_to):
        yield


@contextmanager
def refused_order_keeps_reservation() -> Iterator[None]:
    """An order the book refuses is forgotten without releasing what it locked. Expected catch:
    "rule:reservation"."""

    def on_submit_refused(self: Any, sender: str, message: Any) -> None:
        order = message.order
        self.account.open_orders.pop(order.order_id, None)
        self._refuse_order(order, message.rejection, self.owners.pop(order.order_id, None))
        self._order_ended(order, ZERO)

    with _handler(SubAccountMachine, "on_submit_refused", on_submit_refused):
        yield


# mutant -> the invariants that may report it (the first broken one stops the run)
MUTANTS: dict[str, tuple[Callable[[], Any], frozenset[str]]] = {
    "stale-liquidator": (stale_liquidator, frozenset({"rule:liquidation-trigger"})),
    "open-orders-ignored": (open_orders_ignored, frozenset({"the pre-trade check is honest"})),
    "fills-out-of-order": (fills_out_of_order, frozenset({"no negative balance", "conservation"})),
    "fills-applied-twice": (fills_applied_twice, frozenset({"conservation", "positions", "no negative balance"})),
    "funding-on-stale-positions": (funding_on_stale_positions, frozenset({"funding is paid on held positions"})),
    "pool-over-lends": (pool_over_lends, frozenset({"pools"})),
    "funding-sign-flipped": (funding_sign_flipped, frozenset({"rule:funding-direction"})),
    "whole-position-per-loop": (whole_position_per_loop, frozenset({"rule:liquidation-fraction"})),
    "fees-rounded-down": (fees_rounded_down, frozenset({"rule:fee-rounding"})),
    "refused-order-keeps-reservation": (refused_order_keeps_reservation, frozenset({"rule:reservation"})),
}
