"""The live terminal demo: a scenario run at a watchable pace, drawn as a dashboard.

``run_demo`` builds the scenario's system as ``runner.run`` does and runs it on the usual
autojump clock, paced to ``rate`` virtual seconds per real second, under a rich ``Live``
dashboard: a price line per symbol the scenario trades on, the top of each book, each
sub-account's net equity with IMR/MMR bars (yellow from 80%, red at 100%), and a feed of fills,
margin refusals and liquidation steps. At the end it prints the expectations, judged as
``marginsim run`` judges them.

Pacing, not a real-time clock: the demo holds the run inside the event listener and the
progress callback (on the trio thread, between two actor steps) until the real clock catches
up. Virtual time only moves by autojump when every task waits, so holding the run changes
nothing in it: the demo shows the very run ``marginsim run`` makes with the same seed (same
events, same fingerprint), whatever the rate, the pauses or the machine's speed. A real-time
clock would let wake-up latency (about a millisecond, i.e. ``rate`` ms of virtual time) reorder
events due close together, and a trio task reading keys would perturb the seeded scheduling.

Three parts, kept apart so the first two can be tested without trio or a terminal:

* ``DemoState``: what the dashboard shows, fed one event at a time.
* the renderers (``dashboard`` and what it calls): state in, rich renderables out.
* ``_Demo``: pacing, keys and redraws (at most every ``FRAME_S``), all on the trio thread.

Keys (in a terminal; stdin in cbreak mode, restored on the way out): space pauses and
resumes, ``s`` steps one virtual second while paused, ``b`` steps one virtual second back
(pausing first), ``+``/``-`` double or halve the rate, ``q`` stops watching: the dashboard
freezes and the rest of the run goes at full speed, so the expectations are judged on the
whole run. Ctrl-C aborts with ``KeyboardInterrupt``.

Stepping back is by the second, as ``s`` steps forward and as the web page's "back 1 s" does:
a lecturer rewinds to "just before the gap", and one event back is usually one of a burst at
the same millisecond, where nothing visible changes. The run cannot go back, so the frame is
rebuilt: a fresh ``DemoState`` fed the log's events up to that instant, every panel from the
same instant. ``s`` then steps forward through what was already seen until the live instant,
and space goes back to it and plays on.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from typing import Any

import attrs
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from actors.agents import ScriptedTrader
from actors.events import Event
from actors.system import RunFailed, System
from exchange.decimals import ZERO, ceil_to, floor_to, fmt, fmt_pct
from exchange.protocol import PlaceOrder
from scenarios.explain import sample_row
from scenarios.loader import Scenario
from scenarios.runner import CENT, ScenarioRun, account_status, build, judge

FRAME_S = 0.1  # real seconds between redraws
SPARK_POINTS = 20  # samples in a price line, one per price interval at most
FEED_LINES = 12
MAX_ACCOUNTS = 12  # more sub-accounts than this: show the riskiest
NEAR = Decimal("0.8")  # a ratio from here to 100% is drawn yellow
BAR_WIDTH = 16  # half as wide under NARROW columns
STATUS_WIDTH = 34  # the accounts' status column (half under NARROW), fixed: a long end status wraps, the numbers stay
NARROW = 100
SIDE_BY_SIDE = 116  # console columns from which prices and books sit side by side
RATE_LIMITS = (0.125, 4096.0)
FEED_KINDS = ("fill", "order_rejected", "liquidation_step")
SPARKS = "▁▂▃▄▅▆▇█"
EIGHTHS = " ▏▎▍▌▋▊▉"
ORIGINS = {"LIQUIDATION_AUTOCLOSE": "liquidation", "ADL_AUTOCLOSE": "adl", "BACKSTOP_LIQUIDITY_PROVIDER": "backstop",
           "COLLATERAL_CONVERSION": "conversion"}


# ---------------------------------------------------------------------------------------
# State


@attrs.define
class PriceLine:
    """One symbol's price: the first seen (for the change), the last, recent samples."""

    first: Decimal
    last: Decimal
    samples: deque[Decimal] = attrs.field(factory=lambda: deque(maxlen=SPARK_POINTS))


