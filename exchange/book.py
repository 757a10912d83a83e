"""One market's central limit order book: price-time priority, bands, STP, reduce-only, fees.

The book is the authority on what trades: it re-runs the shape check, applies the price bands
of spec section 14, self-trade prevention, reduce-only, post-only, IOC/FOK, market impact
limits and funds limits, and prices every fill with its fees. It knows nothing of balances or
margin; the sub-account decides before an order is sent, the book decides what happens to it.

An order that passes the shape check, the duplicate-id check (against open orders: ids are
minted upstream, and remembering every id ever seen would grow without bound), the
last-active-price band and, for quote-sized market orders, the minimum-quantity check has
reached the book and ends with exactly one final ``OrderUpdate``. An order that ends inside
``submit`` gets only that final update; an order that rests gets ``New``/``PartiallyFilled``
first. The order of checks after that: mean-mark and premium bands (perps), reduce-only,
post-only, FOK dry run, matching.

Rules the spec leaves open, as decided here:

* A quote target is reached when what is left of it buys less than one step at the current
  best price (a sell does not look for a lower price that would fit another step).
* ``funds_limit`` caps what a bid pays, as taker and later as maker. A resting bid that cannot
  pay for one more step expires ``InsufficientFunds``. On a market sell by quote it caps the
  base the order gives (what its account locked, estimated at the account's mark): the impact
  band is fixed from the book's best bid, which may sit further below the mark than the
  estimate allowed. A sell that spends it before its target expires ``InsufficientFunds``
  (a FOK one is killed). On any other ask it is ignored.
* A market order meeting an empty side expires ``InsufficientLiquidity`` (``FillOrKill`` if FOK);
  the impact band is fixed from the best price on arrival.
* Reduce-only caps are floored to the step; a cap of zero means "does not reduce".
* The *last active price* that anchors the limit-price band is the most recent of the last
  trade and the last reference price the feed published (the mark for a perp, the index for
  spot): a book that has not traded since a large move accepts orders around the new price
  instead of refusing everything near it.
* Bands are checked when an order arrives; resting orders are not re-checked when prices move.
* ``set_prices`` with ``None`` leaves that price as it was.

Cancellation is lazy: a cancelled order is marked dead and dropped when it reaches the head of
its price level. Every level kept in a side's ``SortedDict`` has a live head, so the first
level is always the real best price (also cached), and each level keeps its live quantity as a
running total.
"""

from __future__ import annotations

from collections import deque
from decimal import Decimal
from itertools import islice

from sortedcontainers import SortedDict

from exchange.decimals import INFINITY, ZERO, ceil_to, floor_to, fmt
from exchange.orders import (
    ErrorCode,
    ExpiryReason,
    Fill,
    MatchResult,
    Order,
    OrderStatus,
    OrderUpdate,
    Origin,
    Rejection,
    SelfTradePrevention,
    Side,
    TimeInForce,
    check_order_shape,
    duplicate_order_id,
)
from exchange.profile import Profile

_BID = Side.BID
_NEW = OrderStatus.NEW
_PARTIALLY_FILLED = OrderStatus.PARTIALLY_FILLED
_FILLED = OrderStatus.FILLED
_CANCELLED = OrderStatus.CANCELLED
_EXPIRED = OrderStatus.EXPIRED
_STP = ExpiryReason.SELF_TRADE_PREVENTION
_REJECT_TAKER = SelfTradePrevention.REJECT_TAKER
_REJECT_BOTH = SelfTradePrevention.REJECT_BOTH
_LIQUIDATION = Origin.LIQUIDATION_AUTOCLOSE
_GTC = TimeInForce.GTC
_FOK = TimeInForce.FOK
_FILL_OR_KILL = ExpiryReason.FILL_OR_KILL
_NO_FUNDS = ExpiryReason.INSUFFICIENT_FUNDS
_NO_LIQUIDITY = ExpiryReason.INSUFFICIENT_LIQUIDITY
_IMPACT = ExpiryReason.PRICE_IMPACT


