"""The liquidator machine: decides when sub-accounts are liquidated and who takes what.

It knows accounts only through their health reports (which may be stale) and the books only
through the depth they send when asked. Each ``liquidation`` tick it starts a liquidation for
every account whose last report says MMR >= 100% (the account re-checks on its own state and
may answer that the report was stale), and gives every running liquidation its next loop with
a fresh view of the books: the account computes and sends its own reduce-only orders. When an
account reports that the book cannot finish the job, the liquidator plans stage 2 and 3 across
accounts: backstop providers at mark within their capacity, then ADL counterparties ranked on
their last reports, revalued at the marks it hears now. The first loop follows the start at
once; later ones come one per tick. It keeps the liquidity fund and every account's liquidation
history, and pays the lenders of a written-off borrow (spec F7).

Each case moves only along ``exchange.liquidation.TRANSITIONS`` (an outcome the table does not
allow raises); the cross-account allocation is ``exchange.backstop.allocate``.
"""

from __future__ import annotations

from decimal import Decimal

import attrs

from exchange.backstop import allocate
from exchange.decimals import ONE, ZERO, floor_to, fmt
from exchange.liquidation import (
    BOOK_RETRY_MS,
    BackstopProvider,
    CaseState,
    LiquidationStep,
    Outcome,
    Progress,
    needs_liquidation,
    next_state,
)
from exchange.machine import Machine
from exchange.profile import Profile
from exchange.protocol import (
    FEED,
    LIQUIDATOR,
    SCHEDULER,
    AssetTransfer,
    BackstopPlan,
    Depth,
    DepthRequest,
    FundFlow,
    HealthReport,
    LiquidationLoop,
    LiquidationReport,
    PriceSnapshot,
    PriceUpdate,
    Schedule,
    StartLiquidation,
    Subscribe,
    Tick,
    WriteOff,
    WrittenOff,
    account_address,
    market_address,
    pool_address,
)


@attrs.define
class _Case:
    loop: int
    state: CaseState = CaseState.STARTING
    waiting: bool = True  # a message to the account is unanswered
    progress: Progress = attrs.field(factory=Progress)
    started_ms: int = 0
    due: bool = True  # its next loop is due: at the start, each liquidation tick, a retry
    retried: bool = False  # this loop found an empty book and is being read again