@attrs.define
class DemoState:
    """What the dashboard shows, fed by the run's events; knows nothing of rich or trio."""

    name: str
    seed: int
    until_ms: int
    rate: float
    watched: tuple[str, ...]  # symbols with a price line, in display order
    accounts: tuple[str, ...]
    sample_ms: int = 1000  # at most one price-line sample per this much virtual time
    interactive: bool = False
    now_ms: int = 0
    paused: bool = False
    finishing: bool = False  # 'q': no more drawing, the rest runs at full speed
    done: bool = False
    prices: dict[str, PriceLine] = attrs.field(factory=dict)
    books: dict[str, Event | None] = attrs.field(factory=dict)  # market -> last book_top
    health: dict[str, Event | None] = attrs.field(factory=dict)  # account -> last health sample
    feed: deque[Event] = attrs.field(factory=lambda: deque(maxlen=FEED_LINES))
    pause_on: frozenset[str] = frozenset()  # "liquidation", "bankruptcy", "refusal": stop the clock there
    # (account, market) -> the position after the newest fill, so the accounts panel and the
    # feed show one instant even between two health samples.
    positions: dict[tuple[str, str], Decimal] = attrs.field(factory=dict)
    fund_held: Decimal = ZERO  # the liquidator's fund (its events report it) ...
    fund_fees: Decimal = ZERO  # ... and the books' liquidation fees, as the run's summary counts them
    backstop_used: dict[tuple[str, str], Decimal] = attrs.field(factory=dict)  # (provider, market) -> notional
    capacity: dict[tuple[str, str], Decimal] = attrs.field(factory=dict)
    adl_parties: dict[str, None] = attrs.field(factory=dict)
    bankrupt: dict[str, None] = attrs.field(factory=dict)
    starts: dict[str, int] = attrs.field(factory=dict)  # account -> liquidations started (what its end is judged with)
    settle: str = "USDC"
    live_ms: int | None = None  # set on a frame rebuilt from the past (``b``): where the run is
    _sampled: int = attrs.field(default=-1, init=False)  # the last sample's slot (now_ms // sample_ms)

    @classmethod
    def for_scenario(cls, scenario: Scenario, seed: int, until_ms: int, rate: float,
                     interactive: bool = False) -> DemoState:
        """Empty, with a row for every sub-account and market the scenario names."""
        markets = scenario_markets(scenario)
        accounts = tuple(a.id for a in scenario.accounts)
        capacity = {(a, m): q for a, cap in scenario.backstops for m, q in cap.items()}
        return cls(scenario.name, seed, until_ms, rate, watched_symbols(scenario, markets), accounts,
                   sample_ms=scenario.price_interval_ms, interactive=interactive,
                   books=dict.fromkeys(markets), health=dict.fromkeys(accounts), capacity=capacity,
                   settle=scenario.profile.settlement_asset)

    def on_event(self, event: Event) -> None:
        self.now_ms = max(self.now_ms, event["t"])
        kind = event["event"]
        if kind == "price":
            self._price(event["symbol"], event["price"])
        elif kind == "book_top":
            self.books[event["actor"].removeprefix("market:")] = event
        elif kind == "health":
            account = event["actor"].removeprefix("account:")
            self.health[account] = event
            for market in [m for (a, m) in self.positions if a == account]:
                del self.positions[(account, market)]  # the sample is the newer word
        elif kind in ("fund_flow", "lenders_compensated") and event.get("asset", self.settle) == self.settle:
            self.fund_held = event["fund"]
        if kind == "fill":
            if event.get("position") is not None:
                self.positions[(event["actor"].removeprefix("account:"), event["market"])] = event["position"]
            if event.get("liquidation_fee") and str(event["market"]).endswith("_PERP"):
                self.fund_fees += event["liquidation_fee"]
        elif kind == "liquidation_step":
            self._step(event)
        if kind in FEED_KINDS:
            self.feed.append(event)

    def _step(self, event: Event) -> None:
        reason = str(event["reason"])
        if event["stage"] == "backstop" and " taken by " in reason:
            provider = reason.split(" taken by ", 1)[1].split(" ", 1)[0]
            key = (provider, str(event["market"]))
            self.backstop_used[key] = self.backstop_used.get(key, ZERO) + event["quantity"] * event["price"]
        elif event["stage"] == "adl" and "closed against " in reason:
            self.adl_parties[reason.split("closed against ", 1)[1].split(" ", 1)[0]] = None
        elif event["stage"] == "bankruptcy":
            self.bankrupt[event["account"]] = None
        elif event["stage"] == "start":
            self.starts[event["account"]] = self.starts.get(event["account"], 0) + 1

    def blank(self) -> DemoState:
        """An empty state with this one's configuration (scenario, rate, rows), to feed again."""
        return attrs.evolve(self, now_ms=0, prices={}, books=dict.fromkeys(self.books),
                            health=dict.fromkeys(self.health), feed=deque(maxlen=FEED_LINES), positions={},
                            fund_held=ZERO, fund_fees=ZERO, backstop_used={}, adl_parties={}, bankrupt={}, starts={})

    def should_pause(self, event: Event) -> bool:
        """Whether ``event`` is one the lecture asked to stop at (``--pause-on``)."""
        kind = event["event"]
        return (("refusal" in self.pause_on and kind == "order_rejected")
                or ("liquidation" in self.pause_on and kind == "liquidation_step")
                or ("bankruptcy" in self.pause_on and kind == "liquidation_step" and event["stage"] == "bankruptcy"))

    def _price(self, symbol: str, price: Decimal) -> None:
        line = self.prices.get(symbol)
        if line is not None:
            line.last = price
        elif symbol in self.watched:
            self.prices[symbol] = PriceLine(price, price)

    def advance(self, now_ms: int) -> None:
        """The clock moved: take a price-line sample if a new sample slot began."""
        self.now_ms = max(self.now_ms, now_ms)
        slot = self.now_ms // self.sample_ms
        if slot > self._sampled:
            self._sampled = slot
            for line in self.prices.values():
                line.samples.append(line.last)


