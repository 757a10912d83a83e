"""A live venue behind the API: one scenario's actor system, paced against the wall clock.

``Session`` owns the scenario's actor system (``actors.system``: the network with the
scenario's latency and faults, the calendar, the live invariant observer), run on a
``PacedClock`` inside the server's trio run, or on the ``VirtualClock`` for a replay. A
request is an injection: once the instant it arrives at has settled and nothing else is due,
the scheduler logs it (``api_request``) and runs its route, whose venue calls are messages
from the ``api`` address to the sub-account; the route reads the replies once the instant
has settled again (with latency, once they are in: bounded, then a 504), so a market order's
answer is its state after matching at that instant. Nothing in the venue reads a clock but
the scheduler's.

Every request is logged at its virtual instant before its effects; ``replay`` plans the same
requests at the same instants on virtual time and gets the same log, byte for byte (every
machine is on one run queue: see ``actors.runtime.RunQueue``). Requests refused before the
venue (signature, rate limit, bad body) change nothing and are logged as ``api_refused`` at
their instant, through the same queue; a replay copies them.

Reading what clients ask for (orders, fills, funding, interest, trades, candles) comes from the
event log as the machines wrote it (``VenueView``): the API keeps no rule of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import trio

from actors.clock import PacedClock, VirtualClock
from actors.runtime import Injections
from actors.system import RunResult
from exchange.decimals import fmt
from exchange.engine import cancel_outcome, cancelled, order_answered, order_outcome, request_outcome
from exchange.invariants import quiet_violations
from exchange.lending import Grant
from exchange.machine import Effect, Event, Machine
from exchange.orders import Order, OrderUpdate, Origin, Rejection
from exchange.protocol import (
    CancelAll,
    CancelOrder,
    LoanRequest,
    PlaceOrder,
    RequestDone,
    UpdateSettings,
    Withdraw,
    account_address,
)
from scenarios import runner
from scenarios.loader import Scenario

API = "api"  # the actor name of API events in the log

# How the venue names who placed an order (fills' ``systemOrderType``) and the fill types a
# history query may filter on (spec 16).
SYSTEM_ORDER_TYPE: dict[str, str] = {
    Origin.LIQUIDATION_AUTOCLOSE.value: "LiquidatePositionOnBook",
    Origin.BACKSTOP_LIQUIDITY_PROVIDER.value: "LiquidatePositionOnBackstop",
    Origin.ADL_AUTOCLOSE.value: "LiquidatePositionOnAdl",
    Origin.COLLATERAL_CONVERSION.value: "CollateralConversion",
}
FILL_TYPES = {
    "User": {Origin.USER},
    "BookLiquidation": {Origin.LIQUIDATION_AUTOCLOSE},
    "Adl": {Origin.ADL_AUTOCLOSE},
    "Backstop": {Origin.BACKSTOP_LIQUIDITY_PROVIDER},
    "Liquidation": {Origin.LIQUIDATION_AUTOCLOSE, Origin.BACKSTOP_LIQUIDITY_PROVIDER},
    "AllLiquidation": {Origin.LIQUIDATION_AUTOCLOSE, Origin.BACKSTOP_LIQUIDITY_PROVIDER, Origin.ADL_AUTOCLOSE},
    "CollateralConversion": {Origin.COLLATERAL_CONVERSION},
    "CollateralConversionAndSpotLiquidation": {Origin.COLLATERAL_CONVERSION, Origin.LIQUIDATION_AUTOCLOSE},
}
HISTORY_KEPT = 10_000  # per account and kind; older rows fall off (a long bot session)
# What the end-of-run summary and the scenario's expectations read back; every other event is
# written to the log and let go, so a session's memory does not grow with its length.
# (Health samples only when an expectation reads one "at" a time.)
SUMMARY_EVENTS = frozenset({"trade", "funding_payment"})
CHECK_EVERY = 200  # events between two looks of the live invariant observer
REPLY_BOUND_MS = 60_000  # virtual time a request waits for the venue's answer before a 504
# The web page at / plays the run's events: the newest PAGE_KEPT of them are kept (about 1.7 kB
# each; older ones go, a quarter of the window at a time, so a long session stays bounded).
PAGE_KEPT = 50_000


@attrs.frozen
class Ask:
    """A route's call to the venue: a message to a sub-account, and when its answer is in."""

    account: str
    message: object
    answered: Callable[[list[object]], bool]


