"""A live venue behind the API: one scenario's machines, paced against the wall clock.

``Session`` owns the scenario's venue driven by the direct engine (``exchange.engine``), the
zero-latency driver of the very machines the actors run (the differential test holds the two
to the same events). A request is a message to a sub-account machine at the virtual instant it
arrives, after every calendar entry due by then: the engine delivers it and everything it
causes before the next request, so a market order's answer is its state after matching at
that instant. Virtual time is held back to ``rate`` virtual seconds per real second by the
caller (``advance``): nothing in the venue reads a clock.

Every request that reaches the venue is logged (``api_request``) at its virtual time, before
its effects; ``replay`` feeds the same requests at the same instants to a fresh venue and gets
the same log, byte for byte. Requests refused before the venue (signature, rate limit, bad
body) change nothing and are logged as ``api_refused``; a replay copies them.

Reading what clients ask for (orders, fills, funding, interest, trades, candles) comes from the
event log as the machines wrote it (``VenueView``): the API keeps no rule of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs

from actors.events import EventLog
from exchange.decimals import fmt
from exchange.engine import Exchange
from exchange.machine import Event
from exchange.orders import Origin
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
    """A scenario's venue driven request by request, with the view clients read.

    ``start_wall_ms`` is the venue's clock at virtual time 0: every timestamp in data is
    ``start_wall_ms + virtual ms`` (fixed for a replay from the log's first event).
    """

    def __init__(self, scenario: Scenario, seed: int, start_wall_ms: int, *, until_ms: int | None = None,
                 source: str = "", log_path: Path | None = None, overrides: tuple[str, ...] = ()) -> None:
        self.scenario = scenario
        self.seed = seed
        self.start_wall_ms = start_wall_ms
        self.until_ms = until_ms
        venue, self.scripts = runner.build_venue(scenario, seed)
        self.venue = venue
        self.profile = scenario.profile
        self.view = VenueView(venue.accounts, venue.markets)
        self.engine = Exchange(scenario.profile, venue=venue)
        self.log = EventLog(log_path, keep=False)  # the file and the fingerprint, written as the run goes
        self.kept: list[Event] = []  # the summary's events and the samples expectations read
        at_times = any(e.params.get("at_ms") is not None for e in scenario.expectations)
        self._keep = SUMMARY_EVENTS | {"health"} if at_times else SUMMARY_EVENTS
        self.event_count = 0
        self._order_ids = 0
        self._log({"event": "api_session", "actor": API, "t": 0, "scenario": source, "seed": seed,
                   "overrides": list(overrides), "start_wall_ms": start_wall_ms})
        self._absorb()

    # -- time -------------------------------------------------------------------------------
    @property
    def now_ms(self) -> int:
        return self.engine.now_ms

    def venue_ms(self, virtual_ms: int | None = None) -> int:
        """The venue's clock (Unix ms) at a virtual time (default: now)."""
        return self.start_wall_ms + (self.engine.now_ms if virtual_ms is None else virtual_ms)

    def advance(self, virtual_ms: int) -> None:
        """Run the venue up to ``virtual_ms`` (never back, never past ``until_ms``)."""
        if self.until_ms is not None:
            virtual_ms = min(virtual_ms, self.until_ms)
        if virtual_ms > self.engine.now_ms:
            self.engine.advance_to(virtual_ms)
            self._absorb()

    @property
    def finished(self) -> bool:
        return self.until_ms is not None and self.engine.now_ms >= self.until_ms

    # -- the log ----------------------------------------------------------------------------
    def _log(self, event: Event) -> None:
        self.engine.events.append(event)

    def _absorb(self) -> None:
        """Log, read and let go of what the machines logged since the last call."""
        events, absorb, append, kept, keep = self.engine.events, self.view.absorb, self.log.append, self.kept, self._keep
        for event in events:
            append(event)
            absorb(event)
            if event["event"] in keep:
                kept.append(event)
        self.event_count += len(events)
        events.clear()

    def log_request(self, account: str | None, method: str, path: str, params: object) -> None:
        """An API request that reaches the venue, at its virtual arrival time."""
        self._log({"event": "api_request", "actor": API, "t": self.engine.now_ms, "account": account,
                   "method": method, "path": path, "params": params})
        self._absorb()

    def log_refused(self, method: str, path: str, status: int, code: str, message: str, *, stage: str = "gate"
                    ) -> None:
        """A refused request: at the ``gate`` (signature, body, rate limit: it never reached the
        venue) or by the ``venue`` (after its ``api_request``); either way nothing changed."""
        self._log({"event": "api_refused", "actor": API, "t": self.engine.now_ms, "method": method, "path": path,
                   "status": status, "code": code, "message": message, "stage": stage})
        self._absorb()

    def log_end(self) -> None:
        self._log({"event": "api_session_end", "actor": API, "t": self.engine.now_ms})
        self._absorb()

    # -- talking to the machines ------------------------------------------------------------
    def next_order_id(self) -> str:
        self._order_ids += 1
        return str(self._order_ids)

    def after_request(self) -> None:
        """Read what the machines logged while they handled a request."""
        self._absorb()

    def account(self, account_id: str) -> Any:
        return self.venue.accounts[account_id].account

    def summary(self) -> Mapping[str, Any]:
        return self.venue.summary(self.kept)

    def invariant_violations(self) -> list[str]:
        return self.engine.invariant_violations()


def money(value: Decimal | None) -> str | None:
    """A decimal as the venue writes it: a plain string; ``None`` (JSON null) when there is none."""
    if value is None or not value.is_finite():
        return None
    return fmt(value)


def decimal_or_none(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))
