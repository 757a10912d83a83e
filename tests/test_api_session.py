"""The API's pieces in process, where virtual time is ours to move (a paced clock without a
rate, stepped by the test): the signing rule, the refusal mapping while an account is
liquidated, and a session replayed from its log."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from nacl.signing import SigningKey

from actors.clock import PacedClock
from actors.system import RunFailed
from api import auth
from api.app import Gateway, wall_ms
from api.routes import ApiError, depth_json, dispatch
from api.serve import replay
from api.session import Session
from api.streams import Connection, Streams
from scenarios import loader

SCENARIO = """
[scenario]
name = "api-session"
description = "A 20x long on a maker's book, then BTC steps down to 90,500 at t=5 s"
duration = 60
seed = 1

[prices.BTC]
kind = "steps"
points = [[0, 100000], [5, 90500]]

[[accounts]]
id = "maker"
deposits = { USDC = 10000000 }
leverage_limit = 20
markets = ["BTC_USDC_PERP"]

[[accounts]]
id = "victim"
deposits = { USDC = 10000 }
leverage_limit = 20
markets = ["BTC_USDC_PERP"]

[[market_makers]]
name = "mm"
account = "maker"
markets = ["BTC_USDC_PERP"]
size = 0.5
spread_bps = 10
levels = 4
"""


def test_signing_string_matches_the_clients_captures() -> None:
    """The strings ccxt 4.5.90 signed, as recorded in the client notes (sections 2.2, 2.3)."""
    single = auth.signing_string("orderExecute", {"orderType": "Limit", "price": "100.01", "quantity": "1.23",
                                                  "side": "Bid", "symbol": "SOL_USDC"}, "1795573921448", "5000")
    assert single == ("instruction=orderExecute&orderType=Limit&price=100.01&quantity=1.23&side=Bid&symbol=SOL_USDC"
                      "&timestamp=1795573921448&window=5000")
    batch = auth.signing_string("orderExecute", [
        {"orderType": "Limit", "postOnly": True, "price": "100", "quantity": "1", "side": "Bid", "symbol": "SOL_USDC"},
        {"symbol": "SOL_USDC_PERP", "side": "Ask", "reduceOnly": True, "quantity": "2", "orderType": "Market",
         "clientId": "5"},
    ], "1", "5000")
    assert batch == ("instruction=orderExecute&orderType=Limit&postOnly=true&price=100&quantity=1&side=Bid"
                     "&symbol=SOL_USDC&instruction=orderExecute&clientId=5&orderType=Market&quantity=2"
                     "&reduceOnly=true&side=Ask&symbol=SOL_USDC_PERP&timestamp=1&window=5000")
    assert auth.signing_string("balanceQuery", {}, "7", "5000") == "instruction=balanceQuery&timestamp=7&window=5000"


def test_a_quoted_value_verifies_either_way() -> None:
    """ccxt percent-encodes exotic values before signing, the SDK does not: both pass."""
    key = SigningKey(b"\x03" * 32)
    params = {"note": "a b,c"}
    for text in ("instruction=x&note=a b,c&timestamp=1&window=5000", "instruction=x&note=a%20b%2Cc&timestamp=1&window=5000"):
        signature = base64.b64encode(key.sign(text.encode()).signature).decode()
        auth.verify(key.verify_key, signature, "x", params, "1", "5000")
    wrong = base64.b64encode(key.sign(b"instruction=y&timestamp=1&window=5000").signature).decode()
    with pytest.raises(auth.AuthError, match="does not match"):
        auth.verify(key.verify_key, wrong, "x", params, "1", "5000")


def test_window_rules() -> None:
    assert auth.check_window("1000", None, 5000) == ("1000", "5000")  # no X-Window: 5000, signed as such
    with pytest.raises(auth.AuthError, match="outside the window"):
        auth.check_window("1000", "5000", 6001)
    with pytest.raises(auth.AuthError, match="above the maximum 60000"):
        auth.check_window("1000", "60001", 1000)


def _session(tmp_path: Path, log: Path | None = None) -> Session:
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO)
    return Session(loader.load(str(path)), 1, 1_800_000_000_000, clock=PacedClock(None), source=str(path),
                   log_path=log)


@contextlib.asynccontextmanager
async def running(session: Session) -> AsyncIterator[Session]:
    """The session's actor system running in this trio run; stopped (its end logged) after."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)
        yield session
        session.stop()


