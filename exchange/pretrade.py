"""What a sub-account does with an order before it leaves for the market.

In order (spec 7's validation order, reduced to what the simulator models): the order's shape
(tick, step, limits), the account's state (``ACCOUNT_LIQUIDATING``), the funds a spot order must
lock, then the margin check. An accepted order is reserved (spot funds locked, perp exposure
recorded) and returned, ready to send; a refused one changes nothing and says why with the
numbers: IMR before and after, available equity before and after, and the largest quantity that
would have passed.

The margin check values the order as resting exposure at the account's marks (spec decision
"Order acceptance"): a perp order adds to the bid or ask side of the net exposure; a spot order
is valued as if it filled completely, paying its limit price (the mark for a market order) and
receiving base valued at the mark with its haircut. Fees are left out of the check.
"""

from __future__ import annotations

from decimal import Decimal

import attrs

from exchange.decimals import ZERO, ceil_to, fmt, fmt_pct
from exchange.ledger import SubAccount
from exchange.margin import Change, Evaluation, Totals, evaluate_change, largest_passing, totals
from exchange.orders import ErrorCode, ExpiryReason, Order, OrderType, Origin, Rejection, Side, check_order_shape
from exchange.profile import Market


@attrs.frozen
class Accepted:
    """An order that passed: the order to send, what it locks, how that is funded, the numbers.

    When ``redeem`` or ``borrow`` is non-zero the order can only be reserved after the lending
    pool has granted them (see ``exchange.lending``).
    """

    order: Order
    evaluation: Evaluation | None
    lock_asset: str | None = None
    lock_amount: Decimal = ZERO
    redeem: Decimal = ZERO  # lent quantity of lock_asset to redeem first
    borrow: Decimal = ZERO  # quantity of lock_asset to borrow first (autoBorrow)
    # A perp order sized by quote: the base quantity the margin check counted (the quote at the
    # mark, up to the step). The account counts it as the order's open exposure until the order
    # ends, so the IMR it was accepted at is the IMR it holds while the order is on its way.
    exposure: Decimal | None = None


def place_order(account: SubAccount, order: Order) -> Accepted | Rejection:
    """Check ``order`` and, when it passes, reserve it on the account."""
    result = check_order(account, order)
    if isinstance(result, Accepted):
        if result.redeem or result.borrow:
            raise ValueError("an order that redeems or borrows is placed through the lending pool")
        account.reserve(result.order, result.lock_asset, result.lock_amount, result.exposure)
    return result


def check_order(account: SubAccount, order: Order) -> Accepted | Rejection:
    """The full pre-trade check; changes nothing."""
    market = account.profile.markets.get(order.market)
    if market is None:
        return Rejection(ErrorCode.INVALID_ORDER, f"no market {order.market} in profile {account.profile.name}")
    refused = check_order_shape(order, market)
    if refused is not None:
        return refused
    result = _evaluate(account, market, order)
    if isinstance(result, Rejection):
        return result
    ev = result.evaluation
    system = order.origin is not Origin.USER
    if ev is None or system or ev.passes and not (account.liquidating and _adds_risk(ev)):
        return result
    if account.liquidating:
        return Rejection(
            ErrorCode.ACCOUNT_LIQUIDATING,
            f"sub-account {account.id} is being liquidated: only orders that reduce risk are accepted",
            _numbers(ev),
        )
    largest = max_order_quantity(account, market.symbol, order.side, order.price, order)
    details = _numbers(ev) | {"max_quantity": largest, "imf_after": ev.imf_after, "imf_source": ev.imf_source}
    return Rejection(
        ErrorCode.INSUFFICIENT_MARGIN,
        (
            f"{order.side} {fmt(order.quantity or order.quote_quantity)} {market.symbol} would take IMR from "
            f"{fmt_pct(ev.before.imr)} to {fmt_pct(ev.after.imr)} (available equity {fmt(ev.before.available, 2)} -> "
            f"{fmt(ev.after.available, 2)} {account.profile.settlement_asset}); the largest {order.side} that "
            f"passes is {fmt(largest)}"
        ),
        details,
    )


def _adds_risk(ev: Evaluation) -> bool:
    return ev.after.available < ev.before.available