def rebuilt(state: DemoState, events: Sequence[Event], at_ms: int) -> DemoState:
    """The frame at ``at_ms``: a blank copy of ``state`` fed the ``events`` (in log order) up
    to that instant, the clock advanced before each as it is live; marked as a look back."""
    frame = state.blank()
    for event in events:
        if event["t"] > at_ms:
            break
        frame.advance(event["t"])
        frame.on_event(event)
    frame.advance(at_ms)
    frame.now_ms = at_ms
    frame.live_ms = state.now_ms
    return frame


def scenario_markets(scenario: Scenario) -> tuple[str, ...]:
    """Every market the scenario's accounts, agents or actions trade, in first-mention order."""
    markets = [m for a in scenario.accounts for m in a.markets]
    markets += [m for maker in scenario.makers for m in maker.markets]
    markets += [m for noise in scenario.noise for m in noise.markets]
    markets += [a.message.order.market for a in scenario.actions if isinstance(a.message, PlaceOrder)]
    return tuple(dict.fromkeys(markets))


def watched_symbols(scenario: Scenario, markets: Sequence[str]) -> tuple[str, ...]:
    """The index (base asset) and, for a perp, the mark of each market, then deposited assets:
    the feed prices every asset and perp of the profile, most of which a scenario never uses."""
    profile = scenario.profile
    symbols: list[str] = []
    for symbol in markets:
        market = profile.markets[symbol]
        symbols += [market.base, symbol] if market.is_perp else [market.base]
    symbols += [asset for account in scenario.accounts for asset in account.deposits]
    return tuple(s for s in dict.fromkeys(symbols) if s != profile.settlement_asset)


# ---------------------------------------------------------------------------------------
# Rendering: state in, renderables out


def sparkline(values: Sequence[Decimal]) -> str:
    """Block characters from low to high; a flat series sits in the middle."""
    if not values:
        return ""
    low, high = min(values), max(values)
    if high == low:
        return SPARKS[3] * len(values)
    scale = (len(SPARKS) - 1) / (high - low)
    return "".join(SPARKS[round((v - low) * scale)] for v in values)


def ratio_style(ratio: Decimal) -> str:
    """Red at or above 100% (refusal for IMR, liquidation for MMR), yellow near it."""
    if ratio >= 1:
        return "red"
    return "yellow" if ratio >= NEAR else "green"


def ratio_bar(ratio: Decimal, width: int = BAR_WIDTH) -> Text:
    """A bar filled in eighths up to 100% (full beyond), then the percentage."""
    eighths = int(min(max(ratio, Decimal(0)), Decimal(1)) * width * 8)
    full, part = divmod(eighths, 8)
    bar = "█" * full + (EIGHTHS[part] if part else "")
    text = Text(bar.ljust(width), style=ratio_style(ratio))
    text.append(f" {fmt_pct(ratio):>8}")
    return text


def _side(side: object) -> str:
    return "buy" if str(side) == "Bid" else "sell"