async def call(session: Session, account: str | None, method: str, path: str, params: Any) -> Any:
    """A request as the server makes it: injected at the current instant, answered once it settles."""
    return await session.request(lambda now: dispatch(session, account, method, path, params))


async def _open_long(session: Session) -> dict:
    return await call(session, "victim", "POST", "/api/v1/order",
                     {"symbol": "BTC_USDC_PERP", "side": "Bid", "orderType": "Market", "quantity": "1"})


async def test_orders_are_refused_with_account_liquidating_while_it_runs(tmp_path: Path) -> None:
    session = _session(tmp_path)
    async with running(session):
        await session.advance(1000)
        opened = await _open_long(session)
        assert opened["status"] == "Filled" and opened["executedQuantity"] == "1"
        resting = await call(session, "victim", "POST", "/api/v1/order", {"symbol": "BTC_USDC_PERP", "side": "Bid",
                                                                         "orderType": "Limit", "quantity": "0.001",
                                                                         "price": "96000"})
        assert resting["status"] == "New"
        (position,) = await call(session, "victim", "GET", "/api/v1/position", {})
        # Spec 7: the worst case of the position and its risk-increasing orders, long 1 + bid 0.001.
        assert (position["netQuantity"], position["netExposureQuantity"]) == ("1", "1.001")
        t = 1000
        while not session.account("victim").liquidating:  # the first liquidation loop after the drop
            t += 100
            assert t < 20_000, "the victim was never liquidated"
            await session.advance(t)
        balances = await call(session, "victim", "GET", "/api/v1/capital", {})
        with pytest.raises(ApiError) as refused:
            await call(session, "victim", "POST", "/api/v1/order",
                     {"symbol": "BTC_USDC_PERP", "side": "Bid", "orderType": "Limit", "quantity": "0.01", "price": "90000"})
        assert (refused.value.status, refused.value.code) == (400, "ACCOUNT_LIQUIDATING")
        # The liquidation cancelled the victim's resting order first.
        (cancelled,) = await call(session, "victim", "GET", "/wapi/v1/history/orders", {"orderId": resting["id"]})
        assert cancelled["status"] == "Cancelled"
        assert await call(session, "victim", "GET", "/api/v1/orders", {}) == []
        assert "sub-account victim is being liquidated" in str(refused.value)
        assert await call(session, "victim", "GET", "/api/v1/capital", {}) == balances  # the refusal changed nothing
        await session.advance(t + 10_000)
        fills = await call(session, "victim", "GET", "/wapi/v1/history/fills", {"fillType": "BookLiquidation"})
        assert fills and {f["systemOrderType"] for f in fills} == {"LiquidatePositionOnBook"}
        orders = await call(session, "victim", "GET", "/wapi/v1/history/orders", {})
        assert {o["origin"] for o in orders} == {"USER", "LIQUIDATION_AUTOCLOSE"}
        oldest_first = await call(session, "victim", "GET", "/wapi/v1/history/orders", {"sortDirection": "Asc"})
        assert oldest_first == orders[::-1] and oldest_first[0]["id"] == opened["id"]
        assert await call(session, "victim", "GET", "/api/v1/capital/collateral", {"subaccountId": "victim"})
        with pytest.raises(ApiError) as other:  # a key speaks for its own sub-account only
            await call(session, "victim", "GET", "/api/v1/capital/collateral", {"subaccountId": "maker"})
        assert (other.value.status, other.value.code) == (404, "RESOURCE_NOT_FOUND")


def test_a_recorded_session_replays_identically(tmp_path: Path) -> None:
    """A session stepped by hand, with a refused order and a refusal at the gate, then replayed
    on virtual time: the same log, byte for byte."""
    log = tmp_path / "events.jsonl"
    session = _session(tmp_path, log)

    async def record() -> None:
        async with running(session):
            await session.advance(1234)
            await _open_long(session)
            await session.advance(2500)
            with pytest.raises(ApiError):
                await call(session, "victim", "POST", "/api/v1/order",
                          {"symbol": "BTC_USDC_PERP", "side": "Bid", "orderType": "Market", "quantity": "50"})
            session.refuse("GET", "/api/v1/capital", 401, "INVALID_SIGNATURE", "bad signature")
            await session.advance(12_000)

    trio.run(record)
    assert session.result is not None
    recorded = session.result.fingerprint
    again = replay(log, tmp_path / "again.jsonl")
    assert again.identical, again.first_difference
    assert again.requests == 2 and again.fingerprint == recorded
    assert (tmp_path / "again.jsonl").read_bytes() == log.read_bytes()