def _numbers(ev: Evaluation) -> dict[str, Decimal]:
    return {
        "imr_before": ev.before.imr,
        "imr_after": ev.after.imr,
        "available_before": ev.before.available,
        "available_after": ev.after.available,
        "net_equity": ev.before.net_equity,
    }


def _evaluate(account: SubAccount, market: Market, order: Order, before: Totals | None = None) -> Accepted | Rejection:
    """Margin (and, for spot, funds) numbers of ``order`` without max-quantity work."""
    base_totals = before if before is not None else totals(account)
    if market.is_perp:
        if order.reduce_only:
            return Accepted(order, None)
        quantity = _perp_quantity(account, market, order)
        bid = order.side is Side.BID
        change = Change(perp=(market.symbol, ZERO, quantity if bid else ZERO, ZERO if bid else quantity))
        return Accepted(order, evaluate_change(account, change, base_totals),
                        exposure=quantity if order.quantity is None else None)
    return _evaluate_spot(account, market, order, base_totals)


def _perp_quantity(account: SubAccount, market: Market, order: Order) -> Decimal:
    if order.quantity is not None:
        return order.quantity
    assert order.quote_quantity is not None
    return ceil_to(order.quote_quantity / account.price(market.symbol), market.step_size)


def _evaluate_spot(account: SubAccount, market: Market, order: Order, before: Totals) -> Accepted | Rejection:
    """Funds first (available, then redeemed lend, then auto-borrow), then margin after a full fill.

    The lock is what the order may spend: a limit bid's cost at its limit price, an ask's base
    quantity, a market bid's quote quantity. Where the amount depends on prices the account
    cannot know (a market bid by quantity, a market ask by quote) the lock is an estimate at
    the mark and the impact band (spec 14), shrunk to what can be funded as long as that covers
    the cost at the mark; the book's ``funds_limit`` then keeps the order within it.
    """
    base, quote = market.base, market.quote
    quote_step = account.profile.assets[quote].step
    base_step = account.profile.assets[base].step
    mark = account.price(base) / account.price(quote)
    price = order.price if order.price is not None else mark
    bands = market.bands
    estimated = fair = None
    if order.side is Side.BID:
        lock_asset, received_asset = quote, base
        if order.quantity is None:
            assert order.quote_quantity is not None
            lock = order.quote_quantity
        elif order.price is not None:
            lock = ceil_to(order.quantity * order.price, quote_step)
        else:
            fair = ceil_to(order.quantity * mark, quote_step)
            estimated = ceil_to(order.quantity * mark * bands.max_impact_multiplier, quote_step)
            if order.quote_quantity is not None:
                fair, estimated = min(fair, order.quote_quantity), min(estimated, order.quote_quantity)
    else:
        lock_asset, received_asset = base, quote
        if order.quantity is not None:
            lock = order.quantity
        else:
            assert order.quote_quantity is not None
            fair = ceil_to(order.quote_quantity / mark, base_step)
            estimated = ceil_to(order.quote_quantity / (mark * bands.min_impact_multiplier), base_step)
    if estimated is not None:
        assert fair is not None
        fundable = _fundable(account, order, lock_asset)
        lock = estimated if order.auto_borrow or fundable < fair else min(estimated, fundable)
    plan = _fund(account, order, lock_asset, lock)
    if isinstance(plan, Rejection):
        return plan
    redeem, borrow = plan
    if order.side is Side.BID:
        spent = lock if order.quantity is None else min(lock, ceil_to(order.quantity * price, quote_step))
        received = order.quantity if order.quantity is not None else spent / price
        order = attrs.evolve(order, funds_limit=lock)
    else:
        spent, received = lock, lock * price
        if order.quantity is None:
            order = attrs.evolve(order, funds_limit=lock)  # a sell by quote gives at most its lock
    change = Change(
        balances=((lock_asset, borrow - spent), (received_asset, received)),
        borrows=((lock_asset, borrow),) if borrow else (),
    )
    return Accepted(order, evaluate_change(account, change, before), lock_asset, lock, redeem, borrow)


def _fundable(account: SubAccount, order: Order, asset: str) -> Decimal:
    """How much of ``asset`` this order could draw without borrowing."""
    total = max(account.available(asset), ZERO)
    if order.auto_lend_redeem or account.settings.auto_lend:
        total += account.lends.get(asset, ZERO)
    return total