def _price_part(price: Decimal | None) -> str:
    return f"@ {fmt(price)}" if price is not None else "at market"


def feed_line(event: Event) -> Text:
    """One fill, refusal or liquidation step as a line of the feed."""
    kind = event["event"]
    t = f"{event['t'] / 1000:8.3f}s "
    if kind == "fill":
        account = event["actor"].removeprefix("account:")
        text = (f"fill     {account} {_side(event['side'])} {fmt(event['quantity'])} {event['market']} "
                f"{_price_part(event['price'])}  fee {fmt(event['fee'], 2)}")
        if event.get("position") is not None:  # a perp fill
            text += f"  position {fmt(event['position'])}"
        if event.get("realized_pnl"):
            text += f"  pnl {fmt(event['realized_pnl'], 2)}"
        origin = str(event["origin"])
        if origin != "USER":
            text += f"  [{ORIGINS.get(origin, origin)}]"
        return Text(t + text, style="cyan", no_wrap=True, overflow="ellipsis")
    if kind == "order_rejected":
        account = event["actor"].removeprefix("account:")
        text = (f"refused  {account} {_side(event['side'])} {fmt(event['quantity'])} {event['market']} "
                f"{_price_part(event['price'])}  {event['code']}")
        if event.get("imr_before") is not None:
            text += f"  IMR {fmt_pct(event['imr_before'])} -> {fmt_pct(event['imr_after'])}"
        if event.get("max_quantity") is not None:
            text += f"  largest that passes {fmt(event['max_quantity'])}"
        return Text(t + text, style="yellow", no_wrap=True, overflow="ellipsis")
    stage = event["stage"]
    t = f"{int(event.get('at', event['t'])) / 1000:8.3f}s "  # the step's own time, as run prints it
    text = f"liq {stage:<10} {event['account']}"
    if event.get("quantity"):
        text += (f" {_side(event['side'])} {fmt(event['quantity'])} {event['market']} {_price_part(event['price'])}"
                 f"  MMR {fmt_pct(event['mmr_before'])} -> {fmt_pct(event['mmr_after'])}")
    else:
        text += f"  {event['reason']}"
    style = "green" if stage in ("healthy", "closed") else "bold red"
    return Text(t + text, style=style, no_wrap=True, overflow="ellipsis")


def header(state: DemoState) -> Panel:
    status = "done" if state.done else "finishing unseen" if state.finishing else "paused" if state.paused else ""
    if state.live_ms is not None:
        status = f"looking back (the run is at {state.live_ms / 1000:.1f}s)"
    line = Text.assemble((state.name, "bold"), f"   t {state.now_ms / 1000:.1f}s / {state.until_ms / 1000:g}s"
                         f"   {state.rate:g}x   seed {state.seed}")
    if status:
        line.append(f"   {status}", style="bold yellow")
    if state.interactive:
        line.append("   space pause · s step 1s · b back 1s · +/- speed · q finish", style="dim")
    return Panel(line, title="marginsim demo", title_align="left")


def _table(*columns: str, right: tuple[str, ...] = (), wrap: tuple[str, ...] = (), title: str | None = None,
           widths: dict[str, int] | None = None) -> Table:
    """A borderless table, left-justified except the ``right`` columns; only the ``wrap``
    columns give up width when the console is narrow; ``widths`` keeps columns from changing
    width between frames."""
    table = Table(title=title, title_justify="left", expand=True, box=None)
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left", no_wrap=column not in wrap,
                         min_width=(widths or {}).get(column))
    return table


def fund_panel(state: DemoState) -> Text:
    """The liquidity fund, what the backstop providers can still take, and who ADL closed against."""
    fund = state.fund_held + state.fund_fees
    line = Text.assemble("liquidity fund ", (f"{fmt(fund, 2)} {state.settle}", "red" if fund < 0 else ""))
    for (provider, market), most in state.capacity.items():
        left = max(most - state.backstop_used.get((provider, market), ZERO), ZERO)
        line.append(f"   backstop {provider} {market}: {fmt(left, 2)} of {fmt(most)} left")
    if not state.capacity:
        line.append("   no backstop provider")
    line.append("   ADL against: " + (", ".join(state.adl_parties) or "nobody yet"))
    return line


