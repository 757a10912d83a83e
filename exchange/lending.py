"""Borrow/lend pools, one per asset (spec 9).

The pool is the ledger of record for every sub-account's lent and borrowed quantity of its
asset; a sub-account keeps a mirror (``SubAccount.lends`` / ``borrows``) for its margin. Money
moves physically only on lend, redeem, borrow and repay (``cash``); interest only grows the
claims.

Rates (spec 9.1): utilization ``U = borrowed / lent``; the two-slope borrow APR
``r0 + s1 U/U_opt`` up to the optimal utilization and ``r0 + s1 + s2 (U - U_opt)/(1 - U_opt)``
above it; lend APR ``borrow APR x U x (1 - fee)``.

Interest (spec 9.2), choices where the record is silent:

* Each hourly tick charges every borrow ``borrowed x APR / 8760`` at the rate in force at the
  tick, rounded *up* to the asset's step, and capitalises it into the borrow. A new borrow pays
  an entry fee for the part of the hour before the next tick (``qty x APR/8760 x
  minutes_left/60``, rounded up), capitalised at once, so no minute is charged twice.
* What borrowers paid since the last tick (tick interest plus entry fees) is shared among the
  lenders pro rata to their lends: the lenders together get ``(1 - fee)`` of it, each share
  rounded *down* to the step; that equals ``lend APR / 8760`` on each lend. The rest, the fee
  share and every rounding remainder, is the exchange's fee income. So borrowers' interest equals
  lenders' interest plus the exchange's fee to the last decimal, by construction.
* Throttle: a borrow or a redemption that would take utilization above
  ``throttle_utilization_threshold`` is refused unless it is a liquidation; nothing may take it
  above ``max_utilization``. ``RepayOnly`` pools accept repayments and redemptions only;
  ``Closed`` pools accept repayments only.

Identity kept at all times: ``cash = lent + fee_income + undistributed - borrowed``.
"""

from __future__ import annotations

from decimal import Decimal

import attrs

from exchange.decimals import HOURS_PER_YEAR, ZERO, ceil_to, floor_to, fmt, fmt_pct
from exchange.orders import ErrorCode, Rejection
from exchange.profile import Asset

HOUR_MS = 3_600_000


@attrs.frozen
class Grant:
    """A pool action that happened: ``quantity`` moved, ``entry_fee`` added to a new borrow."""

    asset: str
    account: str
    action: str  # "lend", "redeem", "borrow", "repay"
    quantity: Decimal
    entry_fee: Decimal = ZERO


@attrs.frozen
class InterestTick:
    """One hourly accrual: per-account interest, and where every unit of it went."""

    asset: str
    time_ms: int
    borrow_rate: Decimal
    lend_rate: Decimal
    utilization: Decimal
    borrow_interest: dict[str, Decimal]  # account -> interest added to its borrow
    lend_interest: dict[str, Decimal]  # account -> interest added to its lend
    paid_by_borrowers: Decimal  # tick interest plus entry fees since the previous tick
    credited_to_lenders: Decimal
    exchange_fee: Decimal


