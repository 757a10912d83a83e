"""The sub-account machine: everything that changes a sub-account lives here, and it does not
know who drives it (the direct engine or an actor). One sub-account's ledger, changed only by
the messages it handles.

It runs the pre-trade check on the marks it has heard (which may be stale), reserves, and sends
orders to the markets; it books fills, funding and interest; it keeps its USDC settled (redeem,
borrow, convert, then the fund) and its auto-lend and auto-repay going; it tells the liquidator
how healthy it is; and when the liquidator moves against it, it re-checks its own health before
acting, executes the liquidation loop itself (the liquidator decides when, the account knows its
state), and settles what is left. Replies to its trader follow every request.

Pool requests are asynchronous: an order that needs a redeem or a borrow waits for the pool's
reply and is checked again before it is reserved (its state may have moved meanwhile); funds
promised to the pool (a lend, a repay) are locked until the pool answers.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from enum import StrEnum
from typing import Any

import attrs

from exchange.decimals import ZERO, ceil_to, floor_to, fmt
from exchange.ledger import SubAccount
from exchange.lending import Grant
from exchange.limits import borrow_refusal, leverage_refusal, outflow_plan
from exchange.liquidation import (
    BACKSTOP,
    BOOK,
    LiquidationOrder,
    LiquidationStep,
    Outcome,
    average_fill_price,
    backstop_collateral,
    backstop_fee,
    backstop_fee_cap,
    may_write_off,
    mmr_at_marks,
    needs_liquidation,
    plan_step,
    settlement_borrow_to_cover,
    waiting_reason,
    why_liquidated,
)
from exchange.machine import Machine
from exchange.margin import estimate_liquidation_price, totals
from exchange.orders import (
    ErrorCode,
    ExpiryReason,
    Order,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Origin,
    Rejection,
    Side,
    TimeInForce,
    duplicate_order_id,
)
from exchange.pretrade import Accepted, check_order
from exchange.protocol import (
    FEED,
    LIQUIDATOR,
    SCHEDULER,
    AssetTransfer,
    BackstopDelivery,
    BackstopPlan,
    BorrowWrittenOff,
    CancelAll,
    CancelAllOnBook,
    CancelOnBook,
    CancelOrder,
    CancelRefused,
    CollateralPayment,
    CollateralSale,
    DeliveryRequest,
    Deposit,
    FillNotice,
    FundFlow,
    FundingNotice,
    HealthReport,
    InterestNotice,
    LendWrittenOff,
    LiquidationLoop,
    LiquidationReport,
    LoanRequest,
    OrderChanged,
    OrderFilled,
    OrderPlaced,
    OrderRefused,
    PlaceOrder,
    PoolReply,
    PoolRequest,
    PositionTransfer,
    PriceSnapshot,
    PriceUpdate,
    ReportedPosition,
    RequestDone,
    RequestRefused,
    Schedule,
    StartLiquidation,
    SubmitOrder,
    SubmitRefused,
    Subscribe,
    Tick,
    TransferDone,
    TransferOut,
    UpdateNotice,
    UpdateSettings,
    Withdraw,
    account_address,
    market_address,
    pool_address,
)
from exchange.settlement import plan_reconciliation, settlement_shortfall

REPORT_FROM_MMR = Decimal("0.5")  # below this, report only when positions or borrows change


class Asked(StrEnum):
    """Why the account asked its pool: what the answer goes on to do."""

    ORDER = "order"  # an order waits for its redeem or borrow
    WITHDRAW = "withdraw"  # a withdrawal or transfer out waits for its redeem or borrow
    LOAN = "loan"  # the trader's own lend, redeem, borrow or repay
    SETTLEMENT = "settlement"  # covering a USDC shortfall
    AUTO = "auto"  # auto-lend or auto-repay
    LIQUIDATION = "liquidation"  # a repay while a liquidation settles
    REDEEM_LENT = "redeem_lent"  # lent collateral coming back before a liquidation loop


@attrs.define
class _Pending:
    """A pool request in flight and what to do with the answer."""

    kind: Asked
    sender: str | None = None
    payload: Any = None
    locked: tuple[str, Decimal] | None = None  # funds locked for a lend or repay


@attrs.define
class _LiquidationRun:
    """The account's side of one liquidation loop or backstop plan."""

    loop: int
    mmr_before: Decimal
    orders: dict[str, LiquidationOrder] = attrs.field(factory=dict)
    fills: dict[str, list] = attrs.field(factory=dict)
    book_failed: bool = False
    outstanding: int = 0  # transfers, deliveries or final repays not yet answered
    steps: list[LiquidationStep] = attrs.field(factory=list)
    reason: str = ""
    settling: bool = False
    marks: dict[str, Decimal] = attrs.field(factory=dict)  # the marks ``mmr_before`` was taken at
    providers: bool = True  # a backstop provider is configured (else ADL is all stage 2/3 has)


