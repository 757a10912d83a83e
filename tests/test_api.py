"""marginsim serve driven by the clients users have, unmodified: ccxt (sync, async, pro) and
backpack-exchange-sdk, against a real server process on loopback.

One server serves the whole module (scenario below, 5 virtual seconds per real second). The
sub-account ``victim`` opens a 20x BTC long as soon as the server is up; BTC steps down to
90,500 at t=40 s of virtual time and the last test watches the liquidation through ccxt.
Every URL the clients use points at the server, so nothing here needs the internet.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import ccxt
import ccxt.async_support as ccxt_async
import ccxt.pro as ccxt_pro
import pytest
from backpack_exchange_sdk.authenticated import AuthenticationClient
from backpack_exchange_sdk.public import PublicClient
from nacl.signing import SigningKey

PERP = "BTC/USDC:USDC"
SDK_SEED = b"\x07" * 32  # the sdk sub-account's key is configured in the scenario, not generated
SDK_PUBLIC = base64.b64encode(bytes(SigningKey(SDK_SEED).verify_key)).decode()
RATE = 5
DROP_S = 60  # virtual seconds (12 s of real time): BTC steps from 100,000 to 90,500

SCENARIO = f"""
[scenario]
name = "api-test"
description = "A market maker on BTC, client sub-accounts with USDC, and a drop that liquidates a 20x long"
duration = 600
seed = 3

[prices.BTC]
kind = "steps"
points = [[0, 100000], [{DROP_S}, 90500]]

# From t=62 s the perp's mark is 0.1% over the index (a ramp from t=61 s), so funding (every 20 s here) is paid;
# interest accrues every 10 s.
[prices.BTC_USDC_PERP]
points = [[0, 0], [61, 0], [62, 0.001]]

[profile_overrides]
interest_interval = 10
markets = {{ BTC_USDC_PERP = {{ funding_interval = 20 }} }}

[[accounts]]
id = "maker"
deposits = {{ USDC = 10000000, BTC = 100 }}
leverage_limit = 20
markets = ["BTC_USDC_PERP", "BTC_USDC"]

[[accounts]]
id = "client"
deposits = {{ USDC = 20000, BTC = 1 }}
markets = ["BTC_USDC_PERP", "BTC_USDC"]

[[accounts]]
id = "victim"
deposits = {{ USDC = 10000 }}
leverage_limit = 20
markets = ["BTC_USDC_PERP"]

[[accounts]]
id = "other"
deposits = {{ USDC = 10000 }}

[[accounts]]
id = "borrower"
deposits = {{ USDC = 10000 }}

[[accounts]]
id = "sdk"
deposits = {{ USDC = 10000 }}
api_key = "{SDK_PUBLIC}"

[[market_makers]]
name = "mm"
account = "maker"
markets = ["BTC_USDC_PERP", "BTC_USDC"]
size = 0.5
spread_bps = 10
levels = 4
"""


class Server:
    def __init__(self, process: subprocess.Popen[str], http: str, ws: str, keys: dict[str, Any], log: Path) -> None:
        self.process = process
        self.http = http
        self.ws = ws
        self.keys = keys
        self.log = log

    def ccxt(self, account: str, module: Any = ccxt, **options: Any) -> Any:
        config: dict[str, Any] = {"urls": {"api": {"public": self.http, "private": self.http}},
                                  "apiKey": self.keys[account]["api_key"], "secret": self.keys[account]["secret"]}
        if module is ccxt_pro:
            config["urls"]["api"]["ws"] = {"public": self.ws, "private": self.ws}
        config["options"] = options
        return module.backpack(config)


def start_server(tmp: Path, *extra: str) -> Server:
    scenario = tmp / "api-test.toml"
    scenario.write_text(SCENARIO)
    keys, log = tmp / "keys.json", tmp / "events.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "scenarios.cli", "serve", str(scenario), "--port", "0", "--rate", str(RATE),
         "--keys", str(keys), "--log", str(log), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("serving http://127.0.0.1:"), (line, process.stderr.read() if process.stderr else "")
    _, http, ws = line.split()
    assert keys.stat().st_mode & 0o777 == 0o600  # secrets: readable by their owner only
    return Server(process, http, ws, json.loads(keys.read_text()), log)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    srv = start_server(tmp_path_factory.mktemp("serve"))
    # The victim opens its leveraged long at once, well before the drop at t=40 s.
    victim = srv.ccxt("victim")
    victim.load_markets()
    opened = victim.create_order(PERP, "market", "buy", 1)
    assert opened["status"] == "closed" and opened["filled"] == 1.0
    srv.victim_opened_ms = opened["timestamp"]
    yield srv
    if srv.process.poll() is None:
        srv.process.send_signal(signal.SIGINT)
        srv.process.communicate(timeout=30)


def venue_start_ms(srv: Server) -> int:
    """The venue clock at virtual time 0: the markets' ``createdAt`` (ISO, UTC)."""
    created = srv.ccxt("client").publicGetApiV1Markets()[0]["createdAt"]
    return ccxt.Exchange.parse8601(created + "Z")