class LiquidatorMachine(Machine):
    handlers = {
        HealthReport: "on_report",
        Tick: "on_tick",
        Depth: "on_depth",
        LiquidationReport: "on_liquidation_report",
        FundFlow: "on_fund_flow",
        WrittenOff: "on_written_off",
        PriceUpdate: "on_price",
        PriceSnapshot: "on_snapshot",
    }

    def __init__(self, profile: Profile) -> None:
        super().__init__(LIQUIDATOR)
        self.profile = profile
        self.settle = profile.settlement_asset
        self.reports: dict[str, HealthReport] = {}
        self.cases: dict[str, _Case] = {}
        self.history: dict[str, list[LiquidationStep]] = {}
        self.providers: list[BackstopProvider] = []
        self.fund: dict[str, Decimal] = {}
        self.prices: dict[str, Decimal] = {self.settle: ONE}  # the unit every value is counted in
        self.depth: dict[str, Depth] = {}
        self._depth_wanted = 0
        self._loop = 0

    def subscribe(self) -> None:
        symbols = tuple(self.profile.assets) + tuple(m.symbol for m in self.profile.perp_markets())
        self.send(FEED, Subscribe(tuple(s for s in symbols if s != self.settle)))

    def on_price(self, sender: str, message: PriceUpdate) -> None:
        self.prices.update(message.prices)

    def on_snapshot(self, sender: str, message: PriceSnapshot) -> None:
        self.prices.update(message.prices)

    def on_report(self, sender: str, message: HealthReport) -> None:
        self.reports[message.account] = message

    # -- the loop ---------------------------------------------------------------------------
    def on_tick(self, sender: str, message: Tick) -> None:
        if message.kind == "liquidation-retry":
            self._request_loops()
            return
        if message.kind != "liquidation":
            return
        for case in self.cases.values():
            case.due = True
        for account, report in self.reports.items():
            if account not in self.cases and needs_liquidation(report) and not report.liquidating:
                self._loop += 1
                self.cases[account] = _Case(self._loop, started_ms=self.now_ms)
                self.send(account_address(account), StartLiquidation(self._loop))
        self._request_loops()

    def _request_loops(self) -> None:
        """Ask every book for its depth, then give each running liquidation its next loop."""
        if self._depth_wanted == 0 and any(c.state is CaseState.RUNNING and not c.waiting and c.due
                                           for c in self.cases.values()):
            self.depth.clear()
            self._depth_wanted = len(self.profile.markets)
            for symbol in self.profile.markets:
                self.send(market_address(symbol), DepthRequest())

    def on_depth(self, sender: str, message: Depth) -> None:
        self.depth[message.market] = message
        self._depth_wanted -= 1
        if self._depth_wanted:
            return
        view = {d.market: (d.bids, d.asks) for d in self.depth.values()}
        for account, case in self.cases.items():
            if case.state is CaseState.RUNNING and not case.waiting and case.due:
                case.waiting, case.due = True, False
                self.send(account_address(account),
                          LiquidationLoop(case.loop, view, case.progress))

    # -- what the accounts report -----------------------------------------------------------
    def on_liquidation_report(self, sender: str, message: LiquidationReport) -> None:
        account = sender.split(":", 1)[1]
        case = self.cases.get(account)
        if case is None or case.loop != message.loop:
            return
        for step in message.steps:
            self._record(account, step)
        outcome, state = message.outcome, case.state
        case.state = next_state(state, outcome)
        if outcome is Outcome.NOT_NEEDED:
            self.emit("liquidation_skipped", account=account, mmr=message.mmr, reason=message.reason)
        elif outcome is Outcome.STARTED:
            self._record(account, LiquidationStep(time_ms=self.now_ms, stage="start", mmr_before=message.mmr,
                                                  mmr_after=message.mmr, reason=message.reason))
            case.waiting = False
            self._request_loops()  # the first loop runs at once, as part of the start
        elif outcome is Outcome.STEPPED:
            if state is CaseState.BACKSTOP:  # whatever stage 2 left goes back to the book, counted afresh
                case.progress = case.progress.after_backstop()
            elif message.book_failed and not message.steps and not case.retried:
                case.retried = case.due = True  # nothing to trade against: read the book again shortly
                self.send(SCHEDULER, Schedule("liquidation-retry", self.now_ms + BOOK_RETRY_MS))
            else:
                case.progress = case.progress.after_book_loop(message.book_failed)
                case.retried = False
            case.waiting = False
        elif outcome is Outcome.BACKSTOP:
            self._plan_backstop(account, case, message.reason)
        else:  # healthy, closed, bankruptcy
            self._record(account, LiquidationStep(time_ms=self.now_ms, stage=outcome, mmr_before=message.mmr,
                                                  mmr_after=message.mmr, reason=message.reason))
            report = self.reports.get(account)
            if outcome is Outcome.BANKRUPTCY and report is not None:
                for asset, _ in report.borrows:
                    self.send(pool_address(asset), WriteOff(account, self.prices.get(asset, ZERO)))
        if case.state is CaseState.ENDED:
            del self.cases[account]

    def _record(self, account: str, step: LiquidationStep) -> None:
        self.history.setdefault(account, []).append(step)
        self.emit("liquidation_step", at=step.time_ms, account=account, stage=step.stage, market=step.market,
                  side=step.side, quantity=step.quantity, price=step.price, fee=step.fee, taker_fee=step.taker_fee,
                  liquidation_fee=step.liquidation_fee, mark=step.mark, planned_mark=step.planned_mark,
                  mmr_after_at_planned_mark=step.mmr_after_at_planned_mark, position_after=step.position_after,
                  mmr_before=step.mmr_before, mmr_after=step.mmr_after, reason=step.reason)

    def _plan_backstop(self, account: str, case: _Case, reason: str) -> None:
        """Stage 2 then 3 on what has been heard (see ``exchange.backstop``)."""
        plan = allocate(self.reports[account], self.reports, self.providers, self.prices, self.profile)
        self.emit("backstop_plan", account=account, reason=reason, transfers=len(plan.handovers),
                  deliveries=len(plan.deliveries), purchases=len(plan.purchases))
        self.send(account_address(account),
                  BackstopPlan(case.loop, reason, plan.handovers, plan.deliveries, plan.purchases,
                               providers=bool(self.providers)))

    # -- the liquidity fund -----------------------------------------------------------------
    def on_fund_flow(self, sender: str, message: FundFlow) -> None:
        self.fund[message.asset] = self.fund.get(message.asset, ZERO) + message.quantity
        self.emit("fund_flow", account=message.account, asset=message.asset, quantity=message.quantity,
                      reason=message.reason, fund=self.fund[message.asset])

    def on_written_off(self, sender: str, message: WrittenOff) -> None:
        """Pay each lender the value at mark of the lend it lost (spec F7)."""
        step = self.profile.assets[self.settle].step
        for lender, quantity in message.shares.items():
            value = floor_to(quantity * message.price, step)
            if not value:
                continue
            self.fund[self.settle] = self.fund.get(self.settle, ZERO) - value
            self.send(account_address(lender), AssetTransfer(LIQUIDATOR, self.settle, value, "lender compensation"))
        self.emit("lenders_compensated", account=message.account, asset=message.asset, debt=message.debt,
                      price=message.price, fund=self.fund.get(self.settle, ZERO),
                      detail=", ".join(f"{lender} {fmt(q)}" for lender, q in message.shares.items()))
