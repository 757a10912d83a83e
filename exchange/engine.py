"""The whole venue in one process, synchronously: the direct engine.

Every operation completes before the next begins and every participant sees the true prices at
once: no latency, no staleness, no interleaving. That makes it the reference the actor runtime
is measured and fuzzed against, the fastest way to run a bulk study, and the harness the core's
multi-account tests drive. The actors wire the same core objects with messages instead of
calls; nothing here decides anything the core modules do not already decide.

Time is integer milliseconds. ``advance_to`` runs the calendar up to a time in order: PnL
realization every ``realize_interval``, funding at each market's interval end, interest on the
hour (and, once liquidation lands, the liquidation loop).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal

import attrs

from exchange.book import OrderBook
from exchange.decimals import ZERO, ceil_to, floor_to, fmt
from exchange.funding import FundingClock, funding_payments
from exchange.invariants import (
    conservation_violations,
    holdings_by_asset,
    negative_balance_violations,
    pool_violations,
    position_violations,
)
from exchange.ledger import Settings, SubAccount
from exchange.lending import HOUR_MS, Grant, InterestTick, LendingPool
from exchange.liquidation import (
    ADL,
    BACKSTOP,
    BOOK,
    AdlCandidate,
    BackstopProvider,
    LiquidationOrder,
    LiquidationStep,
    Progress,
    adl_queue,
    average_fill_price,
    backstop_collateral,
    backstop_fee,
    may_write_off,
    needs_liquidation,
    plan_step,
    settlement_borrow_to_cover,
    waiting_reason,
    why_liquidated,
)
from exchange.margin import Change, evaluate_change, largest_passing, totals
from exchange.orders import (
    ErrorCode,
    ExpiryReason,
    Fill,
    Order,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Origin,
    Rejection,
    Side,
    TimeInForce,
)
from exchange.pretrade import Accepted, check_order
from exchange.profile import Profile
from exchange.settlement import plan_reconciliation


@attrs.frozen
class OrderOutcome:
    """What one order did: refused before the book, or what the book made of it."""

    order: Order
    rejection: Rejection | None
    fills: tuple[Fill, ...] = ()
    updates: tuple[OrderUpdate, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.rejection is None


@attrs.define
class _Liquidation:
    started_ms: int
    progress: Progress = attrs.field(factory=Progress)
    waiting: bool = False  # recorded that it waits for liquidity, until a step fills again


class Exchange:
    """Accounts, books, pools, funding clocks and the liquidity fund, driven by method calls."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.settle = profile.settlement_asset
        self.now_ms = 0
        self.accounts: dict[str, SubAccount] = {}
        self.books = {symbol: OrderBook(profile, symbol) for symbol in profile.markets}
        self.pools = {symbol: LendingPool(asset) for symbol, asset in profile.assets.items()}
        self.funding = {m.symbol: FundingClock(m) for m in profile.perp_markets()}
        # The liquidity fund's cash outside the books (the books hold the liquidation fees they
        # charged); it pays shortfalls nobody can cover and may go negative: the venue's loss.
        self.fund: dict[str, Decimal] = {}
        self.prices: dict[str, Decimal] = {self.settle: Decimal(1)}  # asset index and perp marks
        self.external: dict[str, Decimal] = {}  # deposits minus withdrawals, per asset
        self.events: list[dict[str, object]] = []
        self._next_realize = profile.realize_interval_ms or None
        self._next_interest = profile.interest_interval_ms
        self._next_liquidation = profile.liquidation.loop_interval_ms
        self._order_seq = 0
        self.backstops: list[BackstopProvider] = []
        self.liquidations: dict[str, _Liquidation] = {}
        self.liquidation_history: dict[str, list[LiquidationStep]] = {}
        self._housekeeping: set[str] = set()

    # -- accounts -------------------------------------------------------------------------
    def add_account(self, account_id: str, *, owner: str | None = None, settings: Settings | None = None) -> SubAccount:
        if account_id in self.accounts:
            raise ValueError(f"sub-account {account_id} exists")
        account = SubAccount(account_id, self.profile, owner=owner, settings=settings)
        account.marks.update(self.prices)
        self.accounts[account_id] = account
        return account

    def deposit(self, account_id: str, asset: str, quantity: Decimal) -> Decimal:
        """Deposit; returns the part that repaid a debt to the liquidity fund."""
        account = self.accounts[account_id]
        repaid = account.deposit(asset, quantity)
        self._external(asset, floor_to(quantity, self.profile.assets[asset].step))
        if repaid:
            self._fund(asset, repaid)
        self._log("deposit", account=account_id, asset=asset, quantity=quantity, repaid_debt=repaid)
        self.housekeep(account)
        return repaid

    def _external(self, asset: str, quantity: Decimal) -> None:
        self.external[asset] = self.external.get(asset, ZERO) + quantity

    def _fund(self, asset: str, quantity: Decimal) -> None:
        self.fund[asset] = self.fund.get(asset, ZERO) + quantity

    # -- prices ---------------------------------------------------------------------------
    def set_price(self, symbol: str, price: Decimal) -> None:
        """An index price (asset) or a mark (perp market); every account hears it at once.

        Setting an asset's index also sets the mark of the perps on it unless a mark was given
        for them separately (then use ``set_price`` on the perp after the index).
        """
        updates = {symbol: price}
        if symbol in self.profile.assets:
            for market in self.profile.perp_markets():
                if market.base == symbol:
                    updates[market.symbol] = price
        for key, value in updates.items():
            self.prices[key] = value
            for account in self.accounts.values():
                account.marks[key] = value
        for market in self.profile.markets.values():
            if market.symbol in updates or market.base in updates:
                index = self.prices.get(market.base)
                mark = self.prices.get(market.symbol, index) if market.is_perp else index
                self.books[market.symbol].set_prices(mark=mark, index=index)
                if market.is_perp and mark is not None and index is not None:
                    self.funding[market.symbol].observe(self.now_ms, mark, index)

    # -- orders ---------------------------------------------------------------------------
    def next_order_id(self, account_id: str) -> str:
        self._order_seq += 1
        return f"{account_id}-{self._order_seq}"

    def order(
        self,
        account_id: str,
        symbol: str,
        side: Side,
        quantity: Decimal | None,
        price: Decimal | None = None,
        **flags: object,
    ) -> OrderOutcome:
        """Convenience: build an order (limit if a price is given, else market) and place it."""
        order_type = OrderType.LIMIT if price is not None else OrderType.MARKET
        order = Order(self.next_order_id(account_id), account_id, symbol, side, order_type, quantity, price, **flags)  # type: ignore[arg-type]
        return self.place(order)

    def place(self, order: Order) -> OrderOutcome:
        account = self.accounts[order.account]
        result = check_order(account, order)
        if isinstance(result, Rejection):
            self._log("order_rejected", account=order.account, order_id=order.order_id, code=result.code,
                      reason=result.reason, message=result.message, **result.details)
            return OrderOutcome(order, result)
        funded = self._fund_order(account, result)
        if isinstance(funded, Rejection):
            self._log("order_rejected", account=order.account, order_id=order.order_id, code=funded.code,
                      reason=funded.reason, message=funded.message, **funded.details)
            return OrderOutcome(order, funded)
        account.reserve(result.order, result.lock_asset, result.lock_amount)
        match = self.books[order.market].submit(result.order)
        if match.rejection is not None:
            # The book refused it after the account reserved: undo the reservation.
            account.apply_update(_final_from_rejection(result.order))
            self._log("order_rejected", account=order.account, order_id=order.order_id, code=match.rejection.code,
                      message=match.rejection.message, **match.rejection.details)
            return OrderOutcome(result.order, match.rejection)
        self._apply_match(match.fills, match.updates)
        return OrderOutcome(result.order, None, tuple(match.fills), tuple(match.updates))

    def _fund_order(self, account: SubAccount, accepted: Accepted) -> None | Rejection:
        """Redeem and borrow what a spot order needs before it is reserved, atomically (spec 8)."""
        asset = accepted.lock_asset
        if asset is None or not (accepted.redeem or accepted.borrow):
            return None
        grants = self.pools[asset].draw(account.id, accepted.redeem, accepted.borrow, self.now_ms)
        if isinstance(grants, Rejection):
            reason = ExpiryReason.INSUFFICIENT_BORROWABLE_QUANTITY if accepted.borrow else ExpiryReason.INSUFFICIENT_FUNDS
            return attrs.evolve(grants, reason=reason)
        for grant in grants:
            self._apply_grant(account, grant)
        return None

    def cancel(self, account_id: str, symbol: str, order_id: str) -> OrderUpdate | Rejection:
        result = self.books[symbol].cancel(order_id, account_id)
        if isinstance(result, OrderUpdate):
            self._apply_match([], [result])
        return result

    def cancel_all(self, account_id: str, symbols: Iterable[str] | None = None) -> list[OrderUpdate]:
        updates: list[OrderUpdate] = []
        for symbol in symbols if symbols is not None else self.books:
            updates.extend(self.books[symbol].cancel_all(account_id))
        self._apply_match([], updates)
        return updates

    def _apply_match(self, fills: Iterable[Fill], updates: Iterable[OrderUpdate]) -> None:
        touched: dict[str, None] = {}
        for fill in fills:
            account = self.accounts[fill.account]
            market = self.profile.markets[fill.market]
            effect = account.apply_fill(fill, market)
            if effect.house_remainder:
                self._fund(self.settle, effect.house_remainder)
            self._log("fill", account=fill.account, market=fill.market, order_id=fill.order_id, side=fill.side,
                      price=fill.price, quantity=fill.quantity, fee=fill.fee, fee_asset=fill.fee_asset,
                      maker=fill.is_maker, origin=fill.origin, realized_pnl=effect.realized_pnl,
                      position=effect.position_after, liquidation_fee=fill.liquidation_fee)
            touched[fill.account] = None
        for update in updates:
            account = self.accounts[update.account]
            entry = account.apply_update(update)
            if update.status.is_final:
                self._log("order_closed", account=update.account, order_id=update.order_id, status=update.status,
                          reason=update.reason, executed=update.executed_quantity)
                if entry is not None:
                    self._after_order(account, entry.order)
            touched[update.account] = None
        for account_id in touched:
            self.housekeep(self.accounts[account_id])

    def _after_order(self, account: SubAccount, order: Order) -> None:
        """Per-order spot-margin flags once an order is done (spec 8)."""
        market = self.profile.markets[order.market]
        if market.is_perp:
            return
        received = market.base if order.side is Side.BID else market.quote
        if order.auto_borrow_repay:
            self._repay_from_available(account, received)
        if order.auto_borrow:
            # Borrowed funds the order did not spend go back to the pool.
            self._repay_from_available(account, market.quote if order.side is Side.BID else market.base)
        if order.auto_lend:
            self._lend_available(account, received)

    # -- borrow / lend --------------------------------------------------------------------
    def _apply_grant(self, account: SubAccount, grant: Grant) -> None:
        if grant.action == "lend":
            account.apply_lend(grant.asset, grant.quantity)
        elif grant.action == "redeem":
            account.apply_redeem(grant.asset, grant.quantity)
        elif grant.action == "borrow":
            account.apply_borrow(grant.asset, grant.quantity, grant.entry_fee)
        else:
            account.apply_repay(grant.asset, grant.quantity)
        self._log(grant.action, account=account.id, asset=grant.asset, quantity=grant.quantity,
                  entry_fee=grant.entry_fee)

    def lend(self, account_id: str, asset: str, quantity: Decimal) -> Grant | Rejection:
        account = self.accounts[account_id]
        if quantity <= 0 or quantity > account.available(asset):
            return Rejection(ErrorCode.INSUFFICIENT_FUNDS,
                             f"cannot lend {fmt(quantity)} {asset}: {fmt(account.available(asset))} available")
        grant = self.pools[asset].lend(account_id, quantity)
        if isinstance(grant, Grant):
            self._apply_grant(account, grant)
        return grant

    def redeem(
        self, account_id: str, asset: str, quantity: Decimal, *, liquidation: bool = False
    ) -> Grant | Rejection:
        """Redeem a lend. ``liquidation`` (a liquidation or a settlement cover) may take the
        pool's utilization past its throttle threshold, up to its maximum."""
        grant = self.pools[asset].redeem(account_id, quantity, liquidation=liquidation)
        if isinstance(grant, Grant):
            self._apply_grant(self.accounts[account_id], grant)
        return grant

    def borrow(self, account_id: str, asset: str, quantity: Decimal) -> Grant | Rejection:
        """A manual borrow: refused when it would take IMR past 100%, with the numbers."""
        account = self.accounts[account_id]
        ev = evaluate_change(account, Change(balances=((asset, quantity),), borrows=((asset, quantity),)))
        if ev.after.available < 0:
            largest = self.max_borrow_quantity(account_id, asset)
            return Rejection(
                ErrorCode.INSUFFICIENT_MARGIN,
                f"borrowing {fmt(quantity)} {asset} would take available equity from {fmt(ev.before.available, 2)} "
                f"to {fmt(ev.after.available, 2)}; the most that can be borrowed is {fmt(largest)}",
                {"imr_before": ev.before.imr, "imr_after": ev.after.imr, "available_before": ev.before.available,
                 "available_after": ev.after.available, "max_quantity": largest},
            )
        grant = self.pools[asset].borrow(account_id, quantity, self.now_ms)
        if isinstance(grant, Grant):
            self._apply_grant(account, grant)
        return grant

    def max_borrow_quantity(self, account_id: str, asset: str) -> Decimal:
        """The venue's ``/limits/borrow``: margin-bound, not supply-bound."""
        account = self.accounts[account_id]
        before = totals(account)

        def passes(quantity: Decimal) -> bool:
            change = Change(balances=((asset, quantity),), borrows=((asset, quantity),))
            return evaluate_change(account, change, before).after.available >= 0

        return largest_passing(passes, self.profile.assets[asset].step)

    def repay(self, account_id: str, asset: str, quantity: Decimal) -> Grant | Rejection:
        account = self.accounts[account_id]
        if quantity > account.available(asset):
            return Rejection(ErrorCode.INSUFFICIENT_FUNDS,
                             f"cannot repay {fmt(quantity)} {asset}: {fmt(account.available(asset))} available")
        grant = self.pools[asset].repay(account_id, quantity)
        if isinstance(grant, Grant):
            self._apply_grant(account, grant)
        return grant

    def _repay_from_available(self, account: SubAccount, asset: str) -> None:
        amount = min(account.available(asset), account.borrows.get(asset, ZERO))
        if amount > 0:
            self._apply_grant(account, self.pools[asset].repay(account.id, amount))  # type: ignore[arg-type]

    def _lend_available(self, account: SubAccount, asset: str) -> None:
        amount = account.available(asset)
        if amount > 0 and not account.borrows.get(asset):
            grant = self.pools[asset].lend(account.id, amount)
            if isinstance(grant, Grant):
                self._apply_grant(account, grant)

    # -- withdrawals and transfers --------------------------------------------------------
    def withdraw(
        self, account_id: str, asset: str, quantity: Decimal, *, auto_borrow: bool = False
    ) -> Decimal | Rejection:
        """Withdraw ``quantity`` if available equity stays >= 0 afterwards.

        Lent balance is redeemed as needed (the venue always does, spec 9.3); with
        ``auto_borrow`` the rest may be borrowed. A refusal changes nothing.
        """
        account = self.accounts[account_id]
        refused = self._outflow(account, asset, quantity, auto_borrow)
        if refused is not None:
            return refused
        self._external(asset, -quantity)
        self._log("withdrawal", account=account_id, asset=asset, quantity=quantity)
        return quantity

    def transfer(
        self, source: str, target: str, asset: str, quantity: Decimal, *, auto_borrow: bool = False
    ) -> Decimal | Rejection:
        """Move funds between sub-accounts of one owner under the withdrawal rule (spec 13)."""
        src, dst = self.accounts[source], self.accounts[target]
        if src.owner != dst.owner:
            return Rejection(ErrorCode.INVALID_ORDER, f"{source} and {target} belong to different owners")
        refused = self._outflow(src, asset, quantity, auto_borrow)
        if refused is not None:
            return refused
        repaid = dst.deposit(asset, quantity)
        if repaid:
            self._fund(asset, repaid)
        self._log("transfer", account=source, target=target, asset=asset, quantity=quantity, repaid_debt=repaid)
        self.housekeep(dst)
        return quantity

    def _outflow_plan(
        self, account: SubAccount, asset: str, quantity: Decimal, auto_borrow: bool
    ) -> tuple[Decimal, Decimal] | Rejection:
        """(lend to redeem, quantity to borrow) for taking ``quantity`` out, or why not."""
        if quantity <= 0:
            return Rejection(ErrorCode.INVALID_QUANTITY, f"quantity {fmt(quantity)} must be positive")
        short = max(quantity - max(account.available(asset), ZERO), ZERO)
        lent = account.lends.get(asset, ZERO)
        redeem = min(lent, short)
        borrow = short - redeem if auto_borrow else ZERO
        if short - redeem - borrow > 0:
            return Rejection(ErrorCode.INSUFFICIENT_FUNDS,
                             f"{fmt(quantity)} {asset} asked, {fmt(account.available(asset) + lent)} available and lent"
                             + ("" if auto_borrow else " (auto-borrow would borrow the rest)"),
                             {"asset": asset, "needed": quantity, "available": account.available(asset) + lent})
        ev = evaluate_change(account, Change(balances=((asset, borrow - quantity),), borrows=((asset, borrow),)))
        if ev.after.available < 0:
            largest = self.max_withdrawal_quantity(account.id, asset, auto_borrow=auto_borrow)
            return Rejection(
                ErrorCode.INSUFFICIENT_MARGIN,
                f"taking {fmt(quantity)} {asset} out would take available equity to {fmt(ev.after.available, 2)}; "
                f"at most {fmt(largest)} can leave",
                {"available_before": ev.before.available, "available_after": ev.after.available,
                 "imr_before": ev.before.imr, "imr_after": ev.after.imr, "max_quantity": largest},
            )
        return redeem, borrow

    def _outflow(self, account: SubAccount, asset: str, quantity: Decimal, auto_borrow: bool) -> Rejection | None:
        """Check, draw from the pool (both or neither), then debit: all or nothing."""
        plan = self._outflow_plan(account, asset, quantity, auto_borrow)
        if isinstance(plan, Rejection):
            return plan
        redeem, borrow = plan
        if redeem or borrow:
            grants = self.pools[asset].draw(account.id, redeem, borrow, self.now_ms)
            if isinstance(grants, Rejection):
                return grants
            for grant in grants:
                self._apply_grant(account, grant)
        account.debit(asset, quantity)
        return None

    def max_withdrawal_quantity(self, account_id: str, asset: str, *, auto_borrow: bool = False) -> Decimal:
        """The venue's ``/limits/withdrawal``: the most that keeps available equity >= 0 (what is
        held and lent, plus what could be borrowed with ``auto_borrow``)."""
        account = self.accounts[account_id]
        before = totals(account)
        held = max(account.available(asset), ZERO) + account.lends.get(asset, ZERO)

        def passes(quantity: Decimal) -> bool:
            borrow = max(quantity - held, ZERO)
            if borrow and not auto_borrow:
                return False
            change = Change(balances=((asset, borrow - quantity),), borrows=((asset, borrow),))
            return evaluate_change(account, change, before).after.available >= 0

        return largest_passing(passes, self.profile.assets[asset].step)

    # -- housekeeping ---------------------------------------------------------------------
    def housekeep(self, account: SubAccount) -> None:
        """After anything touched an account: cover a USDC shortfall, then auto-repay, auto-lend.

        Not re-entrant per account: a collateral conversion made while covering a shortfall
        fills on a book, and that fill must not start a second cover of the same account.
        """
        if account.id in self._housekeeping:
            return
        self._housekeeping.add(account.id)  # membership only, never iterated
        try:
            self.reconcile(account)
            if account.settings.auto_repay_borrows:
                for asset in list(account.borrows):
                    self._repay_from_available(account, asset)
            if account.settings.auto_lend and not account.liquidating:  # what liquidation redeems stays redeemed
                for asset in list(account.balances):
                    self._lend_available(account, asset)
        finally:
            self._housekeeping.discard(account.id)

    def reconcile(self, account: SubAccount) -> None:
        """Cover a negative settlement balance: redeem, borrow, convert, then the fund (10.3)."""
        # A liquidating account does not borrow to settle: the liquidator is unwinding it.
        plan = plan_reconciliation(account, borrow_allowed=not account.liquidating)
        if plan is None:
            return
        if plan.redeem:
            self.redeem(account.id, self.settle, plan.redeem, liquidation=True)
        if plan.borrow:
            grant = self.pools[self.settle].borrow(account.id, plan.borrow, self.now_ms, liquidation=True)
            if isinstance(grant, Grant):
                self._apply_grant(account, grant)
        plan = plan_reconciliation(account, borrow_allowed=False)
        if plan is None:
            return
        for conversion in plan.conversions:
            order = Order(self.next_order_id(account.id), account.id, conversion.market, Side.ASK, OrderType.MARKET,
                          conversion.quantity, time_in_force=TimeInForce.IOC, auto_lend_redeem=True,
                          origin=Origin.COLLATERAL_CONVERSION)
            result = check_order(account, order)
            if isinstance(result, Accepted) and self._fund_order(account, result) is None:
                account.reserve(result.order, result.lock_asset, result.lock_amount)
                match = self.books[conversion.market].submit(result.order)
                self._apply_match(match.fills, match.updates)
        short = -account.available(self.settle)
        if short > 0:
            account.cover_from_fund(short)
            self._fund(self.settle, -short)
            self._log("fund_cover", account=account.id, quantity=short, unsettled_equity=account.unsettled_equity)

    # -- the calendar ---------------------------------------------------------------------
    def advance_to(self, now_ms: int) -> None:
        """Run every scheduled job due up to ``now_ms``, in time order."""
        while True:
            due = self._next_due()
            if due is None or due[0] > now_ms:
                break
            self.now_ms = due[0]
            due[1]()
        self.now_ms = max(self.now_ms, now_ms)

    def _next_due(self) -> tuple[int, object] | None:
        jobs: list[tuple[int, int, object]] = []
        if self._next_realize is not None:
            jobs.append((self._next_realize, 0, self._realize))
        for rank, (symbol, clock) in enumerate(self.funding.items(), start=1):
            jobs.append((clock.next_funding_ms, rank, lambda s=symbol: self._pay_funding(s)))
        jobs.append((self._next_interest, 100, self._accrue_interest))
        jobs.append((self._next_liquidation, 200, self._liquidation_loop))
        when, _, job = min(jobs, key=lambda j: (j[0], j[1]))
        return when, job

    def _realize(self) -> None:
        for account in self.accounts.values():
            for symbol, amount in account.realize_pnl():
                self._log("pnl_realized", account=account.id, market=symbol, amount=amount)
            self.housekeep(account)
        assert self._next_realize is not None
        self._next_realize += self.profile.realize_interval_ms

    def _pay_funding(self, symbol: str) -> None:
        clock = self.funding[symbol]
        rate = clock.close_interval(self.now_ms)
        mark = self.prices.get(symbol)
        positions = self.books[symbol].positions
        self._log("funding_rate", market=symbol, rate=rate, mark=mark)
        if mark is None or not rate:
            return
        payments = funding_payments(rate, positions, mark, self.profile.assets[self.settle].step)
        for account_id, amount in payments.items():
            self.accounts[account_id].apply_funding(symbol, amount)
            self._log("funding_payment", account=account_id, market=symbol, amount=amount, rate=rate)
        for account_id in payments:
            self.housekeep(self.accounts[account_id])

    def _accrue_interest(self) -> list[InterestTick]:
        ticks = []
        for pool in self.pools.values():
            if not pool.borrowed and not pool.undistributed:
                pool.last_tick_ms = self.now_ms
                continue
            tick = pool.accrue(self.now_ms)
            ticks.append(tick)
            for account_id in sorted(set(tick.borrow_interest) | set(tick.lend_interest)):
                self.accounts[account_id].apply_interest(
                    tick.asset, tick.borrow_interest.get(account_id, ZERO), tick.lend_interest.get(account_id, ZERO)
                )
            self._log("interest", asset=tick.asset, borrow_rate=tick.borrow_rate, lend_rate=tick.lend_rate,
                      utilization=tick.utilization, paid=tick.paid_by_borrowers, credited=tick.credited_to_lenders,
                      exchange_fee=tick.exchange_fee)
        self._next_interest += HOUR_MS
        return ticks

    # -- liquidation ----------------------------------------------------------------------
    def add_backstop(self, account_id: str, capacity: dict[str, Decimal]) -> BackstopProvider:
        """Make a sub-account a backstop liquidity provider, consulted in the order added."""
        provider = BackstopProvider(account_id, dict(capacity))
        self.backstops.append(provider)
        return provider

    def _liquidation_loop(self) -> None:
        """Every ``liquidation_loop``: start liquidations that are due, step the running ones."""
        for account in list(self.accounts.values()):
            if account.id not in self.liquidations:
                t = totals(account)
                if not needs_liquidation(t):
                    continue
                self._start_liquidation(account, t.mmr)
            self._liquidate(account)
        self._next_liquidation += self.profile.liquidation.loop_interval_ms

    def _record(self, account: SubAccount, stage: str, mmr_before: Decimal, reason: str, *, market: str | None = None,
                side: Side | None = None, quantity: Decimal = ZERO, price: Decimal | None = None,
                fee: Decimal = ZERO) -> None:
        step = LiquidationStep(self.now_ms, stage, market, str(side) if side else None, quantity, price, fee,
                               mmr_before, totals(account).mmr, reason)
        self.liquidation_history.setdefault(account.id, []).append(step)
        self._log("liquidation_step", account=account.id, stage=stage, market=market, side=side, quantity=quantity,
                  price=price, fee=fee, mmr_before=mmr_before, mmr_after=step.mmr_after, reason=reason)

    def _start_liquidation(self, account: SubAccount, mmr: Decimal) -> None:
        """MMR reached 100%: cancel every open order and mark the account liquidating."""
        self.liquidations[account.id] = _Liquidation(self.now_ms)
        account.liquidating = True
        self.cancel_all(account.id)
        self._record(account, "start", mmr, why_liquidated(account) + "; open orders cancelled, account liquidating")

    def _liquidate(self, account: SubAccount) -> None:
        state = self.liquidations[account.id]
        self._redeem_lends(account)
        depth = {symbol: book.depth(50) for symbol, book in self.books.items()}
        plan = plan_step(account, depth, self.profile.liquidation, state.progress)
        if plan.stage == "healthy":
            self._finish(account, plan.mmr, plan.reason)
        elif plan.stage == BOOK:
            self._book_step(account, plan.orders, state)
        else:
            state.progress = state.progress.after_backstop()  # whatever stage 2 leaves goes back to the book
            self._backstop_and_adl(account, plan.reason)

    def _redeem_lends(self, account: SubAccount) -> None:
        """A liquidating account's lends come back before each loop (spec 9.4): lent collateral
        backs its margin, so it must be there to sell. What a pool cannot return now stays lent
        (its lend-side ADL is not modelled)."""
        for asset, lent in list(account.lends.items()):
            if lent > 0:
                self.redeem(account.id, asset, lent, liquidation=True)

    def _book_step(self, account: SubAccount, orders: Sequence[LiquidationOrder], state: _Liquidation) -> None:
        failed = not orders
        for wanted in orders:
            mmr_before = totals(account).mmr
            order = Order(self.next_order_id(account.id), account.id, wanted.market, wanted.side, OrderType.MARKET,
                          wanted.quantity, time_in_force=TimeInForce.IOC,
                          reduce_only=self.profile.markets[wanted.market].is_perp, origin=Origin.LIQUIDATION_AUTOCLOSE)
            outcome = self.place(order)
            mine = [f for f in outcome.fills if f.account == account.id]
            filled = sum((f.quantity for f in mine), ZERO)
            if filled < wanted.quantity:
                failed = True
            if wanted.repay:
                self._repay_from_available(account, wanted.repay)
            if mine:
                state.waiting = False
                notional = sum((f.quote_quantity for f in mine), ZERO)
                fee = sum((f.liquidation_fee + (f.fee if f.fee_asset == self.settle else f.fee * f.price) for f in mine),
                          ZERO)
                market = self.profile.markets[wanted.market]
                self._record(account, BOOK if market.is_perp else "conversion", mmr_before, wanted.reason,
                             market=wanted.market, side=wanted.side, quantity=filled,
                             price=average_fill_price(notional, filled, market.tick_size), fee=fee)
        state.progress = state.progress.after_book_loop(failed)

    def _off_book_trade(self, symbol: str, account: SubAccount, counterparty: SubAccount, quantity: Decimal,
                        price: Decimal, origin: Origin) -> Decimal:
        """``account`` closes ``quantity`` of its position in ``symbol`` with ``counterparty`` at
        ``price``; only the liquidated side pays the liquidation fee. Returns that fee.

        The fee is capped at the equity the account has left: a transfer at mark does not
        change equity, so without the cap the fee itself would leave a debt to the fund.
        """
        market = self.profile.markets[symbol]
        closing = Side.ASK if account.positions[symbol].quantity > 0 else Side.BID
        fee = backstop_fee(account, quantity * price, self.profile.liquidation.fee_rate)
        book = self.books[symbol]
        fills = (
            Fill(0, symbol, f"{origin}-{account.id}", account.id, closing, price, quantity, quantity * price, ZERO,
                 market.quote, False, origin, fee),
            Fill(0, symbol, f"{origin}-{account.id}", counterparty.id, closing.opposite, price, quantity,
                 quantity * price, ZERO, market.quote, False, origin),
        )
        updates: list[OrderUpdate] = []
        for fill in fills:
            updates.extend(book.apply_position_change(fill.account, fill.quantity * fill.side.sign))
        if fee:
            book.liquidation_fees[market.quote] = book.liquidation_fees.get(market.quote, ZERO) + fee
        self._apply_match(fills, updates)
        return fee

    def _backstop_and_adl(self, account: SubAccount, reason: str) -> None:
        """Stage 2 then 3: hand what is left to the backstop at mark, then deleverage (11.3-11.4)."""
        for symbol in list(account.positions):
            mark = self.prices[symbol]
            step = self.profile.markets[symbol].step_size
            for provider in self.backstops:
                pos = account.positions.get(symbol)
                if pos is None:
                    break
                if provider.account == account.id:
                    continue
                quantity = min(abs(pos.quantity), floor_to(provider.room(symbol) / mark, step))
                if quantity <= 0:
                    continue
                mmr_before = totals(account).mmr
                side = Side.ASK if pos.quantity > 0 else Side.BID
                fee = self._off_book_trade(symbol, account, self.accounts[provider.account], quantity, mark,
                                           Origin.BACKSTOP_LIQUIDITY_PROVIDER)
                provider.used[symbol] = provider.used.get(symbol, ZERO) + quantity * mark
                self._record(account, BACKSTOP, mmr_before, f"{reason}; taken by {provider.account} at mark",
                             market=symbol, side=side, quantity=quantity, price=mark, fee=fee)
            pos = account.positions.get(symbol)
            if pos is not None:
                self._adl(account, symbol)
        for asset in list(account.borrows):
            self._backstop_borrow(account, asset, reason)
        self._settle_after_close(account)

    def _adl(self, account: SubAccount, symbol: str) -> None:
        mark = self.prices[symbol]
        pos = account.positions[symbol]
        candidates = []
        for other_id, quantity in self.books[symbol].positions.items():
            if other_id == account.id:
                continue
            other = self.accounts[other_id]
            other_pos = other.positions[symbol]
            candidates.append(AdlCandidate(other_id, quantity, other_pos.quantity * mark - other_pos.net_cost,
                                           abs(quantity) * other_pos.entry_price, totals(other).net_equity, mark))
        for candidate in adl_queue(candidates, 1 if pos.quantity > 0 else -1):
            pos = account.positions.get(symbol)
            if pos is None:
                return
            quantity = min(abs(pos.quantity), abs(candidate.quantity))
            mmr_before = totals(account).mmr
            side = Side.ASK if pos.quantity > 0 else Side.BID
            fee = self._off_book_trade(symbol, account, self.accounts[candidate.account], quantity, mark,
                                       Origin.ADL_AUTOCLOSE)
            self._record(account, ADL, mmr_before,
                         f"backstop capacity exhausted; closed against {candidate.account} (ADL score "
                         f"{fmt(candidate.score, 6)})", market=symbol, side=side, quantity=quantity, price=mark, fee=fee)

    def _backstop_borrow(self, account: SubAccount, asset: str, reason: str) -> None:
        """A provider repays the borrow for the account and is paid its value at mark in the
        account's settlement asset (the fund covers what the account cannot pay)."""
        if asset == self.settle:
            self._backstop_buys_collateral(account, reason)
            return
        price = self.prices[asset]
        step = self.profile.assets[asset].step
        for provider_ref in self.backstops:
            owed = account.borrows.get(asset, ZERO)
            if not owed or provider_ref.account == account.id:
                continue
            provider = self.accounts[provider_ref.account]
            quantity = min(owed, provider.available(asset), floor_to(provider_ref.room(asset) / price, step))
            if quantity <= 0:
                continue
            mmr_before = totals(account).mmr
            value = ceil_to(quantity * price, self.profile.assets[self.settle].step)
            provider.debit(asset, quantity)
            account.credit(asset, quantity)
            self._apply_grant(account, self.pools[asset].repay(account.id, quantity))  # type: ignore[arg-type]
            account.debit(self.settle, value)
            provider.credit(self.settle, value)
            provider_ref.used[asset] = provider_ref.used.get(asset, ZERO) + quantity * price
            fee = self._charge_backstop_fee(account, value)
            self._record(account, BACKSTOP, mmr_before, f"{reason}; {provider.id} repaid the borrow at mark",
                         market=asset, side=Side.BID, quantity=quantity, price=price, fee=fee)

    def _backstop_buys_collateral(self, account: SubAccount, reason: str) -> None:
        """A settlement-asset borrow at the backstop: each provider buys collateral at mark, up to
        its capacity for the asset and what it holds of it, and the proceeds repay the borrow."""
        settle = self.settle
        step = self.profile.assets[settle].step
        for provider_ref in self.backstops:
            need = settlement_borrow_to_cover(account)
            if need <= 0:
                break
            if provider_ref.account == account.id:
                continue
            provider = self.accounts[provider_ref.account]
            budget = min(need, provider_ref.room(settle), provider.available(settle))
            for asset, quantity, price in backstop_collateral(account, budget):
                mmr_before = totals(account).mmr
                value = floor_to(quantity * price, step)
                account.debit(asset, quantity)
                provider.credit(asset, quantity)
                provider.debit(settle, value)
                account.credit(settle, value)
                provider_ref.used[settle] = provider_ref.used.get(settle, ZERO) + value
                fee = self._charge_backstop_fee(account, value)
                self._repay_from_available(account, settle)
                self._record(account, BACKSTOP, mmr_before,
                             f"{reason}; {provider.id} bought {asset} at mark to repay the {settle} borrow",
                             market=asset, side=Side.ASK, quantity=quantity, price=price, fee=fee)

    def _charge_backstop_fee(self, account: SubAccount, notional: Decimal) -> Decimal:
        fee = backstop_fee(account, notional, self.profile.liquidation.fee_rate)
        if fee:
            account.debit(self.settle, fee)
            self._fund(self.settle, fee)
        return fee

    def _settle_after_close(self, account: SubAccount) -> None:
        """Positions and borrows are gone (or could not be placed anywhere): settle what is left."""
        mmr_before = totals(account).mmr
        # Collateral is sold for the settlement asset to cover a negative balance, then the fund pays.
        self.reconcile(account)
        for asset in list(account.borrows):
            self._repay_from_available(account, asset)
        if may_write_off(account):
            for asset in list(account.borrows):
                self._write_off(account, asset, mmr_before)
        t = totals(account)
        if (t.net_equity > 0 and self.profile.liquidation.backstop_residual_to_fund and not account.positions
                and not account.borrows):
            moved = []
            for asset, bal in account.balances.items():
                if bal.available > 0:
                    self._fund(asset, bal.available)
                    moved.append(f"{fmt(bal.available)} {asset}")
                    bal.available = ZERO
            if moved:
                self._record(account, "fund", mmr_before,
                             "residual equity after the backstop goes to the liquidity fund: " + ", ".join(moved))
        if not account.positions and not account.borrows:
            state = "bankruptcy" if account.unsettled_equity < 0 else "closed"
            self._finish(account, mmr_before, "nothing left to liquidate" + (
                f"; the account owes the fund {fmt(-account.unsettled_equity)} {self.settle}" if state == "bankruptcy" else ""),
                stage=state)
        elif account.borrows and not account.positions:
            waiting = self.liquidations[account.id]
            if not waiting.waiting:
                waiting.waiting = True
                self._record(account, "waiting", mmr_before, waiting_reason(account))

    def _write_off(self, account: SubAccount, asset: str, mmr_before: Decimal) -> None:
        """F7: a borrow nobody can repay; lenders are paid its value at mark by the fund."""
        if account.balances.get(asset) and account.available(asset) > 0:
            return
        price = self.prices[asset]
        debt = account.borrows[asset]
        shares = self.pools[asset].write_off(account.id)
        paid = ZERO
        for lender, quantity in shares.items():
            value = floor_to(quantity * price, self.profile.assets[self.settle].step)
            lender_account = self.accounts[lender]
            lender_account.apply_lend_write_off(asset, quantity)
            lender_account.credit(self.settle, value)
            paid += value
        self._fund(self.settle, -paid)
        repaid = account.apply_borrow_write_off(asset, debt, paid)
        self._fund(self.settle, repaid)
        self._record(account, "bankruptcy", mmr_before,
                     f"borrow of {fmt(debt)} {asset} written off; lenders paid {fmt(paid)} {self.settle} "
                     f"(its value at mark {fmt(price)}) by the liquidity fund, {fmt(repaid)} of it repaid from the "
                     f"account's {self.settle}", market=asset, quantity=debt, price=price)

    def _finish(self, account: SubAccount, mmr_before: Decimal, reason: str, stage: str = "healthy") -> None:
        self.liquidations.pop(account.id, None)
        account.liquidating = False
        self._record(account, stage, mmr_before, reason)

    # -- reading --------------------------------------------------------------------------
    def invariant_violations(self) -> list[str]:
        """Every system-wide invariant, checked on the whole venue (see exchange.invariants)."""
        accounts = list(self.accounts.values())
        books = list(self.books.values())
        pools = list(self.pools.values())
        holdings = holdings_by_asset(accounts, books, pools, self.fund, self.settle)
        return (
            conservation_violations(holdings, self.external)
            + pool_violations(pools, accounts)
            + position_violations(books, accounts)
            + negative_balance_violations(accounts)
        )

    def _log(self, kind: str, **fields: object) -> None:
        self.events.append({"t_ms": self.now_ms, "kind": kind, **fields})


def _final_from_rejection(order: Order) -> OrderUpdate:
    return OrderUpdate(order.order_id, order.account, order.market, OrderStatus.EXPIRED, ZERO, ZERO, ZERO)
