"""Orders, fills, order updates and refusals: the values the core hands around.

Names follow Backpack's API (spec sections 15-16): ``Bid``/``Ask``, ``GTC``/``IOC``/``FOK``,
``RejectTaker``/``RejectMaker``/``RejectBoth``, the order statuses, the expiry reasons and the
error codes, so an event log reads like the venue's own order updates.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from enum import StrEnum
from typing import Any

import attrs

from exchange.decimals import ZERO, is_multiple
from exchange.profile import Market


class Side(StrEnum):
    BID = "Bid"
    ASK = "Ask"

    @property
    def sign(self) -> int:
        """+1 for a bid (buys base), -1 for an ask."""
        return 1 if self is Side.BID else -1

    @property
    def opposite(self) -> Side:
        return Side.ASK if self is Side.BID else Side.BID


class OrderType(StrEnum):
    LIMIT = "Limit"
    MARKET = "Market"


class TimeInForce(StrEnum):
    GTC = "GTC"
    IOC = "IOC"
    FOK = "FOK"


class SelfTradePrevention(StrEnum):
    REJECT_TAKER = "RejectTaker"
    REJECT_MAKER = "RejectMaker"
    REJECT_BOTH = "RejectBoth"


class OrderStatus(StrEnum):
    NEW = "New"
    PARTIALLY_FILLED = "PartiallyFilled"
    FILLED = "Filled"
    CANCELLED = "Cancelled"
    EXPIRED = "Expired"

    @property
    def is_final(self) -> bool:
        return self in (OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.EXPIRED)


class ExpiryReason(StrEnum):
    """The venue's ``OrderExpiryReason`` values that this simulator can produce."""

    BORROW_REQUIRES_LEND_REDEEM = "BorrowRequiresLendRedeem"
    FILL_OR_KILL = "FillOrKill"
    IMMEDIATE_OR_CANCEL = "ImmediateOrCancel"
    INSUFFICIENT_BORROWABLE_QUANTITY = "InsufficientBorrowableQuantity"
    INSUFFICIENT_FUNDS = "InsufficientFunds"
    INSUFFICIENT_LIQUIDITY = "InsufficientLiquidity"
    INSUFFICIENT_MARGIN = "InsufficientMargin"
    LIQUIDATION = "Liquidation"
    NEGATIVE_EQUITY = "NegativeEquity"
    POSITION_LIMIT = "PositionLimit"
    POST_ONLY_TAKER = "PostOnlyTaker"
    PRICE_IMPACT = "PriceImpact"
    PRICE_OUT_OF_BOUNDS = "PriceOutOfBounds"
    REDUCE_ONLY_NOT_REDUCED = "ReduceOnlyNotReduced"
    SELF_TRADE_PREVENTION = "SelfTradePrevention"


class ErrorCode(StrEnum):
    """Error codes of refused requests (spec section 15 and the borrow/lend endpoints)."""

    ACCOUNT_LIQUIDATING = "ACCOUNT_LIQUIDATING"
    BORROW_LIMIT = "BORROW_LIMIT"
    BORROW_REQUIRES_LEND_REDEEM = "BORROW_REQUIRES_LEND_REDEEM"
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    INSUFFICIENT_MARGIN = "INSUFFICIENT_MARGIN"
    INSUFFICIENT_SUPPLY = "INSUFFICIENT_SUPPLY"
    INVALID_ORDER = "INVALID_ORDER"
    INVALID_PRICE = "INVALID_PRICE"
    INVALID_QUANTITY = "INVALID_QUANTITY"
    LEND_LIMIT = "LEND_LIMIT"
    LEND_REQUIRES_BORROW_REPAY = "LEND_REQUIRES_BORROW_REPAY"
    MAX_LEVERAGE_REACHED = "MAX_LEVERAGE_REACHED"
    POSITION_LIMIT = "POSITION_LIMIT"
    RESOURCE_NOT_FOUND = "RESOURCE_NOT_FOUND"
    TRADING_PAUSED = "TRADING_PAUSED"


class Origin(StrEnum):
    """Who placed an order (the ``O`` field of the venue's order updates)."""

    USER = "USER"
    LIQUIDATION_AUTOCLOSE = "LIQUIDATION_AUTOCLOSE"
    ADL_AUTOCLOSE = "ADL_AUTOCLOSE"
    BACKSTOP_LIQUIDITY_PROVIDER = "BACKSTOP_LIQUIDITY_PROVIDER"
    COLLATERAL_CONVERSION = "COLLATERAL_CONVERSION"


@attrs.frozen
class Order:
    """An order as it travels from an account to a market.

    ``quantity`` is in base units. A market order gives ``quantity`` or ``quote_quantity`` (or
    both: it stops at whichever is reached first). ``funds_limit`` is set by the sub-account on
    spot buys, the quote it locked for the order, and on spot sells by quote, the base it locked;
    the book never spends more than that.
    """

    order_id: str
    account: str
    market: str
    side: Side
    order_type: OrderType
    quantity: Decimal | None
    price: Decimal | None = None
    quote_quantity: Decimal | None = None
    time_in_force: TimeInForce = TimeInForce.GTC
    post_only: bool = False
    reduce_only: bool = False
    self_trade_prevention: SelfTradePrevention = SelfTradePrevention.REJECT_TAKER
    client_id: int | None = None
    auto_borrow: bool = False
    auto_borrow_repay: bool = False
    auto_lend: bool = False
    auto_lend_redeem: bool = False
    origin: Origin = Origin.USER
    funds_limit: Decimal | None = None


