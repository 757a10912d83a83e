"""The WebSocket API at ``/ws``: the venue's streams, built from the log as it grows.

Clients send ``{"method": "SUBSCRIBE" | "UNSUBSCRIBE", "params": [streams], "signature":
[api key, signature, timestamp, window]}`` (the signature only for ``account.*`` streams; it
signs ``instruction=subscribe&timestamp=..&window=..``). Every message out is ``{"stream",
"data"}`` with the venue's short keys and microsecond timestamps on the venue's clock.

``publish`` runs after every move of the venue (a request, the pacing task): it reads the
events logged since the last call and turns them into stream messages; a depth stream sends
the levels that changed since its last message, with ``U``/``u`` on the same sequence as REST
``lastUpdateId``. A connection whose client does not keep up (``BUFFER`` messages behind) is
closed rather than let grow without bound. A stream the server does not produce yet (for
example ``account.rfqUpdate``) is accepted and stays silent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import trio
from starlette.websockets import WebSocket, WebSocketDisconnect

from api import auth
from api.app import wall_ms
from api.routes import KLINE_SECONDS, candles, ticker_row
from api.session import SYSTEM_ORDER_TYPE, Session, money
from exchange import margin
from exchange.decimals import ZERO

if TYPE_CHECKING:
    from api.app import Gateway

BUFFER = 10_000
PUBLIC_KINDS = ("trade", "depth", "ticker", "bookTicker", "kline")
PRIVATE_KINDS = ("account.orderUpdate", "account.positionUpdate", "account.balanceUpdate", "account.rfqUpdate")
BALANCE_EVENTS = {"fill", "deposit", "withdrawal", "lend", "redeem", "borrow", "repay", "interest", "funding_payment",
                  "pnl_realized", "fund_cover", "order_placed", "order_closed", "transfer_in", "transfer_out",
                  "backstop_sale", "backstop_purchase", "backstop_delivery", "backstop_bought", "backstop_sold",
                  "lend_written_off", "borrow_written_off"}
CLOSED_EVENT = {"Cancelled": "orderCancelled", "Expired": "orderExpired", "Filled": "orderUpdate"}


class Connection:
    def __init__(self, sender: trio.MemorySendChannel[str]) -> None:
        self.sender = sender
        self.streams: set[str] = set()
        self.account: str | None = None
        self.closed = False

    def send(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            self.sender.send_nowait(json.dumps(message))
        except trio.WouldBlock:
            self.closed = True  # too far behind: its writer ends the connection
            self.sender.close()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self.closed = True


class Streams:
    """The connections and what each listens to; fed from the session's log."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.session: Session = gateway.session
        self.connections: list[Connection] = []
        self._fresh: list[dict[str, Any]] = []  # events logged since the last publish
        self.session.view.listeners.append(self._fresh.append)
        self.session.listeners.append(self.publish)  # each time the venue is quiet and time waits
        self._books: dict[str, tuple[dict[Decimal, Decimal], dict[Decimal, Decimal], int]] = {}
        self._tops: dict[str, tuple[Any, Any]] = {}

    # -- the WebSocket endpoint --------------------------------------------------------------
    async def endpoint(self, websocket: WebSocket) -> None:
        await websocket.accept()
        send, receive = trio.open_memory_channel[str](BUFFER)
        connection = Connection(send)
        self.connections.append(connection)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, websocket, receive, nursery.cancel_scope)
                while True:
                    try:
                        text = await websocket.receive_text()
                    except (WebSocketDisconnect, RuntimeError):
                        break
                    self._on_message(connection, text)
                nursery.cancel_scope.cancel()
        finally:
            connection.closed = True
            self.connections.remove(connection)

    async def _writer(self, websocket: WebSocket, receive: trio.MemoryReceiveChannel[str],
                      scope: trio.CancelScope) -> None:
        try:
            async for text in receive:
                await websocket.send_text(text)
            await websocket.close(code=1008, reason="the client fell too far behind the stream")
        except (WebSocketDisconnect, RuntimeError, trio.BrokenResourceError, OSError):
            pass
        scope.cancel()

    def close(self) -> None:
        for connection in self.connections:
            connection.closed = True
            connection.sender.close()

    def _on_message(self, connection: Connection, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            connection.send(_error(4000, "the message is not JSON"))
            return
        if not isinstance(message, dict):
            connection.send(_error(4000, "a message is a JSON object with method and params"))
            return
        method = message.get("method")
        params = message.get("params")
        if method in ("PING", "ping"):
            connection.send({"id": message.get("id"), "result": "PONG"})
            return
        if method not in ("SUBSCRIBE", "UNSUBSCRIBE") or not isinstance(params, list) or not all(
                isinstance(p, str) for p in params):
            connection.send(_error(4000, "expected {\"method\": \"SUBSCRIBE\" or \"UNSUBSCRIBE\", "
                                         "\"params\": [stream names]}"))
            return
        if method == "UNSUBSCRIBE":
            connection.streams.difference_update(params)
            return
        private = [p for p in params if p.startswith("account.")]
        if private:
            account = self._authenticate(message.get("signature"))
            if isinstance(account, str) and account.startswith("!"):
                connection.send(_error(4006, account[1:]))
                return
            connection.account = account
        for name in params:
            problem = self._check_stream(name)
            if problem is not None:
                connection.send(_error(4005, problem))
                continue
            if name.startswith("depth.") and not any(name in c.streams for c in self.connections):
                self._books.pop(name[6:], None)
                self._depth_delta(name[6:])  # the deltas start from the book as it is now
            connection.streams.add(name)

    def _authenticate(self, signature: Any) -> str:
        """The sub-account a signed subscription speaks for, or ``"!reason"``."""
        if not (isinstance(signature, list) and len(signature) == 4 and all(isinstance(s, str) for s in signature)):
            return "!private streams need \"signature\": [api key, signature, timestamp, window]"
        api_key, signed, timestamp, window = signature
        key = self.gateway.verify_keys.get(api_key)
        if key is None:
            return "!unknown API key"
        try:
            timestamp, window = auth.check_window(timestamp, window, wall_ms())
            auth.verify(key, signed, "subscribe", {}, timestamp, window)
        except auth.AuthError as exc:
            return f"!{exc}"
        return self.gateway.keys[api_key]

    def _check_stream(self, name: str) -> str | None:
        markets = self.session.profile.markets
        if name.startswith("account."):
            base = ".".join(name.split(".")[:2])
            symbol = name[len(base) + 1:] if len(name) > len(base) else None
            if base not in PRIVATE_KINDS:
                return f"no stream {name!r}; private streams are {', '.join(PRIVATE_KINDS)}"
            if symbol and symbol not in markets:
                return f"no market {symbol!r} for {base}"
            return None
        kind, _, rest = name.partition(".")
        symbol = rest.split(".")[-1]
        if kind not in PUBLIC_KINDS or symbol not in markets:
            return f"no stream {name!r}; public streams are <kind>.<market> with kind in {', '.join(PUBLIC_KINDS)}"
        if kind == "kline" and rest.split(".")[0] not in KLINE_SECONDS:
            return f"no stream {name!r}; kline.<interval>.<market> with interval in {', '.join(KLINE_SECONDS)}"
        return None

    # -- what goes out -----------------------------------------------------------------------
    def publish(self) -> None:
        """Stream what was logged since the last call."""
        fresh, self._fresh[:] = list(self._fresh), []
        if not self.connections:
            self._books.clear()
            self._tops.clear()
            return
        wanted = set().union(*(c.streams for c in self.connections))
        balances: list[str] = []
        for event in fresh:
            for stream, data, account in self._messages(event, wanted):
                self._fan_out(stream, data, account)
            actor = event["actor"]
            if actor.startswith("account:") and event["event"] in BALANCE_EVENTS and actor[8:] not in balances:
                balances.append(actor[8:])
        if "account.balanceUpdate" in wanted:
            for account in balances:
                for data in self._balances(account):
                    self._fan_out("account.balanceUpdate", data, account)
        for symbol in self.session.profile.markets:
            if f"depth.{symbol}" in wanted:
                delta = self._depth_delta(symbol)
                if delta is not None:
                    self._fan_out(f"depth.{symbol}", delta, None)
            if f"bookTicker.{symbol}" in wanted:
                top = self._book_ticker(symbol)
                if top is not None:
                    self._fan_out(f"bookTicker.{symbol}", top, None)

    def _fan_out(self, stream: str, data: dict[str, Any], account: str | None) -> None:
        base = stream
        for connection in self.connections:
            if account is not None and connection.account != account:
                continue
            if base in connection.streams:
                connection.send({"stream": base, "data": data})
            elif account is not None and "s" in data and f"{base}.{data['s']}" in connection.streams:
                connection.send({"stream": f"{base}.{data['s']}", "data": data})

    def _us(self, virtual_ms: int) -> int:
        return self.session.venue_ms(virtual_ms) * 1000

    def _messages(self, event: dict[str, Any], wanted: set[str]) -> Iterable[tuple[str, dict[str, Any], str | None]]:
        kind, actor = event["event"], event["actor"]
        if actor.startswith("market:") and kind == "trade":
            symbol = actor[7:]
            when = self._us(event["t"])
            if f"trade.{symbol}" in wanted:
                yield f"trade.{symbol}", {"e": "trade", "E": when, "T": when, "s": symbol, "p": money(event["price"]),
                                          "q": money(event["quantity"]), "t": event["trade_id"],
                                          "m": str(event["taker_side"]) == "Ask"}, None
            if f"ticker.{symbol}" in wanted:
                yield f"ticker.{symbol}", self._ticker(symbol, when), None
            for interval, seconds in KLINE_SECONDS.items():
                if f"kline.{interval}.{symbol}" in wanted:
                    yield f"kline.{interval}.{symbol}", self._kline(symbol, seconds * 1000, event), None
        elif actor.startswith("account:"):
            account = actor[8:]
            if kind in ("order_placed", "fill", "order_closed"):
                update = self._order_update(account, kind, event)
                if update is not None:
                    yield "account.orderUpdate", update, account
            if kind == "fill" and self.session.profile.markets[event["market"]].is_perp:
                yield "account.positionUpdate", self._position_update(account, event), account

    def _ticker(self, symbol: str, when: int) -> dict[str, Any]:
        row = ticker_row(self.session, symbol)
        return {"e": "ticker", "E": when, "s": symbol, "o": row["firstPrice"], "c": row["lastPrice"], "h": row["high"],
                "l": row["low"], "v": row["volume"], "V": row["quoteVolume"], "n": int(row["trades"])}

    def _kline(self, symbol: str, width_ms: int, event: dict[str, Any]) -> dict[str, Any]:
        """The candle the trade falls in, as it stands after it (not closed: ``X`` false)."""
        slot = self.session.venue_ms(event["t"]) // width_ms * width_ms
        c = candles(self.session, symbol, width_ms, slot, slot + width_ms)[slot]
        return {"e": "kline", "E": self._us(event["t"]), "s": symbol, "t": _iso(slot), "T": _iso(slot + width_ms),
                "o": money(c["open"]), "c": money(c["close"]), "h": money(c["high"]), "l": money(c["low"]),
                "v": money(c["volume"]), "n": c["trades"], "X": False}

    def _order_update(self, account: str, kind: str, event: dict[str, Any]) -> dict[str, Any] | None:
        record = self.session.view.accounts[account].orders.get(event["order_id"])
        if record is None:
            return None
        flags = record.flags
        data: dict[str, Any] = {
            "E": self._us(event["t"]), "s": record.market, "i": record.order_id, "c": flags.get("clientId"),
            "S": record.side, "o": record.order_type.upper(), "f": flags.get("timeInForce", "GTC"),
            "q": money(record.quantity), "p": money(record.price), "z": money(record.executed),
            "Z": money(record.executed_quote), "V": flags.get("selfTradePrevention", "RejectTaker"),
            "O": record.origin, "r": record.reduce_only, "T": self._us(event["t"]),
        }
        system = SYSTEM_ORDER_TYPE.get(record.origin)
        if system is not None:
            data["systemOrderType"] = system
        if kind == "order_placed":
            data |= {"e": "orderAccepted", "X": "New"}
        elif kind == "fill":
            data |= {"e": "orderFill", "X": "PartiallyFilled" if record.status == "PartiallyFilled" else record.status,
                     "l": money(event["quantity"]), "L": money(event["price"]), "m": bool(event["maker"]),
                     "n": money(event["fee"]), "N": event["fee_asset"]}
        else:
            status = str(event["status"])
            data |= {"e": CLOSED_EVENT.get(status, "orderUpdate"), "X": status}
            if event.get("reason") is not None:
                data["R"] = str(event["reason"])
        return data

    def _position_update(self, account: str, event: dict[str, Any]) -> dict[str, Any]:
        a = self.session.account(account)
        symbol = event["market"]
        after = event["position"]
        before = after - event["quantity"] * (1 if str(event["side"]) == "Bid" else -1)
        position = a.positions.get(symbol)
        risk = next((r for r in margin.exposures(a) if r.symbol == symbol), None)
        mark = a.price(symbol)
        name = "positionOpened" if not before else "positionClosed" if not after else "positionAdjusted"
        estimate = margin.estimate_liquidation_price(a, symbol) if after else None
        return {
            "e": name, "E": self._us(event["t"]), "s": symbol, "i": f"{account}:{symbol}", "q": money(after),
            "Q": money(risk.net_exposure_quantity if risk else abs(after)),
            "n": money(risk.exposure_notional if risk else abs(after) * mark),
            "b": money(position.entry_price if position else ZERO),
            "B": money(position.break_even_price if position else None), "M": money(mark),
            "P": money(position.unrealized_pnl(mark) if position else ZERO),
            "p": money(position.realized_pnl if position else ZERO),
            "l": money(estimate.price if estimate else None),
            "f": money(risk.imf if risk else None), "m": money(risk.mmf if risk else None),
        }

    def _balances(self, account: str) -> Iterable[dict[str, Any]]:
        a = self.session.account(account)
        when = self._us(self.session.now_ms)
        for asset, balance in a.balances.items():
            yield {"e": "balanceUpdate", "E": when, "a": asset, "A": money(balance.available),
                   "L": money(balance.locked), "S": "0"}

    def _depth_delta(self, symbol: str) -> dict[str, Any] | None:
        update_id = self.session.view.markets[symbol].update_id
        bids, asks = self.session.venue.markets[symbol].book.depth(1000)
        now_bids, now_asks = dict(bids), dict(asks)
        last_bids, last_asks, last_id = self._books.get(symbol, ({}, {}, update_id))
        self._books[symbol] = (now_bids, now_asks, update_id)
        if update_id == last_id:
            return None
        changed_bids = _changes(last_bids, now_bids)
        changed_asks = _changes(last_asks, now_asks)
        when = self._us(self.session.now_ms)
        return {"e": "depth", "E": when, "T": when, "s": symbol, "U": last_id + 1, "u": update_id,
                "b": changed_bids, "a": changed_asks}

    def _book_ticker(self, symbol: str) -> dict[str, Any] | None:
        book = self.session.venue.markets[symbol].book
        top = (book.best_bid(), book.best_ask())
        if self._tops.get(symbol) == top:
            return None
        self._tops[symbol] = top
        bid, ask = top
        when = self._us(self.session.now_ms)
        return {"e": "bookTicker", "E": when, "T": when, "s": symbol, "u": self.session.view.markets[symbol].update_id,
                "b": money(bid[0]) if bid else None, "B": money(bid[1]) if bid else None,
                "a": money(ask[0]) if ask else None, "A": money(ask[1]) if ask else None}


def _changes(before: dict[Decimal, Decimal], after: dict[Decimal, Decimal]) -> list[list[str | None]]:
    out = [[money(p), money(q)] for p, q in after.items() if before.get(p) != q]
    out += [[money(p), "0"] for p in before if p not in after]
    return out


def _iso(unix_ms: int) -> str:
    return datetime.fromtimestamp(unix_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _error(code: int, message: str) -> dict[str, Any]:
    return {"id": None, "error": {"code": code, "message": message}}
