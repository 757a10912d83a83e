"""Every message that crosses between actors, in one place: the runtime's protocol.

Messages are frozen attrs classes. Every request that can fail gets an explicit reply (accepted
or refused, with the reason and the numbers). Some messages carry value (funds or positions
that left one ledger and have not yet reached another): ``in_flight`` says what the recipient's
holdings will change by when it handles the message, which is how the invariant observer counts
money that is on the wire.

Addresses: ``account:<id>``, ``market:<symbol>``, ``pool:<asset>``, ``agent:<name>``,
``feed``, ``liquidator``, ``scheduler``.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

import attrs

from exchange.decimals import ZERO
from exchange.lending import Grant
from exchange.liquidation import Levels, LiquidationStep, Outcome, Progress
from exchange.orders import Fill, Order, OrderUpdate, Rejection
from exchange.profile import Market

Delta = dict[str, Decimal]  # asset (or perp market, for contracts) -> change of holdings


def account_address(account_id: str) -> str:
    return f"account:{account_id}"


def market_address(symbol: str) -> str:
    return f"market:{symbol}"


def pool_address(asset: str) -> str:
    return f"pool:{asset}"


FEED = "feed"
LIQUIDATOR = "liquidator"
SCHEDULER = "scheduler"


# ---------------------------------------------------------------------------------------
# A trader (agent or script) and its sub-account


@attrs.frozen
class PlaceOrder:
    order: Order


@attrs.frozen
class CancelOrder:
    market: str
    order_id: str


@attrs.frozen
class CancelAll:
    market: str | None = None  # None: every market


@attrs.frozen
class Deposit:
    asset: str
    quantity: Decimal
    request_id: str = ""


@attrs.frozen
class Withdraw:
    request_id: str
    asset: str
    quantity: Decimal
    auto_borrow: bool = False


@attrs.frozen
class TransferOut:
    """Move funds to a sibling sub-account of the same owner (spec 13)."""

    request_id: str
    target: str
    asset: str
    quantity: Decimal
    auto_borrow: bool = False


@attrs.frozen
class LoanRequest:
    """Lend, redeem, borrow or repay ``quantity`` of ``asset`` (the account asks its pool)."""

    request_id: str
    action: str  # "lend", "redeem", "borrow", "repay"
    asset: str
    quantity: Decimal


@attrs.frozen
class UpdateSettings:
    request_id: str
    leverage_limit: Decimal | None = None
    auto_lend: bool | None = None
    auto_borrow_settlements: bool | None = None
    auto_repay_borrows: bool | None = None


@attrs.frozen
class OrderRefused:
    """The order never reached a book, or the book refused it; nothing changed."""

    order: Order
    rejection: Rejection


@attrs.frozen
class OrderPlaced:
    order: Order


@attrs.frozen
class OrderFilled:
    fill: Fill


@attrs.frozen
class OrderChanged:
    """A non-fill update: the order rests, was cut down, or ended (``update.status``)."""

    update: OrderUpdate


@attrs.frozen
class RequestDone:
    request_id: str
    detail: str = ""
    grants: tuple[Grant, ...] = ()  # what the pool granted, for a loan request


@attrs.frozen
class RequestRefused:
    request_id: str
    rejection: Rejection


# ---------------------------------------------------------------------------------------
# Sub-account and market


@attrs.frozen
class SubmitOrder:
    order: Order


@attrs.frozen
class CancelOnBook:
    order_id: str
    account: str


@attrs.frozen
class CancelAllOnBook:
    account: str


@attrs.frozen
class FillNotice:
    """One side of a trade for the account that owns it (carries the trade's value)."""

    fill: Fill
    market: Market

    def in_flight(self, settlement: str) -> Delta:
        fill, market = self.fill, self.market
        delta: Delta = {}
        if market.is_perp:
            # Perps are carried as contracts plus the settlement asset paid for them.
            signed = fill.quantity * fill.side.sign
            delta[market.symbol] = signed
            delta[settlement] = -signed * fill.price - fill.fee - fill.liquidation_fee
            return delta
        if fill.side.sign > 0:
            delta[market.base] = fill.quantity
            delta[market.quote] = -fill.quote_quantity
        else:
            delta[market.base] = -fill.quantity
            delta[market.quote] = fill.quote_quantity
        delta[fill.fee_asset] = delta.get(fill.fee_asset, ZERO) - fill.fee
        if fill.liquidation_fee:
            delta[market.quote] = delta.get(market.quote, ZERO) - fill.liquidation_fee
        return delta


@attrs.frozen
class UpdateNotice:
    update: OrderUpdate


@attrs.frozen
class SubmitRefused:
    order: Order
    rejection: Rejection


@attrs.frozen
class CancelRefused:
    order_id: str
    rejection: Rejection


@attrs.frozen
class FundingNotice:
    market: str
    rate: Decimal
    amount: Decimal  # received (+) or paid (-)

    def in_flight(self, settlement: str) -> Delta:
        return {settlement: self.amount}


@attrs.frozen
class PositionTransfer:
    """Account to market, in a backstop or ADL: close ``quantity`` of the account's position
    with ``counterparty`` off the book at the market's mark; only the account pays the
    liquidation fee, at most ``fee_cap`` (the equity it has left)."""

    kind: str  # "backstop" or "adl"
    account: str
    counterparty: str
    quantity: Decimal
    fee_cap: Decimal
    adl_score: Decimal | None = None  # echoed in TransferDone, for the history


@attrs.frozen
class TransferDone:
    kind: str
    market: str
    account: str
    counterparty: str
    quantity: Decimal
    price: Decimal
    fee: Decimal
    adl_score: Decimal | None = None


@attrs.frozen
class DepthRequest:
    levels: int = 50


@attrs.frozen
class Depth:
    market: str
    bids: Levels
    asks: Levels


# ---------------------------------------------------------------------------------------
# Prices


@attrs.frozen
class PriceUpdate:
    """The feed's new prices for one subscriber: assets (index) and perps (mark), in one
    message per tick."""

    prices: tuple[tuple[str, Decimal], ...]


@attrs.frozen
class Subscribe:
    """Ask the feed for ``symbols``' prices from now on; it answers with a snapshot at once."""

    symbols: tuple[str, ...]


@attrs.frozen
class PriceSnapshot:
    prices: Mapping[str, Decimal]


# ---------------------------------------------------------------------------------------
# Sub-account and lending pool


@attrs.frozen
class PoolRequest:
    """One atomic pool operation for ``account``: redeem then borrow (a spot order's funding or a
    withdrawal), or a single lend / repay. ``purpose`` says why, for the log and the observer."""

    request_id: str
    account: str
    redeem: Decimal = ZERO
    borrow: Decimal = ZERO
    lend: Decimal = ZERO
    repay: Decimal = ZERO
    purpose: str = "user"  # "user", "order", "settlement", "liquidation", "withdrawal"
    liquidation: bool = False
    waive_fee: Decimal = ZERO  # with ``repay``: the entry fee of a borrow that served no order


@attrs.frozen
class PoolReply:
    request_id: str
    grants: tuple[Grant, ...]
    rejection: Rejection | None = None

    def in_flight(self, settlement: str) -> Delta:
        delta: Delta = {}
        for grant in self.grants:
            sign = -1 if grant.action in ("lend", "repay") else 1
            delta[grant.asset] = delta.get(grant.asset, ZERO) + sign * grant.quantity
        return delta


@attrs.frozen
class InterestNotice:
    """Hourly interest capitalised into the account's borrow and lend of ``asset``."""

    asset: str
    borrow_interest: Decimal
    lend_interest: Decimal
    borrow_rate: Decimal
    lend_rate: Decimal


@attrs.frozen
class WriteOff:
    """Liquidator to pool: a bankrupt account's borrow leaves the pool (spec F7)."""

    account: str
    price: Decimal


@attrs.frozen
class WrittenOff:
    """Pool to liquidator: who lost how much of their lend, to be paid at ``price``."""

    account: str
    asset: str
    debt: Decimal
    shares: Mapping[str, Decimal]
    price: Decimal


@attrs.frozen
class LendWrittenOff:
    """Pool to a lender: part of its lend is gone (the fund pays its value separately)."""

    asset: str
    quantity: Decimal


@attrs.frozen
class BorrowWrittenOff:
    """Pool to the bankrupt borrower: the debt left the pool; the fund paid its lenders."""

    asset: str
    quantity: Decimal
    paid: Decimal  # settlement asset the fund paid for it: the account's new debt to the fund


# ---------------------------------------------------------------------------------------
# Value between sub-accounts and the liquidity fund


@attrs.frozen
class AssetTransfer:
    """Funds that left one sub-account (or the fund) for another: a sibling transfer, a
    backstop provider's delivery, a payment to a lender. The sender already debited them."""

    sender: str
    asset: str
    quantity: Decimal
    reason: str
    request_id: str = ""

    def in_flight(self, settlement: str) -> Delta:
        return {self.asset: self.quantity}


@attrs.frozen
class FundFlow:
    """Account to liquidator: the account paid the fund (+) or drew on it (-)."""

    account: str
    asset: str
    quantity: Decimal
    reason: str

    def in_flight(self, settlement: str) -> Delta:
        return {self.asset: self.quantity}


# ---------------------------------------------------------------------------------------
# Sub-account and liquidator


@attrs.frozen(kw_only=True)
class ReportedPosition:
    """A perp position as its account last reported it, with what revalues it at a later mark:
    unrealized PnL at ``mark`` is ``quantity x mark - net_cost``."""

    market: str
    quantity: Decimal
    unrealized_pnl: Decimal
    net_cost: Decimal
    entry_notional: Decimal

    def pnl_at(self, mark: Decimal) -> Decimal:
        return self.quantity * mark - self.net_cost


@attrs.frozen
class HealthReport:
    account: str
    net_equity: Decimal
    maintenance: Decimal
    mmr: Decimal
    liquidating: bool
    positions: tuple[ReportedPosition, ...]
    borrows: tuple[tuple[str, Decimal], ...]


@attrs.frozen
class StartLiquidation:
    loop: int


@attrs.frozen
class LiquidationLoop:
    loop: int
    depth: Mapping[str, tuple[Levels, Levels]]
    progress: Progress


@attrs.frozen(kw_only=True)
class Handover:
    """Part of a liquidated position closed off the book at mark: with a backstop provider, or
    (``kind`` "adl") against a ranked counterparty, whose ADL score is kept for the history."""

    kind: str  # "backstop" or "adl"
    market: str
    counterparty: str
    quantity: Decimal
    adl_score: Decimal | None = None


@attrs.frozen(kw_only=True)
class Delivery:
    """A provider repays ``quantity`` of a borrowed ``asset`` for the account, paid at mark."""

    provider: str
    asset: str
    quantity: Decimal


@attrs.frozen(kw_only=True)
class Purchase:
    """A provider buys collateral at mark, paying at most ``most`` of the settlement asset, to
    repay a settlement-asset borrow."""

    provider: str
    most: Decimal


@attrs.frozen
class BackstopPlan:
    """Liquidator to a liquidating account, in stage 2/3: who takes what. Handovers come
    backstop providers first, then ADL counterparties in rank order."""

    loop: int
    reason: str
    handovers: tuple[Handover, ...]
    deliveries: tuple[Delivery, ...]
    purchases: tuple[Purchase, ...] = ()
    providers: bool = True  # whether any backstop provider is configured (an ADL step says which it was)


@attrs.frozen
class DeliveryRequest:
    """A liquidating account asks a backstop provider for ``quantity`` of ``asset`` at ``price``."""

    loop: int
    asset: str
    quantity: Decimal
    price: Decimal


@attrs.frozen
class BackstopDelivery:
    """A provider's answer: what it delivers (possibly nothing); the account repays its borrow
    with it and pays the provider the value at ``price``."""

    loop: int
    provider: str
    asset: str
    quantity: Decimal
    price: Decimal

    def in_flight(self, settlement: str) -> Delta:
        return {self.asset: self.quantity} if self.quantity else {}


@attrs.frozen
class CollateralSale:
    """A liquidating account sends a backstop provider collateral to buy at ``price``; the
    account already debited it."""

    loop: int
    asset: str
    quantity: Decimal
    price: Decimal

    def in_flight(self, settlement: str) -> Delta:
        return {self.asset: self.quantity}


@attrs.frozen
class CollateralPayment:
    """The provider's answer: ``value`` of the settlement asset for ``bought``, and whatever
    it could not pay for sent back as ``returned``."""

    loop: int
    provider: str
    asset: str
    bought: Decimal
    returned: Decimal
    price: Decimal
    value: Decimal

    def in_flight(self, settlement: str) -> Delta:
        carried = {settlement: self.value} if self.value else {}
        if self.returned:
            carried[self.asset] = self.returned
        return carried


@attrs.frozen
class LiquidationReport:
    """Account to liquidator: what it found or did (the liquidator moves the case by
    ``exchange.liquidation.TRANSITIONS``)."""

    loop: int
    outcome: Outcome
    mmr: Decimal
    reason: str
    steps: tuple[LiquidationStep, ...] = ()
    book_failed: bool = False
    net_equity: Decimal = ZERO


# ---------------------------------------------------------------------------------------
# The calendar


@attrs.frozen
class Tick:
    kind: str  # "prices", "realize", "funding", "interest", "liquidation", "agent"
    time_ms: int


@attrs.frozen
class Schedule:
    """Ask the scheduler for ``kind`` ticks every ``interval_ms`` from ``first_ms``
    (``interval_ms`` 0: once). ``cancel`` stops them."""

    kind: str
    first_ms: int
    interval_ms: int = 0
    cancel: bool = False
