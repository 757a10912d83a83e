"""What may leave a sub-account or be borrowed by it: the withdrawal, transfer, borrow and
leverage rules, with the largest amount that passes (the venue's ``/limits`` endpoints).

Every rule here reads one ``SubAccount`` and changes nothing; a refusal carries its numbers and
the most that would pass, so whoever asked can try again with it. The sub-account machine
applies them; the engine's ``max_*`` readers call them directly.
"""

from __future__ import annotations

from decimal import Decimal

from exchange.decimals import ZERO, fmt
from exchange.ledger import SubAccount
from exchange.margin import Change, evaluate_change, largest_passing, totals
from exchange.orders import ErrorCode, Rejection


def outflow_plan(account: SubAccount, asset: str, quantity: Decimal, auto_borrow: bool) -> tuple[Decimal, Decimal] | Rejection:
    """(lend to redeem, quantity to borrow) for taking ``quantity`` of ``asset`` out, or why not.

    Lent balance is redeemed as needed (the venue always does, spec 9.3); with ``auto_borrow``
    the rest may be borrowed. Available equity must stay >= 0 afterwards.
    """
    if asset not in account.profile.assets:
        return Rejection(ErrorCode.INVALID_QUANTITY, f"cannot take out {asset}: assets are "
                         + ", ".join(account.profile.assets))
    if quantity <= 0:
        return Rejection(ErrorCode.INVALID_QUANTITY, f"quantity {fmt(quantity)} must be positive")
    held = account.available(asset)
    short = max(quantity - max(held, ZERO), ZERO)
    lent = account.lends.get(asset, ZERO)
    redeem = min(lent, short)
    borrow = short - redeem if auto_borrow else ZERO
    if short - redeem - borrow > 0:
        return Rejection(ErrorCode.INSUFFICIENT_FUNDS,
                         f"{fmt(quantity)} {asset} asked, {fmt(held + lent)} available and lent"
                         + ("" if auto_borrow else " (auto-borrow would borrow the rest)"),
                         {"needed": quantity, "available": held + lent,
                          "max_quantity": max_withdrawal_quantity(account, asset, auto_borrow=auto_borrow)})
    ev = evaluate_change(account, Change(balances=((asset, borrow - quantity),), borrows=((asset, borrow),)))
    if ev.after.available < 0:
        largest = max_withdrawal_quantity(account, asset, auto_borrow=auto_borrow)
        return Rejection(
            ErrorCode.INSUFFICIENT_MARGIN,
            f"taking {fmt(quantity)} {asset} out would take available equity to {fmt(ev.after.available, 2)}; "
            f"at most {fmt(largest)} can leave",
            {"available_before": ev.before.available, "available_after": ev.after.available,
             "imr_before": ev.before.imr, "imr_after": ev.after.imr, "max_quantity": largest},
        )
    return redeem, borrow


def max_withdrawal_quantity(account: SubAccount, asset: str, *, auto_borrow: bool = False) -> Decimal:
    """The most that keeps available equity >= 0: what is held and lent, plus what could be
    borrowed with ``auto_borrow``."""
    before = totals(account)
    held = max(account.available(asset), ZERO) + account.lends.get(asset, ZERO)

    def passes(quantity: Decimal) -> bool:
        borrow = max(quantity - held, ZERO)
        if borrow and not auto_borrow:
            return False
        change = Change(balances=((asset, borrow - quantity),), borrows=((asset, borrow),))
        return evaluate_change(account, change, before).after.available >= 0

    return largest_passing(passes, account.profile.assets[asset].step)


def borrow_refusal(account: SubAccount, asset: str, quantity: Decimal) -> Rejection | None:
    """A manual borrow is refused when it would take available equity below zero (IMR past
    100%), with the numbers and the most that can be borrowed; margin-bound, not supply-bound
    (the pool says whether it has the supply)."""
    ev = evaluate_change(account, Change(balances=((asset, quantity),), borrows=((asset, quantity),)))
    if ev.after.available >= 0:
        return None
    largest = max_borrow_quantity(account, asset)
    return Rejection(
        ErrorCode.INSUFFICIENT_MARGIN,
        f"borrowing {fmt(quantity)} {asset} would take available equity from {fmt(ev.before.available, 2)} "
        f"to {fmt(ev.after.available, 2)}; the most that can be borrowed is {fmt(largest)}",
        {"imr_before": ev.before.imr, "imr_after": ev.after.imr, "available_before": ev.before.available,
         "available_after": ev.after.available, "max_quantity": largest},
    )


def max_borrow_quantity(account: SubAccount, asset: str) -> Decimal:
    """The venue's ``/limits/borrow``: the most a borrow may be with IMR at most 100%."""
    before = totals(account)

    def passes(quantity: Decimal) -> bool:
        change = Change(balances=((asset, quantity),), borrows=((asset, quantity),))
        return evaluate_change(account, change, before).after.available >= 0

    return largest_passing(passes, account.profile.assets[asset].step)


def leverage_refusal(account: SubAccount, limit: Decimal) -> Rejection | None:
    """A new account leverage limit: within 1..the profile's maximum, and never lowered so far
    that available equity goes negative (raising it only frees margin). Checked on a copy of
    the settings; the account is not changed."""
    ceiling = account.profile.max_leverage_limit
    if not 1 <= limit <= ceiling:
        return Rejection(ErrorCode.MAX_LEVERAGE_REACHED, f"leverage limit {fmt(limit)} is outside 1..{fmt(ceiling)}")
    old = account.settings.leverage_limit
    if limit >= old:
        return None
    account.settings.leverage_limit = limit
    try:
        t = totals(account)
    finally:
        account.settings.leverage_limit = old
    if t.available < 0:
        return Rejection(ErrorCode.INSUFFICIENT_MARGIN,
                         f"a {fmt(limit)}x limit would take available equity to {fmt(t.available, 2)}",
                         {"available_after": t.available, "imr_after": t.imr})
    return None