def prices_table(state: DemoState) -> Table:
    table = _table("symbol", "recent", "last", "change", right=("last", "change"), title="prices")
    for symbol in state.watched:
        line = state.prices.get(symbol)
        if line is None:
            continue
        change = line.last / line.first - 1
        style = "green" if change > 0 else "red" if change < 0 else ""
        sign = "+" if change > 0 else ""
        table.add_row(symbol, sparkline(line.samples), fmt(line.last), Text(sign + fmt_pct(change), style=style))
    return table


def books_table(state: DemoState) -> Table:
    table = _table("market", "bid size", "bid", "ask", "ask size", right=("bid size", "bid", "ask", "ask size"),
                   title="books (top)")
    for market, top in state.books.items():
        if top is None:
            table.add_row(market, "-", "-", "-", "-")
            continue
        table.add_row(market, fmt(top["bid_quantity"]), Text(fmt(top["bid"]), style="green"),
                      Text(fmt(top["ask"]), style="red"), fmt(top["ask_quantity"]))
    return table


def _shown_accounts(state: DemoState) -> list[str]:
    """All sub-accounts in scenario order, or the riskiest by MMR when there are too many."""
    if len(state.accounts) <= MAX_ACCOUNTS:
        return list(state.accounts)
    def risk(account: str) -> tuple[bool, bool, Decimal]:
        sample = state.health[account]
        assert sample is not None
        return account in state.bankrupt, bool(sample["liquidating"]), sample["mmr"]

    shown = [a for a, sample in state.health.items() if sample is not None]
    return sorted(shown, key=risk, reverse=True)[:MAX_ACCOUNTS]  # bankrupt and liquidating ones stay on


def accounts_table(state: DemoState, bar_width: int = BAR_WIDTH) -> Table:
    table = _table("account", "net equity", "IMR", "MMR", "positions, borrows", "", right=("net equity",),
                   wrap=("positions, borrows", ""), widths={"account": 8, "net equity": 13})
    table.columns[-1].width = STATUS_WIDTH if bar_width >= BAR_WIDTH else STATUS_WIDTH // 2
    for account in _shown_accounts(state):
        sample = state.health[account]
        if sample is None:
            table.add_row(account, "-", "-", "-", "-", "")
            continue
        positions = {**sample["positions"], **{m: q for (a, m), q in state.positions.items() if a == account}}
        holdings = [f"{fmt(q)} {m}" for m, q in positions.items() if q]
        holdings += [f"borrowed {fmt(q, 2)} {a}" for a, q in sample["borrows"].items() if q]
        debt = -sample.get("unsettled_equity", ZERO)
        status = _status(state, account, sample)
        if account in state.bankrupt and debt > 0:
            table.add_row(account, fmt(floor_to(sample["net_equity"], CENT)), "-", "-", ", ".join(holdings) or "-",
                          status)
            continue
        table.add_row(account, fmt(floor_to(sample["net_equity"], CENT)), ratio_bar(sample["imr"], bar_width),
                      ratio_bar(sample["mmr"], bar_width), ", ".join(holdings) or "-", status)
    return table


def _status(state: DemoState, account: str, sample: Event) -> Text:
    """The accounts panel's last column. At the account's closing sample it is how the run ended,
    in ``account_status``'s words (the rule ``run`` and ``explain`` judge with): liquidation
    pending with its MMR, bankrupt with its debt, mid-liquidation. Before that, the instant's state."""
    if sample.get("closing"):
        words = account_status(sample_row(sample, state.starts.get(account, 0)), state.settle)
        return Text(words, style="bold red")
    debt = -sample.get("unsettled_equity", ZERO)
    if account in state.bankrupt and debt > 0:
        return Text(f"bankrupt, owes the fund {fmt(ceil_to(debt, CENT))}", style="bold red")
    return Text("liquidating", style="bold red") if sample["liquidating"] else Text("")