def test_bad_configured_key_and_host_are_input_errors(tmp_path: Path) -> None:
    scenario = tmp_path / "bad.toml"
    scenario.write_text(SCENARIO.replace(SDK_PUBLIC, "bm90IGEga2V5"))
    cli = [sys.executable, "-m", "scenarios.cli", "serve", str(scenario), "--port", "0"]
    done = subprocess.run(cli, capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=60)
    assert done.returncode == 2
    assert "accounts[5].api_key" in done.stderr and "decodes to 9 bytes" in done.stderr
    done = subprocess.run([*cli[:-2], "--host", "0.0.0.0"], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent, timeout=60)
    assert done.returncode == 2 and "--public" in done.stderr


# ---------------------------------------------------------------------------------------
# Raw requests, signed here by the rule the clients follow (notes: instruction, sorted
# params, timestamp, window), to send what no client library would.


def raw(srv: Server, method: str, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None
        ) -> tuple[int, Any]:
    request = urllib.request.Request(srv.http + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def signed_headers(srv: Server, account: str, instruction: str, params: dict[str, Any], *,
                   timestamp: int | None = None, window: int = 5000, secret: str | None = None) -> dict[str, str]:
    ts = timestamp if timestamp is not None else time.time_ns() // 1_000_000
    pairs = "".join(f"&{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in sorted(params.items()))
    message = f"instruction={instruction}{pairs}&timestamp={ts}&window={window}"
    key = SigningKey(base64.b64decode(secret or srv.keys[account]["secret"]))
    signature = base64.b64encode(key.sign(message.encode()).signature).decode()
    return {"X-API-Key": srv.keys[account]["api_key"], "X-Signature": signature, "X-Timestamp": str(ts),
            "X-Window": str(window), "Content-Type": "application/json"}


# ---------------------------------------------------------------------------------------
# Public data


def test_markets_ticker_book_and_funding_through_ccxt(server: Server) -> None:
    ex = server.ccxt("client")
    markets = ex.load_markets()
    perp = markets[PERP]
    assert perp["precision"]["price"] == 0.1 and perp["precision"]["amount"] == 0.00001
    assert perp["info"]["imfFunction"] == {"type": "sqrt", "base": "0.01333333", "factor": "0.00002494"}
    assert perp["info"]["fundingInterval"] == 20_000
    assert markets["BTC/USDC"]["spot"]
    book = ex.fetch_order_book(PERP, limit=5)
    # The maker quotes 4 levels of 0.5 BTC, 5 bps apart from 10 bps around the mark of 100,000;
    # the victim's buy took the two best asks, which come back when the maker next refreshes.
    assert book["bids"][:2] == [[99950.0, 0.5], [99900.0, 0.5]]
    assert book["asks"][0] in ([100050.0, 0.5], [100150.0, 0.5])
    assert int(book["nonce"]) > 0 and abs(book["timestamp"] - time.time() * 1000) < 60_000
    ticker = ex.fetch_ticker(PERP)
    # The victim's opening buy of 1 BTC took the two best asks, 0.5 at 100,050 and 0.5 at 100,100.
    assert ticker["last"] == 100100.0
    funding = ex.fetch_funding_rate(PERP)
    assert funding["markPrice"] == 100000.0 and funding["indexPrice"] == 100000.0
    start = venue_start_ms(server)
    assert (funding["nextFundingTimestamp"] - start) % 20_000 == 0  # intervals end every 20 s of venue time
    assert ex.fetch_status()["status"] == "ok"
    # /api/v1/time is the wall clock, a bare number of ms, as the venue serves it (ccxt 4.5.90's
    # fetch_time reads index 0 of that number, so it is checked raw).
    assert abs(raw(server, "GET", "/api/v1/time")[1] - time.time() * 1000) < 60_000
    assert ex.publicGetApiV1Securities() == []
    assert [t["price"] for t in ex.fetch_trades(PERP)][:2] == [100050.0, 100100.0]
    # Candles are on the venue's clock, which runs RATE times faster than the wall: ask up to a
    # venue time (ccxt's default end is the wall clock's now, already in the venue's past).
    (candle,) = ex.fetch_ohlcv(PERP, "1d", params={"until": start + 86_400_000})[:1]  # [t, o, h, l, c, v]
    assert candle[1] == 100050.0 and candle[2] >= 100100.0 and candle[5] >= 1.0
    # ccxt files the venue's openInterest (base units) under openInterestValue.
    assert ex.fetch_open_interest(PERP)["openInterestValue"] >= 1.0  # the victim's long, at least
    status, haircuts = raw(server, "GET", "/api/v1/collateral")
    btc = next(row for row in haircuts if row["symbol"] == "BTC")
    assert status == 200 and btc["haircutFunction"]["kind"]["type"] in ("identity", "inverseSqrt")


# ---------------------------------------------------------------------------------------
# Orders, balances, margin


def test_limit_order_rests_is_listed_and_cancelled(server: Server) -> None:
    ex = server.ccxt("client")
    ex.load_markets()
    before = ex.fetch_balance()["USDC"]
    order = ex.create_order(PERP, "limit", "buy", 0.1, 95000, {"postOnly": True, "clientOrderId": 42})
    assert order["status"] == "open" and order["price"] == 95000.0 and order["postOnly"] is True
    assert order["clientOrderId"] == "42"
    listed = ex.fetch_open_orders(PERP)
    assert [o["id"] for o in listed] == [order["id"]]
    summary = ex.privateGetApiV1CapitalCollateral()
    # An open perp bid locks IMR without moving balances: 0.1 x mark 100,000 x IMF 0.05 (20x limit? no: default 10x)
    assert Decimal(summary["netEquityLocked"]) == Decimal("0.1") * 100000 * Decimal(summary["imf"])
    cancelled = ex.cancel_order(order["id"], PERP)
    assert cancelled["status"] == "canceled"
    assert ex.fetch_order(order["id"], PERP)["status"] == "canceled"  # ccxt reads the order history
    assert ex.fetch_open_orders(PERP) == []
    assert ex.fetch_balance()["USDC"]["free"] == before["free"]


def test_market_order_answers_its_state_after_matching(server: Server) -> None:
    ex = server.ccxt("client")
    ex.load_markets()
    order = ex.create_order("BTC/USDC", "market", "sell", 0.2)
    assert order["status"] == "closed" and order["filled"] == 0.2
    trades = ex.fetch_my_trades("BTC/USDC")
    assert trades[0]["order"] == order["id"] and trades[0]["takerOrMaker"] == "taker"
    assert trades[0]["fee"]["currency"] == "USDC" and trades[0]["timestamp"] is not None
    # The maker's best bid on spot is 99,950 (10 bps under 100,000) with 0.5 BTC.
    assert trades[0]["price"] == 99950.0


def test_refused_order_carries_the_cores_numbers_and_changes_nothing(server: Server) -> None:
    ex = server.ccxt("other")
    ex.load_markets()
    before = ex.privateGetApiV1CapitalCollateral()
    with pytest.raises(ccxt.InsufficientFunds) as refused:
        ex.create_order(PERP, "limit", "buy", 5, 99000)
    message = str(refused.value)
    assert "INSUFFICIENT_MARGIN" in message and "would take IMR from 0% to" in message
    # The largest bid that passes: 10,000 USDC at 10x over 99,000 x (1 + IMF headroom), from the core.
    limit = ex.privateGetApiV1AccountLimitsOrder({"symbol": "BTC_USDC_PERP", "side": "Bid", "price": "99000"})
    assert f"the largest Bid that passes is {limit['maxOrderQuantity']}" in message
    assert ex.privateGetApiV1CapitalCollateral() == before


def test_reduce_only_batch_and_cancel_all(server: Server) -> None:
    ex = server.ccxt("client")
    ex.load_markets()
    # Reduce-only with no position to reduce: the book expires it (spec 15), nothing fills.
    expired = ex.create_order(PERP, "market", "sell", 0.1, None, {"reduceOnly": True})
    assert expired["status"] == "canceled" and expired["filled"] == 0.0
    assert expired["info"]["expiryReason"] == "ReduceOnlyNotReduced"
    placed = ex.create_orders([
        {"symbol": PERP, "type": "limit", "side": "buy", "amount": 0.01, "price": 96000},
        {"symbol": PERP, "type": "limit", "side": "buy", "amount": 0.02, "price": 96100},
    ])
    assert [o["status"] for o in placed] == ["open", "open"]
    assert sorted(o["amount"] for o in ex.fetch_open_orders(PERP)) == [0.01, 0.02]
    cancelled = ex.cancel_all_orders(PERP)
    assert sorted(o["id"] for o in cancelled) == sorted(o["id"] for o in placed)
    assert ex.fetch_open_orders(PERP) == []


def test_positions_carry_the_liquidation_estimate(server: Server) -> None:
    ex = server.ccxt("victim")
    ex.load_markets()
    (position,) = ex.fetch_positions()
    assert position["side"] == "long" and float(position["contracts"]) == 1.0
    # Long 1 BTC at 100,075 (0.5 at 100,050, 0.5 at 100,100; taker fee 0.05% = 50.0375 paid
    # from 10,000 USDC): 9,949.9625 + P - 100,075 = P x 0.00666667, so
    # P = 90,125.0375 / 0.99333333 = 90,729.9035..., rounded up to a hundredth of the tick: 90,729.904.
    assert position["liquidationPrice"] == "90729.904"
    assert position["info"]["imf"] == "0.05" and position["info"]["mmf"] == "0.00666667"


def test_borrow_lend_settings_and_limits(server: Server) -> None:
    ex = server.ccxt("client")
    ex.load_markets()
    lent = ex.privatePostApiV1BorrowLend({"symbol": "USDC", "side": "Lend", "quantity": "1000"})
    assert lent["quantity"] == "1000"
    assert ex.privateGetApiV1BorrowLendPositions() == [ex.privateGetApiV1BorrowLendPositions()[0]]
    assert ex.privateGetApiV1BorrowLendPositions()[0]["netQuantity"] == "1000"
    borrower = server.ccxt("borrower")
    with pytest.raises(ccxt.InsufficientFunds, match="INSUFFICIENT_SUPPLY"):  # nobody lends SOL
        borrower.privatePostApiV1BorrowLend({"symbol": "SOL", "side": "Borrow", "quantity": "2"})
    borrowed = borrower.privatePostApiV1BorrowLend({"symbol": "USDC", "side": "Borrow", "quantity": "100"})
    assert borrowed["quantity"] == "100"
    (row,) = borrower.privateGetApiV1BorrowLendPositions()
    (loan,) = borrower.privateGetWapiV1HistoryBorrowLend()
    assert (loan["side"], loan["symbol"], loan["quantity"]) == ("Borrow", "USDC", "100")
    # A borrow is a negative net quantity, the pool's entry fee added to what is owed.
    assert row["symbol"] == "USDC" and Decimal(row["netQuantity"]) == -(100 + Decimal(loan["entryFee"]))
    assert Decimal(loan["entryFee"]) > 0
    # The limit is the margin bound of limits.max_borrow_quantity; the pool's supply (900 USDC
    # left of the client's 1,000) is the pool's to refuse when a borrow reaches it, as above.
    limit = Decimal(borrower.privateGetApiV1AccountLimitsBorrow({"symbol": "USDC"})["maxBorrowQuantity"])
    assert limit > 900
    with pytest.raises(ccxt.InsufficientFunds, match="INSUFFICIENT_SUPPLY"):
        borrower.privatePostApiV1BorrowLend({"symbol": "USDC", "side": "Borrow", "quantity": "901"})
    assert Decimal(ex.privateGetApiV1AccountLimitsWithdrawal({"symbol": "USDC"})["maxWithdrawalQuantity"]) > 0
    assert [(h["side"], h["symbol"], h["quantity"]) for h in ex.privateGetWapiV1HistoryBorrowLend()] == [
        ("Lend", "USDC", "1000")]
    account = ex.privatePatchApiV1Account({"leverageLimit": "5", "autoLend": True})
    assert account["leverageLimit"] == "5" and account["autoLend"] is True
    assert ex.privateGetApiV1Account()["leverageLimit"] == "5"
    # Auto-lend at once lends everything available: the rest of the USDC and the BTC.
    lends = {r["symbol"]: r["netQuantity"] for r in ex.privateGetApiV1BorrowLendPositions()}
    assert set(lends) == {"USDC", "BTC"} and ex.fetch_balance()["USDC"]["free"] == 0.0
    ex.privatePatchApiV1Account({"leverageLimit": "10", "autoLend": False})


def test_sdk_client(server: Server) -> None:
    base = server.http + "/"
    public = PublicClient(base_url=base)
    assert any(m["symbol"] == "BTC_USDC_PERP" for m in public.get_markets())
    keys = server.keys["sdk"]
    assert keys == {"api_key": SDK_PUBLIC}  # a configured key: the server never had its secret
    client = AuthenticationClient(SDK_PUBLIC, base64.b64encode(SDK_SEED).decode(), base_url=base)
    assert client.get_balances()["USDC"]["available"] == "10000"
    order = client.execute_order("Limit", "Bid", "BTC_USDC_PERP", price="95000", quantity="0.01", clientId=7)
    assert order["status"] == "New" and order["clientId"] == 7
    assert [o["id"] for o in client.get_open_orders(symbol="BTC_USDC_PERP")] == [order["id"]]
    cancelled = client.cancel_open_order("BTC_USDC_PERP", clientId=7)
    assert cancelled["status"] == "Cancelled"
    assert client.get_collateral()["netEquity"] == "10000"
    batch = client.execute_batch_orders([
        {"symbol": "BTC_USDC_PERP", "side": "Bid", "orderType": "Limit", "quantity": "0.01", "price": "95000"},
        {"symbol": "BTC_USDC_PERP", "side": "Bid", "orderType": "Limit", "quantity": "0.02", "price": "95100"}])
    assert [o["status"] for o in batch] == ["New", "New"]
    assert len(client.cancel_open_orders("BTC_USDC_PERP")) == 2
    # The SDK's defaults (limit, offset, sortDirection, ...) are accepted on every history call.
    assert [o["id"] for o in client.get_order_history(symbol="BTC_USDC_PERP")][:1] == [batch[1]["id"]]
    assert client.get_fill_history(symbol="BTC_USDC_PERP") == []
    assert client.get_funding_payments() == [] and client.get_interest_history() == []
    assert client.get_open_positions() == [] and client.get_borrow_lend_positions() == []
    assert client.get_account()["leverageLimit"] == "10"
    assert client.get_max_order_quantity("BTC_USDC_PERP", "Bid", price="95000")["maxOrderQuantity"] != "0"


def test_a_client_that_hangs_up_mid_request_loses_nothing(server: Server) -> None:
    """The order is sent in full and the socket closed before the answer: the order stands
    (it reached the venue whole, so it is there, and in the log)."""
    params = {"symbol": "BTC_USDC_PERP", "side": "Bid", "orderType": "Limit", "quantity": "0.01", "price": "95500",
              "clientId": 99}
    body = json.dumps(params).encode()
    headers = signed_headers(server, "sdk", "orderExecute", params, secret=base64.b64encode(SDK_SEED).decode())
    host, port = server.http.removeprefix("http://").split(":")
    lines = ["POST /api/v1/order HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}",
             *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall("\r\n".join(lines).encode() + body)
    client = AuthenticationClient(SDK_PUBLIC, base64.b64encode(SDK_SEED).decode(), base_url=server.http + "/")
    standing: list[Any] = []
    for _ in range(50):  # the server may still be on it: ask until it answers with the order (bounded)
        standing = [o for o in client.get_open_orders(symbol="BTC_USDC_PERP") if o["clientId"] == 99]
        if standing:
            break
        time.sleep(0.1)
    assert len(standing) == 1 and standing[0]["price"] == "95500"
    client.cancel_open_order("BTC_USDC_PERP", clientId=99)


def test_async_ccxt(server: Server) -> None:
    async def go() -> tuple[Any, Any]:
        ex = server.ccxt("other", ccxt_async)
        try:
            await ex.load_markets()
            return await ex.fetch_balance(), await ex.fetch_order_book(PERP)
        finally:
            await ex.close()

    balance, book = asyncio.run(go())
    assert balance["USDC"]["free"] == 10000.0 and book["asks"]


# ---------------------------------------------------------------------------------------
# WebSocket


def test_websocket_trades_book_orders_positions_balances(server: Server) -> None:
    async def go() -> dict[str, Any]:
        ex = server.ccxt("client", ccxt_pro, watchOrderBook={"snapshotDelay": 1})
        rest = server.ccxt("client", ccxt_async)
        try:
            await ex.load_markets()
            await rest.load_markets()
            book = asyncio.ensure_future(ex.watch_order_book(PERP))
            trades = asyncio.ensure_future(ex.watch_trades(PERP))
            orders = asyncio.ensure_future(ex.watch_orders(PERP))
            positions = asyncio.ensure_future(ex.watch_positions([PERP]))
            balance = asyncio.ensure_future(ex.watch_balance())
            ticker = asyncio.ensure_future(ex.watch_ticker(PERP))
            candles = asyncio.ensure_future(ex.watch_ohlcv(PERP, "1m"))
            tops = asyncio.ensure_future(ex.watch_bids_asks([PERP]))
            futures = [book, trades, orders, positions, balance, ticker, candles, tops]
            for _ in range(40):  # trade until every stream has answered (bounded: 40 round trips)
                await rest.create_order(PERP, "market", "buy", 0.01)
                await rest.create_order(PERP, "market", "sell", 0.01)
                await asyncio.wait(futures, timeout=0.5)
                if all(f.done() for f in futures):
                    break
            done = [f.result() for f in futures]  # a stream that never answered fails here
            return dict(zip(("book", "trades", "orders", "positions", "balance", "ticker", "candles", "tops"), done))
        finally:
            await ex.close()
            await rest.close()

    seen = asyncio.run(go())
    assert seen["book"]["bids"] and seen["book"]["asks"]
    assert seen["book"]["bids"][0][0] < seen["book"]["asks"][0][0]
    assert seen["trades"][0]["symbol"] == PERP and seen["trades"][0]["amount"] == 0.01
    assert seen["orders"][0]["symbol"] == PERP
    assert seen["positions"][0]["symbol"] == PERP
    assert "USDC" in seen["balance"]
    assert seen["ticker"]["symbol"] == PERP and seen["ticker"]["last"] > 0
    assert seen["candles"][-1][5] > 0  # [time, open, high, low, close, volume] of the running minute
    top = seen["tops"][PERP]
    assert top["bid"] < top["ask"] and top["bidVolume"] > 0


def test_private_subscription_needs_a_good_signature(server: Server) -> None:
    async def go() -> tuple[list[Any], list[Any]]:
        import aiohttp

        async with aiohttp.ClientSession() as http, http.ws_connect(server.ws) as ws:
            await ws.send_json({"method": "SUBSCRIBE", "params": ["account.orderUpdate"],
                                "signature": [server.keys["client"]["api_key"], "AAAA", "1", "5000"]})
            bad = [await ws.receive_json(timeout=5)]
            await ws.send_json({"method": "SUBSCRIBE", "params": ["account.rfqUpdate"]})
            unsigned = [await ws.receive_json(timeout=5)]
            return bad, unsigned

    bad, unsigned = asyncio.run(go())
    assert bad[0]["error"]["code"] == 4006
    assert unsigned[0]["error"]["code"] == 4006


# ---------------------------------------------------------------------------------------
# Refusals at the gate


def test_wrong_key_bad_signature_and_expired_window(server: Server) -> None:
    stranger = SigningKey(b"\x01" * 32)
    unknown = {"X-API-Key": base64.b64encode(bytes(stranger.verify_key)).decode(), "X-Signature": "AAAA",
               "X-Timestamp": str(time.time_ns() // 1_000_000)}
    assert raw(server, "GET", "/api/v1/capital", headers=unknown) == (401, {"code": "UNAUTHORIZED",
                                                                            "message": "unknown API key"})
    ex = server.ccxt("client")
    ex.secret = base64.b64encode(b"\x02" * 32).decode()
    with pytest.raises(ccxt.AuthenticationError):
        ex.fetch_balance()
    old = signed_headers(server, "client", "balanceQuery", {}, timestamp=time.time_ns() // 1_000_000 - 10_000)
    status, body = raw(server, "GET", "/api/v1/capital", headers=old)
    assert status == 401 and "outside the window of 5000 ms" in body["message"]
    wide = signed_headers(server, "client", "balanceQuery", {}, window=60001)
    status, body = raw(server, "GET", "/api/v1/capital", headers=wide)
    assert status == 401 and "above the maximum 60000" in body["message"]


def test_another_accounts_order_is_not_found(server: Server) -> None:
    owner = server.ccxt("other")
    owner.load_markets()
    order = owner.create_order(PERP, "limit", "buy", 0.01, 96000)
    assert order["status"] == "open"
    intruder = server.ccxt("client")
    intruder.load_markets()
    with pytest.raises(ccxt.ExchangeNotAvailable) as not_found:  # ccxt's class for RESOURCE_NOT_FOUND
        intruder.cancel_order(order["id"], PERP)
    assert "RESOURCE_NOT_FOUND" in str(not_found.value)
    assert [o["id"] for o in owner.fetch_open_orders(PERP)] == [order["id"]]
    owner.cancel_order(order["id"], PERP)


def test_malformed_oversized_unknown_and_rate_limited(server: Server) -> None:
    params = {"symbol": "BTC_USDC_PERP"}
    headers = signed_headers(server, "client", "orderExecute", params)
    status, body = raw(server, "POST", "/api/v1/order", body=b"{not json", headers=headers)
    assert status == 400 and body["code"] == "INVALID_CLIENT_REQUEST"
    nested = {"symbol": "BTC_USDC_PERP", "side": {"a": 1}}
    status, body = raw(server, "POST", "/api/v1/order", body=json.dumps(nested).encode(), headers=headers)
    assert status == 400 and "nested" in body["message"]
    wrong_type = {"symbol": "BTC_USDC_PERP", "side": "Bid", "orderType": "Limit", "quantity": True, "price": "1"}
    h = signed_headers(server, "client", "orderExecute", wrong_type)
    status, body = raw(server, "POST", "/api/v1/order", body=json.dumps(wrong_type).encode(), headers=h)
    assert status == 400 and body == {"code": "INVALID_CLIENT_REQUEST",
                                      "message": "quantity must be a decimal string, found True"}
    unknown_symbol = {"symbol": "DOGE_USDC", "side": "Bid", "orderType": "Market", "quantity": "1"}
    h = signed_headers(server, "client", "orderExecute", unknown_symbol)
    status, body = raw(server, "POST", "/api/v1/order", body=json.dumps(unknown_symbol).encode(), headers=h)
    assert status == 400 and body["code"] == "INVALID_SYMBOL"
    status, body = raw(server, "POST", "/api/v1/order", body=b"x" * (64 * 1024 + 1), headers=headers)
    assert status == 413
    assert raw(server, "GET", "/api/v1/nothing")[0] == 404
    assert raw(server, "GET", "/api/v1/nothing")[1]["code"] == "RESOURCE_NOT_FOUND"
    statuses: list[int] = []
    while 429 not in statuses and len(statuses) < 600:  # more than 50 in one second, at loopback speed
        statuses.append(raw(server, "GET", "/api/v1/capital", headers=signed_headers(server, "other", "balanceQuery",
                                                                                      {}))[0])
    assert statuses[-1] == 429 and set(statuses) == {200, 429}


# ---------------------------------------------------------------------------------------
# The liquidation, seen through the client


def test_liquidation_seen_through_ccxt(server: Server) -> None:
    ex = server.ccxt("victim")
    ex.load_markets()
    start = venue_start_ms(server)
    assert server.victim_opened_ms < start + DROP_S * 1000  # opened before the drop, on the venue's clock
    liquidation_fills: list[Any] = []
    deadline = time.monotonic() + 60  # bound the wait: (60 s + ten loops) / rate 5 is about 14 s of real time
    while not liquidation_fills and time.monotonic() < deadline:
        time.sleep(0.5)
        fills = ex.fetch_my_trades(PERP, None, None, {"fillType": "AllLiquidation"})
        liquidation_fills = [f for f in fills if f["info"]["systemOrderType"] == "LiquidatePositionOnBook"]
    assert liquidation_fills, "no liquidation fill reached the client"
    assert all(f["side"] == "sell" for f in liquidation_fills)
    # ccxt's fetch_my_trades always sends fillType=User; without it the liquidation fills are included.
    everything = ex.privateGetWapiV1HistoryFills({"symbol": "BTC_USDC_PERP"})
    assert {f["id"] for f in liquidation_fills} <= {str(f["tradeId"]) for f in everything}
    user_only = ex.fetch_my_trades(PERP, None, None, {"fillType": "User"})
    assert all(f["info"]["systemOrderType"] is None for f in user_only)
    (position,) = ex.fetch_positions() or [None]
    assert position is not None and 0 < float(position["contracts"]) < 1.0  # partial: smaller, not gone


def test_funding_and_interest_histories(server: Server) -> None:
    """The victim's long pays funding once the mark is over the index (from t=62 s: the first
    payment is at t=80 s); the borrower's USDC borrow accrues interest every 10 s."""
    victim = server.ccxt("victim")
    victim.load_markets()
    payments: list[Any] = []
    deadline = time.monotonic() + 60  # bound the wait: t=80 s is 16 s of real time at rate 5
    while not payments and time.monotonic() < deadline:
        time.sleep(0.5)
        payments = victim.fetch_funding_history(PERP)
    assert payments, "no funding payment reached the client"
    assert payments[0]["amount"] < 0 and payments[0]["symbol"] == PERP  # a long pays a positive rate
    rates = victim.fetch_funding_rate_history(PERP)
    assert any(r["fundingRate"] > 0 for r in rates)
    interest = server.ccxt("borrower").privateGetWapiV1HistoryInterest()
    assert interest and all(row["paymentType"] == "Borrow" and Decimal(row["quantity"]) < 0 for row in interest)
    settled = victim.privateGetWapiV1HistorySettlement()  # PnL realized every 10 s (the profile's default)
    assert settled and {row["source"] for row in settled} <= {"RealizePnl", "BackstopLiquidityFundProceeds"}

def test_the_page_at_root_plays_the_served_run(server: Server) -> None:
    """`/` under serve is the web dashboard, fed by the session's events so far: a market order
    placed through the API is on its event feed (placed, filled at the price ccxt reports,
    closed, and the trade the page charts), and asking for the events after those already read
    gives only the newer ones, in the log's order."""
    page = urllib.request.urlopen(server.http + "/", timeout=30).read().decode()
    assert "<title>marginsim dashboard</title>" in page and "/dashboard/static/dashboard.js" in page

    def events(after: int) -> dict[str, Any]:
        with urllib.request.urlopen(f"{server.http}/dashboard/run.json?after={after}", timeout=30) as answer:
            return json.loads(answer.read())

    first = events(0)
    assert first["from"] == 0 and first["meta"]["live"] is True and first["meta"]["market"] == "BTC_USDC_PERP"
    assert first["meta"]["name"] == "api-test" and first["meta"]["until_ms"] is None
    assert [e["seq"] for e in first["events"]] == list(range(1, len(first["events"]) + 1))  # all of them, in order
    have = len(first["events"])
    ex = server.ccxt("other")
    ex.load_markets()
    order = ex.create_order(PERP, "market", "buy", 0.01)
    newer = events(have)
    assert newer["from"] == have and newer["events"][0]["seq"] == have + 1
    mine = [e for e in newer["events"] if e.get("order_id") == order["id"] and e["actor"] == "account:other"]
    assert [e["event"] for e in mine] == ["order_placed", "fill", "order_closed"]
    assert mine[1]["quantity"] == "0.01" and float(mine[1]["price"]) == order["average"]
    assert mine[2]["status"] == "Filled"
    trade = next(e for e in newer["events"] if e["event"] == "trade" and e["seq"] > mine[0]["seq"])
    assert trade["actor"] == "market:BTC_USDC_PERP" and trade["price"] == mine[1]["price"]
    assert trade["quantity"] == "0.01"
    requests = [e for e in newer["events"] if e["event"] == "api_request" and e["account"] == "other"]
    assert requests[-1]["method"] == "POST" and requests[-1]["path"] == "/api/v1/order"
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(f"{server.http}/dashboard/run.json?after=-1", timeout=30)
    assert bad.value.code == 400 and "after" in json.loads(bad.value.read())["message"]



def test_stop_prints_the_summary_and_the_log_replays(server: Server, tmp_path: Path) -> None:
    server.process.send_signal(signal.SIGTERM)
    out, err = server.process.communicate(timeout=30)
    assert server.process.returncode == 0, err
    assert "victim" in out and "fingerprint" in out
    replayed = subprocess.run([sys.executable, "-m", "scenarios.cli", "replay", str(server.log)],
                              capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=120,
                              env={**os.environ})
    assert replayed.returncode == 0, replayed.stdout[-2000:] + replayed.stderr[-2000:]
    assert "the log is identical" in replayed.stdout