Steps = Generator[Ask, list[object], Any]  # a route that calls the venue: each Ask gets its replies


class ApiClient(Machine):
    """The ``api`` address: the trader every request speaks as; it hands what the venue tells
    it to the requests waiting for an answer."""

    def __init__(self, session: Session) -> None:
        super().__init__(API)
        self.session = session

    def handle(self, sender: str, message: object, now_ms: int) -> list[Effect]:
        for request in self.session.waiting:
            request.replies.append(message)
        return []


@attrs.define(eq=False)
class Request:
    """One request in flight: its route's steps, the ask it waits on and the replies so far."""

    steps: Steps | None = None
    ask: Ask | None = None
    since_ms: int = 0
    replies: list[object] = attrs.field(factory=list)
    done: trio.Event = attrs.field(factory=trio.Event)
    result: Any = None
    error: BaseException | None = None


@attrs.define
class OrderRecord:
    """One order as the history shows it, built from the log's order events."""

    order_id: str
    market: str
    side: str
    order_type: str
    quantity: Decimal | None
    price: Decimal | None
    quote_quantity: Decimal | None
    origin: str
    reduce_only: bool
    created_ms: int
    status: str = "New"
    executed: Decimal = Decimal(0)
    executed_quote: Decimal = Decimal(0)
    reason: str | None = None
    flags: dict[str, Any] = attrs.field(factory=dict)  # the request's own fields (API orders)


@attrs.define
class AccountView:
    orders: dict[str, OrderRecord] = attrs.field(factory=dict)
    client_ids: dict[int, str] = attrs.field(factory=dict)
    fills: list[Event] = attrs.field(factory=list)
    funding: list[Event] = attrs.field(factory=list)
    interest: list[Event] = attrs.field(factory=list)
    loans: list[Event] = attrs.field(factory=list)
    settlements: list[Event] = attrs.field(factory=list)
    transfers: list[Event] = attrs.field(factory=list)  # deposits and withdrawals


@attrs.define
class MarketView:
    trades: list[Event] = attrs.field(factory=list)
    funding_rates: list[Event] = attrs.field(factory=list)
    update_id: int = 0  # counts every event that changed the book: REST lastUpdateId and WS depth U/u


class VenueView:
    """What clients read back, kept from the events the machines logged."""

    def __init__(self, accounts: Iterable[str], markets: Iterable[str]) -> None:
        self.accounts = {a: AccountView() for a in accounts}
        self.markets = {m: MarketView() for m in markets}
        self.fill_seq = 0
        self.listeners: list[Callable[[Event], None]] = []

    def absorb(self, event: Event) -> None:
        kind = event["event"]
        actor: str = event["actor"]
        if actor.startswith("account:"):
            view = self.accounts.get(actor[8:])
            if view is not None:
                self._account_event(view, kind, event)
        elif actor.startswith("market:"):
            market = self.markets.get(actor[7:])
            if market is not None:
                if kind == "trade":
                    _keep(market.trades, event)
                    market.update_id += 1
                elif kind in ("book_top", "position_transfer"):
                    market.update_id += 1
                elif kind == "funding_rate":
                    _keep(market.funding_rates, event)
        for listener in self.listeners:
            listener(event)

    def _account_event(self, view: AccountView, kind: str, event: Event) -> None:
        if kind == "order_placed":
            oid = event["order_id"]
            view.orders[oid] = OrderRecord(
                oid, event["market"], str(event["side"]), str(event["order_type"]), event["quantity"],
                event["price"], event["quote_quantity"], str(event["origin"]), bool(event["reduce_only"]), event["t"])
            if len(view.orders) > HISTORY_KEPT:
                oldest = next(iter(view.orders))
                view.orders.pop(oldest)
            market = self.markets.get(event["market"])
            if market is not None:
                market.update_id += 1
        elif kind == "fill":
            self.fill_seq += 1
            _keep(view.fills, {**event, "fill_id": self.fill_seq})  # the log's own event stays as written
            record = view.orders.get(event["order_id"])
            if record is not None:
                record.executed += event["quantity"]
                record.executed_quote += event["quantity"] * event["price"]
                if record.status == "New":
                    record.status = "PartiallyFilled"
        elif kind == "order_closed":
            record = view.orders.get(event["order_id"])
            if record is not None:
                record.status = str(event["status"])
                record.reason = None if event["reason"] is None else str(event["reason"])
            market = self.markets.get(event["market"])
            if market is not None:
                market.update_id += 1
        elif kind == "funding_payment":
            _keep(view.funding, event)
        elif kind == "interest":
            _keep(view.interest, event)
        elif kind in ("lend", "redeem", "borrow", "repay"):
            _keep(view.loans, event)
        elif kind in ("pnl_realized", "fund_cover"):
            _keep(view.settlements, event)
        elif kind in ("deposit", "withdrawal"):
            _keep(view.transfers, event)


