"""The venue's REST routes over a ``Session``: parameters in, the venue's JSON shapes out.

Each private route is a function ``(session, account, params) -> JSON`` that a live request and
a replayed one both call, so a replay runs exactly the code the client ran. A route that calls
the venue is a generator: each ``yield from session.place(...)`` (cancel, loan, ...) is a
message to the sub-account, and it resumes with the replies once the instant has settled. Parameters arrive
as the client sent them (query strings, or JSON with numbers kept as their text) and are read
here with clear errors; every venue rule (the pre-trade check, the borrow and withdrawal
limits, the margin summary, the liquidation price estimate) is the core's, called as is.
Refusals keep the core's message, numbers included, under the venue's error code.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Generator, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import attrs

from api.session import FILL_TYPES, SYSTEM_ORDER_TYPE, OrderRecord, Session, Steps, money
from exchange import margin
from exchange.decimals import ZERO
from exchange.ledger import Position, SubAccount
from exchange.limits import max_borrow_quantity, max_withdrawal_quantity
from exchange.orders import (
    Order,
    OrderStatus,
    OrderType,
    Rejection,
    SelfTradePrevention,
    Side,
    TimeInForce,
)
from exchange.pretrade import max_order_quantity
from exchange.profile import HaircutFunction, Market, SqrtFunction

Json = Any
Params = Mapping[str, Any]
MAX_BATCH = 50  # orders in one POST /api/v1/orders


class ApiError(Exception):
    """A refused request: HTTP status, the venue's error code, a sentence with the numbers."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.logged = False  # the venue's answer, already in the log after its request
        super().__init__(message)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "INVALID_CLIENT_REQUEST", message)


def refused(rejection: Rejection) -> ApiError:
    return ApiError(400, rejection.code.value, rejection.message)


# ---------------------------------------------------------------------------------------
# Reading parameters


class Reader:
    """Typed access to one request's parameters, each failure naming the field and what is allowed."""

    def __init__(self, params: Params, allowed: tuple[str, ...]) -> None:
        self.params = params
        unknown = [k for k in params if k not in allowed]
        if unknown:
            raise bad_request(f"unknown parameter {unknown[0]!r}; this request takes: {', '.join(allowed) or 'none'}")
        for key, value in params.items():
            if isinstance(value, (dict, list)):
                raise bad_request(f"{key}: nested objects and arrays are not accepted, found {value!r}")

    def text(self, key: str, *, required: bool = False) -> str | None:
        value = self.params.get(key)
        if value is None:
            if required:
                raise bad_request(f"missing required parameter {key!r}")
            return None
        if isinstance(value, bool) or not isinstance(value, str):
            raise bad_request(f"{key} must be a string, found {value!r}")
        return value

    def choice(self, key: str, options: tuple[str, ...], *, required: bool = False) -> str | None:
        value = self.text(key, required=required)
        if value is not None and value not in options:
            raise bad_request(f"{key} must be one of {', '.join(options)}, found {value!r}")
        return value

    def decimal(self, key: str, *, required: bool = False, positive: bool = False) -> Decimal | None:
        value = self.params.get(key)
        if value is None:
            if required:
                raise bad_request(f"missing required parameter {key!r}")
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise bad_request(f"{key} must be a decimal string, found {value!r}")
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            raise bad_request(f"{key} must be a decimal string, found {value!r}") from None
        if not number.is_finite() or (positive and number <= 0):
            raise bad_request(f"{key} must be a {'positive ' if positive else ''}finite decimal, found {value!r}")
        return number

    def integer(self, key: str, *, minimum: int = 0, maximum: int = 2**63) -> int | None:
        value = self.params.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).lstrip("-").isdigit():
            raise bad_request(f"{key} must be a whole number, found {value!r}")
        number = int(value)
        if not minimum <= number <= maximum:
            raise bad_request(f"{key} must be between {minimum} and {maximum}, found {number}")
        return number

    def boolean(self, key: str) -> bool | None:
        value = self.params.get(key)
        if value is None:
            return None
        if isinstance(value, bool):
            return value
        if value in ("true", "false"):
            return value == "true"
        raise bad_request(f"{key} must be true or false, found {value!r}")


def _market(session: Session, symbol: str | None, *, perp_only: bool = False) -> Market:
    market = session.profile.markets.get(symbol or "")
    if market is None or (perp_only and not market.is_perp):
        kinds = "perp market" if perp_only else "market"
        known = ", ".join(m.symbol for m in session.profile.markets.values() if m.is_perp or not perp_only)
        raise ApiError(400, "INVALID_SYMBOL", f"no {kinds} {symbol!r}; this venue has {known}")
    return market


def _asset(session: Session, symbol: str | None) -> str:
    if symbol is None or symbol not in session.profile.assets:
        raise ApiError(400, "INVALID_SYMBOL", f"no asset {symbol!r}; this venue has {', '.join(session.profile.assets)}")
    return symbol


def _limit(r: Reader, default: int, maximum: int) -> int:
    value = r.integer("limit", minimum=1, maximum=maximum)
    return default if value is None else value