def _fund(account: SubAccount, order: Order, asset: str, lock: Decimal) -> tuple[Decimal, Decimal] | Rejection:
    """(lend to redeem, quantity to borrow) that make ``lock`` available, or why not (spec 8)."""
    available = max(account.available(asset), ZERO)
    if lock <= 0:
        return _no_funds(order, asset, lock, available)
    short = lock - available
    if short <= 0:
        return ZERO, ZERO
    lent = account.lends.get(asset, ZERO)
    redeem = ZERO
    if lent and (order.auto_lend_redeem or account.settings.auto_lend):
        redeem = min(lent, short)
        short -= redeem
    if short <= 0:
        return redeem, ZERO
    if not order.auto_borrow:
        return _no_funds(order, asset, lock, available + redeem)
    if lent > redeem:
        return Rejection(
            ErrorCode.BORROW_REQUIRES_LEND_REDEEM,
            f"borrowing {fmt(short)} {asset} needs the {fmt(lent)} {asset} lent redeemed first (set autoLendRedeem)",
            {"asset": asset, "lent": lent, "short": short},
            ExpiryReason.BORROW_REQUIRES_LEND_REDEEM,
        )
    return redeem, ceil_to(short, account.profile.assets[asset].step)


def _no_funds(order: Order, asset: str, needed: Decimal, available: Decimal) -> Rejection:
    return Rejection(
        ErrorCode.INSUFFICIENT_FUNDS,
        f"{order.side} {order.market} needs {fmt(needed)} {asset} and {fmt(available)} is available"
        + ("" if order.auto_borrow else " (autoBorrow would borrow the rest)"),
        {"asset": asset, "needed": needed, "available": available},
        ExpiryReason.INSUFFICIENT_FUNDS,
    )


def max_order_quantity(
    account: SubAccount,
    symbol: str,
    side: Side,
    price: Decimal | None = None,
    template: Order | None = None,
) -> Decimal:
    """Largest quantity of an order like ``template`` that the pre-trade check accepts.

    The venue's ``/limits/order``. A reduce-only order is bounded by the position it reduces.
    Where IMF is flat the answer has a closed form, which is tried first and verified; in the
    sqrt region (and for spot, where funds also bind) it is found by bisection over whole
    steps of the acceptance test itself.
    """
    market = account.profile.markets[symbol]
    if template is None:
        order_type = OrderType.MARKET if price is None else OrderType.LIMIT
        template = Order("max-quantity", account.id, symbol, side, order_type, ZERO, price)
    if template.reduce_only:
        pos = account.positions.get(symbol)
        quantity = pos.quantity if pos else ZERO
        return abs(quantity) if quantity * side.sign < 0 else ZERO
    before = totals(account)

    def passes(quantity: Decimal) -> bool:
        trial = attrs.evolve(template, quantity=quantity, quote_quantity=None, side=side, price=price)
        result = _evaluate(account, market, trial, before)
        return isinstance(result, Accepted) and (result.evaluation is None or result.evaluation.passes)

    return largest_passing(passes, market.step_size, _closed_form_guess(account, market, side, before))


def _closed_form_guess(account: SubAccount, market: Market, side: Side, before: Totals) -> Decimal | None:
    """Perp, flat IMF: solve ``NE - (Locked_others + |E| mark IMF) = 0`` for the order size."""
    if not market.is_perp:
        return None
    assert market.imf is not None
    mark = account.price(market.symbol)
    imf = max(market.imf.base, account.leverage_floor)
    pos = account.positions.get(market.symbol)
    quantity = pos.quantity if pos else ZERO
    sides = account.order_exposure.get(market.symbol)
    bids, asks = (sides[0], sides[1]) if sides else (ZERO, ZERO)
    own = abs(quantity + bids if abs(quantity + bids) >= abs(quantity - asks) else quantity - asks) * mark * imf
    room = before.net_equity - (before.locked - own)
    if room <= 0:
        return None
    largest_exposure = room / (mark * imf)
    if largest_exposure * mark > market.imf.flat_until:
        return None
    return largest_exposure - (quantity + bids) if side is Side.BID else largest_exposure - (asks - quantity)
