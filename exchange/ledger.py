"""The sub-account ledger: balances, lends, borrows, perp positions, open orders, settings.

A ``SubAccount`` is the unit of margining: everything inside it is cross-margined and nothing
crosses to another sub-account except through trades, transfers its owner asks for, the
backstop and ADL. It changes only through its methods, each of which is one message's worth of
work for the actor that owns it.

Accounting choices (the invariants depend on them):

* A perp position keeps ``net_cost``, the signed sum of ``quantity x price`` of the fills that
  built it. Unrealized PnL is ``quantity x mark - net_cost``: exact, so PnL is zero-sum across
  the market to the last digit. ``entry_price`` (the average opening price) is kept for display
  and for the break-even price; it does not enter any balance.
* Realized PnL is rounded down to the settlement asset's step; the sub-step remainder stays in
  ``net_cost`` (it is realized later) and goes to the liquidity fund when the position closes.
* Spot orders lock what they may spend: a bid locks quote (``quantity x price``, rounded up), an
  ask locks base. Locked funds still count as collateral (spec 2.1). What an order did not use is
  released when its final update arrives.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import attrs

from exchange.decimals import ZERO, floor_to
from exchange.orders import Fill, Order, OrderUpdate, Side
from exchange.profile import Market, Profile


@attrs.define(slots=True)
class Balance:
    available: Decimal = ZERO
    locked: Decimal = ZERO

    @property
    def total(self) -> Decimal:
        return self.available + self.locked


@attrs.define(slots=True)
class Position:
    """One perp position (the venue's ``FuturePositionWithMargin`` without the margin part)."""

    market: str
    quantity: Decimal = ZERO
    net_cost: Decimal = ZERO
    entry_price: Decimal = ZERO
    realized_pnl: Decimal = ZERO
    cumulative_funding: Decimal = ZERO  # received (+) or paid (-), as the venue reports it
    fees_paid: Decimal = ZERO

    def unrealized_pnl(self, mark: Decimal) -> Decimal:
        return self.quantity * mark - self.net_cost

    @property
    def break_even_price(self) -> Decimal | None:
        """Entry moved by the fees and net funding paid per unit (spec D6 reproduces the venue)."""
        if not self.quantity:
            return None
        return self.entry_price + (self.fees_paid - self.cumulative_funding) / self.quantity


@attrs.define(slots=True)
class OpenOrder:
    """An order the account has sent to a market and not yet seen end."""

    order: Order
    remaining: Decimal  # base quantity still open; a perp order by quote: what its margin check counted
    lock_asset: str | None = None
    lock_left: Decimal = ZERO  # funds still locked for this order
    executed: Decimal = ZERO
    executed_quote: Decimal = ZERO
    # The executed quantity the latest order update reported; fills up to it are already
    # reflected in ``remaining``. A final update that arrives before its last fills waits in
    # ``final`` until they do: messages from a market may be reordered on the way.
    reported_executed: Decimal = ZERO
    final: OrderUpdate | None = None

    @property
    def counts_as_exposure(self) -> bool:
        """Reduce-only orders never add risk (spec 7), so they are left out of net exposure."""
        return not self.order.reduce_only


@attrs.define(slots=True)
class Settings:
    """The sub-account settings the venue lets a user PATCH (spec 16).

    Defaults: leverage from the profile; ``auto_borrow_settlements`` on (so perps can be traded
    on non-USDC collateral, spec 10.3); ``auto_lend`` and ``auto_repay_borrows`` off, so a
    borrow a user makes stays until the user repays it.
    """

    leverage_limit: Decimal
    auto_lend: bool = False
    auto_borrow_settlements: bool = True
    auto_repay_borrows: bool = False


@attrs.frozen
class FillEffect:
    """What applying one fill did to the account, for the event log."""

    realized_pnl: Decimal
    fee: Decimal
    liquidation_fee: Decimal
    position_after: Decimal | None
    house_remainder: Decimal  # sub-step PnL remainder handed to the liquidity fund on a close
    ended_order: OpenOrder | None = None  # the order this fill completed after its final update


class SubAccount:
    """One sub-account's ledger. All quantities are Decimal on the asset or market step."""

    def __init__(
        self,
        account_id: str,
        profile: Profile,
        *,
        owner: str | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.id = account_id
        self.owner = owner if owner is not None else account_id
        self.profile = profile
        self.settings = settings or Settings(leverage_limit=profile.default_leverage_limit)
        self.balances: dict[str, Balance] = {}
        self.lends: dict[str, Decimal] = {}
        self.borrows: dict[str, Decimal] = {}
        self.positions: dict[str, Position] = {}
        self.open_orders: dict[str, OpenOrder] = {}
        # Per market: [bid, ask] base quantity of open orders that add risk (net exposure, spec 7).
        self.order_exposure: dict[str, list[Decimal]] = {}
        self.unsettled_equity = ZERO
        self.liquidating = False
        # This account's view of prices: asset symbol -> USD price, perp symbol -> mark. It is
        # whatever the account last heard, and may be stale: that is where races live.
        self.marks: dict[str, Decimal] = {profile.settlement_asset: Decimal(1)}
        # Cache of per-item margin numbers, owned by exchange.margin.
        self.risk_cache: dict[object, tuple[object, object]] = {}
        self._floor_for: Decimal | None = None
        self._floor = ZERO

    # -- prices ---------------------------------------------------------------------------
    def set_mark(self, symbol: str, price: Decimal) -> None:
        self.marks[symbol] = price

    def price(self, symbol: str) -> Decimal:
        try:
            return self.marks[symbol]
        except KeyError:
            raise LookupError(f"sub-account {self.id} has no price for {symbol}") from None

    # -- balances -------------------------------------------------------------------------
    def balance(self, asset: str) -> Balance:
        found = self.balances.get(asset)
        if found is None:
            found = self.balances[asset] = Balance()
        return found

    def available(self, asset: str) -> Decimal:
        found = self.balances.get(asset)
        return found.available if found is not None else ZERO

    def credit(self, asset: str, quantity: Decimal) -> None:
        self.balance(asset).available += quantity

    def debit(self, asset: str, quantity: Decimal) -> None:
        """Take from the available balance; it may go negative (settlement debits, see lending)."""
        self.balance(asset).available -= quantity

    def holdings(self) -> Iterator[tuple[str, Decimal]]:
        """(asset, total quantity) for every asset held: available + locked + lent."""
        seen = set()
        for asset, bal in self.balances.items():
            seen.add(asset)
            yield asset, bal.available + bal.locked + self.lends.get(asset, ZERO)
        for asset, lent in self.lends.items():
            if asset not in seen:
                yield asset, lent

    def deposit(self, asset: str, quantity: Decimal) -> Decimal:
        """Credit a deposit (quantized down to the asset's step); returns the debt it repaid.

        A settlement-asset deposit first repays negative unsettled equity (the debt a bankruptcy
        left with the liquidity fund, spec 11.6); the caller hands that part to the fund. Other
        assets are credited in full and count as collateral against the debt.
        """
        credited = floor_to(quantity, self.profile.assets[asset].step)
        repaid = ZERO
        if asset == self.profile.settlement_asset and self.unsettled_equity < 0:
            repaid = min(credited, -self.unsettled_equity)
            self.unsettled_equity += repaid
        self.credit(asset, credited - repaid)
        return repaid

    # -- borrow / lend mirror (the lending pool is the ledger of record) -------------------
    def apply_lend(self, asset: str, quantity: Decimal) -> None:
        self.debit(asset, quantity)
        self.lends[asset] = self.lends.get(asset, ZERO) + quantity

    def apply_redeem(self, asset: str, quantity: Decimal) -> None:
        self._reduce(self.lends, asset, quantity)
        self.credit(asset, quantity)

    def apply_borrow(self, asset: str, quantity: Decimal, entry_fee: Decimal = ZERO) -> None:
        """The borrowed cash arrives; the debt is the quantity plus the entry fee (spec 9.2)."""
        self.credit(asset, quantity)
        self.borrows[asset] = self.borrows.get(asset, ZERO) + quantity + entry_fee

    def apply_repay(self, asset: str, quantity: Decimal) -> None:
        self.debit(asset, quantity)
        self._reduce(self.borrows, asset, quantity)

    def apply_interest(self, asset: str, borrow_interest: Decimal, lend_interest: Decimal) -> None:
        """Hourly interest capitalised into the borrow and the lend (spec Q18); a negative
        borrow interest is an entry fee given back (a borrow that served no order)."""
        if borrow_interest:
            self._reduce(self.borrows, asset, -borrow_interest)
        if lend_interest:
            self.lends[asset] = self.lends.get(asset, ZERO) + lend_interest

    def apply_lend_write_off(self, asset: str, quantity: Decimal) -> None:
        """Part of the lend is gone with a bankrupt borrower (the fund pays its value, F7)."""
        self._reduce(self.lends, asset, quantity)

    def apply_borrow_write_off(self, asset: str, quantity: Decimal, paid: Decimal) -> Decimal:
        """The borrow left the pool; what the fund paid its lenders is now a debt to the fund,
        which the account's settlement balance pays down at once. Returns what it repaid."""
        self._reduce(self.borrows, asset, quantity)
        self.unsettled_equity -= paid
        repaid = min(max(self.available(self.profile.settlement_asset), ZERO), -self.unsettled_equity)
        if repaid > 0:
            self.debit(self.profile.settlement_asset, repaid)
            self.unsettled_equity += repaid
        return max(repaid, ZERO)

    @staticmethod
    def _reduce(book: dict[str, Decimal], asset: str, quantity: Decimal) -> None:
        left = book.get(asset, ZERO) - quantity
        if left < 0:
            raise ValueError(f"cannot take {quantity} {asset}: only {book.get(asset, ZERO)}")
        if left:
            book[asset] = left
        else:
            book.pop(asset, None)

    # -- perp settlement ------------------------------------------------------------------
    def apply_funding(self, symbol: str, amount: Decimal) -> None:
        """Funding received (+) or paid (-) in the settlement asset (spec 10.2)."""
        self.credit(self.profile.settlement_asset, amount)
        pos = self.positions.get(symbol)
        if pos is not None:
            pos.cumulative_funding += amount

    def realize_pnl(self) -> list[tuple[str, Decimal]]:
        """Continuous realization (spec 10.3): move each position's unrealized PnL, at this
        account's mark, into the settlement balance. The amount is rounded down to the step; the
        remainder stays unrealized in ``net_cost``. Entry price is untouched (display)."""
        settle = self.profile.settlement_asset
        step = self.profile.assets[settle].step
        realized = []
        for symbol, pos in self.positions.items():
            amount = floor_to(pos.quantity * self.price(symbol) - pos.net_cost, step)
            if amount:
                pos.net_cost += amount
                pos.realized_pnl += amount
                self.credit(settle, amount)
                realized.append((symbol, amount))
        return realized

    def cover_from_fund(self, quantity: Decimal) -> None:
        """The liquidity fund pays a settlement-asset shortfall; the account owes it back (11.6)."""
        self.credit(self.profile.settlement_asset, quantity)
        self.unsettled_equity -= quantity

    # -- orders ---------------------------------------------------------------------------
    def reserve(self, order: Order, lock_asset: str | None, lock_amount: Decimal,
                exposure: Decimal | None = None) -> OpenOrder:
        """Record an accepted order and lock what it may spend (the margin check came first).
        ``exposure``: for an order sized by quote, the base quantity the check counted; it stays
        the order's open quantity, less its fills, until the order ends."""
        if lock_asset is not None and lock_amount:
            bal = self.balance(lock_asset)
            bal.available -= lock_amount
            bal.locked += lock_amount
        remaining = order.quantity if order.quantity is not None else exposure or ZERO
        entry = OpenOrder(order=order, remaining=remaining, lock_asset=lock_asset, lock_left=lock_amount)
        self.open_orders[order.order_id] = entry
        if entry.counts_as_exposure and remaining:
            self._add_exposure(order.market, order.side, remaining)
        return entry

    def _add_exposure(self, market: str, side: Side, quantity: Decimal) -> None:
        sides = self.order_exposure.get(market)
        if sides is None:
            sides = self.order_exposure[market] = [ZERO, ZERO]
        sides[0 if side is Side.BID else 1] += quantity
        if not sides[0] and not sides[1]:
            del self.order_exposure[market]

    def apply_update(self, update: OrderUpdate) -> OpenOrder | None:
        """Follow a non-fill order update: a cut-down order, or the order's final state.

        Returns the order if this update ended it. Fills the update counts but this account has
        not seen yet are not subtracted twice when they come, and a final update waits (locks
        kept) until its fills have been booked, so an order never ends before its fills.
        """
        entry = self.open_orders.get(update.order_id)
        if entry is None:
            return None
        # The update's remaining, less fills booked here that it did not know about yet;
        # remaining only ever shrinks, so an older update cannot grow it back.
        unseen = max(ZERO, entry.executed - update.executed_quantity)
        self._set_remaining(entry, min(entry.remaining, max(ZERO, update.remaining_quantity - unseen)))
        entry.reported_executed = max(entry.reported_executed, update.executed_quantity)
        if not update.status.is_final:
            return None
        entry.final = update
        return self._end_if_complete(entry)

    def _set_remaining(self, entry: OpenOrder, remaining: Decimal) -> None:
        if entry.counts_as_exposure and remaining != entry.remaining:
            self._add_exposure(entry.order.market, entry.order.side, remaining - entry.remaining)
        entry.remaining = remaining

    def _end_if_complete(self, entry: OpenOrder) -> OpenOrder | None:
        final = entry.final
        if final is None or entry.executed < final.executed_quantity:
            return None
        self._release(entry)
        del self.open_orders[final.order_id]
        return entry

    def _release(self, entry: OpenOrder) -> None:
        if entry.lock_asset is not None and entry.lock_left:
            bal = self.balance(entry.lock_asset)
            bal.locked -= entry.lock_left
            bal.available += entry.lock_left
            entry.lock_left = ZERO

    def apply_fill(self, fill: Fill, market: Market) -> FillEffect:
        """Book one fill: spot balances, or the perp position with its fee and realized PnL."""
        entry = self.open_orders.get(fill.order_id)
        if entry is not None:
            # Only the part of this fill that no order update has already counted.
            counted = min(fill.quantity, max(ZERO, entry.reported_executed - entry.executed))
            entry.executed += fill.quantity
            entry.executed_quote += fill.quote_quantity
            if fill.quantity > counted and entry.remaining:
                self._set_remaining(entry, max(ZERO, entry.remaining - (fill.quantity - counted)))
        if fill.liquidation_fee:
            self.debit(market.quote, fill.liquidation_fee)
        if market.is_perp:
            effect = self._apply_perp_fill(fill, market)
        else:
            self._apply_spot_fill(fill, market, entry)
            effect = FillEffect(ZERO, fill.fee, fill.liquidation_fee, None, ZERO)
        ended = self._end_if_complete(entry) if entry is not None else None
        return effect if ended is None else attrs.evolve(effect, ended_order=ended)

    def _apply_spot_fill(self, fill: Fill, market: Market, entry: OpenOrder | None) -> None:
        if fill.side is Side.BID:
            paid_asset, paid, got_asset, got = market.quote, fill.quote_quantity, market.base, fill.quantity
        else:
            paid_asset, paid, got_asset, got = market.base, fill.quantity, market.quote, fill.quote_quantity
        if entry is not None and entry.lock_asset == paid_asset and entry.lock_left:
            from_lock = min(paid, entry.lock_left)
            entry.lock_left -= from_lock
            self.balance(paid_asset).locked -= from_lock
            paid -= from_lock
        if paid:
            self.debit(paid_asset, paid)
        self.credit(got_asset, got)
        self.debit(fill.fee_asset, fill.fee)

    def _apply_perp_fill(self, fill: Fill, market: Market) -> FillEffect:
        settle = self.profile.settlement_asset
        step = self.profile.assets[settle].step
        pos = self.positions.get(market.symbol)
        if pos is None:
            pos = self.positions[market.symbol] = Position(market.symbol)
        delta = fill.quantity * fill.side.sign
        old = pos.quantity
        new = old + delta
        realized = ZERO
        if old and (old > 0) != (delta > 0):
            # Reducing, closing or flipping: realize on the closed part against its share of cost.
            closed = min(abs(delta), abs(old))
            closed_delta = closed * fill.side.sign
            exact = -closed_delta * fill.price - pos.net_cost * closed / abs(old)
            realized = floor_to(exact, step)
        pos.net_cost += delta * fill.price + realized
        pos.quantity = new
        if not old or (old > 0) != (new > 0):
            # Opened from flat or flipped: the new position starts at this fill.
            pos.entry_price = fill.price if new else ZERO
            if old:
                pos.fees_paid = ZERO
                pos.cumulative_funding = ZERO
        elif abs(new) > abs(old):
            pos.entry_price = (pos.entry_price * abs(old) + fill.price * abs(delta)) / abs(new)
        pos.realized_pnl += realized
        pos.fees_paid += fill.fee
        self.credit(settle, realized)
        self.debit(fill.fee_asset, fill.fee)
        house = ZERO
        if not new:
            # The position is gone: any sub-step PnL left in its basis goes to the exchange.
            house = -pos.net_cost
            del self.positions[market.symbol]
        return FillEffect(realized, fill.fee, fill.liquidation_fee, new if new else ZERO, house)

    # -- settings -------------------------------------------------------------------------
    @property
    def leverage_floor(self) -> Decimal:
        """The IMF floor implied by the account's leverage limit (spec 6), kept until it changes."""
        limit = self.settings.leverage_limit
        if limit is not self._floor_for:
            self._floor_for = limit
            self._floor = 1 / limit
        return self._floor