def iso(session: Session, virtual_ms: int) -> str:
    """The venue's ISO timestamp (UTC, milliseconds, no zone suffix) of a virtual instant."""
    moment = datetime.fromtimestamp(session.venue_ms(virtual_ms) / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


# ---------------------------------------------------------------------------------------
# Public shapes


def _sqrt_function(fn: SqrtFunction | None) -> Json:
    if fn is None:
        return None
    return {"type": "sqrt", "base": money(fn.base), "factor": money(fn.factor)}


def _haircut(fn: HaircutFunction) -> Json:
    kind: Json = {"type": "identity"}
    if fn.kind == "inverseSqrt":
        kind = {"type": "inverseSqrt", "base": money(fn.base), "positiveCurvePenalty": money(fn.positive_curve_penalty)}
    return {"weight": money(fn.weight), "kind": kind}


def market_json(session: Session, market: Market) -> Json:
    bands = market.bands
    price: dict[str, Any] = {
        "minPrice": money(bands.min_price), "maxPrice": money(bands.max_price), "tickSize": money(market.tick_size),
        "minMultiplier": money(bands.min_multiplier), "maxMultiplier": money(bands.max_multiplier),
        "minImpactMultiplier": money(bands.min_impact_multiplier),
        "maxImpactMultiplier": money(bands.max_impact_multiplier),
    }
    if bands.mean_mark_min_multiplier is not None:
        price["meanMarkPriceBand"] = {"minMultiplier": money(bands.mean_mark_min_multiplier),
                                      "maxMultiplier": money(bands.mean_mark_max_multiplier)}
    if bands.mean_premium_tolerance is not None:
        price["meanPremiumBand"] = {"tolerancePct": money(bands.mean_premium_tolerance)}
    out = {
        "symbol": market.symbol, "baseSymbol": market.base, "quoteSymbol": market.quote,
        "marketType": market.kind, "orderBookState": "Open", "visible": True,
        "createdAt": iso(session, 0),
        "filters": {"price": price, "quantity": {"minQuantity": money(market.min_quantity),
                                                 "maxQuantity": money(market.max_quantity),
                                                 "stepSize": money(market.step_size)}},
        "imfFunction": _sqrt_function(market.imf), "mmfFunction": _sqrt_function(market.mmf),
        "fundingInterval": market.funding_interval_ms if market.is_perp else None,
        "fundingRateUpperBound": money(market.funding_upper_bound_bps) if market.is_perp else None,
        "fundingRateLowerBound": money(market.funding_lower_bound_bps) if market.is_perp else None,
        "openInterestLimit": money(market.open_interest_limit),
        "positionLimitWeight": money(market.position_limit_weight) if market.is_perp else None,
    }
    return out


def assets(session: Session, params: Params) -> Json:
    Reader(params, ())
    return [{"symbol": a, "displayName": a, "tokens": []} for a in session.profile.assets]


def markets(session: Session, params: Params) -> Json:
    wanted = params.get("marketType")
    kinds = set(wanted if isinstance(wanted, list) else [wanted]) if wanted is not None else None
    return [market_json(session, m) for m in session.profile.markets.values() if kinds is None or m.kind in kinds]


def market(session: Session, params: Params) -> Json:
    r = Reader(params, ("symbol",))
    return market_json(session, _market(session, r.text("symbol", required=True)))


def collateral(session: Session, params: Params) -> Json:
    Reader(params, ("symbol",))
    return [{"symbol": a.symbol, "imfFunction": _sqrt_function(a.borrow_imf), "mmfFunction": _sqrt_function(a.borrow_mmf),
             "haircutFunction": _haircut(a.haircut)} for a in session.profile.assets.values()]


def ticker_row(session: Session, symbol: str) -> Json:
    """Over the last 24 hours of virtual time, from the market's trades."""
    since = session.now_ms - 86_400_000
    trades = [t for t in session.view.markets[symbol].trades if t["t"] >= since]
    book = session.venue.markets[symbol].book
    last = book.last_trade_price
    if not trades:
        return {"symbol": symbol, "firstPrice": money(last), "lastPrice": money(last), "high": money(last),
                "low": money(last), "priceChange": "0", "priceChangePercent": "0", "volume": "0",
                "quoteVolume": "0", "trades": "0"}
    first = trades[0]["price"]
    prices = [t["price"] for t in trades]
    change = prices[-1] - first
    return {"symbol": symbol, "firstPrice": money(first), "lastPrice": money(prices[-1]), "high": money(max(prices)),
            "low": money(min(prices)), "priceChange": money(change), "priceChangePercent": money(change / first),
            "volume": money(sum((t["quantity"] for t in trades), ZERO)),
            "quoteVolume": money(sum((t["quantity"] * t["price"] for t in trades), ZERO)), "trades": str(len(trades))}


def ticker(session: Session, params: Params) -> Json:
    r = Reader(params, ("symbol", "interval"))
    r.choice("interval", ("1d", "1w"))
    return ticker_row(session, _market(session, r.text("symbol", required=True)).symbol)


def tickers(session: Session, params: Params) -> Json:
    r = Reader(params, ("interval",))
    r.choice("interval", ("1d", "1w"))
    return [ticker_row(session, s) for s in session.profile.markets]


def depth_json(session: Session, symbol: str, levels: int = 1000) -> Json:
    bids, asks = session.venue.markets[symbol].book.depth(levels)
    return {"asks": [[money(p), money(q)] for p, q in asks], "bids": [[money(p), money(q)] for p, q in reversed(bids)],
            "lastUpdateId": str(session.view.markets[symbol].update_id), "timestamp": session.venue_ms() * 1000}


def depth(session: Session, params: Params) -> Json:
    r = Reader(params, ("symbol", "limit"))
    symbol = _market(session, r.text("symbol", required=True)).symbol
    return depth_json(session, symbol, _limit(r, 1000, 1000))


def public_trade(session: Session, event: Json) -> Json:
    return {"id": event["trade_id"], "price": money(event["price"]), "quantity": money(event["quantity"]),
            "quoteQuantity": money(event["price"] * event["quantity"]), "timestamp": session.venue_ms(event["t"]),
            "isBuyerMaker": str(event["taker_side"]) == "Ask"}


def trades(session: Session, params: Params) -> Json:
    r = Reader(params, ("symbol", "limit", "offset"))
    symbol = _market(session, r.text("symbol", required=True)).symbol
    limit = _limit(r, 100, 1000)
    offset = r.integer("offset") or 0
    rows = session.view.markets[symbol].trades
    chosen = rows[max(len(rows) - offset - limit, 0): len(rows) - offset]
    return [public_trade(session, t) for t in chosen]


KLINE_SECONDS = {"1m": 60, "3m": 180, "5m": 300, "15m": 900, "30m": 1800, "1h": 3600, "2h": 7200, "4h": 14400,
                 "6h": 21600, "8h": 28800, "12h": 43200, "1d": 86400, "3d": 259200, "1w": 604800}


def candles(session: Session, symbol: str, width_ms: int, start_ms: int | None = None,
            end_ms: int | None = None) -> dict[int, dict[str, Any]]:
    """The market's trades as candles of ``width_ms`` on the venue's clock, by start (Unix ms)."""
    out: dict[int, dict[str, Any]] = {}
    for t in session.view.markets[symbol].trades:
        venue_ms = session.venue_ms(t["t"])
        if start_ms is not None and venue_ms < start_ms or end_ms is not None and venue_ms >= end_ms:
            continue
        slot = venue_ms // width_ms * width_ms
        c = out.get(slot)
        price, quantity = t["price"], t["quantity"]
        if c is None:
            out[slot] = {"open": price, "high": price, "low": price, "close": price, "volume": quantity,
                         "quoteVolume": price * quantity, "trades": 1}
        else:
            c["high"] = max(c["high"], price)
            c["low"] = min(c["low"], price)
            c["close"] = price
            c["volume"] += quantity
            c["quoteVolume"] += price * quantity
            c["trades"] += 1
    return out


def klines(session: Session, params: Params) -> Json:
    r = Reader(params, ("symbol", "interval", "startTime", "endTime", "priceType"))
    symbol = _market(session, r.text("symbol", required=True)).symbol
    interval = r.choice("interval", tuple(KLINE_SECONDS), required=True)
    assert interval is not None
    r.choice("priceType", ("Last",))
    width = KLINE_SECONDS[interval] * 1000
    start, end = r.integer("startTime"), r.integer("endTime")
    rows = candles(session, symbol, width, None if start is None else start * 1000, None if end is None else end * 1000)
    out = []
    for slot, c in rows.items():
        row = {"start": _iso_ms(slot), "end": _iso_ms(slot + width)}
        row |= {k: money(v) if isinstance(v, Decimal) else str(v) for k, v in c.items()}
        out.append(row)
    return out


def _iso_ms(unix_ms: int) -> str:
    return datetime.fromtimestamp(unix_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _mark_row(session: Session, symbol: str) -> Json:
    machine = session.venue.markets[symbol]
    clock = machine.funding
    # The estimate integrates the premium up to now; on a copy, so that reading it never moves
    # the market's own running sum (a read must not change a later funding rate's last digit).
    return {"symbol": symbol, "markPrice": money(machine.mark), "indexPrice": money(machine.index),
            "fundingRate": money(copy.copy(clock).estimate(session.now_ms)) if clock is not None else None,
            "nextFundingTimestamp": session.venue_ms(clock.next_funding_ms) if clock is not None else None}


def mark_prices(session: Session, params: Params) -> Json:
    r = Reader(params, ("symbol",))
    symbol = r.text("symbol")
    if symbol is not None:
        return [_mark_row(session, _market(session, symbol).symbol)]
    return [_mark_row(session, m.symbol) for m in session.profile.markets.values() if m.is_perp]


def funding_rates(session: Session, params: Params) -> Json:
    r = Reader(params, ("symbol", "limit", "offset"))
    symbol = _market(session, r.text("symbol", required=True), perp_only=True).symbol
    rows = list(reversed(session.view.markets[symbol].funding_rates))
    offset = r.integer("offset") or 0
    return [{"symbol": symbol, "intervalEndTimestamp": iso(session, e["t"]), "fundingRate": money(e["rate"])}
            for e in rows[offset: offset + _limit(r, 100, 1000)]]


def open_interest(session: Session, params: Params) -> Json:
    r = Reader(params, ("symbol",))
    symbol = r.text("symbol")
    chosen = [_market(session, symbol, perp_only=True)] if symbol is not None else session.profile.perp_markets()
    out = []
    for m in chosen:
        held = session.venue.markets[m.symbol].book.positions
        out.append({"symbol": m.symbol, "openInterest": money(sum((q for q in held.values() if q > 0), ZERO)),
                    "timestamp": session.venue_ms()})
    return out


def status(session: Session, params: Params) -> Json:
    return {"status": "Ok", "message": None}


PUBLIC: dict[str, Callable[[Session, Params], Json]] = {
    "/api/v1/assets": assets, "/api/v1/markets": markets, "/api/v1/market": market,
    "/api/v1/securities": lambda session, params: [], "/api/v1/collateral": collateral,
    "/api/v1/ticker": ticker, "/api/v1/tickers": tickers, "/api/v1/depth": depth, "/api/v1/trades": trades,
    "/api/v1/trades/history": trades, "/api/v1/klines": klines, "/api/v1/markPrices": mark_prices,
    "/api/v1/fundingRates": funding_rates, "/api/v1/openInterest": open_interest, "/api/v1/status": status,
}


# ---------------------------------------------------------------------------------------
# Orders


ORDER_FIELDS = ("symbol", "side", "orderType", "quantity", "price", "quoteQuantity", "timeInForce", "postOnly",
                "reduceOnly", "selfTradePrevention", "clientId", "autoBorrow", "autoBorrowRepay", "autoLend",
                "autoLendRedeem", "brokerId")
UNSERVED_ORDER_FIELDS = ("triggerPrice", "triggerQuantity", "triggerBy", "takeProfitTriggerPrice",
                         "takeProfitLimitPrice", "stopLossTriggerPrice", "stopLossLimitPrice", "takeProfitTriggerBy",
                         "stopLossTriggerBy", "slippageTolerance", "slippageToleranceType")


def read_order(session: Session, account: str, params: Params) -> Order:
    """A client's order request as the core's ``Order`` (shape errors are the core's to find)."""
    for key in UNSERVED_ORDER_FIELDS:
        if params.get(key) is not None:
            raise ApiError(400, "INVALID_ORDER", f"{key}: conditional, take-profit/stop-loss and slippage orders "
                           "are not simulated by marginsim yet")
    r = Reader(params, ORDER_FIELDS + UNSERVED_ORDER_FIELDS)
    spec = _market(session, r.text("symbol", required=True))
    side = Side(r.choice("side", ("Bid", "Ask"), required=True))
    order_type = OrderType(r.choice("orderType", ("Limit", "Market"), required=True))
    tif = r.choice("timeInForce", ("GTC", "IOC", "FOK"))
    stp = r.choice("selfTradePrevention", ("RejectTaker", "RejectMaker", "RejectBoth"))
    client_id = r.integer("clientId", maximum=2**32 - 1)
    r.integer("brokerId")
    flags = {name: bool(r.boolean(key)) for name, key in (
        ("post_only", "postOnly"), ("reduce_only", "reduceOnly"), ("auto_borrow", "autoBorrow"),
        ("auto_borrow_repay", "autoBorrowRepay"), ("auto_lend", "autoLend"), ("auto_lend_redeem", "autoLendRedeem"))}
    quantity, price, quote = r.decimal("quantity"), r.decimal("price"), r.decimal("quoteQuantity")
    return Order(
        session.next_order_id(), account, spec.symbol, side, order_type, quantity, price, quote_quantity=quote,
        time_in_force=TimeInForce(tif or "GTC"), self_trade_prevention=SelfTradePrevention(stp or "RejectTaker"),
        client_id=client_id, **flags,
    )


def order_json(session: Session, record: OrderRecord) -> Json:
    flags = record.flags
    return {
        "id": record.order_id, "clientId": flags.get("clientId"), "symbol": record.market, "side": record.side,
        "orderType": record.order_type, "timeInForce": flags.get("timeInForce", "GTC"),
        "price": money(record.price), "quantity": money(record.quantity), "quoteQuantity": money(record.quote_quantity),
        "executedQuantity": money(record.executed), "executedQuoteQuantity": money(record.executed_quote),
        "status": record.status, "expiryReason": record.reason, "postOnly": bool(flags.get("postOnly", False)),
        "reduceOnly": record.reduce_only, "selfTradePrevention": flags.get("selfTradePrevention", "RejectTaker"),
        "autoBorrow": flags.get("autoBorrow"), "autoBorrowRepay": flags.get("autoBorrowRepay"),
        "autoLend": flags.get("autoLend"), "autoLendRedeem": flags.get("autoLendRedeem"),
        "triggerPrice": None, "triggerQuantity": None, "origin": record.origin,
        "systemOrderType": SYSTEM_ORDER_TYPE.get(record.origin),
        "createdAt": session.venue_ms(record.created_ms),
    }


def _flags_of(order: Order) -> dict[str, Any]:
    return {"clientId": order.client_id, "timeInForce": order.time_in_force.value, "postOnly": order.post_only,
            "selfTradePrevention": order.self_trade_prevention.value, "autoBorrow": order.auto_borrow,
            "autoBorrowRepay": order.auto_borrow_repay, "autoLend": order.auto_lend,
            "autoLendRedeem": order.auto_lend_redeem}


def place(session: Session, account: str, params: Params) -> Steps:
    order = read_order(session, account, params)
    outcome = yield from session.place(order)
    if outcome.rejection is not None:
        raise refused(outcome.rejection)
    view = session.view.accounts[account]
    record = view.orders[order.order_id]
    record.flags = _flags_of(order)
    if order.client_id is not None:
        view.client_ids[order.client_id] = order.order_id
    return order_json(session, record)


def place_batch(session: Session, account: str, batch: list[Params]) -> Steps:
    """Each order on its own, in the request's order: a refused one answers its error in place."""
    if not batch or len(batch) > MAX_BATCH:
        raise bad_request(f"a batch holds 1 to {MAX_BATCH} orders, found {len(batch)}")
    out = []
    for params in batch:
        try:
            out.append((yield from place(session, account, params)))
        except ApiError as error:
            out.append({"code": error.code, "message": str(error)})
    return out


def _find(session: Session, account: str, r: Reader) -> OrderRecord:
    """The account's order by ``orderId`` or ``clientId``: another account's is not found, the same as none."""
    view = session.view.accounts[account]
    order_id = r.text("orderId")
    client_id = r.integer("clientId", maximum=2**32 - 1)
    if order_id is None and client_id is not None:
        order_id = view.client_ids.get(client_id)
    elif order_id is None:
        raise bad_request("give orderId or clientId")
    record = view.orders.get(order_id or "")
    symbol = r.text("symbol")
    if record is None or symbol is not None and record.market != symbol:
        raise ApiError(404, "RESOURCE_NOT_FOUND", f"no order {order_id or client_id} of this account"
                       + (f" in {symbol}" if symbol else ""))
    return record


def open_order(session: Session, account: str, params: Params) -> Json:
    r = Reader(params, ("orderId", "clientId", "symbol"))
    record = _find(session, account, r)
    if OrderStatus(record.status).is_final:
        raise ApiError(404, "RESOURCE_NOT_FOUND", f"order {record.order_id} is {record.status}, no longer open")
    return order_json(session, record)


def cancel(session: Session, account: str, params: Params) -> Steps:
    r = Reader(params, ("orderId", "clientId", "symbol"))
    _market(session, r.text("symbol", required=True))
    record = _find(session, account, r)
    if OrderStatus(record.status).is_final:
        raise ApiError(400, "INVALID_ORDER", f"order {record.order_id} is already {record.status}")
    result = yield from session.cancel(account, record.market, record.order_id)
    if isinstance(result, Rejection):
        raise refused(result)
    return order_json(session, record)


def cancel_all(session: Session, account: str, params: Params) -> Steps:
    r = Reader(params, ("symbol", "orderType"))
    symbol = _market(session, r.text("symbol", required=True)).symbol
    if r.choice("orderType", ("RestingLimitOrder", "ConditionalOrder")) == "ConditionalOrder":
        return []
    updates = yield from session.cancel_all(account, symbol)
    view = session.view.accounts[account]
    return [order_json(session, view.orders[u.order_id]) for u in updates if u.order_id in view.orders]


def open_orders(session: Session, account: str, params: Params) -> Json:
    r = Reader(params, ("symbol", "marketType"))
    symbol = r.text("symbol")
    if symbol is not None:
        _market(session, symbol)
    kind = r.choice("marketType", ("SPOT", "PERP"))
    view = session.view.accounts[account]
    out = []
    for order_id in session.account(account).open_orders:
        record = view.orders.get(order_id)
        if record is None or symbol is not None and record.market != symbol:
            continue
        if kind is not None and session.profile.markets[record.market].kind != kind:
            continue
        out.append(order_json(session, record))
    return out


def order_history(session: Session, account: str, params: Params) -> Json:
    r = Reader(params, ("orderId", "symbol", "limit", "offset", "marketType", "from", "to", "strategyId"))
    order_id, symbol = r.text("orderId"), r.text("symbol")
    r.choice("marketType", ("SPOT", "PERP"))
    rows = [o for o in reversed(session.view.accounts[account].orders.values())
            if (order_id is None or o.order_id == order_id) and (symbol is None or o.market == symbol)]
    offset = r.integer("offset") or 0
    return [order_json(session, o) for o in rows[offset: offset + _limit(r, 100, 1000)]]


# ---------------------------------------------------------------------------------------
# Balances, margin, positions


def capital(session: Session, account: str, params: Params) -> Json:
    Reader(params, ())
    a = session.account(account)
    out = {}
    for asset, balance in a.balances.items():
        out[asset] = {"available": money(balance.available), "locked": money(balance.locked),
                      "staked": "0", "lent": money(a.lends.get(asset, ZERO)), "borrowed": money(a.borrows.get(asset, ZERO))}
    return out


def collateral_summary(session: Session, account: str, params: Params) -> Json:
    Reader(params, ())
    s = margin.summarize(session.account(account))
    return {
        "assetsValue": money(s.assets_value), "liabilitiesValue": money(s.liabilities_value),
        "borrowLiability": money(s.borrow_liability), "pnlUnrealized": money(s.pnl_unrealized),
        "unsettledEquity": money(s.unsettled_equity), "netEquity": money(s.net_equity),
        "netEquityLocked": money(s.net_equity_locked), "netEquityAvailable": money(s.net_equity_available),
        "mmf": money(s.mmf), "imf": money(s.imf), "marginFraction": money(s.margin_fraction),
        "netExposureFutures": money(sum((r.exposure_notional for r in s.exposures if r.kind == "perp"), ZERO)),
        "maintenanceRequirement": money(s.maintenance_requirement), "imr": money(s.imr), "mmr": money(s.mmr),
        "collateral": [{
            "symbol": c.symbol, "assetMarkPrice": money(c.asset_mark_price), "totalQuantity": money(c.total_quantity),
            "balanceNotional": money(c.balance_notional), "collateralWeight": money(c.collateral_weight),
            "collateralValue": money(c.collateral_value), "openOrderQuantity": money(c.open_order_quantity),
            "lendQuantity": money(c.lend_quantity), "availableQuantity": money(c.available_quantity)}
            for c in s.collateral],
    }


def _risks(account: SubAccount) -> dict[str, margin.ExposureRisk]:
    return {r.symbol: r for r in margin.exposures(account)}


def position_json(session: Session, account: SubAccount, position: Position, risk: margin.ExposureRisk | None) -> Json:
    market = session.profile.markets[position.market]
    mark = account.price(position.market)
    estimate = margin.estimate_liquidation_price(account, position.market)
    return {
        "positionId": f"{account.id}:{position.market}", "subaccountId": account.id, "userId": account.owner,
        "symbol": position.market, "netQuantity": money(position.quantity), "netCost": money(position.net_cost),
        "entryPrice": money(position.entry_price), "breakEvenPrice": money(position.break_even_price),
        "markPrice": money(mark), "pnlRealized": money(position.realized_pnl),
        "pnlUnrealized": money(position.unrealized_pnl(mark)),
        "cumulativeFundingPayment": money(position.cumulative_funding), "cumulativeInterest": "0",
        "netExposureQuantity": money(risk.net_exposure_quantity if risk else abs(position.quantity)),
        "netExposureNotional": money(risk.exposure_notional if risk else abs(position.quantity) * mark),
        "imf": money(risk.imf if risk else None), "mmf": money(risk.mmf if risk else None),
        "imfFunction": _sqrt_function(market.imf), "mmfFunction": _sqrt_function(market.mmf),
        "estLiquidationPrice": money(estimate.price),
    }


def positions(session: Session, account: str, params: Params) -> Json:
    r = Reader(params, ("symbol", "marketType"))
    symbol = r.text("symbol")
    a = session.account(account)
    risks = _risks(a)
    return [position_json(session, a, p, risks.get(s)) for s, p in a.positions.items()
            if p.quantity and (symbol is None or s == symbol)]


# ---------------------------------------------------------------------------------------
# Borrowing and lending, settings, limits


def borrow_lend(session: Session, account: str, params: Params) -> Steps:
    r = Reader(params, ("symbol", "side", "quantity"))
    asset = _asset(session, r.text("symbol", required=True))
    side = r.choice("side", ("Borrow", "Lend"), required=True)
    quantity = r.decimal("quantity", required=True, positive=True)
    assert quantity is not None and side is not None
    a = session.account(account)
    # The venue's one call for four pool actions: "Borrow" against an open lend of the asset
    # redeems it, "Lend" against an open borrow repays it; otherwise they borrow and lend.
    opposite = a.lends.get(asset, ZERO) if side == "Borrow" else a.borrows.get(asset, ZERO)
    action = {"Borrow": ("redeem", "borrow"), "Lend": ("repay", "lend")}[side][0 if opposite else 1]
    if opposite and quantity > opposite:
        raise ApiError(400, "INVALID_QUANTITY", f"{side} {quantity} {asset} would {action} the open "
                       f"{'lend' if side == 'Borrow' else 'borrow'} of {opposite} and go past it: {action} at most "
                       f"{opposite} first, then {side.lower()} the rest")
    result = yield from session.loan(account, action, asset, quantity)
    if isinstance(result, Rejection):
        raise refused(result)
    return {"symbol": asset, "side": side, "quantity": money(result.quantity), "action": action}


def borrow_lend_positions(session: Session, account: str, params: Params) -> Json:
    Reader(params, ())
    a = session.account(account)
    risks = _risks(a)
    out = []
    for asset in dict.fromkeys([*a.lends, *a.borrows]):
        net = a.lends.get(asset, ZERO) - a.borrows.get(asset, ZERO)
        if not net:
            continue
        spec = session.profile.assets[asset]
        risk = risks.get(asset)
        out.append({
            "id": f"{account}:{asset}", "symbol": asset, "netQuantity": money(net), "markPrice": money(a.price(asset)),
            "netExposureQuantity": money(abs(net)), "netExposureNotional": money(abs(net) * a.price(asset)),
            "imf": money(risk.imf if risk else ZERO), "mmf": money(risk.mmf if risk else ZERO),
            "imfFunction": _sqrt_function(spec.borrow_imf), "mmfFunction": _sqrt_function(spec.borrow_mmf),
            "cumulativeInterest": money(sum((e["borrow_interest"] + e["lend_interest"]
                                             for e in session.view.accounts[account].interest if e["asset"] == asset),
                                            ZERO)),
            "estLiquidationPrice": None,
        })
    return out


def account_json(session: Session, account: str) -> Json:
    a = session.account(account)
    s = a.settings
    perp = next((m for m in session.profile.markets.values() if m.is_perp), None)
    spot = next((m for m in session.profile.markets.values() if not m.is_perp), None)
    bps = Decimal(10_000)
    return {
        "autoBorrowSettlements": s.auto_borrow_settlements, "autoLend": s.auto_lend, "autoRepayBorrows": s.auto_repay_borrows,
        "autoRealizePnl": bool(session.profile.realize_interval_ms), "leverageLimit": money(s.leverage_limit),
        "liquidating": a.liquidating, "limitOrders": len(a.open_orders), "triggerOrders": 0,
        "futuresMakerFee": money(perp.maker_fee * bps) if perp else None,
        "futuresTakerFee": money(perp.taker_fee * bps) if perp else None,
        "spotMakerFee": money(spot.maker_fee * bps) if spot else None,
        "spotTakerFee": money(spot.taker_fee * bps) if spot else None,
    }


def get_account(session: Session, account: str, params: Params) -> Json:
    Reader(params, ())
    return account_json(session, account)


def update_account(session: Session, account: str, params: Params) -> Steps:
    r = Reader(params, ("leverageLimit", "autoLend", "autoBorrowSettlements", "autoRepayBorrows"))
    limit = r.decimal("leverageLimit", positive=True)
    changes = {"leverage_limit": limit, "auto_lend": r.boolean("autoLend"),
               "auto_borrow_settlements": r.boolean("autoBorrowSettlements"),
               "auto_repay_borrows": r.boolean("autoRepayBorrows")}
    if limit is not None and not Decimal(1) <= limit <= session.profile.max_leverage_limit:
        raise ApiError(400, "INVALID_CLIENT_REQUEST",
                       f"leverageLimit must be between 1 and {session.profile.max_leverage_limit}, found {limit}")
    result = yield from session.update_settings(account, **{k: v for k, v in changes.items() if v is not None})
    if isinstance(result, Rejection):
        raise refused(result)
    return account_json(session, account)


def limit_order(session: Session, account: str, params: Params) -> Json:
    r = Reader(params, ("symbol", "side", "price", "reduceOnly", "autoBorrow", "autoBorrowRepay", "autoLendRedeem"))
    spec = _market(session, r.text("symbol", required=True))
    side = Side(r.choice("side", ("Bid", "Ask"), required=True))
    price = r.decimal("price", positive=True)
    template = Order("max-quantity", account, spec.symbol, side, OrderType.LIMIT if price else OrderType.MARKET, ZERO,
                     price, reduce_only=bool(r.boolean("reduceOnly")), auto_borrow=bool(r.boolean("autoBorrow")),
                     auto_borrow_repay=bool(r.boolean("autoBorrowRepay")),
                     auto_lend_redeem=bool(r.boolean("autoLendRedeem")))
    largest = max_order_quantity(session.account(account), spec.symbol, side, price, template)
    return {"maxOrderQuantity": money(largest), "symbol": spec.symbol, "side": side.value}


def limit_borrow(session: Session, account: str, params: Params) -> Json:
    r = Reader(params, ("symbol",))
    asset = _asset(session, r.text("symbol", required=True))
    return {"maxBorrowQuantity": money(max_borrow_quantity(session.account(account), asset)), "symbol": asset}


def limit_withdrawal(session: Session, account: str, params: Params) -> Json:
    r = Reader(params, ("symbol", "autoBorrow", "autoLendRedeem"))
    asset = _asset(session, r.text("symbol", required=True))
    r.boolean("autoLendRedeem")
    largest = max_withdrawal_quantity(session.account(account), asset, auto_borrow=bool(r.boolean("autoBorrow")))
    return {"maxWithdrawalQuantity": money(largest), "symbol": asset}


def withdraw(session: Session, account: str, params: Params) -> Steps:
    """A withdrawal under the core's rule (available equity stays >= 0); the chain is not simulated."""
    r = Reader(params, ("symbol", "quantity", "address", "blockchain", "clientId", "twoFactorToken", "autoBorrow",
                        "autoLendRedeem"))
    asset = _asset(session, r.text("symbol", required=True))
    quantity = r.decimal("quantity", required=True, positive=True)
    address, chain = r.text("address", required=True), r.text("blockchain", required=True)
    client_id = r.integer("clientId", maximum=2**32 - 1)
    r.text("twoFactorToken")
    r.boolean("autoLendRedeem")
    assert quantity is not None
    result = yield from session.withdraw(account, asset, quantity, auto_borrow=bool(r.boolean("autoBorrow")))
    if isinstance(result, Rejection):
        raise refused(result)
    event = session.view.accounts[account].transfers[-1]
    return {"id": str(event["seq"]), "symbol": asset, "quantity": money(quantity), "fee": "0", "address": address,
            "blockchain": chain, "clientId": client_id, "status": "confirmed", "createdAt": iso(session, event["t"])}


def _transfers(session: Session, account: str, params: Params, kind: str) -> Json:
    r = Reader(params, ("limit", "offset", "from", "to", "excludePlatform"))
    r.boolean("excludePlatform")
    rows = [e for e in reversed(session.view.accounts[account].transfers) if e["event"] == kind]
    return [{"id": str(e["seq"]), "symbol": e["asset"], "quantity": money(e["quantity"]), "fee": "0",
             "status": "confirmed", "createdAt": iso(session, e["t"])} for e in _page(r, _window(session, r, rows))]


def deposits(session: Session, account: str, params: Params) -> Json:
    return _transfers(session, account, params, "deposit")


def withdrawals(session: Session, account: str, params: Params) -> Json:
    return _transfers(session, account, params, "withdrawal")


# ---------------------------------------------------------------------------------------
# History


def _page(r: Reader, rows: list[Any]) -> list[Any]:
    offset = r.integer("offset") or 0
    return rows[offset: offset + _limit(r, 100, 1000)]


def _window(session: Session, r: Reader, rows: list[Json]) -> list[Json]:
    start, end = r.integer("from"), r.integer("to")
    return [e for e in rows if (start is None or session.venue_ms(e["t"]) >= start)
            and (end is None or session.venue_ms(e["t"]) <= end)]


def fill_json(session: Session, event: Json) -> Json:
    origin = str(event["origin"])
    return {
        "tradeId": event["fill_id"], "orderId": event["order_id"], "symbol": event["market"],
        "side": str(event["side"]), "price": money(event["price"]), "quantity": money(event["quantity"]),
        "fee": money(event["fee"]), "feeSymbol": event["fee_asset"], "isMaker": bool(event["maker"]),
        "systemOrderType": SYSTEM_ORDER_TYPE.get(origin),
        "liquidationFee": money(event["liquidation_fee"]), "timestamp": iso(session, event["t"]),
        "clientId": None,
    }


def fill_history(session: Session, account: str, params: Params) -> Json:
    r = Reader(params, ("symbol", "limit", "offset", "from", "to", "fillType", "marketType", "orderId", "strategyId"))
    symbol, order_id = r.text("symbol"), r.text("orderId")
    fill_type = r.choice("fillType", tuple(FILL_TYPES))
    r.choice("marketType", ("SPOT", "PERP"))
    origins = FILL_TYPES[fill_type] if fill_type is not None else None
    rows = [e for e in reversed(session.view.accounts[account].fills)
            if (symbol is None or e["market"] == symbol) and (order_id is None or e["order_id"] == order_id)
            and (origins is None or str(e["origin"]) in origins)]
    return [fill_json(session, e) for e in _page(r, _window(session, r, rows))]


def funding_history(session: Session, account: str, params: Params) -> Json:
    r = Reader(params, ("symbol", "limit", "offset"))
    symbol = r.text("symbol")
    rows = [e for e in reversed(session.view.accounts[account].funding) if symbol is None or e["market"] == symbol]
    return [{"symbol": e["market"], "fundingRate": money(e["rate"]), "quantity": money(e["amount"]),
             "intervalEndTimestamp": iso(session, e["t"]), "subaccountId": account, "userId": account}
            for e in _page(r, rows)]


def interest_history(session: Session, account: str, params: Params) -> Json:
    r = Reader(params, ("symbol", "asset", "limit", "offset", "source", "positionId"))
    symbol = r.text("asset") or r.text("symbol")
    out = []
    for e in reversed(session.view.accounts[account].interest):
        if symbol is not None and e["asset"] != symbol:
            continue
        for kind, amount, rate in (("Borrow", -e["borrow_interest"], e["borrow_rate"]),
                                   ("Lend", e["lend_interest"], e["lend_rate"])):
            if amount:
                out.append({"paymentType": kind, "symbol": e["asset"], "quantity": money(amount),
                            "interestRate": money(rate), "interval": session.profile.interest_interval_ms,
                            "timestamp": iso(session, e["t"]), "positionId": f"{account}:{e['asset']}"})
    return _page(r, out)


def loan_history(session: Session, account: str, params: Params) -> Json:
    r = Reader(params, ("symbol", "limit", "offset", "type", "sources", "positionId"))
    symbol = r.text("symbol")
    sides = {"borrow": "Borrow", "redeem": "Borrow", "lend": "Lend", "repay": "Lend"}
    return [{"eventType": e["event"].capitalize(), "side": sides[e["event"]], "symbol": e["asset"],
             "quantity": money(e["quantity"]), "entryFee": money(e.get("entry_fee")), "timestamp": iso(session, e["t"]),
             "positionId": f"{account}:{e['asset']}"}
            for e in _page(r, [e for e in reversed(session.view.accounts[account].loans)
                               if symbol is None or e["asset"] == symbol])]


def settlement_history(session: Session, account: str, params: Params) -> Json:
    r = Reader(params, ("limit", "offset", "source"))
    settle = session.profile.settlement_asset
    out = []
    for e in reversed(session.view.accounts[account].settlements):
        if e["event"] == "pnl_realized":
            out.append({"source": "RealizePnl", "symbol": e["market"], "quantity": money(e["amount"]),
                        "asset": settle, "timestamp": iso(session, e["t"])})
        else:
            out.append({"source": "BackstopLiquidityFundProceeds", "symbol": None, "quantity": money(e["quantity"]),
                        "asset": settle, "timestamp": iso(session, e["t"])})
    return _page(r, out)


@attrs.frozen
class Private:
    instruction: str
    handler: Callable[[Session, str, Any], Json | Steps]
    changes: bool = False  # a request that can change the venue (logged and replayed)


PRIVATE: dict[tuple[str, str], Private] = {
    ("GET", "/api/v1/capital"): Private("balanceQuery", capital),
    ("GET", "/api/v1/capital/collateral"): Private("collateralQuery", collateral_summary),
    ("POST", "/api/v1/order"): Private("orderExecute", place, True),
    ("DELETE", "/api/v1/order"): Private("orderCancel", cancel, True),
    ("GET", "/api/v1/order"): Private("orderQuery", open_order),
    ("POST", "/api/v1/orders"): Private("orderExecute", place_batch, True),
    ("DELETE", "/api/v1/orders"): Private("orderCancelAll", cancel_all, True),
    ("GET", "/api/v1/orders"): Private("orderQueryAll", open_orders),
    ("GET", "/api/v1/position"): Private("positionQuery", positions),
    ("POST", "/api/v1/borrowLend"): Private("borrowLendExecute", borrow_lend, True),
    ("GET", "/api/v1/borrowLend/positions"): Private("borrowLendPositionQuery", borrow_lend_positions),
    ("GET", "/api/v1/account"): Private("accountQuery", get_account),
    ("PATCH", "/api/v1/account"): Private("accountUpdate", update_account, True),
    ("GET", "/api/v1/account/limits/order"): Private("maxOrderQuantity", limit_order),
    ("GET", "/api/v1/account/limits/borrow"): Private("maxBorrowQuantity", limit_borrow),
    ("GET", "/api/v1/account/limits/withdrawal"): Private("maxWithdrawalQuantity", limit_withdrawal),
    ("POST", "/wapi/v1/capital/withdrawals"): Private("withdraw", withdraw, True),
    ("GET", "/wapi/v1/capital/withdrawals"): Private("withdrawalQueryAll", withdrawals),
    ("GET", "/wapi/v1/capital/deposits"): Private("depositQueryAll", deposits),
    ("GET", "/wapi/v1/history/fills"): Private("fillHistoryQueryAll", fill_history),
    ("GET", "/wapi/v1/history/orders"): Private("orderHistoryQueryAll", order_history),
    ("GET", "/wapi/v1/history/funding"): Private("fundingHistoryQueryAll", funding_history),
    ("GET", "/wapi/v1/history/interest"): Private("interestHistoryQueryAll", interest_history),
    ("GET", "/wapi/v1/history/borrowLend"): Private("borrowHistoryQueryAll", loan_history),
    ("GET", "/wapi/v1/history/settlement"): Private("settlementHistoryQueryAll", settlement_history),
}


def _common(account: str, path: str, params: Params) -> tuple[dict[str, Any], str]:
    """The venue's parameters common to many private routes: ``subaccountId`` (a key speaks for
    its own sub-account only: any other is not found) and ``sortDirection`` of a history."""
    rest = dict(params)
    target = rest.pop("subaccountId", None)
    if target is not None and str(target) != account:
        raise ApiError(404, "RESOURCE_NOT_FOUND", f"no sub-account {target} for this key")
    direction = rest.pop("sortDirection", None) if path.startswith("/wapi/v1/history/") else None
    if direction is not None and direction not in ("Asc", "Desc"):
        raise bad_request(f"sortDirection must be Asc or Desc, found {direction!r}")
    return rest, direction or "Desc"


def dispatch(session: Session, account: str | None, method: str, path: str, params: Any) -> Steps:
    """One request at the venue: logged at its instant, then answered, asking the venue on the
    way where the route does (a live and a replayed request both come through here, at the
    instant the scheduler injects them, so both logs get the same events)."""
    session.log_request(account, method, path, params)
    try:
        if account is None:
            return PUBLIC[path](session, params)
        if isinstance(params, dict):
            params, direction = _common(account, path, params)
        result = PRIVATE[(method, path)].handler(session, account, params)
        if isinstance(result, Generator):
            result = yield from result
        if isinstance(params, dict) and direction == "Asc" and isinstance(result, list):
            result.reverse()
        return result
    except ApiError as exc:
        session.log_refused(method, path, exc.status, exc.code, str(exc), stage="venue")
        exc.logged = True
        raise
