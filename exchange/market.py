"""The market machine: one order book, the authority on what trades and on perp positions.

It matches what sub-accounts send, tells both sides of every trade, pays funding at each
interval's end from the positions its own fills built, carries out backstop and ADL transfers
at its mark, and answers depth requests from the liquidator. It hears its mark (perps) and its
base asset's index from the feed.
"""

from __future__ import annotations

from decimal import Decimal

from exchange.book import OrderBook
from exchange.decimals import ZERO
from exchange.funding import FundingClock, funding_payments
from exchange.liquidation import capped_fee
from exchange.machine import Machine
from exchange.orders import Fill, MatchResult, Origin, Rejection, Side
from exchange.protocol import (
    FEED,
    CancelAllOnBook,
    CancelOnBook,
    CancelRefused,
    Depth,
    DepthRequest,
    FillNotice,
    FundingNotice,
    PositionTransfer,
    PriceSnapshot,
    PriceUpdate,
    SubmitOrder,
    SubmitRefused,
    Subscribe,
    Tick,
    TransferDone,
    UpdateNotice,
    account_address,
    market_address,
)


class MarketMachine(Machine):
    handlers = {
        SubmitOrder: "on_submit",
        CancelOnBook: "on_cancel",
        CancelAllOnBook: "on_cancel_all",
        PriceUpdate: "on_price",
        PriceSnapshot: "on_snapshot",
        Tick: "on_tick",
        PositionTransfer: "on_transfer",
        DepthRequest: "on_depth",
    }

    def __init__(self, book: OrderBook) -> None:
        super().__init__(market_address(book.symbol))
        self.book = book
        self.market = book.market
        self.funding = FundingClock(book.market) if book.market.is_perp else None
        self.index: Decimal | None = None
        self.mark: Decimal | None = None
        self._top: tuple[object, object] | None = None
        self._backstop_seq = 0

    def subscribe(self) -> None:
        symbols = (self.market.symbol, self.market.base) if self.market.is_perp else (self.market.base,)
        self.send(FEED, Subscribe(symbols))

    # -- prices -----------------------------------------------------------------------------
    def on_price(self, sender: str, message: PriceUpdate) -> None:
        self._prices(message.prices)

    def on_snapshot(self, sender: str, message: PriceSnapshot) -> None:
        self._prices(tuple(message.prices.items()))

    def _prices(self, prices: tuple[tuple[str, Decimal], ...]) -> None:
        for symbol, price in prices:
            if symbol == self.market.base:
                self.index = price
            if symbol == self.market.symbol or not self.market.is_perp:
                self.mark = price
        self.book.set_prices(mark=self.mark, index=self.index)
        if self.funding is not None and self.mark is not None and self.index is not None:
            self.funding.observe(self.now_ms, self.mark, self.index)

    # -- orders -----------------------------------------------------------------------------
    def on_submit(self, sender: str, message: SubmitOrder) -> None:
        match = self.book.submit(message.order)
        if match.rejection is not None:
            self.send(sender, SubmitRefused(message.order, match.rejection))
            return
        self._publish(match)

    def _publish(self, match: MatchResult) -> None:
        fills = match.fills
        # Each side's position right after each trade (perps), walked back from the book's: what a
        # reduce-only or liquidation order did to a position, in the market's own order.
        after: list[tuple[Decimal | None, Decimal | None]] = []
        if self.market.is_perp:
            held = dict(self.book.positions)
            for i in range(len(fills) - 2, -1, -2):
                maker, taker = fills[i], fills[i + 1]
                after.append((held.get(maker.account, ZERO), held.get(taker.account, ZERO)))
                for fill in (maker, taker):
                    held[fill.account] = held.get(fill.account, ZERO) - fill.quantity * fill.side.sign
            after.reverse()
        for i in range(0, len(fills), 2):
            maker, taker = fills[i], fills[i + 1]
            maker_position, taker_position = after[i // 2] if after else (None, None)
            self.emit("trade", trade_id=maker.trade_id, price=maker.price, quantity=maker.quantity,
                          taker_side=taker.side, maker=maker.account, taker=taker.account,
                          taker_origin=taker.origin, maker_order=maker.order_id, taker_order=taker.order_id,
                          maker_position=maker_position, taker_position=taker_position)
        for fill in fills:
            self.send(account_address(fill.account), FillNotice(fill, self.market))
        for update in match.updates:
            self.send(account_address(update.account), UpdateNotice(update))
        self._log_top()

    def _log_top(self) -> None:
        top = (self.book.best_bid(), self.book.best_ask())
        if top != self._top:
            self._top = top
            bid, ask = top
            self.emit("book_top", bid=bid[0] if bid else None, bid_quantity=bid[1] if bid else None,
                          ask=ask[0] if ask else None, ask_quantity=ask[1] if ask else None)

    def on_cancel(self, sender: str, message: CancelOnBook) -> None:
        result = self.book.cancel(message.order_id, message.account)
        if isinstance(result, Rejection):
            self.send(sender, CancelRefused(message.order_id, result))
            return
        self.send(sender, UpdateNotice(result))
        self._log_top()

    def on_cancel_all(self, sender: str, message: CancelAllOnBook) -> None:
        for update in self.book.cancel_all(message.account):
            self.send(sender, UpdateNotice(update))
        self._log_top()

    # -- funding ----------------------------------------------------------------------------
    def on_tick(self, sender: str, message: Tick) -> None:
        if message.kind != "funding" or self.funding is None:
            return
        rate = self.funding.close_interval(message.time_ms)
        self.emit("funding_rate", rate=rate, mark=self.mark)
        if self.mark is None or not rate:
            return
        step = self.book.profile.assets[self.market.quote].step
        positions = self.book.positions
        payments = funding_payments(rate, positions, self.mark, step)
        if payments:
            self.emit("funding", rate=rate, mark=self.mark,
                          payments={a: (positions.get(a), amount) for a, amount in payments.items()})
        for account, amount in payments.items():
            self.send(account_address(account), FundingNotice(self.market.symbol, rate, amount))

    # -- liquidation ------------------------------------------------------------------------
    def on_transfer(self, sender: str, message: PositionTransfer) -> None:
        """Close part of a liquidated position with a backstop provider or an ADL counterparty
        at this market's mark, off the book (not on the public tape)."""
        positions = self.book.positions
        held = positions.get(message.account, ZERO)
        other = positions.get(message.counterparty, ZERO)
        quantity = min(message.quantity, abs(held))
        if message.kind == "adl":
            quantity = min(quantity, abs(other) if other * held < 0 else ZERO)
        price = self.mark
        fee = ZERO
        if quantity > 0 and price is not None:
            quote = self.market.quote
            step = self.book.profile.assets[quote].step
            fee = capped_fee(quantity * price, self.book.profile.liquidation.fee_rate, step, message.fee_cap)
            closing = Side.ASK if held > 0 else Side.BID
            origin = Origin.BACKSTOP_LIQUIDITY_PROVIDER if message.kind == "backstop" else Origin.ADL_AUTOCLOSE
            self._backstop_seq += 1
            order_id = f"{message.kind}-{self.market.symbol}-{self._backstop_seq}"
            fills = (
                Fill(trade_id=0, market=self.market.symbol, order_id=order_id, account=message.account, side=closing,
                     price=price, quantity=quantity, quote_quantity=quantity * price, fee=ZERO, fee_asset=quote,
                     is_maker=False, origin=origin, liquidation_fee=fee),
                Fill(trade_id=0, market=self.market.symbol, order_id=order_id, account=message.counterparty,
                     side=closing.opposite, price=price, quantity=quantity, quote_quantity=quantity * price, fee=ZERO,
                     fee_asset=quote, is_maker=False, origin=origin),
            )
            if fee:
                self.book.liquidation_fees[quote] = self.book.liquidation_fees.get(quote, ZERO) + fee
            updates = []
            for fill in fills:
                updates.extend(self.book.apply_position_change(fill.account, fill.quantity * fill.side.sign))
                self.send(account_address(fill.account), FillNotice(fill, self.market))
            for update in updates:
                self.send(account_address(update.account), UpdateNotice(update))
            self.emit("position_transfer", kind=message.kind, account=message.account,
                          counterparty=message.counterparty, quantity=quantity, price=price, fee=fee)
        signed = quantity if held > 0 else -quantity
        self.send(sender, TransferDone(message.kind, self.market.symbol, message.account, message.counterparty,
                                       signed, price if price is not None else ZERO, fee, message.adl_score))

    def on_depth(self, sender: str, message: DepthRequest) -> None:
        bids, asks = self.book.depth(message.levels)
        self.send(sender, Depth(self.market.symbol, tuple(bids), tuple(asks)))