class _Resting:
    """The mutable state of one order in the book (the frozen ``Order`` stays attached).

    ``funds_limit`` is kept only for bids: it caps what the order pays, taker or maker.
    """

    __slots__ = (
        "order", "order_id", "account", "side", "price", "remaining", "executed", "executed_quote",
        "reduce_only", "funds_limit", "live",
    )

    def __init__(self, order: Order, remaining: Decimal) -> None:
        self.order = order
        self.order_id = order.order_id
        self.account = order.account
        self.side = order.side
        self.price = order.price
        self.remaining = remaining
        self.executed = ZERO
        self.executed_quote = ZERO
        self.reduce_only = order.reduce_only
        self.funds_limit = order.funds_limit if order.side is _BID else None
        self.live = True


class _Level(deque[_Resting]):
    """The orders at one price, oldest first, with their live quantity and how many are dead.

    Dead orders leave when they reach the head; a level whose dead outnumber its live orders is
    compacted, so a long-lived head order with churn behind it cannot grow the queue forever.
    """

    __slots__ = ("qty", "dead")

    def __init__(self) -> None:
        super().__init__()
        self.qty = ZERO
        self.dead = 0

    def compact(self) -> None:
        live = [r for r in self if r.live]
        self.clear()
        self.extend(live)
        self.dead = 0


_COMPACT_AFTER = 32  # dead orders a level may carry before compaction is considered