async def test_streams_show_the_liquidation_and_depth_on_one_sequence(tmp_path: Path) -> None:
    """A signed private subscription gets the victim's order updates, the liquidation's with its
    origin; depth deltas follow each other (U = last u + 1) on the REST lastUpdateId sequence."""
    session = _session(tmp_path)
    async with running(session):
        key = SigningKey(b"\x05" * 32)
        api_key = base64.b64encode(bytes(key.verify_key)).decode()
        gateway = Gateway(session, {api_key: "victim"}, rate_limit=50)
        streams = Streams(gateway)
        send, receive = trio.open_memory_channel[str](10_000)
        connection = Connection(send)
        streams.connections.append(connection)
        ts = str(wall_ms())
        signature = base64.b64encode(key.sign(f"instruction=subscribe&timestamp={ts}&window=5000".encode()).signature)
        streams._on_message(connection, json.dumps({
            "method": "SUBSCRIBE", "params": ["account.orderUpdate", "depth.BTC_USDC_PERP", "account.rfqUpdate"],
            "signature": [api_key, signature.decode(), ts, "5000"]}))
        assert connection.account == "victim"
        snapshot = int(depth_json(session, "BTC_USDC_PERP")["lastUpdateId"])
        await session.advance(1000)
        streams.publish()
        await _open_long(session)
        streams.publish()
        for t in range(1100, 15_000, 100):
            await session.advance(t)
            streams.publish()
        messages = []
        while True:
            try:
                messages.append(json.loads(receive.receive_nowait()))
            except trio.WouldBlock:
                break
        assert not any("error" in m for m in messages)  # rfqUpdate: accepted, silent
        orders = [m["data"] for m in messages if m["stream"] == "account.orderUpdate"]
        assert orders[0]["e"] == "orderAccepted" and orders[0]["O"] == "USER"
        liquidation = [o for o in orders if o["O"] == "LIQUIDATION_AUTOCLOSE"]
        assert liquidation and {o["systemOrderType"] for o in liquidation} == {"LiquidatePositionOnBook"}
        assert any(o["e"] == "orderFill" and o["S"] == "Ask" for o in liquidation)
        depth = [m["data"] for m in messages if m["stream"] == "depth.BTC_USDC_PERP"]
        assert depth[0]["U"] == snapshot + 1
        assert all(b["U"] == a["u"] + 1 for a, b in zip(depth, depth[1:]))
        assert depth[-1]["u"] == int(depth_json(session, "BTC_USDC_PERP")["lastUpdateId"])


async def test_withdrawal_follows_the_cores_rule(tmp_path: Path) -> None:
    """10,000 USDC and a 1 BTC long at 100,075 locking 5% of its notional: the largest
    withdrawal is what keeps available equity at zero, and it is the number the refusal names."""
    session = _session(tmp_path)
    async with running(session):
        await session.advance(1000)
        await _open_long(session)
        (deposit,) = await call(session, "victim", "GET", "/wapi/v1/capital/deposits", {})
        assert (deposit["symbol"], deposit["quantity"]) == ("USDC", "10000")
        largest = await call(session, "victim", "GET", "/api/v1/account/limits/withdrawal", {"symbol": "USDC"})
        # Net equity 10,000 - 50.0375 fee - 75 unrealized (mark 100,000 vs entry 100,075) = 9,874.9625;
        # locked 100,000 x 0.05 = 5,000: 4,874.9625 may go.
        assert largest["maxWithdrawalQuantity"] == "4874.9625"
        ask = {"symbol": "USDC", "quantity": "5000", "address": "0xabc", "blockchain": "Ethereum"}
        before = await call(session, "victim", "GET", "/api/v1/capital", {})
        with pytest.raises(ApiError) as refused:
            await call(session, "victim", "POST", "/wapi/v1/capital/withdrawals", ask)
        assert refused.value.code == "INSUFFICIENT_MARGIN"
        assert "4874.9625" in str(refused.value)
        assert await call(session, "victim", "GET", "/api/v1/capital", {}) == before
        done = await call(session, "victim", "POST", "/wapi/v1/capital/withdrawals", {**ask, "quantity": "1000"})
        assert done["status"] == "confirmed" and done["quantity"] == "1000"
        (withdrawal,) = await call(session, "victim", "GET", "/wapi/v1/capital/withdrawals", {})
        assert withdrawal["quantity"] == "1000"