def _keep(rows: list[Event], event: Event) -> None:
    rows.append(event)
    if len(rows) > HISTORY_KEPT:
        del rows[: len(rows) - HISTORY_KEPT]


class Session:
    """A scenario's actor system taking requests, with the view clients read.

    ``clock`` None: a replay on virtual time (``run_replay``); else the server's paced clock
    (``run``). ``start_wall_ms`` is the venue's clock at virtual time 0: every timestamp in data
    is ``start_wall_ms + virtual ms`` (fixed for a replay from the log's first event).
    """

    def __init__(self, scenario: Scenario, seed: int, start_wall_ms: int, *, clock: PacedClock | None = None,
                 until_ms: int | None = None, source: str = "", log_path: Path | None = None,
                 overrides: tuple[str, ...] = ()) -> None:
        self.scenario = scenario
        self.seed = seed
        self.start_wall_ms = start_wall_ms
        self.until_ms = until_ms
        self.system, self.scripts = runner.build(scenario, seed, log_path=log_path, keep_events=False,
                                                 check_every=CHECK_EVERY)
        self.venue = self.system.venue
        self.profile = scenario.profile
        self.paced = clock
        self.system.context.clock = clock if clock is not None else VirtualClock()  # until the run sets its own
        self.view = VenueView(self.venue.accounts, self.venue.markets)
        self.injections = Injections(self._resume, self._end)
        self.system.serve_requests(self.injections)
        assert self.system.scheduler.run_queue is not None
        self.system.scheduler.run_queue.add(ApiClient(self))
        self.log = self.system.log  # the file and the fingerprint, written as the run goes
        self.kept: list[Event] = []  # the summary's events and the samples expectations read
        at_times = any(e.params.get("at_ms") is not None for e in scenario.expectations)
        self._keep = SUMMARY_EVENTS | {"health"} if at_times else SUMMARY_EVENTS
        self.page_events: list[Event] = []  # the log's own event dicts, the newest PAGE_KEPT
        self.page_dropped = 0  # how many older ones were let go
        self.log.listen(self._absorb)
        self.waiting: list[Request] = []  # requests whose answer is not in yet, in injection order
        self.open: list[Request] = []  # every request not answered yet (queued or waiting)
        self.idle = trio.lowlevel.ParkingLot()  # woken each time the venue is quiet and time waits
        self.listeners: list[Callable[[], None]] = []  # called then too (the streams publish)
        self.result: RunResult | None = None
        self._order_ids = 0
        self._request_ids = 0
        self._log({"event": "api_session", "actor": API, "t": 0, "scenario": source, "seed": seed,
                   "overrides": list(overrides), "start_wall_ms": start_wall_ms})

    # -- running ----------------------------------------------------------------------------
    async def run(self) -> RunResult:
        """Run on the paced clock until stopped (``stop``) or ``until_ms``; ends with
        ``api_session_end`` at the last instant. Raises ``RunFailed`` (a crash, an invariant)."""
        assert self.paced is not None
        until_s = None if self.until_ms is None else self.until_ms / 1000
        try:
            self.result = await self.system.run_paced(self.paced, until_s, self._on_idle)
        finally:
            self._fail_waiting()
            self.idle.unpark_all()
        return self.result

    def run_replay(self, end_ms: int) -> RunResult:
        """Run on virtual time to ``end_ms`` with the injections planned so far, ending with
        ``api_session_end`` there, as the served run did."""
        self.result = self.system.run(end_ms / 1000)
        return self.result

    def stop(self) -> None:
        """Finish the current instant, log the end, and let ``run`` return (requests already
        queued are answered first; later ones are refused)."""
        self.injections.stop()

    @property
    def finished(self) -> bool:
        return self.result is not None or self.injections.stopping

    def _end(self, now: int) -> None:
        self._log({"event": "api_session_end", "actor": API, "t": now})

    def _on_idle(self) -> None:
        for listener in self.listeners:
            listener()
        self.idle.unpark_all()

    async def advance(self, virtual_ms: int) -> None:
        """Step a session on a clock without a rate to ``virtual_ms`` (tests): returns once the
        venue has done everything due by then."""
        paced = self.paced
        assert paced is not None and paced.rate is None
        paced.target = max(paced.target, virtual_ms)
        self.system.network.wake.unpark_all()
        while paced.ms < virtual_ms and self.result is None:
            await self.idle.park()

    # -- time -------------------------------------------------------------------------------
    @property
    def now_ms(self) -> int:
        return self.system.context.clock.ms

    def venue_ms(self, virtual_ms: int | None = None) -> int:
        """The venue's clock (Unix ms) at a virtual time (default: now)."""
        return self.start_wall_ms + (self.now_ms if virtual_ms is None else virtual_ms)

    # -- requests ---------------------------------------------------------------------------
    async def request(self, route: Callable[[int], Steps | Any]) -> Any:
        """Run ``route`` at the instant it is injected at (it logs the request and answers, or
        asks the venue and answers from the replies); the answer, or the ``ApiError`` it raised."""
        from api.routes import ApiError  # the routes import this module

        if self.finished:
            raise ApiError(503, "SERVICE_UNAVAILABLE", "the simulation is stopping")
        request = Request()
        self.open.append(request)
        self.injections.add(lambda now: self._start(request, route, now))
        await request.done.wait()
        if request.error is not None:
            raise request.error
        return request.result

    def plan(self, at_ms: int, route: Callable[[int], Steps | Any]) -> None:
        """A replay: ``route`` injected at ``at_ms``, its answer let go."""
        self.injections.add(lambda now: self._start(Request(), route, now), at_ms)

    def _start(self, request: Request, route: Callable[[int], Steps | Any], now: int) -> None:
        try:
            steps = route(now)
        except BaseException as exc:
            self._finish(request, error=exc)
            return
        if not isinstance(steps, Generator):
            self._finish(request, result=steps)
            return
        request.steps = steps
        self._step(request, lambda: next(steps), now)

    def _step(self, request: Request, resume: Callable[[], Ask], now: int) -> None:
        try:
            ask = resume()
        except StopIteration as stop:
            self._finish(request, result=stop.value)
        except BaseException as exc:
            self._finish(request, error=exc)
        else:
            request.ask, request.since_ms, request.replies = ask, now, []
            self.waiting.append(request)
            self.system.network.send(API, account_address(ask.account), ask.message)

    def _resume(self, now: int) -> bool:
        """The instant has settled: answer each waiting request whose replies are in, in order."""
        if not self.waiting:
            return False
        for request in list(self.waiting):
            assert request.ask is not None and request.steps is not None
            steps = request.steps
            if request.ask.answered(request.replies):
                self.waiting.remove(request)
                replies = request.replies
                self._step(request, lambda: steps.send(replies), now)
                return True
            if now - request.since_ms >= REPLY_BOUND_MS:
                self.waiting.remove(request)
                from api.routes import ApiError  # the routes import this module

                late = ApiError(504, "TIMEOUT", f"the venue did not answer within {REPLY_BOUND_MS / 1000:g} s of "
                                f"virtual time (the scenario's latency); what it did is in the log")
                self._step(request, lambda: steps.throw(late), now)
                return True
        return False

    def _finish(self, request: Request, *, result: Any = None, error: BaseException | None = None) -> None:
        request.result, request.error = result, error
        request.done.set()
        if request in self.open:
            self.open.remove(request)

    def _fail_waiting(self) -> None:
        """The run ended: a request still in flight gets an answer that says so."""
        from api.routes import ApiError

        for request in list(self.open):
            self._finish(request, error=ApiError(503, "SERVICE_UNAVAILABLE", "the simulation stopped first"))
        self.waiting.clear()

    # -- the venue's calls, for the routes --------------------------------------------------
    def _request_id(self) -> str:
        self._request_ids += 1
        return f"{API}-{self._request_ids}"

    def place(self, order: Order) -> Generator[Ask, list[object], Any]:
        replies = yield Ask(order.account, PlaceOrder(order), lambda r: order_answered(order, r))
        return order_outcome(order, replies)

    def cancel(self, account: str, symbol: str, order_id: str) -> Generator[Ask, list[object], OrderUpdate | Rejection]:
        replies = yield Ask(account, CancelOrder(symbol, order_id), lambda r: cancel_outcome(order_id, r) is not None)
        answer = cancel_outcome(order_id, replies)
        assert answer is not None
        return answer

    def cancel_all(self, account: str, symbol: str) -> Generator[Ask, list[object], list[OrderUpdate]]:
        # A cancel-all has no answer of its own: what it ended by the settled instant.
        replies = yield Ask(account, CancelAll(symbol), lambda r: True)
        return cancelled(replies)

    def _ask(self, account: str, message: Any) -> Generator[Ask, list[object], RequestDone | Rejection]:
        request_id = message.request_id
        replies = yield Ask(account, message, lambda r: request_outcome(request_id, r) is not None)
        answer = request_outcome(request_id, replies)
        assert answer is not None
        return answer

    def loan(self, account: str, action: str, asset: str, quantity: Decimal
             ) -> Generator[Ask, list[object], Grant | Rejection]:
        done = yield from self._ask(account, LoanRequest(self._request_id(), action, asset, quantity))
        return done if isinstance(done, Rejection) else done.grants[0]

    def withdraw(self, account: str, asset: str, quantity: Decimal, *, auto_borrow: bool
                 ) -> Generator[Ask, list[object], RequestDone | Rejection]:
        return (yield from self._ask(account, Withdraw(self._request_id(), asset, quantity, auto_borrow)))

    def update_settings(self, account: str, **changes: Any) -> Generator[Ask, list[object], RequestDone | Rejection]:
        return (yield from self._ask(account, UpdateSettings(self._request_id(), **changes)))

    # -- the log ----------------------------------------------------------------------------
    def _log(self, event: Event) -> None:
        self.log.append(event)

    def _absorb(self, event: Event) -> None:
        self.view.absorb(event)
        if event["event"] in self._keep:
            self.kept.append(event)
        page = self.page_events
        page.append(event)
        if len(page) > PAGE_KEPT + PAGE_KEPT // 4:
            drop = len(page) - PAGE_KEPT
            del page[:drop]
            self.page_dropped += drop

    def events_after(self, after: int) -> tuple[int, list[Event]]:
        """The events from the ``after``-th on (0: from the first), as the web page asks for
        them: the index of the first one given (later than ``after`` when older ones were let
        go) and the events, in log order."""
        start = max(after, self.page_dropped)
        return start, self.page_events[start - self.page_dropped:]

    @property
    def event_count(self) -> int:
        return self.log.count

    def log_request(self, account: str | None, method: str, path: str, params: object) -> None:
        """An API request that reaches the venue, at its virtual arrival time."""
        self._log({"event": "api_request", "actor": API, "t": self.now_ms, "account": account,
                   "method": method, "path": path, "params": params})

    def log_refused(self, method: str, path: str, status: int, code: str, message: str, *, stage: str = "gate"
                    ) -> None:
        """A refused request: at the ``gate`` (signature, body, rate limit: it never reached the
        venue) or by the ``venue`` (after its ``api_request``); either way nothing changed."""
        self._log({"event": "api_refused", "actor": API, "t": self.now_ms, "method": method, "path": path,
                   "status": status, "code": code, "message": message, "stage": stage})

    def refuse(self, method: str, path: str, status: int, code: str, message: str) -> None:
        """A refusal at the gate, logged at the instant it is injected at, in arrival order."""
        if not self.finished:
            self.injections.add(lambda now: self.log_refused(method, path, status, code, message))

    # -- reading ----------------------------------------------------------------------------
    def next_order_id(self) -> str:
        self._order_ids += 1
        return str(self._order_ids)

    def account(self, account_id: str) -> Any:
        return self.venue.accounts[account_id].account

    def summary(self) -> Mapping[str, Any]:
        return self.venue.summary(self.kept)

    def invariant_violations(self) -> list[str]:
        """Every system-wide invariant on the quiet venue (see exchange.invariants)."""
        observer = self.system.observer
        assert observer is not None
        return quiet_violations([m.account for m in self.venue.accounts.values()],
                                [m.book for m in self.venue.markets.values()],
                                [m.pool for m in self.venue.pools.values()], self.venue.liquidator.fund,
                                self.profile.settlement_asset, observer.external)


def money(value: Decimal | None) -> str | None:
    """A decimal as the venue writes it: a plain string; ``None`` (JSON null) when there is none."""
    if value is None or not value.is_finite():
        return None
    return fmt(value)


def decimal_or_none(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))