class SubAccountMachine(Machine):
    handlers = {
        PlaceOrder: "on_place_order",
        CancelOrder: "on_cancel_order",
        CancelAll: "on_cancel_all",
        Deposit: "on_deposit",
        Withdraw: "on_withdraw",
        TransferOut: "on_transfer_out",
        LoanRequest: "on_loan_request",
        UpdateSettings: "on_update_settings",
        FillNotice: "on_fill",
        UpdateNotice: "on_update",
        SubmitRefused: "on_submit_refused",
        CancelRefused: "on_cancel_refused",
        FundingNotice: "on_funding",
        PriceUpdate: "on_price",
        PriceSnapshot: "on_snapshot",
        PoolReply: "on_pool_reply",
        InterestNotice: "on_interest",
        LendWrittenOff: "on_lend_written_off",
        BorrowWrittenOff: "on_borrow_written_off",
        AssetTransfer: "on_asset_transfer",
        Tick: "on_tick",
        StartLiquidation: "on_start_liquidation",
        LiquidationLoop: "on_liquidation_loop",
        BackstopPlan: "on_backstop_plan",
        TransferDone: "on_transfer_done",
        DeliveryRequest: "on_delivery_request",
        BackstopDelivery: "on_backstop_delivery",
        CollateralSale: "on_collateral_sale",
        CollateralPayment: "on_collateral_payment",
    }

    def __init__(
        self, account: SubAccount, siblings: Iterable[str] = (), markets: Iterable[str] = ()
    ) -> None:
        super().__init__(account_address(account.id))
        self.account = account
        self.markets = tuple(markets)  # markets it trades: it hears their prices from the start
        self.profile = account.profile
        self.settle_asset = account.profile.settlement_asset
        self.siblings = tuple(siblings)
        self.owners: dict[str, str] = {}  # order id -> who placed it (notices go there)
        self.cancellers: dict[str, str] = {}  # cancels of orders this account does not know
        self.subscribed: set[str] = set()  # membership only
        self.deferred: list[tuple[str, Any]] = []
        self.awaiting: dict[str, _Pending] = {}
        self.busy_assets: dict[str, None] = {}  # assets with an automatic pool request in flight
        # Order id -> what the pool redeemed and lent to fund it, until it ends: an order that
        # ends with nothing executed gives it back (the pool waives a borrow's entry fee if no
        # interest tick has shared it out yet).
        self.order_draws: dict[str, list[Grant]] = {}
        self.loop_on_hold: LiquidationLoop | None = None  # a loop that waits for lent collateral
        self.lends_unredeemable: set[str] = set()  # membership only: what a pool refused to return
        self.reconciling: str | None = None  # what the current USDC cover waits for
        self.borrow_refused = False
        self.conversions_tried = False
        self.realizing = False
        self.liquidation: _LiquidationRun | None = None
        self.waiting_for_liquidity = False  # its history says so; cleared when a step fills again
        # Since when MMR >= 100% without a liquidation running, as of its last health report:
        # exact between the observer's sparse checks, which judge timeliness on it.
        self.unhealthy_since_ms: int | None = None
        self._seq = 0
        self._last_report: tuple[Any, ...] | None = None
        self._last_mmr = ZERO

    # -- helpers ----------------------------------------------------------------------------
    def _next_id(self, prefix: str) -> str:
        self._seq += 1
        return f"{self.account.id}-{prefix}{self._seq}"

    def _notify(self, recipient: str | None, message: object) -> None:
        if recipient is not None:
            self.send(recipient, message)

    def _lock(self, asset: str, quantity: Decimal) -> None:
        bal = self.account.balance(asset)
        bal.available -= quantity
        bal.locked += quantity

    def _unlock(self, asset: str, quantity: Decimal) -> None:
        bal = self.account.balance(asset)
        bal.locked = bal.locked - quantity or ZERO  # released in full: 0 as before, not 0.0
        bal.available += quantity

    def _ask_pool(self, asset: str, pending: _Pending, **amounts: Any) -> str:
        request_id = self._next_id("p")
        self.awaiting[request_id] = pending
        self.send(pool_address(asset), PoolRequest(request_id, self.account.id, **amounts))
        return request_id

    def symbols_for(self, market: str) -> tuple[str, ...]:
        spec = self.profile.markets[market]
        symbols = (market, spec.base, spec.quote) if spec.is_perp else (spec.base, spec.quote)
        return tuple(s for s in symbols if s != self.settle_asset)

    def _ensure_prices(self, symbols: Iterable[str], sender: str, message: Any) -> bool:
        """True when every price is heard; else subscribe and hold ``message`` for the snapshot."""
        missing = tuple(s for s in symbols if s not in self.subscribed and s != self.settle_asset)
        if not missing:
            return True
        self.subscribed.update(missing)
        self.send(FEED, Subscribe(missing))
        self.deferred.append((sender, message))
        return False

    def subscribe(self, symbols: Iterable[str]) -> None:
        """Hear these prices from the start (used when the run is set up)."""
        missing = tuple(s for s in symbols if s not in self.subscribed and s != self.settle_asset)
        if missing:
            self.subscribed.update(missing)
            self.send(FEED, Subscribe(missing))

    # -- orders -----------------------------------------------------------------------------
    def on_place_order(self, sender: str, message: PlaceOrder) -> None:
        order = message.order
        if order.market in self.profile.markets and not self._ensure_prices(
            self.symbols_for(order.market), sender, message
        ):
            return
        self._place(order, sender)

    def _place(self, order: Order, owner: str | None) -> None:
        if order.order_id in self.account.open_orders or any(
            p.kind is Asked.ORDER and p.payload.order_id == order.order_id for p in self.awaiting.values()
        ):
            # Refused here, before anything is reserved: the book would refuse it too, and the
            # ledger, which keys orders by id, would lose track of the one that rests.
            self._refuse_order(order, duplicate_order_id(order.order_id, f"sub-account {self.account.id}"), owner)
            return
        result = check_order(self.account, order)
        if isinstance(result, Rejection):
            self._refuse_order(order, result, owner)
            return
        self._fund_and_submit(result, owner)

    def _fund_and_submit(self, accepted: Accepted, owner: str | None) -> None:
        """Submit an accepted order, after the pool redeems or lends what a spot order needs
        (a liquidation's buy-back may have to redeem the account's own lend first)."""
        if accepted.redeem or accepted.borrow:
            assert accepted.lock_asset is not None
            self._ask_pool(
                accepted.lock_asset, _Pending(Asked.ORDER, owner, accepted.order),
                redeem=accepted.redeem, borrow=accepted.borrow, purpose="order",
                liquidation=accepted.order.origin is not Origin.USER,
            )
            return
        self._submit(accepted, owner)

    def _submit(self, accepted: Accepted, owner: str | None) -> None:
        order = accepted.order
        self.account.reserve(order, accepted.lock_asset, accepted.lock_amount, accepted.exposure)
        if owner is not None:
            self.owners[order.order_id] = owner
        ev = accepted.evaluation
        self.emit(
            "order_placed", order_id=order.order_id, market=order.market, side=order.side,
            order_type=order.order_type, quantity=order.quantity, price=order.price,
            quote_quantity=order.quote_quantity, origin=order.origin, reduce_only=order.reduce_only,
            post_only=order.post_only, time_in_force=order.time_in_force,
            imr_after=ev.after.imr if ev is not None else None,
        )
        self.send(market_address(order.market), SubmitOrder(order))
        self._notify(owner, OrderPlaced(order))

    def _refuse_order(self, order: Order, rejection: Rejection, owner: str | None) -> None:
        # The refusal's numbers may repeat the order's own fields (a band refusal names the
        # market and the price); the order's values are the same and are kept.
        self.emit("order_rejected", **{
            **rejection.details, "order_id": order.order_id, "market": order.market, "side": order.side,
            "quantity": order.quantity, "price": order.price, "code": rejection.code, "reason": rejection.reason,
            "message": rejection.message,
        })
        self._notify(owner, OrderRefused(order, rejection))

    def on_cancel_order(self, sender: str, message: CancelOrder) -> None:
        if message.order_id not in self.owners:
            self.cancellers[message.order_id] = sender  # so a refusal finds its way back
        self.send(market_address(message.market), CancelOnBook(message.order_id, self.account.id))

    def on_cancel_all(self, sender: str, message: CancelAll) -> None:
        for market in self._markets_with_orders():
            if message.market is None or message.market == market:
                self.send(market_address(market), CancelAllOnBook(self.account.id))

    def _markets_with_orders(self) -> list[str]:
        return list(dict.fromkeys(e.order.market for e in self.account.open_orders.values()))

    def on_submit_refused(self, sender: str, message: SubmitRefused) -> None:
        order = message.order
        self.account.apply_update(
            OrderUpdate(order.order_id, self.account.id, order.market, OrderStatus.EXPIRED, ZERO, ZERO, ZERO)
        )
        self._refuse_order(order, message.rejection, self.owners.pop(order.order_id, None))
        self._order_ended(order, ZERO)

    def on_cancel_refused(self, sender: str, message: CancelRefused) -> None:
        self.emit("cancel_refused", order_id=message.order_id, code=message.rejection.code,
                      message=message.rejection.message)
        self._notify(self.owners.get(message.order_id, self.cancellers.pop(message.order_id, None)),
                     RequestRefused(message.order_id, message.rejection))

    def on_fill(self, sender: str, message: FillNotice) -> None:
        fill, market = message.fill, message.market
        effect = self.account.apply_fill(fill, market)
        self.emit(
            "fill", market=fill.market, order_id=fill.order_id, side=fill.side, price=fill.price,
            quantity=fill.quantity, fee=fill.fee, fee_asset=fill.fee_asset, maker=fill.is_maker,
            origin=fill.origin, realized_pnl=effect.realized_pnl, position=effect.position_after,
            liquidation_fee=fill.liquidation_fee, quote_quantity=fill.quote_quantity,
        )
        if effect.house_remainder:
            self.send(LIQUIDATOR, FundFlow(self.account.id, self.settle_asset, effect.house_remainder, "rounding"))
        if market.is_perp and not self.realizing and self.profile.realize_interval_ms:
            self.realizing = True
            interval = self.profile.realize_interval_ms
            self.send(SCHEDULER, Schedule("realize", (self.now_ms // interval + 1) * interval, interval))
        run = self.liquidation
        if run is not None and fill.order_id in run.orders:
            run.fills[fill.order_id].append(fill)
        self._notify(self.owners.get(fill.order_id), OrderFilled(fill))
        if effect.ended_order is not None and effect.ended_order.final is not None:
            self._close(effect.ended_order.order, effect.ended_order.final)
        self.settle()

    def on_update(self, sender: str, message: UpdateNotice) -> None:
        update = message.update
        ended = self.account.apply_update(update)
        if ended is not None:
            self._close(ended.order, update)
        elif not update.status.is_final:
            self._notify(self.owners.get(update.order_id), OrderChanged(update))
        # A final update whose fills have not arrived yet closes the order when they do.
        self.settle(report=False)  # an order's end moves locked funds, never MMR

    def _close(self, order: Order, final: OrderUpdate) -> None:
        """The order has ended and every fill of it is booked: log it, tell its owner."""
        self.emit("order_closed", order_id=final.order_id, market=final.market, status=final.status,
                      reason=final.reason, executed=final.executed_quantity)
        self._order_ended(order, final.executed_quantity)
        self._notify(self.owners.pop(final.order_id, None), OrderChanged(final))

    def _order_ended(self, order: Order, executed: Decimal) -> None:
        """Per-order spot flags, conversions that settle USDC, liquidation orders."""
        spec = self.profile.markets[order.market]
        drawn = self.order_draws.pop(order.order_id, None)
        if drawn and not executed:
            self._give_back(drawn)
        elif not spec.is_perp:
            received = spec.base if order.side is Side.BID else spec.quote
            paid = spec.quote if order.side is Side.BID else spec.base
            if order.auto_borrow_repay:
                self._repay_from_available(received)
            if order.auto_borrow:
                self._repay_from_available(paid)  # borrowed funds the order did not spend
            if order.auto_lend:
                self._lend_available(received)
        if order.origin is Origin.COLLATERAL_CONVERSION and self.reconciling == order.order_id:
            self.reconciling = None
        run = self.liquidation
        if run is not None and order.order_id in run.orders:
            self._liquidation_order_ended(order)

    # -- prices -----------------------------------------------------------------------------
    def on_price(self, sender: str, message: PriceUpdate) -> None:
        self.account.marks.update(message.prices)
        self._report()

    def on_snapshot(self, sender: str, message: PriceSnapshot) -> None:
        self.account.marks.update(message.prices)
        deferred, self.deferred = self.deferred, []
        for held_sender, held in deferred:
            self.dispatch(held_sender, held)
        self._report()

    # -- money in and out -------------------------------------------------------------------
    def on_deposit(self, sender: str, message: Deposit) -> None:
        if message.asset not in self.profile.assets or message.quantity <= 0:
            refused = Rejection(ErrorCode.INVALID_QUANTITY,
                                f"cannot deposit {fmt(message.quantity)} {message.asset}: "
                                f"assets are {', '.join(self.profile.assets)}")
            self.emit("deposit_refused", asset=message.asset, quantity=message.quantity)
            self.send(sender, RequestRefused(message.request_id, refused))
            return
        credited = floor_to(message.quantity, self.profile.assets[message.asset].step)
        repaid = self.account.deposit(message.asset, message.quantity)
        self.emit("deposit", asset=message.asset, quantity=credited, repaid_debt=repaid)
        if repaid:
            self.send(LIQUIDATOR, FundFlow(self.account.id, message.asset, repaid, "debt repaid"))
        self.subscribe((message.asset,))
        self.send(sender, RequestDone(message.request_id, f"{fmt(credited)} {message.asset}"))
        self.settle()

    def _refuse_outflow(self, sender: str, message: Withdraw | TransferOut, refused: Rejection) -> None:
        """A withdrawal or transfer refused, logged with its numbers; nothing has moved."""
        self.emit("withdrawal_refused" if isinstance(message, Withdraw) else "transfer_refused", **{
            **refused.details, "request_id": message.request_id, "asset": message.asset,
            "quantity": message.quantity, "code": refused.code, "message": refused.message,
        })
        self.send(sender, RequestRefused(message.request_id, refused))

    def on_withdraw(self, sender: str, message: Withdraw | TransferOut) -> None:
        plan = outflow_plan(self.account, message.asset, message.quantity, message.auto_borrow)
        if isinstance(plan, Rejection):
            self._refuse_outflow(sender, message, plan)
            return
        redeem, borrow = plan
        if redeem or borrow:
            self._ask_pool(message.asset, _Pending(Asked.WITHDRAW, sender, message), redeem=redeem, borrow=borrow,
                           purpose="withdrawal")
            return
        self._finish_outflow(sender, message)

    def on_transfer_out(self, sender: str, message: TransferOut) -> None:
        if message.target not in self.siblings:
            refused = Rejection(ErrorCode.INVALID_ORDER,
                                f"{message.target} is not a sub-account of {self.account.owner}", {"target": message.target})
            self._refuse_outflow(sender, message, refused)
            return
        self.on_withdraw(sender, message)  # same rule; _finish_outflow sends it to the sibling

    def _finish_outflow(self, sender: str, message: Withdraw | TransferOut) -> bool:
        """Pay the withdrawal or transfer out; False (and refused) when the funds have moved."""
        asset, quantity = message.asset, message.quantity
        available = self.account.available(asset)
        if available < quantity:
            refused = Rejection(ErrorCode.INSUFFICIENT_FUNDS,
                                f"{fmt(quantity)} {asset} asked, only {fmt(available)} is available any more",
                                {"available": available})
            self._refuse_outflow(sender, message, refused)
            return False
        self.account.debit(asset, quantity)
        if isinstance(message, TransferOut):
            self.emit("transfer_out", request_id=message.request_id, target=message.target, asset=asset,
                          quantity=quantity)
            self.send(account_address(message.target),
                      AssetTransfer(self.account.id, asset, quantity, "sibling transfer", message.request_id))
        else:
            self.emit("withdrawal", request_id=message.request_id, asset=asset, quantity=quantity)
        self.send(sender, RequestDone(message.request_id, f"{fmt(quantity)} {asset}"))
        self.settle()
        return True

    def on_asset_transfer(self, sender: str, message: AssetTransfer) -> None:
        repaid = self.account.deposit(message.asset, message.quantity)
        self.emit("transfer_in", sender=message.sender, asset=message.asset, quantity=message.quantity,
                      reason=message.reason, repaid_debt=repaid)
        if repaid:
            self.send(LIQUIDATOR, FundFlow(self.account.id, message.asset, repaid, "debt repaid"))
        self.subscribe((message.asset,))
        self.settle()

    # -- the lending pool -------------------------------------------------------------------
    def on_loan_request(self, sender: str, message: LoanRequest) -> None:
        account, asset, quantity = self.account, message.asset, message.quantity
        refused: Rejection | None = None
        if asset not in self.profile.assets or quantity <= 0:
            refused = Rejection(ErrorCode.INVALID_QUANTITY, f"cannot {message.action} {fmt(quantity)} {asset}")
        elif message.action in ("lend", "repay") and account.available(asset) < quantity:
            refused = Rejection(ErrorCode.INSUFFICIENT_FUNDS,
                                f"cannot {message.action} {fmt(quantity)} {asset}: {fmt(account.available(asset))} available")
        elif message.action in ("repay", "redeem"):
            owed = (account.borrows if message.action == "repay" else account.lends).get(asset, ZERO)
            if quantity > owed:
                what = "owes" if message.action == "repay" else "has lent"
                refused = Rejection(ErrorCode.INSUFFICIENT_FUNDS,
                                    f"cannot {message.action} {fmt(quantity)} {asset}: {account.id} {what} {fmt(owed)}",
                                    {"max_quantity": min(owed, account.available(asset)) if message.action == "repay"
                                     else owed})
        elif message.action == "borrow":
            refused = borrow_refusal(account, asset, quantity)
        if refused is not None:
            self.emit("loan_refused", action=message.action, asset=asset, quantity=quantity, code=refused.code,
                          message=refused.message)
            self.send(sender, RequestRefused(message.request_id, refused))
            return
        pending = _Pending(Asked.LOAN, sender, message)
        if message.action in ("lend", "repay"):
            self._lock(asset, quantity)
            pending.locked = (asset, quantity)
        self._ask_pool(asset, pending, **{message.action: quantity}, purpose="user")

    def on_pool_reply(self, sender: str, message: PoolReply) -> None:
        pending = self.awaiting.pop(message.request_id)
        if pending.locked is not None:
            self._unlock(*pending.locked)
        for grant in message.grants:
            self._apply_grant(grant)
        kind = pending.kind
        if kind is Asked.ORDER:
            order = pending.payload
            if message.grants:
                self.order_draws[order.order_id] = list(message.grants)
            refused: Rejection | None = None
            if message.rejection is not None:
                reason = ExpiryReason.INSUFFICIENT_BORROWABLE_QUANTITY if message.rejection.code in (
                    ErrorCode.INSUFFICIENT_SUPPLY, ErrorCode.BORROW_LIMIT) else message.rejection.reason
                refused = attrs.evolve(message.rejection, reason=reason)
            else:
                # Checked again: fills or prices may have moved while the pool answered.
                result = check_order(self.account, order)
                if isinstance(result, Accepted) and not (result.redeem or result.borrow):
                    self._submit(result, pending.sender)
                else:
                    refused = result if isinstance(result, Rejection) else Rejection(
                        ErrorCode.INSUFFICIENT_FUNDS, "funds moved while the pool answered", {}, ExpiryReason.INSUFFICIENT_FUNDS)
            if refused is not None:
                self._refuse_order(order, refused, pending.sender)
                self._give_back(self.order_draws.pop(order.order_id, ()))
                if self.reconciling == order.order_id:  # a conversion the pool would not fund
                    self.reconciling = None
                run = self.liquidation
                if run is not None and order.order_id in run.orders:
                    self._liquidation_order_ended(order)
        elif kind is Asked.WITHDRAW:
            if message.rejection is not None:
                self._refuse_outflow(pending.sender, pending.payload, message.rejection)
            elif not self._finish_outflow(pending.sender, pending.payload):
                self._give_back(message.grants)
        elif kind is Asked.LOAN:
            request = pending.payload
            if message.rejection is not None:
                self.emit("loan_refused", action=request.action, asset=request.asset, quantity=request.quantity,
                              code=message.rejection.code, message=message.rejection.message)
                self.send(pending.sender, RequestRefused(request.request_id, message.rejection))
            else:
                self.send(pending.sender, RequestDone(request.request_id, f"{request.action} {fmt(request.quantity)}",
                                                      message.grants))
        elif kind is Asked.SETTLEMENT:
            self.reconciling = None
            if message.rejection is not None and pending.payload == "borrow":
                self.borrow_refused = True
        elif kind is Asked.AUTO:
            self.busy_assets.pop(pending.payload, None)
        elif kind is Asked.REDEEM_LENT:
            if message.rejection is not None:
                self.lends_unredeemable.add(pending.payload)
            loop, self.loop_on_hold = self.loop_on_hold, None
            if loop is not None:  # it runs now, or waits again for the pools still to answer
                self.on_liquidation_loop(LIQUIDATOR, loop)
        elif kind is Asked.LIQUIDATION:
            self.busy_assets.pop(pending.payload, None)
            run = self.liquidation
            if run is not None and run.settling:
                run.outstanding -= 1
                if not run.outstanding:
                    self._close_liquidation()
        self.settle()

    def _apply_grant(self, grant: Grant) -> None:
        account = self.account
        if grant.action == "lend":
            account.apply_lend(grant.asset, grant.quantity)
        elif grant.action == "redeem":
            account.apply_redeem(grant.asset, grant.quantity)
        elif grant.action == "borrow":
            account.apply_borrow(grant.asset, grant.quantity, grant.entry_fee)
        else:
            account.apply_repay(grant.asset, grant.quantity)
        self.emit(grant.action, asset=grant.asset, quantity=grant.quantity, entry_fee=grant.entry_fee)

    def on_interest(self, sender: str, message: InterestNotice) -> None:
        self.account.apply_interest(message.asset, message.borrow_interest, message.lend_interest)
        self.emit("interest", asset=message.asset, borrow_interest=message.borrow_interest,
                      lend_interest=message.lend_interest, borrow_rate=message.borrow_rate,
                      lend_rate=message.lend_rate)
        self.settle()

    def on_lend_written_off(self, sender: str, message: LendWrittenOff) -> None:
        self.account.apply_lend_write_off(message.asset, message.quantity)
        self.emit("lend_written_off", asset=message.asset, quantity=message.quantity)

    def on_borrow_written_off(self, sender: str, message: BorrowWrittenOff) -> None:
        account = self.account
        repaid = account.apply_borrow_write_off(message.asset, message.quantity, message.paid)
        self.emit("borrow_written_off", asset=message.asset, quantity=message.quantity,
                      debt_to_fund=message.paid, repaid=repaid, unsettled_equity=account.unsettled_equity)
        if repaid:
            self.send(LIQUIDATOR, FundFlow(account.id, self.settle_asset, repaid, "debt repaid"))
        self.settle()

    def _repay_from_available(self, asset: str, *, kind: Asked = Asked.AUTO) -> bool:
        """Repay what the account holds of a borrowed asset; False when nothing was asked."""
        amount = min(self.account.available(asset), self.account.borrows.get(asset, ZERO))
        if amount <= 0 or asset in self.busy_assets:
            return False
        self.busy_assets[asset] = None
        self._lock(asset, amount)
        self._ask_pool(asset, _Pending(kind, None, asset, (asset, amount)), repay=amount)
        return True

    def _give_back(self, grants: Iterable[Grant]) -> None:
        """Undo what the pool drew for a request that then did nothing (an order refused or
        ended unfilled, a withdrawal refused after all): repay a borrow with its entry fee
        waived, lend a redeemed lend again, so the account is as it was."""
        for grant in grants:
            asset, quantity = grant.asset, grant.quantity
            if asset in self.busy_assets or self.account.available(asset) < quantity:
                if grant.action == "borrow":
                    self._repay_from_available(asset)  # what can be repaid now; the rest stays a borrow
                continue
            self.busy_assets[asset] = None
            self._lock(asset, quantity)
            pending = _Pending(Asked.AUTO, None, asset, (asset, quantity))
            if grant.action == "borrow":
                self._ask_pool(asset, pending, repay=quantity, waive_fee=grant.entry_fee)
            else:
                self._ask_pool(asset, pending, lend=quantity)

    def _lend_available(self, asset: str) -> None:
        amount = self.account.available(asset)
        if amount > 0 and not self.account.borrows.get(asset) and asset not in self.busy_assets:
            self.busy_assets[asset] = None
            self._lock(asset, amount)
            self._ask_pool(asset, _Pending(Asked.AUTO, None, asset, (asset, amount)), lend=amount)

    # -- perp settlement --------------------------------------------------------------------
    def on_funding(self, sender: str, message: FundingNotice) -> None:
        self.account.apply_funding(message.market, message.amount)
        self.emit("funding_payment", market=message.market, rate=message.rate, amount=message.amount)
        self.settle()

    def on_tick(self, sender: str, message: Tick) -> None:
        if message.kind == "realize":
            for symbol, amount in self.account.realize_pnl():
                self.emit("pnl_realized", market=symbol, amount=amount)
            self.settle()
        elif message.kind == "sample":
            self._log_health()
        elif message.kind == "closing_sample":
            self._log_health(closing=True)

    def _log_health(self, closing: bool = False) -> None:
        """A periodic health sample (charts, the demo, expectations at a time); ``closing``: the
        one taken once the run's last instant has settled, how the account ended."""
        account = self.account
        t = totals(account)
        self.emit(
            "health", **({"closing": True} if closing else {}), net_equity=t.net_equity, imr=t.imr, mmr=t.mmr, available=t.available,
            maintenance=t.maintenance, liquidating=account.liquidating,
            positions={s: p.quantity for s, p in account.positions.items()},
            borrows=dict(account.borrows), lends=dict(account.lends),
            balances={a: b.available + b.locked for a, b in account.balances.items() if b.available + b.locked},
            unsettled_equity=account.unsettled_equity,
        )

    def settle(self, report: bool = True) -> None:
        """After anything changed: keep USDC covered, run auto-repay and auto-lend, report."""
        self._reconcile()
        settings = self.account.settings
        if settings.auto_repay_borrows:
            for asset in list(self.account.borrows):
                self._repay_from_available(asset)
        if settings.auto_lend and not self.account.liquidating:
            for asset in list(self.account.balances):
                self._lend_available(asset)
        if report:
            self._report()

    def _reconcile(self) -> None:
        """Cover a negative USDC balance one step at a time (spec 10.3): each step waits for its
        answer, then the next is planned from what is left."""
        if self.reconciling is not None:
            return
        account = self.account
        if not settlement_shortfall(account):
            self.borrow_refused = self.conversions_tried = False
            return
        plan = plan_reconciliation(account, borrow_allowed=not (self.borrow_refused or account.liquidating))
        assert plan is not None
        if plan.redeem:
            self.reconciling = self._ask_pool(self.settle_asset, _Pending(Asked.SETTLEMENT, payload="redeem"),
                                              redeem=plan.redeem, purpose="settlement", liquidation=True)
            return
        if plan.borrow:
            self.reconciling = self._ask_pool(self.settle_asset, _Pending(Asked.SETTLEMENT, payload="borrow"),
                                              borrow=plan.borrow, purpose="settlement", liquidation=True)
            return
        if plan.conversions and not self.conversions_tried:
            self.conversions_tried = True
            conversion = plan.conversions[0]  # one at a time; the next step plans again
            order = Order(self._next_id("c"), account.id, conversion.market, Side.ASK, OrderType.MARKET,
                          conversion.quantity, time_in_force=TimeInForce.IOC, auto_lend_redeem=True,
                          origin=Origin.COLLATERAL_CONVERSION)
            result = check_order(account, order)
            if isinstance(result, Accepted):
                self.reconciling = order.order_id
                self._fund_and_submit(result, None)  # lent collateral is redeemed first
                return
        short = settlement_shortfall(account)
        account.cover_from_fund(short)
        self.emit("fund_cover", quantity=short, unsettled_equity=account.unsettled_equity)
        self.send(LIQUIDATOR, FundFlow(account.id, self.settle_asset, -short, "covered a shortfall"))

    # -- settings ---------------------------------------------------------------------------
    def on_update_settings(self, sender: str, message: UpdateSettings) -> None:
        settings = self.account.settings
        limit = message.leverage_limit
        if limit is not None:
            refused = leverage_refusal(self.account, limit)
            if refused is not None:
                self.emit("settings_refused", **{**refused.details, "request_id": message.request_id,
                                                 "leverage_limit": limit, "code": refused.code,
                                                 "message": refused.message})
                self.send(sender, RequestRefused(message.request_id, refused))
                return
            settings.leverage_limit = limit
        for name in ("auto_lend", "auto_borrow_settlements", "auto_repay_borrows"):
            value = getattr(message, name)
            if value is not None:
                setattr(settings, name, value)
        self.emit("settings_changed", leverage_limit=settings.leverage_limit, auto_lend=settings.auto_lend,
                      auto_borrow_settlements=settings.auto_borrow_settlements,
                      auto_repay_borrows=settings.auto_repay_borrows)
        self.send(sender, RequestDone(message.request_id))
        self.settle()

    # -- health and liquidation -------------------------------------------------------------
    def _report(self, force: bool = False) -> None:
        """Tell the liquidator how healthy the account is: always when near or in trouble, and
        whenever its positions or borrows change (ADL ranks on these reports)."""
        account = self.account
        t = totals(account)
        if needs_liquidation(t) and not account.liquidating:
            if self.unhealthy_since_ms is None:
                self.unhealthy_since_ms = self.now_ms
        else:
            self.unhealthy_since_ms = None
        shape = (
            tuple((s, p.quantity) for s, p in account.positions.items()),
            tuple(account.borrows.items()),
            account.liquidating,
        )
        if not force and t.mmr < REPORT_FROM_MMR and self._last_mmr < REPORT_FROM_MMR and shape == self._last_report:
            return
        self._last_report, self._last_mmr = shape, t.mmr
        positions = tuple(
            ReportedPosition(market=s, quantity=p.quantity, unrealized_pnl=p.unrealized_pnl(account.price(s)),
                             net_cost=p.net_cost, entry_notional=abs(p.quantity) * p.entry_price)
            for s, p in account.positions.items()
        )
        self.send(LIQUIDATOR, HealthReport(account.id, t.net_equity, t.maintenance, t.mmr, account.liquidating,
                                           positions, tuple(account.borrows.items())))

    def on_start_liquidation(self, sender: str, message: StartLiquidation) -> None:
        """Re-check on the account's own state before anything happens: the report was stale."""
        account = self.account
        t = totals(account)
        if account.liquidating:
            return
        if not needs_liquidation(t):
            self.send(LIQUIDATOR, LiquidationReport(message.loop, Outcome.NOT_NEEDED, t.mmr,
                                                    f"MMR is {fmt(t.mmr, 4)} here: the report was stale"))
            return
        account.liquidating = True
        self.lends_unredeemable.clear()
        estimates = {s: estimate_liquidation_price(account, s) for s, p in account.positions.items() if p.quantity}
        self.emit("liquidating", mmr=t.mmr, estimates={
            s: {"price": e.price, "method": e.method, "reason": e.reason, "quantity": account.positions[s].quantity,
                "mark": account.marks.get(s)} for s, e in estimates.items()})
        why = why_liquidated(account)
        for market in self._markets_with_orders():
            self.send(market_address(market), CancelAllOnBook(account.id))
        self.send(LIQUIDATOR, LiquidationReport(message.loop, Outcome.STARTED, t.mmr,
                                                why + "; open orders cancelled, account liquidating"))
        self._report()

    def on_liquidation_loop(self, sender: str, message: LiquidationLoop) -> None:
        account = self.account
        if not account.liquidating or self.liquidation is not None:
            return
        if self._redeeming_lends():
            self.loop_on_hold = message
            return
        plan = plan_step(account, message.depth, self.profile.liquidation, message.progress)
        if plan.stage == "healthy":
            account.liquidating = self.waiting_for_liquidity = False
            self.emit("liquidation_ended", outcome=Outcome.HEALTHY, mmr=plan.mmr)
            self.send(LIQUIDATOR, LiquidationReport(message.loop, Outcome.HEALTHY, plan.mmr, plan.reason))
            self.settle()
            return
        if plan.stage == BACKSTOP:
            self._report(force=True)  # the plan is made on this report: it must be fresh
            self.send(LIQUIDATOR, LiquidationReport(message.loop, Outcome.BACKSTOP, plan.mmr, plan.reason,
                                                    net_equity=totals(account).net_equity))
            return
        assert plan.stage == BOOK
        run = self.liquidation = _LiquidationRun(message.loop, plan.mmr, book_failed=not plan.orders,
                                                 marks=dict(account.marks))
        for wanted in plan.orders:
            spec = self.profile.markets[wanted.market]
            order = Order(self._next_id("l"), account.id, wanted.market, wanted.side, OrderType.MARKET,
                          wanted.quantity, time_in_force=TimeInForce.IOC, reduce_only=spec.is_perp,
                          origin=Origin.LIQUIDATION_AUTOCLOSE)
            result = check_order(account, order)
            if isinstance(result, Rejection):
                run.book_failed = True
                continue
            run.orders[order.order_id] = wanted
            run.fills[order.order_id] = []
            self._fund_and_submit(result, None)
        if not run.orders:
            self._finish_step()

    def _redeeming_lends(self) -> bool:
        """Whether lent collateral is on its way back: it comes back before a loop plans anything
        (spec 9.4), because it backs the margin and must be there to sell; without it a backstop
        round would write off a borrow while the account kept its lend. The loop is held until
        the pools answer. What a pool refuses to return (utilization) stays lent for the rest of
        this liquidation: the lend-side ADL of 9.4 is not modelled."""
        if any(p.kind is Asked.REDEEM_LENT for p in self.awaiting.values()):
            return True
        asked = False
        for asset, lent in self.account.lends.items():
            if lent > 0 and asset not in self.lends_unredeemable:
                asked = True
                self._ask_pool(asset, _Pending(Asked.REDEEM_LENT, payload=asset), redeem=lent, purpose="liquidation",
                               liquidation=True)
        return asked

    def _liquidation_order_ended(self, order: Order) -> None:
        run = self.liquidation
        assert run is not None
        wanted = run.orders.pop(order.order_id)
        fills = run.fills.pop(order.order_id)
        filled = sum((f.quantity for f in fills), ZERO)
        if filled < wanted.quantity:
            run.book_failed = True
        if wanted.repay:
            self._repay_from_available(wanted.repay)
        if fills:
            notional = sum((f.quote_quantity for f in fills), ZERO)
            fee = sum((f.liquidation_fee + (f.fee if f.fee_asset == self.settle_asset else f.fee * f.price) for f in fills),
                      ZERO)
            liquidation_fee = sum((f.liquidation_fee for f in fills), ZERO)
            stage = BOOK if self.profile.markets[order.market].is_perp else "conversion"
            average = average_fill_price(notional, filled, self.profile.markets[order.market].tick_size)
            self._record_step(run, stage, order.market, str(order.side), filled, average, wanted.reason,
                              liquidation_fee=liquidation_fee, taker_fee=fee - liquidation_fee)
        if not run.orders:
            self._finish_step()

    def _finish_step(self) -> None:
        run = self.liquidation
        assert run is not None
        self.liquidation = None
        if run.steps:
            self.waiting_for_liquidity = False
        mmr = totals(self.account).mmr
        self.send(LIQUIDATOR, LiquidationReport(run.loop, Outcome.STEPPED, mmr, "reduce on the book", tuple(run.steps),
                                                run.book_failed))

    def on_backstop_plan(self, sender: str, message: BackstopPlan) -> None:
        """Carry out the liquidator's plan: transfers at mark, then deliveries, then settle."""
        account = self.account
        run = self.liquidation = _LiquidationRun(message.loop, totals(account).mmr, reason=message.reason,
                                                 marks=dict(account.marks), providers=message.providers)
        for handover in message.handovers:
            fee_cap = backstop_fee_cap(account)
            run.outstanding += 1
            self.send(market_address(handover.market), PositionTransfer(
                handover.kind, account.id, handover.counterparty, handover.quantity, fee_cap, handover.adl_score))
        for delivery in message.deliveries:
            run.outstanding += 1
            self.send(account_address(delivery.provider), DeliveryRequest(
                message.loop, delivery.asset, delivery.quantity, account.price(delivery.asset)))
        for purchase in message.purchases:
            need = settlement_borrow_to_cover(account)
            if need <= 0:
                break
            for asset, quantity, price in backstop_collateral(account, min(purchase.most, need)):
                account.debit(asset, quantity)
                self.emit("backstop_sale", buyer=purchase.provider, asset=asset, quantity=quantity, price=price)
                run.outstanding += 1
                self.send(account_address(purchase.provider), CollateralSale(message.loop, asset, quantity, price))
        if not run.outstanding:
            self._settle_liquidation()

    def on_transfer_done(self, sender: str, message: TransferDone) -> None:
        run = self.liquidation
        assert run is not None
        if message.quantity:
            reason = (f"{run.reason}; taken by {message.counterparty} at mark" if message.kind == "backstop"
                      else f"{'backstop capacity exhausted' if run.providers else 'no backstop provider'}; "
                      f"closed against {message.counterparty} "
                      f"(ADL score {fmt(message.adl_score, 6)})")
            side = "Ask" if message.quantity > 0 else "Bid"
            self._record_step(run, message.kind, message.market, side, abs(message.quantity), message.price, reason,
                              liquidation_fee=message.fee)
        run.outstanding -= 1
        if not run.outstanding:
            self._settle_liquidation()

    def on_delivery_request(self, sender: str, message: DeliveryRequest) -> None:
        """As a backstop provider: deliver what we hold of the asset (maybe nothing)."""
        quantity = min(message.quantity, max(self.account.available(message.asset), ZERO))
        if quantity:
            self.account.debit(message.asset, quantity)
        self.emit("backstop_delivery", to=sender, asset=message.asset, quantity=quantity, price=message.price)
        self.send(sender, BackstopDelivery(message.loop, self.account.id, message.asset, quantity, message.price))
        self.settle()

    def on_backstop_delivery(self, sender: str, message: BackstopDelivery) -> None:
        """The provider's asset repays our borrow; we pay it the value at the agreed price."""
        account = self.account
        run = self.liquidation
        assert run is not None
        if message.quantity:
            account.credit(message.asset, message.quantity)
            value = ceil_to(message.quantity * message.price, self.profile.assets[self.settle_asset].step)
            account.debit(self.settle_asset, value)
            self.send(sender, AssetTransfer(account.id, self.settle_asset, value, "backstop payment"))
            fee = self._pay_backstop_fee(value)
            self.emit("backstop_bought", provider=message.provider, asset=message.asset, quantity=message.quantity,
                          price=message.price, value=value, fee=fee)
            self._repay_from_available(message.asset)
            self._record_step(run, BACKSTOP, message.asset, "Bid", message.quantity, message.price,
                              f"{run.reason}; {message.provider} repaid the borrow at mark", liquidation_fee=fee)
        run.outstanding -= 1
        if not run.outstanding:
            self._settle_liquidation()

    def on_collateral_sale(self, sender: str, message: CollateralSale) -> None:
        """As a backstop provider: buy the collateral at the given price with what we hold of the
        settlement asset, and send back what we cannot pay for."""
        account, asset = self.account, message.asset
        held = max(account.available(self.settle_asset), ZERO)
        bought = min(message.quantity, floor_to(held / message.price, self.profile.assets[asset].step))
        value = floor_to(bought * message.price, self.profile.assets[self.settle_asset].step)
        if bought:
            account.credit(asset, bought)
            account.debit(self.settle_asset, value)
            self.subscribe((asset,))
        self.emit("backstop_purchase", seller=sender, asset=asset, quantity=bought, price=message.price,
                      value=value)
        self.send(sender, CollateralPayment(message.loop, account.id, asset, bought, message.quantity - bought,
                                            message.price, value))
        self.settle()

    def on_collateral_payment(self, sender: str, message: CollateralPayment) -> None:
        """The provider paid for collateral: the proceeds (less the fee) repay the borrow when
        the liquidation settles."""
        account = self.account
        run = self.liquidation
        assert run is not None
        if message.returned:
            account.credit(message.asset, message.returned)
        fee = ZERO
        if message.value:
            account.credit(self.settle_asset, message.value)
            fee = self._pay_backstop_fee(message.value)
        self.emit("backstop_sold", provider=message.provider, asset=message.asset, quantity=message.bought,
                      returned=message.returned, price=message.price, value=message.value, fee=fee)
        if message.bought:
            self._record_step(run, BACKSTOP, message.asset, "Ask", message.bought, message.price,
                              f"{run.reason}; {message.provider} bought {message.asset} at mark to repay the "
                              f"{self.settle_asset} borrow", liquidation_fee=fee)
        run.outstanding -= 1
        if not run.outstanding:
            self._settle_liquidation()

    def _record_step(self, run: _LiquidationRun, stage: str, market: str, side: str, quantity: Decimal,
                     price: Decimal, reason: str, *, liquidation_fee: Decimal, taker_fee: Decimal = ZERO) -> None:
        """One moving row of the history: its fees apart, the mark it acted on and, when a new
        mark arrived since ``mmr_before`` was taken, that earlier mark and MMR after the step at
        it, so before and after can be compared at one mark. Each step's "before" is where the
        previous one left the account."""
        account = self.account
        spec = self.profile.markets.get(market)
        perp = spec is not None and spec.is_perp
        key = spec.base if spec is not None and not perp else market
        mark, planned = account.marks.get(key), run.marks.get(key)
        moved = planned is not None and planned != mark
        position = account.positions.get(market)
        mmr = totals(account).mmr
        run.steps.append(LiquidationStep(
            time_ms=self.now_ms, stage=stage, market=market, side=side, quantity=quantity, price=price,
            fee=taker_fee + liquidation_fee, taker_fee=taker_fee, liquidation_fee=liquidation_fee, mark=mark,
            planned_mark=planned if moved else None,
            mmr_after_at_planned_mark=mmr_at_marks(account, run.marks) if moved else None,
            position_after=(position.quantity if position is not None else ZERO) if perp else None,
            mmr_before=run.mmr_before, mmr_after=mmr, reason=reason))
        run.mmr_before, run.marks = mmr, dict(account.marks)

    def _pay_backstop_fee(self, notional: Decimal) -> Decimal:
        fee = backstop_fee(self.account, notional, self.profile.liquidation.fee_rate)
        if fee:
            self.account.debit(self.settle_asset, fee)
            self.send(LIQUIDATOR, FundFlow(self.account.id, self.settle_asset, fee, "liquidation fee"))
        return fee

    def _settle_liquidation(self) -> None:
        """Nothing left to hand over: first repay borrows from what the account holds (and wait
        for the pool), then close."""
        run = self.liquidation
        assert run is not None
        run.settling = True
        for asset in list(self.account.borrows):
            if self._repay_from_available(asset, kind=Asked.LIQUIDATION):
                run.outstanding += 1
        if not run.outstanding:
            self._close_liquidation()

    def _close_liquidation(self) -> None:
        """Cover the USDC, move residual equity to the fund, report how it ended."""
        account = self.account
        run = self.liquidation
        assert run is not None
        self.liquidation = None
        mmr_before = totals(account).mmr
        if settlement_shortfall(account):
            short = settlement_shortfall(account)
            account.cover_from_fund(short)
            self.emit("fund_cover", quantity=short, unsettled_equity=account.unsettled_equity)
            self.send(LIQUIDATOR, FundFlow(account.id, self.settle_asset, -short, "covered a shortfall"))
        t = totals(account)
        if (t.net_equity > 0 and self.profile.liquidation.backstop_residual_to_fund and not account.positions
                and not account.borrows):
            moved = []
            for asset, bal in account.balances.items():
                if bal.available > 0:
                    self.send(LIQUIDATOR, FundFlow(account.id, asset, bal.available, "residual equity"))
                    moved.append(f"{fmt(bal.available)} {asset}")
                    bal.available = ZERO
            if moved:
                run.steps.append(LiquidationStep(
                    time_ms=self.now_ms, stage="fund", mmr_before=mmr_before, mmr_after=ZERO,
                    reason="residual equity after the backstop goes to the liquidity fund: " + ", ".join(moved)))
        if account.positions or account.borrows:
            outcome = Outcome.STEPPED
            if account.borrows and not account.positions:
                if may_write_off(account):
                    outcome = Outcome.BANKRUPTCY
                elif not self.waiting_for_liquidity:
                    self.waiting_for_liquidity = True
                    mmr = totals(account).mmr
                    run.steps.append(LiquidationStep(time_ms=self.now_ms, stage="waiting", mmr_before=mmr, mmr_after=mmr,
                                                     reason=waiting_reason(account)))
        else:
            outcome = Outcome.BANKRUPTCY if account.unsettled_equity < 0 else Outcome.CLOSED
        if outcome is not Outcome.STEPPED:
            account.liquidating = self.waiting_for_liquidity = False
            self.emit("liquidation_ended", outcome=outcome, unsettled_equity=account.unsettled_equity)
        reason = "nothing left to liquidate"
        if outcome is Outcome.BANKRUPTCY and account.unsettled_equity < 0:
            reason += (f"; the liquidity fund covered the shortfall, so the account owes it "
                       f"{fmt(-account.unsettled_equity)} {self.settle_asset} (repaid from later deposits)")
        if outcome is Outcome.BANKRUPTCY and account.borrows:
            reason += "; written off, its lenders paid by the fund: " + ", ".join(
                f"{fmt(q)} {a}" for a, q in sorted(account.borrows.items()))
        self.send(LIQUIDATOR, LiquidationReport(run.loop, outcome, totals(account).mmr, reason, tuple(run.steps),
                                                net_equity=totals(account).net_equity))
        self.settle()