def test_with_latency_a_request_waits_for_its_answer_and_replays(tmp_path: Path) -> None:
    """The scenario's latency is kept: 20 ms on every link. A market order sent at t=1000 is
    logged there, reaches the victim's sub-account at 1020 (one hop: order_placed) and its
    acceptance reaches the api address at 1040 (two hops): the answer is the order as the
    account knew it then, New with nothing filled (the fill news would need two more hops).
    The whole session replays identically on virtual time."""
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO + '\n[latency]\nkind = "constant"\nms = 20\n')
    log = tmp_path / "events.jsonl"
    session = Session(loader.load(str(path)), 1, 1_800_000_000_000, clock=PacedClock(None), source=str(path),
                      log_path=log)
    answers: list[dict] = []

    async def place() -> None:
        answers.append(await _open_long(session))

    async def record() -> None:
        async with running(session):
            await session.advance(1000)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(place)
                await trio.testing.wait_all_tasks_blocked()  # the request is queued at 1000
                await session.advance(1100)  # time moves on under it: the answer needs it to

    trio.run(record)
    (answer,) = answers
    assert (answer["status"], answer["executedQuantity"]) == ("New", "0")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    (request,) = [e for e in events if e["event"] == "api_request" and e["method"] == "POST"]
    (placed,) = [e for e in events if e["event"] == "order_placed" and e["order_id"] == answer["id"]]
    assert (request["t"], placed["t"]) == (1000, 1020)
    again = replay(log, tmp_path / "again.jsonl")
    assert again.identical, again.first_difference
    assert (tmp_path / "again.jsonl").read_bytes() == log.read_bytes()


async def test_a_broken_invariant_stops_the_session_with_its_cause(tmp_path: Path) -> None:
    """The observer is on in a served run: one USDC credited from nowhere (behind the machines'
    back, so only the observer's full look sees it, at the run's end: 60 s here) breaks
    conservation, and the run fails with the invariant named, at its virtual instant (the
    server prints it and exits 1)."""
    session = _session(tmp_path)
    failures: list[RunFailed] = []
    try:
        async with running(session):
            await session.advance(1000)
            session.account("victim").credit("USDC", Decimal(1))  # money from nowhere
            await session.advance(60_000)
    except* RunFailed as group:
        failures.extend(e for e in group.exceptions if isinstance(e, RunFailed))
    (failure,) = failures
    assert failure.kind == "invariant" and "conservation" in str(failure)
    assert failure.time_ms == 60_000 and "difference 1" in str(failure)


def test_a_request_the_venue_never_answers_in_time_gets_a_504(tmp_path: Path) -> None:
    """The scenario's faults are kept: a hold on the api -> victim link from 0.5 s to 90 s. An
    order sent at 1 s waits; 60 s of virtual time later (61 s) it is answered 504 TIMEOUT,
    logged as the venue's refusal there. When the hold lifts at 90 s the order reaches the
    sub-account after all (what it did is in the log), and the replay is identical."""
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO.replace("duration = 60", "duration = 120") + '''
[[faults]]
kind = "hold"
from = "api"
to = "account:victim"
start = 0.5
end = 90
''')
    log = tmp_path / "events.jsonl"
    session = Session(loader.load(str(path)), 1, 1_800_000_000_000, clock=PacedClock(None), source=str(path),
                      log_path=log)
    errors: list[ApiError] = []

    async def place() -> None:
        with pytest.raises(ApiError) as late:
            await _open_long(session)
        errors.append(late.value)

    async def record() -> None:
        async with running(session):
            await session.advance(1000)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(place)
                await trio.testing.wait_all_tasks_blocked()
                await session.advance(100_000)

    trio.run(record)
    (error,) = errors
    assert (error.status, error.code) == (504, "TIMEOUT")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    (refusal,) = [e for e in events if e["event"] == "api_refused"]
    assert (refusal["t"], refusal["status"], refusal["stage"]) == (61_000, 504, "venue")
    (placed,) = [e for e in events if e["event"] == "order_placed" and e["actor"] == "account:victim"]
    assert placed["t"] == 90_000
    again = replay(log, tmp_path / "again.jsonl")
    assert again.identical, again.first_difference