@attrs.define(slots=True, kw_only=True)
class Fill:
    """One side of one trade, as the account that owns ``order_id`` must book it.

    A value: nothing mutates it after the book made it. (Fills, order updates and match
    results are the highest-volume objects in a run; a frozen attrs class costs three times
    as much to build, measured, so these three rely on that rule instead.)

    ``quote_quantity`` is what this side pays (bid) or receives (ask) in the quote asset, already
    rounded against it when price x quantity is finer than the quote asset's step. ``fee`` is in
    ``fee_asset``: the quote asset for perps, the received asset for spot. ``liquidation_fee``
    (quote asset) is charged only on fills of liquidation orders and goes to the liquidity fund.
    """

    trade_id: int
    market: str
    order_id: str
    account: str
    side: Side
    price: Decimal
    quantity: Decimal
    quote_quantity: Decimal
    fee: Decimal
    fee_asset: str
    is_maker: bool
    origin: Origin = Origin.USER
    liquidation_fee: Decimal = ZERO


@attrs.define(slots=True)
class OrderUpdate:
    """A change of an order's state other than a fill (accepted, modified, or a final state).

    Every order that reaches a book ends with exactly one update whose ``status`` is final
    (``Filled``, ``Cancelled`` or ``Expired``); ``remaining_quantity`` is what is still resting
    (zero on a final update). A value, like ``Fill``.
    """

    order_id: str
    account: str
    market: str
    status: OrderStatus
    executed_quantity: Decimal
    executed_quote_quantity: Decimal
    remaining_quantity: Decimal
    reason: ExpiryReason | None = None
    modified: bool = False


@attrs.frozen
class Rejection:
    """A refused request: the code, a sentence a user can act on, and the numbers behind it.

    ``reason`` is the venue's order expiry reason when a spot order is refused for its funding
    (``InsufficientFunds``, ``BorrowRequiresLendRedeem``, ``InsufficientBorrowableQuantity``,
    ``InsufficientMargin``), so a log reads like the venue's order updates.
    """

    code: ErrorCode
    message: str
    details: Mapping[str, Any] = attrs.field(factory=dict)
    reason: ExpiryReason | None = None


@attrs.define(slots=True)
class MatchResult:
    """What a book did with one submitted order (a value, like ``Fill``)."""

    order: Order
    fills: list[Fill]
    updates: list[OrderUpdate]
    rejection: Rejection | None = None


def duplicate_order_id(order_id: str, where: str) -> Rejection:
    """An order id already open (``where``: the book or the sub-account) is refused: ids name
    one live order each, and a second one would shadow the first."""
    return Rejection(ErrorCode.INVALID_ORDER, f"order id {order_id} is already open on {where}; use a new id",
                     {"order_id": order_id, "already_open": True})


def check_order_shape(order: Order, market: Market) -> Rejection | None:
    """Static validation any party can run before touching state: fields, tick, step, limits.

    The sub-account runs it before its margin check (a malformed order reserves nothing); the
    book runs it again because the book is the authority.
    """
    def bad(code: ErrorCode, message: str) -> Rejection:
        return Rejection(code, message, {"market": market.symbol})

    if order.market != market.symbol:
        return bad(ErrorCode.INVALID_ORDER, f"order for {order.market} sent to {market.symbol}")
    if order.reduce_only and not market.is_perp:
        return bad(ErrorCode.INVALID_ORDER, "reduceOnly is for perpetual markets only")
    spot_margin_flags = order.auto_borrow or order.auto_borrow_repay or order.auto_lend or order.auto_lend_redeem
    if spot_margin_flags and market.is_perp:
        return bad(ErrorCode.INVALID_ORDER, "autoBorrow/autoBorrowRepay/autoLend/autoLendRedeem are spot-only flags")
    if order.order_type is OrderType.LIMIT:
        if order.price is None or order.quantity is None:
            return bad(ErrorCode.INVALID_ORDER, "a Limit order needs a price and a quantity")
        if order.quote_quantity is not None:
            return bad(ErrorCode.INVALID_ORDER, "quoteQuantity is for Market orders only")
        if order.post_only and order.time_in_force is not TimeInForce.GTC:
            return bad(ErrorCode.INVALID_ORDER, "postOnly needs timeInForce GTC")
        price = order.price
        if price <= 0 or not is_multiple(price, market.tick_size):
            return bad(ErrorCode.INVALID_PRICE, f"price {price} is not a positive multiple of the tick {market.tick_size}")
        if not market.bands.min_price <= price <= market.bands.max_price:
            return bad(
                ErrorCode.INVALID_PRICE,
                f"price {price} is outside [{market.bands.min_price}, {market.bands.max_price}]",
            )
    else:
        if order.price is not None:
            return bad(ErrorCode.INVALID_ORDER, "a Market order takes no price")
        if order.post_only:
            return bad(ErrorCode.INVALID_ORDER, "a Market order cannot be postOnly")
        if order.quantity is None and order.quote_quantity is None:
            return bad(ErrorCode.INVALID_ORDER, "a Market order needs a quantity or a quoteQuantity")
        if order.quote_quantity is not None and order.quote_quantity <= 0:
            return bad(ErrorCode.INVALID_QUANTITY, f"quoteQuantity {order.quote_quantity} must be positive")
    quantity = order.quantity
    if quantity is not None:
        if quantity <= 0 or not is_multiple(quantity, market.step_size):
            return bad(
                ErrorCode.INVALID_QUANTITY,
                f"quantity {quantity} is not a positive multiple of the step {market.step_size}",
            )
        if quantity < market.min_quantity:
            return bad(ErrorCode.INVALID_QUANTITY, f"quantity {quantity} is below the minimum {market.min_quantity}")
        if market.max_quantity is not None and quantity > market.max_quantity:
            return bad(ErrorCode.INVALID_QUANTITY, f"quantity {quantity} is above the maximum {market.max_quantity}")
    return None