class OrderBook:
    """A central limit order book for one spot or perp market of a profile.

    ``positions`` (perps) is each account's signed net position as far as this book knows it:
    its own fills plus ``apply_position_change``; reduce-only orders are judged against it.
    ``fee_income`` (asset -> amount) collects trading fees and the quote rounding remainder of
    spot fills; ``liquidation_fees`` (quote asset -> amount) the fees of liquidation fills.
    """

    __slots__ = (
        "profile", "market", "symbol", "positions", "fee_income", "liquidation_fees", "mark_price",
        "index_price", "_bids", "_asks", "_best_bid", "_best_ask", "_orders", "_by_account", "_reduce_only",
        "_trade_id", "_last_price", "_active_price", "_band", "_band_ref", "_mark_window", "_is_perp", "_step",
        "_quote", "_quote_step", "_base", "_base_step", "_maker_rate", "_taker_rate", "_liquidation_rate",
        "_round_quote",
    )

    def __init__(self, profile: Profile, symbol: str) -> None:
        market = profile.market(symbol)
        self.profile = profile
        self.market = market
        self.symbol = symbol
        self.positions: dict[str, Decimal] = {}
        self.fee_income: dict[str, Decimal] = {}
        self.liquidation_fees: dict[str, Decimal] = {}
        self.mark_price: Decimal | None = None
        self.index_price: Decimal | None = None
        self._bids: SortedDict = SortedDict()
        self._asks: SortedDict = SortedDict()
        # The best prices are cached: a non-crossing limit order then costs no sorted lookup.
        self._best_bid: Decimal | None = None
        self._best_ask: Decimal | None = None
        # Resting orders by (account, order id): an order id is the account's own (a client id),
        # so two accounts may each have an order "x1" on the same book.
        self._orders: dict[tuple[str, str], _Resting] = {}
        self._by_account: dict[str, dict[str, None]] = {}
        self._reduce_only: dict[str, dict[str, _Resting]] = {}
        self._trade_id = 0
        self._last_price: Decimal | None = None
        self._active_price: Decimal | None = None
        self._band: tuple[Decimal, Decimal] | None = None
        self._band_ref: Decimal | None = None
        self._mark_window: tuple[Decimal, Decimal] | None = None
        self._is_perp = market.is_perp
        self._step = market.step_size
        self._quote = market.quote
        self._quote_step = profile.assets[market.quote].step
        self._base = market.base
        self._base_step = profile.assets[market.base].step
        self._maker_rate = market.maker_fee
        self._taker_rate = market.taker_fee
        self._liquidation_rate = profile.liquidation.fee_rate
        # price x quantity is a multiple of tick x step: when that lands on the quote grid, spot
        # quote legs need no rounding (true for every shipped market). Perps never round them.
        self._round_quote = not market.is_perp and (market.tick_size * market.step_size) % self._quote_step != 0

    # ----------------------------------------------------------------------------------
    # Read-only views

    def __len__(self) -> int:
        return len(self._orders)

    @property
    def last_trade_price(self) -> Decimal | None:
        return self._last_price

    def best_bid(self) -> tuple[Decimal, Decimal] | None:
        """(price, live quantity) of the highest bid level."""
        price = self._best_bid
        return None if price is None else (price, self._bids[price].qty)

    def best_ask(self) -> tuple[Decimal, Decimal] | None:
        """(price, live quantity) of the lowest ask level."""
        price = self._best_ask
        return None if price is None else (price, self._asks[price].qty)

    def depth(self, levels: int) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        """Up to ``levels`` (price, quantity) levels per side, best first."""
        bids, asks = self._bids, self._asks
        return (
            [(p, bids[p].qty) for p in islice(reversed(bids), levels)],
            [(p, asks[p].qty) for p in islice(asks, levels)],
        )

    def open_orders(self, account: str) -> list[str]:
        """Ids of the account's resting orders, in the order they were placed."""
        return list(self._by_account.get(account, ()))

    def resting_quantity(self, order_id: str, account: str) -> Decimal | None:
        r = self._orders.get((account, order_id))
        return None if r is None else r.remaining

    # ----------------------------------------------------------------------------------
    # Prices

    def set_prices(self, mark: Decimal | None = None, index: Decimal | None = None) -> None:
        """Take new mark and/or index prices (``None`` leaves that price as it was)."""
        if mark is not None:
            self.mark_price = mark
        if index is not None:
            self.index_price = index
        reference = mark if self._is_perp else index
        if reference is not None:
            self._active_price = reference
        self._refresh_band()
        if self._is_perp and self.mark_price is not None:
            self._mark_window = self._perp_window(self.mark_price, self.index_price)

    def _perp_window(self, mark: Decimal, index: Decimal | None) -> tuple[Decimal, Decimal]:
        """Limit prices a perp order may rest at: the mean-mark band cut by the premium band.

        Spec section 14 gives futures two bands, and an order must satisfy both:

        * mean-mark band: price within ``[min, max] x`` the mean mark;
        * mean-premium band: the premium of the order price over the index,
          ``(price - index) / index``, may not deviate from the mean premium by more than
          ``tolerancePct``, added and subtracted in premium points (F11: mean 5% and
          tolerance 5% block premiums above 10%).

        The current mark stands in for the mean mark, so the mean premium is
        ``(mark - index) / index`` and the premium band is the price interval
        ``mark -+ tolerance x index``.

        Decision: the premium band limits the *order's* price against the index. The other
        reading, that the band only watches the market's own premium (so at zero premium it
        does nothing and the window is [90, 110]), is rejected for three reasons. Section 14
        states both futures rows as limits on the price an order may have. F11 states a
        threshold that an order's premium crosses. And the venue's API types (source S18)
        publish this band as the latest index price with the minimum and maximum premium the
        book accepts, which only makes sense as an order-price window around the index.
        So spec D13 ("mean mark 100 => [90, 110]") uses the mean-mark band of the F12 filter
        and leaves out that same filter's tolerancePct 0.05. With both bands, and
        mark = index = 100, the window is [max(90, 95), min(110, 105)] = [95, 105].
        [90, 110] is the window only while no index is known, or on a perp with no premium
        band.

        Because the current mark serves as both means, both bands are centred on the mark, and
        the mark band is the tighter one only when its half-width is smaller. With the F12
        numbers that is 0.1 x mark < 0.05 x index, i.e. index > 2 x mark. That follows from the
        stand-in, not from the reading, so both bands stay.
        """
        bands = self.market.bands
        low, high = -INFINITY, INFINITY
        if bands.mean_mark_min_multiplier is not None:
            low = mark * bands.mean_mark_min_multiplier
        if bands.mean_mark_max_multiplier is not None:
            high = mark * bands.mean_mark_max_multiplier
        tolerance = bands.mean_premium_tolerance
        if index is not None and tolerance is not None:
            # premium(p) - mean premium = p/index - mark/index = (p - mark)/index, so the
            # premium band is the exact price interval mark -+ tolerance*index (no division).
            low = max(low, mark - tolerance * index)
            high = min(high, mark + tolerance * index)
        return low, high

    def _refresh_band(self) -> None:
        """Recompute the last-active-price band when its reference moved (not per order)."""
        ref = self._active_price
        if ref is None:
            ref = self.index_price if self.index_price is not None else self.mark_price
        if ref is None or ref == self._band_ref:
            return
        bands = self.market.bands
        self._band_ref = ref
        self._band = (ref * bands.min_multiplier, ref * bands.max_multiplier)

    # ----------------------------------------------------------------------------------
    # Orders

    def submit(self, order: Order) -> MatchResult:
        """Validate, match and (GTC limit remainder) rest one order; never raises for a bad order."""
        rejection = check_order_shape(order, self.market)
        if rejection is not None:
            return MatchResult(order, [], [], rejection)
        order_id = order.order_id
        if (order.account, order_id) in self._orders:
            refused = duplicate_order_id(order_id, f"{self.symbol} for account {order.account}")
            return MatchResult(order, [], [], Rejection(refused.code, refused.message,
                                                        refused.details | {"market": self.symbol}))
        price = order.price
        is_bid = order.side is _BID
        best = self._best_ask if is_bid else self._best_bid
        if price is not None:
            band = self._band
            if band is not None and not band[0] <= price <= band[1]:
                return MatchResult(order, [], [], Rejection(
                    ErrorCode.INVALID_PRICE,
                    f"price {fmt(price)} is too far from the last active price {fmt(self._band_ref)}: "
                    f"it must lie within [{fmt(band[0])}, {fmt(band[1])}]",
                    {"market": self.symbol, "price": price, "last_active_price": self._band_ref,
                     "min_price": band[0], "max_price": band[1]},
                ))
        elif order.quote_quantity is not None and best is not None:
            rejection = self._check_quote_quantity(order.quote_quantity, best, is_bid)
            if rejection is not None:
                return MatchResult(order, [], [], rejection)
        if price is not None:
            window = self._mark_window
            if window is not None and not window[0] <= price <= window[1]:
                return self._ended_at_once(order, ExpiryReason.PRICE_OUT_OF_BOUNDS, False)
        remaining = order.quantity
        if remaining is None:  # by quote: a sell never gives more base than its account locked for it
            remaining = order.funds_limit if not is_bid and order.funds_limit is not None else INFINITY
        taker = _Resting(order, remaining)
        modified = False
        if taker.reduce_only:
            position = self.positions.get(order.account, ZERO)
            cap = floor_to(abs(position), self._step)
            if cap == 0 or (position > 0) == is_bid:
                return self._ended_at_once(order, ExpiryReason.REDUCE_ONLY_NOT_REDUCED, False)
            if taker.remaining > cap:
                modified = order.quantity is not None
                taker.remaining = cap
        tif = order.time_in_force
        if price is None:
            if best is None:
                return self._ended_at_once(order, _FILL_OR_KILL if tif is _FOK else _NO_LIQUIDITY, modified)
            bands = self.market.bands
            limit = best * (bands.max_impact_multiplier if is_bid else bands.min_impact_multiplier)
        elif best is None or (price < best if is_bid else price > best):
            # Nothing to trade with: the common case of a quote placed off the touch.
            if tif is _GTC:
                return MatchResult(order, [], [self._rest(taker, modified)])
            reason = _FILL_OR_KILL if tif is _FOK else ExpiryReason.IMMEDIATE_OR_CANCEL
            return self._ended_at_once(order, reason, modified)
        elif order.post_only:
            return self._ended_at_once(order, ExpiryReason.POST_ONLY_TAKER, modified)
        else:
            limit = price
        if tif is _FOK and not self._can_fill(taker, limit):
            return self._ended_at_once(order, _FILL_OR_KILL, modified)
        fills: list[Fill] = []
        updates: list[OrderUpdate] = []
        stop = self._match(taker, limit, fills, updates)
        if fills:
            self._refresh_band()
        if stop is None:
            updates.append(self._final(taker, _FILLED, None, modified))
        elif stop is _STP or stop is _NO_FUNDS or price is None:
            updates.append(self._final(taker, _EXPIRED, stop, modified))
        elif tif is _GTC:
            updates.append(self._rest(taker, modified))
        else:
            updates.append(self._final(taker, _EXPIRED, ExpiryReason.IMMEDIATE_OR_CANCEL, modified))
        return MatchResult(order, fills, updates)

    def _check_quote_quantity(self, quote: Decimal, best: Decimal, is_bid: bool) -> Rejection | None:
        """A quote target that buys less than the minimum quantity at the best price is refused.

        Without this such an order would end ``Filled`` having traded nothing.
        """
        minimum = self.market.min_quantity
        if self._affordable(quote, best, is_bid) >= minimum:
            return None
        return Rejection(
            ErrorCode.INVALID_QUANTITY,
            f"quoteQuantity {fmt(quote)} is worth less than the minimum quantity {fmt(minimum)} "
            f"at the best price {fmt(best)}",
            {"market": self.symbol, "quote_quantity": quote, "min_quantity": minimum, "best_price": best},
        )

    def cancel(self, order_id: str, account: str) -> OrderUpdate | Rejection:
        """Cancel one resting order; another account's order is "not found", never touched."""
        r = self._orders.get((account, order_id))
        if r is None:
            return Rejection(
                ErrorCode.RESOURCE_NOT_FOUND,
                f"order {order_id} is not open on {self.symbol} for account {account}",
                {"market": self.symbol, "order_id": order_id, "account": account},
            )
        self._remove(r)
        return self._final(r, _CANCELLED, None, False)

    def cancel_all(self, account: str) -> list[OrderUpdate]:
        """Cancel every resting order of the account, oldest first."""
        orders = self._orders
        updates = []
        for order_id in list(self._by_account.get(account, ())):
            r = orders[(account, order_id)]
            self._remove(r)
            updates.append(self._final(r, _CANCELLED, None, False))
        return updates

    def apply_position_change(self, account: str, delta: Decimal) -> list[OrderUpdate]:
        """A position moved outside the book (backstop or ADL transfer): re-judge reduce-only orders."""
        updates: list[OrderUpdate] = []
        self._move_position(account, delta, updates)
        return updates

    # ----------------------------------------------------------------------------------
    # Matching

    def _match(
        self, taker: _Resting, limit: Decimal, fills: list[Fill], updates: list[OrderUpdate],
    ) -> ExpiryReason | None:
        """Trade the taker against the opposite side until something stops it.

        Returns None when the taker reached its target; otherwise the reason a market order
        would expire with (``PriceImpact`` at ``limit``, ``InsufficientLiquidity`` on an empty
        side) or the reason that ends any order (``SelfTradePrevention``, ``InsufficientFunds``).
        A reduce-only taker needs no per-fill cap: it was cut to its position, and only its own
        fills move that position while it matches; reduce-only makers are cut after every fill.
        """
        is_bid = taker.side is _BID
        opposite = self._asks if is_bid else self._bids
        account = taker.account
        order = taker.order
        quote_target = order.quote_quantity
        funds = taker.funds_limit
        stp = order.self_trade_prevention
        affordable = self._affordable
        while True:
            price = self._best_ask if is_bid else self._best_bid
            if price is None:
                return _NO_LIQUIDITY
            if (price > limit) if is_bid else (price < limit):
                return _IMPACT
            level = opposite[price]
            qty = taker.remaining
            if quote_target is not None:
                fit = affordable(quote_target - taker.executed_quote, price, is_bid)
                if fit == 0:
                    return None
                if fit < qty:
                    qty = fit
            if funds is not None:
                fit = affordable(funds - taker.executed_quote, price, True)
                if fit == 0:
                    return _NO_FUNDS
                if fit < qty:
                    qty = fit
            maker = level[0]
            if maker.account == account:
                if stp is _REJECT_TAKER:
                    return _STP
                self._remove(maker)
                updates.append(self._final(maker, _EXPIRED, _STP, False))
                if stp is _REJECT_BOTH:
                    return _STP
                continue
            if maker.funds_limit is not None:
                fit = affordable(maker.funds_limit - maker.executed_quote, price, True)
                if fit == 0:
                    self._remove(maker)
                    updates.append(self._final(maker, _EXPIRED, _NO_FUNDS, False))
                    continue
                if fit < qty:
                    qty = fit
            if maker.remaining < qty:
                qty = maker.remaining
            self._trade(maker, taker, level, price, qty, fills, updates)
            if not taker.remaining:
                # A sell by quote that spent its base before its target ran out of funds.
                if order.quantity is None and affordable(quote_target - taker.executed_quote, price, False):
                    return _NO_FUNDS
                return None

    def _can_fill(self, taker: _Resting, limit: Decimal) -> bool:
        """FOK dry run: would ``_match`` reach the taker's target? Same walk, nothing changed.

        It mirrors ``_match`` step for step on copies of what a fill would change (taker and
        maker amounts, maker positions for the reduce-only cut). Within one match every maker
        sits on the same side, so a maker account's position only moves toward or through zero
        and judging its reduce-only order when the walk reaches it equals the cuts ``_match``
        would have made by then.
        """
        is_bid = taker.side is _BID
        opposite = self._asks if is_bid else self._bids
        account = taker.account
        order = taker.order
        quote_target = order.quote_quantity
        funds = taker.funds_limit
        stp = order.self_trade_prevention
        affordable = self._affordable
        remaining = taker.remaining
        paid = ZERO  # the taker's quote leg so far
        moved: dict[str, Decimal] = {}  # simulated positions of maker accounts (perps)
        prices = opposite.irange(maximum=limit) if is_bid else opposite.irange(minimum=limit, reverse=True)
        for price in prices:
            for maker in opposite[price]:
                if not maker.live:
                    continue
                maker_account = maker.account
                maker_left = maker.remaining
                maker_paid = maker.executed_quote
                while True:
                    position = moved.get(maker_account)
                    if position is None:
                        position = self.positions.get(maker_account, ZERO)
                    if maker.reduce_only:  # the cut _match would have made by now
                        if (position > 0) == (maker.side is _BID):
                            maker_left = ZERO
                        else:
                            maker_left = min(maker_left, floor_to(abs(position), self._step))
                    if maker_left == 0:
                        break  # filled, or gone before the walk would reach it
                    qty = remaining
                    if quote_target is not None:
                        fit = affordable(quote_target - paid, price, is_bid)
                        if fit == 0:
                            return True
                        qty = min(qty, fit)
                    if funds is not None:
                        fit = affordable(funds - paid, price, True)
                        if fit == 0:
                            return False
                        qty = min(qty, fit)
                    if maker_account == account:
                        if stp is _REJECT_TAKER or stp is _REJECT_BOTH:
                            return False
                        break
                    qty = min(qty, maker_left)
                    if maker.funds_limit is not None:
                        fit = affordable(maker.funds_limit - maker_paid, price, True)
                        if fit == 0:
                            break
                        qty = min(qty, fit)
                    bid_leg, ask_leg = self._legs(price * qty)
                    paid += bid_leg if is_bid else ask_leg
                    maker_paid += ask_leg if is_bid else bid_leg
                    maker_left -= qty
                    remaining -= qty
                    if self._is_perp:
                        moved[maker_account] = position - qty if is_bid else position + qty
                    if remaining == 0:  # a sell by quote may spend its base before its target
                        return order.quantity is not None or not affordable(quote_target - paid, price, False)
        return False

    def _affordable(self, quote: Decimal, price: Decimal, paying: bool) -> Decimal:
        """Largest step multiple whose quote leg at ``price`` stays within ``quote``.

        Receiving legs are measured by the exact notional (the spec's floor(quote/price, step));
        a paying spot leg is rounded up, which can cost a step when the grids disagree.
        """
        step = self._step
        qty = floor_to(quote / price, step)
        if paying and self._round_quote:
            quote_step = self._quote_step
            while qty > 0 and ceil_to(price * qty, quote_step) > quote:
                qty -= step
        else:
            while qty > 0 and price * qty > quote:  # guards the 28-digit rounding of the division
                qty -= step
        return qty

    def _legs(self, notional: Decimal) -> tuple[Decimal, Decimal]:
        """(what the bid pays, what the ask receives): rounded against each side on spot."""
        if self._round_quote:
            return ceil_to(notional, self._quote_step), floor_to(notional, self._quote_step)
        return notional, notional

    def _trade(
        self, maker: _Resting, taker: _Resting, level: _Level, price: Decimal, qty: Decimal,
        fills: list[Fill], updates: list[OrderUpdate],
    ) -> None:
        """Book one trade: two fills (maker first), fees, amounts, positions and cuts."""
        self._trade_id = trade_id = self._trade_id + 1
        notional = price * qty
        maker_is_bid = maker.side is _BID
        quote = self._quote
        income = self.fee_income
        if self._is_perp:
            maker_quote = taker_quote = notional
            maker_fee = ceil_to(notional * self._maker_rate, self._quote_step) if self._maker_rate else ZERO
            taker_fee = ceil_to(notional * self._taker_rate, self._quote_step) if self._taker_rate else ZERO
            maker_asset = taker_asset = quote
            if maker_fee or taker_fee:
                income[quote] = income.get(quote, ZERO) + maker_fee + taker_fee
        else:
            paid, received = self._legs(notional)
            if paid != received:
                income[quote] = income.get(quote, ZERO) + (paid - received)
            if maker_is_bid:
                maker_quote, taker_quote = paid, received
            else:
                maker_quote, taker_quote = received, paid
            maker_fee, maker_asset = self._spot_fee(maker_is_bid, self._maker_rate, qty, maker_quote)
            taker_fee, taker_asset = self._spot_fee(not maker_is_bid, self._taker_rate, qty, taker_quote)
        maker_origin = maker.order.origin
        taker_origin = taker.order.origin
        symbol = self.symbol
        fills.append(Fill(
            trade_id=trade_id, market=symbol, order_id=maker.order_id, account=maker.account, side=maker.side,
            price=price, quantity=qty, quote_quantity=maker_quote, fee=maker_fee, fee_asset=maker_asset,
            is_maker=True, origin=maker_origin,
            liquidation_fee=self._liquidation_fee(notional) if maker_origin is _LIQUIDATION else ZERO,
        ))
        fills.append(Fill(
            trade_id=trade_id, market=symbol, order_id=taker.order_id, account=taker.account, side=taker.side,
            price=price, quantity=qty, quote_quantity=taker_quote, fee=taker_fee, fee_asset=taker_asset,
            is_maker=False, origin=taker_origin,
            liquidation_fee=self._liquidation_fee(notional) if taker_origin is _LIQUIDATION else ZERO,
        ))
        maker.remaining -= qty
        maker.executed += qty
        maker.executed_quote += maker_quote
        taker.remaining -= qty
        taker.executed += qty
        taker.executed_quote += taker_quote
        level.qty -= qty
        self._last_price = self._active_price = price
        if not maker.remaining:
            self._remove(maker)
            updates.append(self._final(maker, _FILLED, None, False))
        if self._is_perp:
            self._move_position(maker.account, qty if maker_is_bid else -qty, updates)
            self._move_position(taker.account, -qty if maker_is_bid else qty, updates)

    def _spot_fee(self, is_bid: bool, rate: Decimal, qty: Decimal, quote_leg: Decimal) -> tuple[Decimal, str]:
        """Spot fees are taken from what the side receives: base for a bid, quote for an ask."""
        if is_bid:
            asset = self._base
            fee = ceil_to(qty * rate, self._base_step) if rate else ZERO
        else:
            asset = self._quote
            fee = ceil_to(quote_leg * rate, self._quote_step) if rate else ZERO
        if fee:
            income = self.fee_income
            income[asset] = income.get(asset, ZERO) + fee
        return fee, asset

    def _liquidation_fee(self, notional: Decimal) -> Decimal:
        rate = self._liquidation_rate
        if not rate:
            return ZERO
        fee = ceil_to(notional * rate, self._quote_step)
        fees = self.liquidation_fees
        fees[self._quote] = fees.get(self._quote, ZERO) + fee
        return fee

    def _move_position(self, account: str, delta: Decimal, updates: list[OrderUpdate]) -> None:
        """Move a perp position, then re-judge the account's resting reduce-only orders."""
        position = self.positions.get(account, ZERO) + delta
        if position:
            self.positions[account] = position
        else:
            self.positions.pop(account, None)
        if account in self._reduce_only:
            self._cut_reduce_only(account, position, updates)

    def _cut_reduce_only(self, account: str, position: Decimal, updates: list[OrderUpdate]) -> None:
        """Cut each resting reduce-only order to the position; expire those that no longer reduce."""
        orders = self._reduce_only[account]
        cap = floor_to(abs(position), self._step)
        long = position > 0
        for r in list(orders.values()):
            if cap == 0 or long == (r.side is _BID):
                self._remove(r)
                updates.append(self._final(r, _EXPIRED, ExpiryReason.REDUCE_ONLY_NOT_REDUCED, False))
            elif r.remaining > cap:
                book = self._bids if r.side is _BID else self._asks
                book[r.price].qty -= r.remaining - cap
                r.remaining = cap
                updates.append(OrderUpdate(
                    r.order_id, r.account, self.symbol, _NEW if r.executed == 0 else _PARTIALLY_FILLED,
                    r.executed, r.executed_quote, cap, None, True,
                ))

    # ----------------------------------------------------------------------------------
    # Book keeping

    def _rest(self, r: _Resting, modified: bool) -> OrderUpdate:
        """Put an order at the back of its price level and report it open."""
        is_bid = r.side is _BID
        book = self._bids if is_bid else self._asks
        price = r.price
        level = book.get(price)
        if level is None:
            level = book[price] = _Level()
            if is_bid:
                if self._best_bid is None or price > self._best_bid:
                    self._best_bid = price
            elif self._best_ask is None or price < self._best_ask:
                self._best_ask = price
        level.append(r)
        level.qty += r.remaining
        order_id = r.order_id
        account = r.account
        self._orders[(account, order_id)] = r
        mine = self._by_account.get(account)
        if mine is None:
            mine = self._by_account[account] = {}
        mine[order_id] = None
        if r.reduce_only:
            reducing = self._reduce_only.get(account)
            if reducing is None:
                reducing = self._reduce_only[account] = {}
            reducing[order_id] = r
        return OrderUpdate(
            order_id, account, self.symbol, _NEW if r.executed == 0 else _PARTIALLY_FILLED,
            r.executed, r.executed_quote, r.remaining, None, modified,
        )

    def _remove(self, r: _Resting) -> None:
        """Take a resting order out of every index; its deque slot is dropped once it is the head."""
        r.live = False
        order_id = r.order_id
        account = r.account
        del self._orders[(account, order_id)]
        mine = self._by_account[account]
        del mine[order_id]
        if not mine:
            del self._by_account[account]
        if r.reduce_only:
            reducing = self._reduce_only[account]
            del reducing[order_id]
            if not reducing:
                del self._reduce_only[account]
        is_bid = r.side is _BID
        book = self._bids if is_bid else self._asks
        price = r.price
        level = book[price]
        level.qty -= r.remaining
        if level[0] is not r:
            level.dead += 1
            if level.dead > _COMPACT_AFTER and 2 * level.dead > len(level):
                level.compact()
        else:
            level.popleft()
            while level and not level[0].live:
                level.popleft()
                level.dead -= 1
            if not level:
                del book[price]
                if is_bid:
                    if price == self._best_bid:
                        self._best_bid = book.peekitem(-1)[0] if book else None
                elif price == self._best_ask:
                    self._best_ask = book.peekitem(0)[0] if book else None

    def _final(self, r: _Resting, status: OrderStatus, reason: ExpiryReason | None, modified: bool) -> OrderUpdate:
        return OrderUpdate(
            r.order_id, r.account, self.symbol, status, r.executed, r.executed_quote, ZERO, reason, modified,
        )

    def _ended_at_once(self, order: Order, reason: ExpiryReason, modified: bool) -> MatchResult:
        """An order that reached the book but expires before matching: one final update, no fills."""
        return MatchResult(order, [], [OrderUpdate(
            order.order_id, order.account, self.symbol, _EXPIRED, ZERO, ZERO, ZERO, reason, modified,
        )])