class LendingPool:
    """One asset's pool: lent and borrowed quantities per sub-account, rates, fee income."""

    def __init__(self, asset: Asset) -> None:
        self.asset = asset.symbol
        self.params = asset.lending
        self.step = asset.step
        self.state = asset.lending.state
        self.lent = ZERO
        self.borrowed = ZERO
        self.cash = ZERO
        self.fee_income = ZERO
        self.undistributed = ZERO  # interest paid since the last tick, not yet shared out
        self.entry_fees: dict[str, Decimal] = {}  # each account's part of it: entry fees since the last tick
        self.lenders: dict[str, Decimal] = {}
        self.borrowers: dict[str, Decimal] = {}
        self.last_tick_ms = 0  # ticks run on whole hours after the start (time 0)

    # -- rates ----------------------------------------------------------------------------
    @property
    def utilization(self) -> Decimal:
        return self.borrowed / self.lent if self.lent else ZERO

    def borrow_rate(self, utilization: Decimal | None = None) -> Decimal:
        u = self.utilization if utilization is None else utilization
        p = self.params
        if u <= p.optimal_utilization:
            return p.r0 + p.s1 * u / p.optimal_utilization
        return p.r0 + p.s1 + p.s2 * (u - p.optimal_utilization) / (1 - p.optimal_utilization)

    def lend_rate(self) -> Decimal:
        u = self.utilization
        return self.borrow_rate(u) * u * (1 - self.params.fee)

    # -- refusals -------------------------------------------------------------------------
    def _refuse(self, code: ErrorCode, message: str, **numbers: object) -> Rejection:
        details = {"asset": self.asset, "lent": self.lent, "borrowed": self.borrowed} | numbers
        return Rejection(code, message, details)

    def _utilization_after(self, borrowed: Decimal, lent: Decimal) -> Decimal:
        if lent <= 0:
            return Decimal("Infinity") if borrowed > 0 else ZERO
        return borrowed / lent

    def _supply_check(
        self, quantity: Decimal, cash: Decimal, borrowed: Decimal, lent: Decimal, liquidation: bool, what: str
    ) -> Rejection | None:
        """Refuse taking ``quantity`` of ``cash`` out when the pool lacks it or utilization
        (``borrowed / lent`` afterwards) would pass its cap."""
        if quantity > cash:
            return self._refuse(
                ErrorCode.INSUFFICIENT_SUPPLY,
                f"{what} needs {fmt(quantity)} {self.asset} and the pool holds {fmt(cash)}",
                cash=cash,
            )
        after = self._utilization_after(borrowed, lent)
        p = self.params
        cap, name = (
            (p.max_utilization, "max utilization")
            if liquidation
            else (min(p.throttle_utilization_threshold, p.max_utilization), "throttle threshold")
        )
        if after > cap:
            return self._refuse(
                ErrorCode.INSUFFICIENT_SUPPLY,
                f"{what} would take {self.asset} utilization to {fmt_pct(after)}, above the {name} {fmt_pct(cap)}",
                utilization_after=after,
                cap=cap,
            )
        return None

    # -- actions --------------------------------------------------------------------------
    def lend(self, account: str, quantity: Decimal) -> Grant | Rejection:
        if self.state != "Open":
            return self._refuse(ErrorCode.LEND_LIMIT, f"the {self.asset} pool is {self.state}: no new lends")
        if self.borrowers.get(account):
            return self._refuse(
                ErrorCode.LEND_REQUIRES_BORROW_REPAY,
                f"{account} borrows {fmt(self.borrowers[account])} {self.asset}: repay it before lending",
            )
        limit = self.params.open_borrow_lend_limit
        if limit is not None and self.lent + quantity > limit:
            return self._refuse(ErrorCode.LEND_LIMIT, f"the {self.asset} pool's lend limit {fmt(limit)} is reached")
        self.lenders[account] = self.lenders.get(account, ZERO) + quantity
        self.lent += quantity
        self.cash += quantity
        return Grant(self.asset, account, "lend", quantity)

    def _redeem_refusal(self, account: str, quantity: Decimal, liquidation: bool) -> Rejection | None:
        if self.state == "Closed":
            return self._refuse(ErrorCode.TRADING_PAUSED, f"the {self.asset} pool is Closed")
        held = self.lenders.get(account, ZERO)
        if quantity > held:
            return self._refuse(
                ErrorCode.INSUFFICIENT_FUNDS, f"{account} lends {fmt(held)} {self.asset}, cannot redeem {fmt(quantity)}"
            )
        return self._supply_check(
            quantity, self.cash, self.borrowed, self.lent - quantity, liquidation, f"redeeming {fmt(quantity)}"
        )

    def _borrow_refusal(
        self, account: str, quantity: Decimal, liquidation: bool, redeemed: Decimal = ZERO
    ) -> Rejection | None:
        """Why ``account`` may not borrow ``quantity`` now (after redeeming ``redeemed``), if it may not."""
        if self.state != "Open" and not liquidation:
            return self._refuse(ErrorCode.INSUFFICIENT_SUPPLY, f"the {self.asset} pool is {self.state}: no new borrows")
        still_lent = self.lenders.get(account, ZERO) - redeemed
        if still_lent:
            return self._refuse(
                ErrorCode.BORROW_REQUIRES_LEND_REDEEM,
                f"{account} lends {fmt(still_lent)} {self.asset}: redeem it before borrowing",
            )
        limit = self.params.open_borrow_lend_limit
        if limit is not None and self.borrowed + quantity > limit and not liquidation:
            return self._refuse(ErrorCode.BORROW_LIMIT, f"the {self.asset} pool's borrow limit {fmt(limit)} is reached")
        return self._supply_check(
            quantity,
            self.cash - redeemed,
            self.borrowed + quantity,
            self.lent - redeemed,
            liquidation,
            f"borrowing {fmt(quantity)}",
        )

    def redeem(self, account: str, quantity: Decimal, *, liquidation: bool = False) -> Grant | Rejection:
        refused = self._redeem_refusal(account, quantity, liquidation)
        if refused is not None:
            return refused
        self._set(self.lenders, account, self.lenders[account] - quantity)
        self.lent -= quantity
        self.cash -= quantity
        return Grant(self.asset, account, "redeem", quantity)

    def borrow(self, account: str, quantity: Decimal, now_ms: int, *, liquidation: bool = False) -> Grant | Rejection:
        """Lend ``quantity`` to ``account``; the margin check is the account's, before this."""
        refused = self._borrow_refusal(account, quantity, liquidation)
        if refused is not None:
            return refused
        fee = self.entry_fee(quantity, now_ms, (self.borrowed + quantity) / self.lent)
        self.borrowers[account] = self.borrowers.get(account, ZERO) + quantity + fee
        self.borrowed += quantity + fee
        self.undistributed += fee
        if fee:
            self.entry_fees[account] = self.entry_fees.get(account, ZERO) + fee
        self.cash -= quantity
        return Grant(self.asset, account, "borrow", quantity, fee)

    def draw(self, account: str, redeem: Decimal, borrow: Decimal, now_ms: int) -> list[Grant] | Rejection:
        """Redeem then borrow for one spot order: both happen or neither does (spec 8)."""
        refused = (self._redeem_refusal(account, redeem, False) if redeem else None) or (
            self._borrow_refusal(account, borrow, False, redeem) if borrow else None
        )
        if refused is not None:
            return refused
        grants = [self.redeem(account, redeem)] if redeem else []
        if borrow:
            grants.append(self.borrow(account, borrow, now_ms))
        return grants  # type: ignore[return-value]

    def entry_fee(self, quantity: Decimal, now_ms: int, utilization: Decimal | None = None) -> Decimal:
        """Interest from now to the next hourly tick, rounded up (F9), at the rate of
        ``utilization`` (the borrow passes the utilization it causes; default: the current one).

        If this hour's tick has not run yet (a borrow that arrives on the hour before the tick
        message does) the tick will charge the whole coming hour, so there is nothing to add.
        """
        hour_start = now_ms - now_ms % HOUR_MS
        if self.last_tick_ms < hour_start:
            return ZERO
        left_ms = hour_start + HOUR_MS - now_ms
        rate = self.borrow_rate(utilization)
        return ceil_to(quantity * rate / HOURS_PER_YEAR * left_ms / HOUR_MS, self.step)

    def repay(self, account: str, quantity: Decimal) -> Grant | Rejection:
        owed = self.borrowers.get(account, ZERO)
        if quantity > owed:
            return self._refuse(
                ErrorCode.INSUFFICIENT_FUNDS, f"{account} owes {fmt(owed)} {self.asset}, cannot repay {fmt(quantity)}"
            )
        self._set(self.borrowers, account, owed - quantity)
        self.borrowed -= quantity
        self.cash += quantity
        return Grant(self.asset, account, "repay", quantity)

    def waive_entry_fee(self, account: str, fee: Decimal) -> Decimal:
        """Take back the entry fee of a borrow that served nothing (its order was refused or
        expired unfilled, and the borrow was repaid), while the fee is still the account's own
        undistributed entry fee (no interest tick has shared it out since). Returns what was
        waived: nothing once a tick has passed."""
        owed = self.borrowers.get(account, ZERO)
        pending = self.entry_fees.get(account, ZERO)
        if not ZERO < fee <= min(pending, owed):
            return ZERO
        self._set(self.borrowers, account, owed - fee)
        self._set(self.entry_fees, account, pending - fee)
        self.borrowed -= fee
        self.undistributed -= fee
        return fee

    def write_off(self, account: str) -> dict[str, Decimal]:
        """A bankrupt borrower's debt leaves the pool; the lenders' claims shrink by it in kind.

        Each lender loses a share pro rata to its lend (rounded down, the remainder steps to the
        largest remainders, ties by id) so the shares add up to the debt exactly. Returns lender
        -> quantity written off; the caller pays each its USD value from the fund (spec F7).
        """
        debt = self.borrowers.pop(account, ZERO)
        if not debt:
            return {}
        self.borrowed -= debt
        lent = self.lent
        exact = {a: debt * q / lent for a, q in sorted(self.lenders.items())}
        shares = {a: floor_to(x, self.step) for a, x in exact.items()}
        left = int((debt - sum(shares.values(), ZERO)) / self.step)
        for lender in sorted(exact, key=lambda a: (-(exact[a] - shares[a]), a))[:left]:
            shares[lender] += self.step
        for lender, share in shares.items():
            self._set(self.lenders, lender, self.lenders[lender] - share)
        self.lent -= debt
        return {a: q for a, q in shares.items() if q}

    @staticmethod
    def _set(book: dict[str, Decimal], account: str, value: Decimal) -> None:
        if value:
            book[account] = value
        else:
            book.pop(account, None)

    # -- interest -------------------------------------------------------------------------
    def accrue(self, now_ms: int) -> InterestTick:
        """The hourly tick: charge borrowers, share what they paid among lenders, keep the rest."""
        u = self.utilization
        rate = self.borrow_rate(u)
        lend_rate = rate * u * (1 - self.params.fee)
        borrow_interest: dict[str, Decimal] = {}
        for account in sorted(self.borrowers):
            interest = ceil_to(self.borrowers[account] * rate / HOURS_PER_YEAR, self.step)
            if interest:
                borrow_interest[account] = interest
                self.borrowers[account] += interest
        charged = sum(borrow_interest.values(), ZERO)
        self.borrowed += charged
        paid = self.undistributed + charged
        to_lenders = paid * (1 - self.params.fee)
        lend_interest: dict[str, Decimal] = {}
        if self.lent and to_lenders:
            for account in sorted(self.lenders):
                share = floor_to(to_lenders * self.lenders[account] / self.lent, self.step)
                if share:
                    lend_interest[account] = share
        credited = sum(lend_interest.values(), ZERO)
        for account, share in lend_interest.items():
            self.lenders[account] += share
        self.lent += credited
        self.fee_income += paid - credited
        self.undistributed = ZERO
        self.entry_fees.clear()
        self.last_tick_ms = now_ms
        return InterestTick(
            asset=self.asset,
            time_ms=now_ms,
            borrow_rate=rate,
            lend_rate=lend_rate,
            utilization=u,
            borrow_interest=borrow_interest,
            lend_interest=lend_interest,
            paid_by_borrowers=paid,
            credited_to_lenders=credited,
            exchange_fee=paid - credited,
        )

    def check_identity(self) -> None:
        """The pool's books balance (raises AssertionError with the numbers if not)."""
        expected = self.lent + self.fee_income + self.undistributed - self.borrowed
        assert self.cash == expected, f"{self.asset} pool: cash {self.cash} != {expected}"
        assert self.lent == sum(self.lenders.values(), ZERO), f"{self.asset} pool: lends do not add up"
        assert self.borrowed == sum(self.borrowers.values(), ZERO), f"{self.asset} pool: borrows do not add up"