def dashboard(state: DemoState, width: int) -> RenderableType:
    """The whole screen for a ``width``-column console: header, prices beside (or above) books,
    sub-accounts, the feed."""
    markets = Table.grid(expand=True, padding=(0, 2))
    if width >= SIDE_BY_SIDE:
        markets.add_column(ratio=1)
        markets.add_column(ratio=1)
        markets.add_row(prices_table(state), books_table(state))
    else:
        markets.add_row(prices_table(state))
        markets.add_row(books_table(state))
    hidden = len(state.accounts) - len(_shown_accounts(state))
    accounts_title = "sub-accounts" + (f" (the {MAX_ACCOUNTS} riskiest of {len(state.accounts)})" if hidden else "")
    accounts = accounts_table(state, BAR_WIDTH if width >= NARROW else BAR_WIDTH // 2)
    feed = Group(*(feed_line(e) for e in state.feed)) if state.feed else Text("nothing yet", style="dim")
    return Group(
        header(state),
        Panel(markets, title="market", title_align="left"),
        Panel(accounts, title=accounts_title, title_align="left"),
        Panel(fund_panel(state), title="fund, backstop, ADL", title_align="left"),
        Panel(feed, title="fills, refusals, liquidation steps", title_align="left"),
    )


def results(run: ScenarioRun) -> RenderableType:
    """The expectations with pass/fail, or why the run stopped early."""
    if run.failure is not None:
        return Text(f"the run stopped early ({run.failure.kind}): {run.failure}", style="bold red")
    table = Table(title="expectations", title_justify="left", box=None)
    table.add_column("")
    table.add_column("expectation")
    table.add_column("found")
    for outcome in run.outcomes:
        mark = Text("PASS", style="green") if outcome.passed else Text("FAIL", style="red")
        table.add_row(mark, outcome.description, outcome.detail)
    verdict = Text("all expectations hold", style="green") if run.passed else Text("an expectation failed", style="red")
    return Group(table, verdict) if run.outcomes else verdict


# ---------------------------------------------------------------------------------------
# Running it: pacing the run, keys


class _Demo:
    """Paces the run and draws it. Everything happens inside the run's event listener and
    progress callback, on the trio thread, between two actor steps: the run is held there
    (``time.sleep``/``select``) until the real clock catches up with the virtual one, which
    virtual time cannot notice, as it only moves by autojump when every task waits."""

    def __init__(self, state: DemoState, live: Live, keys_fd: int | None, events: Sequence[Event] = ()) -> None:
        self.state = state
        self.live = live
        self.keys_fd = keys_fd
        self.events = events  # the run's log so far (what ``b`` rebuilds a past frame from)
        self.view: DemoState | None = None  # the past frame on screen, if stepped back
        self.anchor: tuple[float, float] | None = None  # (real s, virtual ms) the pace runs from
        self.hold_ms = 0.0  # paused: how far virtual time may go (s steps it on)
        self.last_draw = 0.0

    def on_event(self, event: Event) -> None:
        self.wait_until(event["t"])
        self.state.on_event(event)
        if self.state.should_pause(event) and not self.state.paused and not self.state.finishing:
            self.state.paused = True  # the clock stops at this instant; space or s goes on
            self.hold_ms = event["t"]
            self.anchor = (time.monotonic(), event["t"])
            self.draw(force=True)
            return
        self.draw()

    def on_progress(self, now_ms: int) -> None:
        self.wait_until(now_ms)
        self.state.advance(now_ms)
        self.draw()

    def limit_ms(self) -> float:
        """How far virtual time may have gone by now: the pace line, or the pause point."""
        if self.state.paused:
            return self.hold_ms
        if self.anchor is None:  # the first call: the pace starts now, at the run's start
            self.anchor = (time.monotonic(), 0.0)
        real, virtual = self.anchor
        return virtual + (time.monotonic() - real) * self.state.rate * 1000

    def wait_until(self, t_ms: int) -> None:
        """Hold the run until the pace reaches ``t_ms``, showing the clock move and taking keys
        meanwhile. A run slower than the pace is never held."""
        while not self.state.finishing:
            limit = self.limit_ms()
            if limit >= t_ms:
                return
            self.state.advance(int(limit))
            self.draw()
            wait = FRAME_S if self.state.paused else min(FRAME_S, (t_ms - limit) / 1000 / self.state.rate)
            for key in _keys_within(self.keys_fd, wait):
                self.on_key(key)

    def frame(self) -> DemoState:
        """What is on screen: the past frame stepped back to, else the live state."""
        return self.view if self.view is not None else self.state

    def on_key(self, key: str) -> None:
        state = self.state
        if key == "b":
            if not state.paused:
                state.paused = True
                self.hold_ms = state.now_ms
            self.view = rebuilt(state, self.events, max(self.frame().now_ms - 1000, 0))
        elif key == "s" and self.view is not None:
            ahead = self.view.now_ms + 1000
            self.view = rebuilt(state, self.events, ahead) if ahead < state.now_ms else None
        elif key == " ":
            self.view = None
            state.paused = not state.paused
            self.hold_ms = state.now_ms  # pausing: the run stops here
            self.anchor = (time.monotonic(), state.now_ms)  # resuming: the pace goes on from here
        elif key == "s" and state.paused:
            self.hold_ms += 1000
        elif key in "+=-_":
            self.anchor = (time.monotonic(), state.now_ms)
            factor = 2.0 if key in "+=" else 0.5
            state.rate = min(max(state.rate * factor, RATE_LIMITS[0]), RATE_LIMITS[1])
        elif key == "q":
            self.view = None
            state.finishing = True
        self.draw(force=True)

    def draw(self, force: bool = False) -> None:
        """Redraw, at most every ``FRAME_S`` and never while finishing, unless forced."""
        if not force and (self.state.finishing or time.monotonic() - self.last_draw < FRAME_S):
            return
        self.live.update(dashboard(self.frame(), self.live.console.width), refresh=True)
        self.last_draw = time.monotonic()


def _keys_within(fd: int | None, timeout: float) -> str:
    """The keys typed within ``timeout`` seconds; without a keyboard, just the wait."""
    if fd is None:
        time.sleep(timeout)
        return ""
    ready, _, _ = select.select([fd], [], [], timeout)
    return os.read(fd, 64).decode(errors="ignore") if ready else ""


@contextlib.contextmanager
def _cbreak(fd: int | None) -> Iterator[None]:
    """Keys arrive one at a time, unechoed; the terminal's settings come back however we leave."""
    if fd is None:
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _chain(first: Callable[[Event], Any] | None, then: Callable[[Event], Any]) -> Callable[[Event], Any]:
    """A listener calling ``first`` (the invariant observer, when on) before ``then``."""
    if first is None:
        return then

    def both(event: Event) -> None:
        first(event)
        then(event)

    return both


def _judged_run(scenario: Scenario, seed: int, until_ms: int, system: System,
                scripts: dict[str, ScriptedTrader]) -> ScenarioRun:
    """Run and judge, as ``runner.run`` does (Ctrl-C goes on as ``Interrupted``, with its time)."""
    try:
        result = system.run(until_ms / 1000)
    except RunFailed as failure:
        return ScenarioRun(scenario, seed, until_ms, None, failure, ())
    outcomes = tuple(judge(e, result, scripts) for e in scenario.expectations)
    return ScenarioRun(scenario, seed, until_ms, result, None, outcomes)


def run_demo(
    scenario: Scenario,
    *,
    seed: int | None = None,
    rate: float = 5.0,
    console: Console | None = None,
    until_s: float | None = None,
    interactive: bool | None = None,
    start_paused: bool = False,
    pause_on: Sequence[str] = (),
) -> ScenarioRun:
    """Run ``scenario`` at ``rate`` virtual seconds per real second with a live dashboard on
    ``console``, print the expectations' results and return the run: the same run, event for
    event, as ``runner.run`` with this seed.

    ``interactive`` (default: the console is a terminal and so is stdin, which it needs) reads
    keys from stdin: space, s, b, +, -, q (see the module docstring). ``start_paused`` and
    ``pause_on`` (``liquidation``, ``bankruptcy``, ``refusal``: the clock stops at the next such
    event) need those keys to go on, so they are ignored without them."""
    if rate <= 0:
        raise ValueError(f"rate must be positive, not {rate}")
    console = console if console is not None else Console()
    seed = scenario.seed if seed is None else seed
    until_ms = scenario.duration_ms if until_s is None else round(until_s * 1000)
    if interactive is None:
        interactive = console.is_terminal and sys.stdin.isatty()
    keys_fd = sys.stdin.fileno() if interactive else None
    state = DemoState.for_scenario(scenario, seed, until_ms, rate, interactive)
    if interactive:
        state.pause_on = frozenset(pause_on)
        state.paused = start_paused
    with Live(dashboard(state, console.width), console=console, auto_refresh=False) as live, _cbreak(keys_fd):
        demo = _Demo(state, live, keys_fd)
        system, scripts = build(scenario, seed, progress=demo.on_progress)
        demo.events = system.log.events
        system.log.listener = _chain(system.log.listener, demo.on_event)
        run = _judged_run(scenario, seed, until_ms, system, scripts)
        state.done = True
        demo.draw(force=True)
    console.print()
    console.print(results(run))
    return run
