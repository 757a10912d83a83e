"""Gradual liquidation (spec 11): the policy that decides each step, and the history it keeps.

Given a sub-account's state (at its marks) and a view of the books, ``plan_step`` says what the
next liquidation loop does. It never moves money itself: the sub-account machine carries the
plan out (reduce-only IOC orders through the books, transfers to backstop providers, ADL, as the
liquidator machine allocates them) and records what happened as ``LiquidationStep`` rows. The
reasoning behind the stages is also in docs/design.md.

The stages and the rules where the record is open:

* **Trigger**: MMR >= 100% at mark. The first step cancels every open order and marks the
  account ``liquidating``; user orders that add risk are then refused (``ACCOUNT_LIQUIDATING``).
* **Stage 1, on the book.** Each loop computes, per exposure, the quantity that brings MMR below
  ``end_mmr`` assuming it fills at the current book (walking the levels, within the impact
  band, paying the taker and liquidation fees), capped at ``max_fraction_per_loop`` of the
  exposure. Exposures are taken in rank order until the projected MMR is below the target:
  **rank = maintenance margin freed per unit of loss** for one capped step, where the loss is
  the fill's shortfall against the mark plus fees. Cheap-to-unwind, margin-hungry exposures go
  first; a step that loses nothing ranks first of all. Ties go by symbol. The loop stops as soon
  as MMR is below the target; the sub-account keeps whatever equity is left.
* **Lent collateral** backs the margin at its normal weight, so it is redeemed before a loop
  plans anything (spec 9.4) and is then sold like any other collateral. A lend the pool cannot
  return now (utilization) stays lent: the lend-side ADL of 9.4 is not modelled.
* **Borrows** are unwound by collateral conversion: the collateral with the **largest haircut
  (lowest weight) is sold first**, because it is the collateral the margin model already values
  least, so selling it costs the account the least margin. A USDC borrow is repaid with the
  proceeds of selling collateral for USDC; a borrow of another asset is bought back with USDC
  (after selling collateral for USDC when the account lacks it) and repaid.
* **Stage 2, backstop**, when MMR reaches ``auto_close_mmr`` (MF <= AccountMMF/2 by default) or
  the book has failed ``BOOK_FAILURES_TO_BACKSTOP`` (2) loops running: orders that did not fill
  in full, or nothing to sell into within the price band. One bad read is not enough: a market
  maker between its cancel and its new quotes leaves the book empty for an instant, and
  handing a whole account to the backstop on that would sell far more than needed. Every remaining
  position and borrow moves to the configured backstop providers at mark, within each one's
  capacity, in the order they were configured. A borrow of another asset: the provider delivers
  the asset and is paid its value at mark in the settlement asset. A borrow of the settlement
  asset: the provider buys the account's collateral at mark, largest haircut first, and the
  proceeds repay it (``backstop_collateral``). A positive residual equity then goes to the
  liquidity fund (spec 11.3 default, ``BackstopLiquidityFundProceeds``).
* **Termination**: a liquidation gets ``max_book_loops`` (30) loops on the book; if MMR is still
  over the target, the rest goes to stage 2. Without a bound a liquidation can hover under the
  auto-close level for ever: where the fee rate exceeds a market's MMF, perp steps raise MMR
  while borrow conversions lower it (the fuzzer found one at 156-207% for 15 loops). After a
  backstop round that leaves a borrow waiting, the count starts again.
* **Stage 3, ADL**, when the backstop's capacity is exhausted: opposite-side positions are closed
  against the remainder at mark, highest score first: ``PnL% x effective leverage`` for profitable
  positions (``PnL% / leverage`` otherwise, so losing and low-leverage positions go last);
  ``PnL%`` is unrealized PnL over the position's entry notional and effective leverage is the
  position notional over the account's net equity. Ties go by account id.
* **Bankruptcy**: equity below zero once nothing is left to close stays as negative unsettled
  equity (the fund pays the shortfall, later deposits repay it); a borrow nobody could cover is
  written off and its lenders are paid its USD value at mark by the fund (spec F7), but only
  when the account is bankrupt or has nothing left to sell (``may_write_off``). A solvent
  account that still holds collateral stays liquidating and goes back to the book each loop.
* The liquidation fee is charged on every liquidation fill: on the book, at the backstop (borrow
  deliveries and collateral purchases included), in ADL.
  On a backstop or ADL transfer it is capped at the equity the account has left (a transfer at
  mark does not move equity, so an uncapped fee would itself leave a debt to the fund); on the
  book the account still has equity (MMR is under the auto-close level), so it is charged in
  full. Where the fee rate exceeds a market's MMF (1% against BTC's 0.67%), each on-book step
  raises MMR: that is the rule's cost, and the account reaches auto-close sooner.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from enum import StrEnum
from typing import Protocol

import attrs

from exchange.decimals import INFINITY, ONE, ZERO, ceil_to, floor_to, fmt, fmt_pct
from exchange.ledger import SubAccount
from exchange.margin import LiquidationPriceEstimate, Totals, collateral_value, exposures, totals
from exchange.orders import Side
from exchange.profile import LiquidationParams
from exchange.settlement import spot_market_for

Levels = Sequence[tuple[Decimal, Decimal]]  # (price, quantity), best first
BOOK = "book"
CONVERSION = "conversion"
BACKSTOP = "backstop"
ADL = "adl"


@attrs.frozen(kw_only=True)
class LiquidationStep:
    """One row of a sub-account's liquidation history. Rows that move nothing (start, waiting,
    the end) leave market, side, quantity, price and fee at their defaults."""

    time_ms: int
    stage: str  # "start", "book", "conversion", "backstop", "adl", "fund", "waiting", "bankruptcy", "healthy", "closed"
    mmr_before: Decimal
    mmr_after: Decimal
    reason: str
    market: str | None = None
    side: str | None = None
    quantity: Decimal = ZERO
    price: Decimal | None = None
    fee: Decimal = ZERO  # everything the step cost the account: taker_fee + liquidation_fee
    taker_fee: Decimal = ZERO  # the book's taker fee on a book or conversion fill (in the settlement asset)
    liquidation_fee: Decimal = ZERO  # the liquidation fee, which goes to the liquidity fund
    mark: Decimal | None = None  # the mark of the step's market (or asset) when the step was recorded
    # When a new mark arrived between the plan (or the previous step) and this step: the mark
    # ``mmr_before`` was taken at, and MMR after the step at that same mark.
    planned_mark: Decimal | None = None
    mmr_after_at_planned_mark: Decimal | None = None
    position_after: Decimal | None = None  # what is left of the perp position after the step


@attrs.define
class BackstopProvider:
    """A sub-account that takes liquidated positions and borrows at mark (spec 11.3).

    ``capacity`` is the USD notional it will absorb per perp market or borrowed asset.
    """

    account: str
    capacity: dict[str, Decimal]
    used: dict[str, Decimal] = attrs.field(factory=dict)

    def room(self, symbol: str) -> Decimal:
        return self.capacity.get(symbol, ZERO) - self.used.get(symbol, ZERO)


@attrs.frozen
class LiquidationOrder:
    """A reduce-only IOC market order the liquidator wants on a book.

    ``repay`` names the borrowed asset the proceeds (or the purchase) repay, for conversions.
    """

    market: str
    side: Side
    quantity: Decimal
    reason: str
    repay: str | None = None


@attrs.frozen
class Plan:
    stage: str  # "healthy", BOOK, BACKSTOP
    mmr: Decimal
    reason: str
    orders: tuple[LiquidationOrder, ...] = ()


class HealthReading(Protocol):
    maintenance: Decimal
    mmr: Decimal


def needs_liquidation(t: Totals | HealthReading) -> bool:
    """MMR >= 100% with something to liquidate (spec 11.1), on an account's own totals or on
    what it last reported."""
    return t.maintenance > 0 and t.mmr >= 1


def why_liquidated(account: SubAccount) -> str:
    """The numbers behind a trigger: equity against each exposure's maintenance margin and PnL.

    Liquidation judges the whole sub-account, so this is what a single-position liquidation
    price estimate cannot show: every exposure and every collateral moving together.
    """
    t = totals(account)
    parts = []
    for risk in exposures(account):
        needs = f"needs {fmt(risk.maintenance_requirement, 2)}"
        if risk.kind == "borrow":
            parts.append(f"borrow of {fmt(-risk.net_quantity)} {risk.symbol} at {fmt(risk.mark_price)} {needs}")
            continue
        pos = account.positions.get(risk.symbol)
        pnl = f", PnL {fmt(pos.unrealized_pnl(risk.mark_price), 2)}" if pos is not None else ""
        parts.append(f"{fmt(risk.net_quantity)} {risk.symbol} at {fmt(risk.mark_price)} {needs}{pnl}")
    return (
        f"MMR {fmt_pct(t.mmr)}: net equity {fmt(t.net_equity, 2)} against maintenance margin "
        f"{fmt(t.maintenance, 2)} ({'; '.join(parts)})"
    )


BOOK_FAILURES_TO_BACKSTOP = 2
# A loop that found nothing to trade within the band is read again this much later, once, before
# it counts as failed: a market maker that refreshes on the loop's own beat (FORMAT.md's default
# ``refresh = 1`` against the 1 s loop) is between its cancel and its new quotes at the instant
# the loop reads the book, and would otherwise starve every other loop. 100 ms is well past a
# cancel-and-quote round trip on any latency a scenario sets up, and well inside the loop.
BOOK_RETRY_MS = 100


class CaseState(StrEnum):
    """Where a liquidation case stands, as the liquidator keeps it."""

    STARTING = "starting"  # the account was told to start and has not answered
    RUNNING = "running"  # on the book, loop after loop
    BACKSTOP = "backstop"  # a backstop plan is being carried out
    ENDED = "ended"


class Outcome(StrEnum):
    """What a liquidating account reports back after each thing it was told to do."""

    STARTED = "started"
    NOT_NEEDED = "not_needed"  # the report that triggered it was stale
    STEPPED = "stepped"
    BACKSTOP = "backstop"  # the book cannot finish it
    HEALTHY = "healthy"
    CLOSED = "closed"
    BANKRUPTCY = "bankruptcy"


# Every transition a case may make; anything else is a bug in whoever reported it.
TRANSITIONS: dict[tuple[CaseState, Outcome], CaseState] = {
    (CaseState.STARTING, Outcome.STARTED): CaseState.RUNNING,
    (CaseState.STARTING, Outcome.NOT_NEEDED): CaseState.ENDED,
    (CaseState.RUNNING, Outcome.STEPPED): CaseState.RUNNING,
    (CaseState.RUNNING, Outcome.BACKSTOP): CaseState.BACKSTOP,
    (CaseState.RUNNING, Outcome.HEALTHY): CaseState.ENDED,
    (CaseState.BACKSTOP, Outcome.STEPPED): CaseState.RUNNING,  # what stage 2 left goes back to the book
    (CaseState.BACKSTOP, Outcome.CLOSED): CaseState.ENDED,
    (CaseState.BACKSTOP, Outcome.BANKRUPTCY): CaseState.ENDED,
}


class IllegalTransition(Exception):
    pass


def next_state(state: CaseState, outcome: Outcome) -> CaseState:
    """The state a case moves to on ``outcome``; raises for a transition not in the table."""
    try:
        return TRANSITIONS[(state, outcome)]
    except KeyError:
        raise IllegalTransition(f"a liquidation case {state} cannot take the outcome {outcome}") from None


@attrs.frozen
class Progress:
    """How a liquidation has gone so far: what the next loop's plan depends on besides the
    account and the books."""

    book_loops: int = 0  # loops on the book since the start or the last backstop round
    book_failures: int = 0  # the last of those in a row in which the book failed
    backstop_tried: bool = False  # a backstop round ran (and the account is still liquidating)

    def after_book_loop(self, failed: bool) -> Progress:
        return Progress(self.book_loops + 1, self.book_failures + 1 if failed else 0, self.backstop_tried)

    def after_backstop(self) -> Progress:
        return Progress(backstop_tried=True)


def plan_step(
    account: SubAccount, books: Mapping[str, tuple[Levels, Levels]], params: LiquidationParams, progress: Progress
) -> Plan:
    """The next loop for a liquidating account, at its marks and the given book view. A ``BOOK``
    plan without orders (nothing within the band now) is itself a failed loop.

    Once a backstop round has left only borrows (no provider covers them, and ADL cannot take
    a borrow), the book is all there is: the auto-close level and failed loops no longer send
    the account back to stage 2, only ``max_book_loops`` more loops do (the providers are asked
    again). A position left over (ADL planned on reports that were stale) goes back to stage 2
    as before, to be deleveraged on fresher ones."""
    t = totals(account)
    levels = (params.end_mmr, params.auto_close_mmr)  # the thresholds this plan decides on
    if t.maintenance == 0 or t.mmr < params.end_mmr:
        return Plan("healthy", t.mmr, f"MMR {fmt_pct(t.mmr, thresholds=levels)} is below the end target {fmt_pct(params.end_mmr)}")
    if progress.book_loops >= params.max_book_loops:
        return Plan(BACKSTOP, t.mmr, f"{progress.book_loops} loops on the book have not brought MMR under "
                                     f"{fmt_pct(params.end_mmr)}")
    failures = progress.book_failures
    book_only = progress.backstop_tried and not account.positions
    if not book_only:
        if t.mmr >= params.auto_close_mmr:
            return Plan(
                BACKSTOP, t.mmr, f"MMR {fmt_pct(t.mmr, thresholds=levels)} reached the auto-close level {fmt_pct(params.auto_close_mmr)}"
            )
        if failures >= BOOK_FAILURES_TO_BACKSTOP:
            return Plan(BACKSTOP, t.mmr, f"the book failed {failures} loops running: it cannot absorb the rest "
                                         "within its price band")
    candidates = [c for c in _candidates(account, books, params, t) if c.quantity > 0]
    if not candidates:
        if failures + 1 >= BOOK_FAILURES_TO_BACKSTOP and not book_only:
            return Plan(BACKSTOP, t.mmr, f"nothing to trade against within the price band for "
                                         f"{failures + 1} loops running")
        return Plan(BOOK, t.mmr, "nothing to trade against within the price band now: trying again next loop")
    candidates.sort(key=lambda c: (-c.rank, c.symbol))
    orders: list[LiquidationOrder] = []
    net_equity, maintenance = t.net_equity, t.maintenance
    for c in candidates:
        quantity = _quantity_to_target(c, net_equity, maintenance, params.end_mmr)
        cost, freed = c.effect(quantity)
        orders.extend(c.orders(quantity))
        net_equity -= cost
        maintenance -= freed
        if net_equity > 0 and maintenance / net_equity < params.end_mmr:
            break
    return Plan(BOOK, t.mmr, f"MMR {fmt_pct(t.mmr, thresholds=levels)} >= 100%: reduce on the book", tuple(orders))


# ---------------------------------------------------------------------------------------
# Candidates: one per perp position and per borrow, each with the cost of unwinding it


@attrs.define
class _Candidate:
    symbol: str
    cap: Decimal  # the most this loop may unwind (max_fraction_per_loop of the exposure)
    step: Decimal
    cost_fn: object  # quantity -> (equity lost, maintenance freed)
    order_fn: object  # quantity -> list[LiquidationOrder]
    quantity: Decimal = ZERO
    rank: Decimal = ZERO

    def effect(self, quantity: Decimal) -> tuple[Decimal, Decimal]:
        return self.cost_fn(quantity)  # type: ignore[operator]

    def orders(self, quantity: Decimal) -> list[LiquidationOrder]:
        return self.order_fn(quantity)  # type: ignore[operator]


def _candidates(
    account: SubAccount, books: Mapping[str, tuple[Levels, Levels]], params: LiquidationParams, t: Totals
) -> list[_Candidate]:
    found = []
    profile = account.profile
    fee_rate = params.fee_rate
    for symbol, pos in account.positions.items():
        market = profile.markets[symbol]
        assert market.mmf is not None
        bids, asks = books.get(symbol, ((), ()))
        closing = Side.ASK if pos.quantity > 0 else Side.BID
        levels = bids if closing is Side.ASK else asks
        band = _band_limit(levels, closing, market.bands.min_impact_multiplier, market.bands.max_impact_multiplier)
        mark = account.price(symbol)
        size = abs(pos.quantity)
        cap = min(loop_cap(size, params.max_fraction_per_loop, market.step_size), _fillable(levels, band, closing))
        mmf_fn = market.mmf

        def cost(q: Decimal, *, size=size, mark=mark, levels=levels, closing=closing, band=band, mmf_fn=mmf_fn,
                 taker=market.taker_fee) -> tuple[Decimal, Decimal]:
            average = _average_price(levels, q, band, closing)
            shortfall = (mark - average) * q if closing is Side.ASK else (average - mark) * q
            fees = average * q * (taker + fee_rate)
            old = size * mark
            new = (size - q) * mark
            freed = old * mmf_fn.fraction(old) - new * mmf_fn.fraction(new)
            return shortfall + fees, freed

        def orders(q: Decimal, *, symbol=symbol, closing=closing) -> list[LiquidationOrder]:
            return [LiquidationOrder(symbol, closing, q, "reduce the position on the book")]

        found.append(_Candidate(symbol, cap, market.step_size, cost, orders))
    for asset, borrowed in account.borrows.items():
        if borrowed > 0:
            candidate = _borrow_candidate(account, books, params, asset, borrowed)
            if candidate is not None:
                found.append(candidate)
    for c in found:
        c.quantity = c.cap
        if c.cap > 0:
            lost, freed = c.effect(c.cap)
            c.rank = freed / lost if lost > 0 else INFINITY
    return found


def loop_cap(size: Decimal, fraction: Decimal, step: Decimal) -> Decimal:
    """The most of an exposure of ``size`` one loop may unwind: ``fraction`` of it rounded down to
    the step, but at least one step (so a small position is not stuck), never more than all."""
    return min(size, max(step, floor_to(size * fraction, step)))


def _borrow_candidate(
    account: SubAccount, books: Mapping[str, tuple[Levels, Levels]], params: LiquidationParams, asset: str, borrowed: Decimal
) -> _Candidate | None:
    """Unwinding a borrow: sell the largest-haircut collateral for USDC, buy back, repay."""
    profile = account.profile
    settle = profile.settlement_asset
    spec = profile.assets[asset]
    price = account.price(asset)
    step = spec.step
    cap = max(step, floor_to(borrowed * params.max_fraction_per_loop, step))
    cap = min(cap, borrowed)
    mmf_fn = spec.borrow_mmf
    if asset == settle:
        source = _largest_haircut_collateral(account)
        if source is None:
            return None
        sell_asset, sell_market = source
        market = profile.markets[sell_market]
        bids, _ = books.get(sell_market, ((), ()))
        band = _band_limit(bids, Side.ASK, market.bands.min_impact_multiplier, market.bands.max_impact_multiplier)
        sell_price = account.price(sell_asset)
        held = account.available(sell_asset)

        def sell_quantity(q: Decimal) -> Decimal:
            """Collateral to sell so the proceeds, after fees, repay ``q`` of the USDC borrow."""
            best = bids[0][0] if bids else sell_price
            net = best * market.bands.min_impact_multiplier * (1 - market.taker_fee - params.fee_rate)
            return min(held, ceil_to(q / net, market.step_size))

        cap = min(cap, floor_to(_fillable(bids, band, Side.ASK) * sell_price, step), floor_to(held * sell_price, step))

        def cost(q: Decimal) -> tuple[Decimal, Decimal]:
            y = sell_quantity(q)
            average = _average_price(bids, y, band, Side.ASK)
            weight, _ = collateral_value(account, sell_asset, held, sell_price)
            # Selling y at `average` gives up its haircut value and brings in USDC less fees: near
            # the mark that is a gain (the haircut is recovered), which the projection counts.
            lost = y * sell_price * weight - y * average * (1 - market.taker_fee - params.fee_rate)
            old = borrowed * price
            new = (borrowed - q) * price
            return lost, old * mmf_fn.fraction(old) - new * mmf_fn.fraction(new)

        def orders(q: Decimal) -> list[LiquidationOrder]:
            return [LiquidationOrder(sell_market, Side.ASK, sell_quantity(q),
                                     f"sell {sell_asset} (largest haircut) to repay the {asset} borrow", repay=asset)]

        return _Candidate(asset, cap, step, cost, orders)
    buy_market = spot_market_for(account, asset)
    if buy_market is None:
        return None
    market = profile.markets[buy_market]
    _, asks = books.get(buy_market, ((), ()))
    band = _band_limit(asks, Side.BID, market.bands.min_impact_multiplier, market.bands.max_impact_multiplier)
    cap = min(floor_to(cap, market.step_size), _fillable(asks, band, Side.BID))

    def cost(q: Decimal) -> tuple[Decimal, Decimal]:
        average = _average_price(asks, q, band, Side.BID)
        lost = (average - price) * q + average * q * (market.taker_fee + params.fee_rate)
        old = borrowed * price
        new = (borrowed - q) * price
        return lost, old * mmf_fn.fraction(old) - new * mmf_fn.fraction(new)

    def orders(q: Decimal) -> list[LiquidationOrder]:
        return [LiquidationOrder(buy_market, Side.BID, q, f"buy back {asset} to repay the borrow", repay=asset)]

    return _Candidate(asset, cap, market.step_size, cost, orders)


def _collateral_by_haircut(account: SubAccount) -> list[tuple[str, str]]:
    """(asset, spot market) of what the account could sell for the settlement asset, the
    largest haircut (lowest weight) first; ties by asset."""
    settle = account.profile.settlement_asset
    choices = []
    for asset, bal in account.balances.items():
        if asset == settle or bal.available <= 0 or account.borrows.get(asset):
            continue
        market = spot_market_for(account, asset)
        if market is None:
            continue
        weight, _ = collateral_value(account, asset, bal.available, account.price(asset))
        choices.append((weight, asset, market))
    return [(asset, market) for _, asset, market in sorted(choices)]


def _largest_haircut_collateral(account: SubAccount) -> tuple[str, str] | None:
    choices = _collateral_by_haircut(account)
    return choices[0] if choices else None


def backstop_collateral(account: SubAccount, value: Decimal) -> list[tuple[str, Decimal, Decimal]]:
    """What a backstop provider buys at mark so the account can repay ``value`` of a borrow in
    the settlement asset: (asset, quantity, mark), largest haircut first, each quantity rounded
    up to its asset's step (the provider pays the value rounded down), as far as the account
    holds any. This is how a settlement-asset borrow "moves to the backstop at mark" (11.3): the
    provider takes collateral worth the debt and pays the debt's asset for it."""
    wanted = []
    left = value
    for asset, _ in _collateral_by_haircut(account):
        if left <= 0:
            break
        price = account.price(asset)
        if price <= 0:
            continue
        quantity = min(account.available(asset), ceil_to(left / price, account.profile.assets[asset].step))
        wanted.append((asset, quantity, price))
        left -= quantity * price
    return wanted


def gross_of_fee(net: Decimal, rate: Decimal, step: Decimal) -> Decimal:
    """The sale that leaves ``net`` after a liquidation fee at ``rate``, rounded up to ``step``."""
    return ceil_to(net / (1 - rate), step)


def settlement_borrow_to_cover(account: SubAccount) -> Decimal:
    """What backstop providers must pay for collateral so the account can repay its
    settlement-asset borrow after the liquidation fee on the sale: what it owes beyond what it
    holds, grossed up by the fee rate."""
    profile = account.profile
    settle = profile.settlement_asset
    need = account.borrows.get(settle, ZERO) - max(account.available(settle), ZERO)
    if need <= 0:
        return ZERO
    return gross_of_fee(need, profile.liquidation.fee_rate, profile.assets[settle].step)


def may_write_off(account: SubAccount) -> bool:
    """Whether a borrow the backstop did not take may be written off (spec 9.4, F7).

    Only a bankrupt account (net equity <= 0 at mark) or one with no collateral left to sell:
    a solvent account that still holds collateral stays in liquidation and goes back to the
    book each loop until liquidity returns. Writing its borrow off would have the fund pay its
    lenders while the account kept collateral worth more than it owes.
    """
    return totals(account).net_equity <= 0 or not _collateral_by_haircut(account)


def average_fill_price(notional: Decimal, quantity: Decimal, tick: Decimal) -> Decimal:
    """A book step's volume-weighted price for its history row, to a hundredth of the tick: a
    figure to read (the fills themselves carry the exact amounts)."""
    return (notional / quantity).quantize(tick / 100)


def backstop_fee_cap(account: SubAccount) -> Decimal:
    """The most an off-book liquidation fee may take: the equity the account has left (a
    transfer at mark does not move equity, so an uncapped fee would itself leave a debt to the
    fund). Rounded down to the settlement asset's step."""
    step = account.profile.assets[account.profile.settlement_asset].step
    return max(floor_to(totals(account).net_equity, step), ZERO)


def capped_fee(notional: Decimal, rate: Decimal, step: Decimal, cap: Decimal) -> Decimal:
    """A liquidation fee on an off-book transfer at mark: rounded up to ``step``, at most ``cap``
    (``backstop_fee_cap``). The market charges it on position handovers, the account on
    backstop deliveries and collateral sales."""
    return min(ceil_to(notional * rate, step), cap)


def backstop_fee(account: SubAccount, notional: Decimal, rate: Decimal) -> Decimal:
    """The capped liquidation fee on ``notional`` moved off the book for this account."""
    step = account.profile.assets[account.profile.settlement_asset].step
    return capped_fee(notional, rate, step, backstop_fee_cap(account))


def waiting_reason(account: SubAccount) -> str:
    """Why a liquidation with borrows left is neither finished nor written off."""
    owed = ", ".join(f"{fmt(q)} {asset}" for asset, q in sorted(account.borrows.items()))
    held = ", ".join(f"{fmt(account.available(asset))} {asset}" for asset, _ in _collateral_by_haircut(account))
    return (f"nobody took the borrow ({owed}); the account still holds {held} at net equity "
            f"{fmt(totals(account).net_equity, 2)}, so it is not written off: back to the book next loop")


def _quantity_to_target(c: _Candidate, net_equity: Decimal, maintenance: Decimal, target: Decimal) -> Decimal:
    """Smallest step multiple (up to the cap) whose projected MMR is below ``target``."""

    def reaches(q: Decimal) -> bool:
        lost, freed = c.effect(q)
        equity = net_equity - lost
        return equity > 0 and (maintenance - freed) / equity < target

    if not reaches(c.cap):
        return c.cap
    lo, hi = ZERO, c.cap  # reaches(hi), and lo is "not yet"
    while hi - lo > c.step:
        mid = floor_to((lo + hi) / 2, c.step)
        if mid <= lo:
            break
        if reaches(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _band_limit(levels: Levels, side: Side, low: Decimal, high: Decimal) -> Decimal | None:
    """The impact band's worst price for a market order against ``levels`` (spec 14)."""
    if not levels:
        return None
    best = levels[0][0]
    return best * low if side is Side.ASK else best * high


def _within(price: Decimal, band: Decimal | None, side: Side) -> bool:
    return band is None or (price >= band if side is Side.ASK else price <= band)


def _fillable(levels: Levels, band: Decimal | None, side: Side) -> Decimal:
    return sum((q for p, q in levels if _within(p, band, side)), ZERO)


def _average_price(levels: Levels, quantity: Decimal, band: Decimal | None, side: Side) -> Decimal:
    """Average fill price of ``quantity`` walking ``levels`` within the band."""
    if quantity <= 0 or not levels:
        return levels[0][0] if levels else ONE
    left, spent = quantity, ZERO
    last = levels[0][0]
    for price, available in levels:
        if not _within(price, band, side):
            break
        take = min(left, available)
        spent += take * price
        left -= take
        last = price
        if not left:
            break
    if left:
        spent += left * last  # what the band leaves unfilled, priced at its last level
    return spent / quantity


# ---------------------------------------------------------------------------------------
# ADL ranking


@attrs.frozen
class AdlCandidate:
    account: str
    quantity: Decimal  # signed position
    unrealized_pnl: Decimal
    entry_notional: Decimal
    net_equity: Decimal
    mark: Decimal

    @property
    def score(self) -> Decimal:
        pnl_pct = self.unrealized_pnl / self.entry_notional if self.entry_notional else ZERO
        leverage = abs(self.quantity) * self.mark / self.net_equity if self.net_equity > 0 else INFINITY
        if pnl_pct > 0:
            return pnl_pct * leverage
        return pnl_pct / leverage if leverage else pnl_pct


def adl_queue(candidates: Sequence[AdlCandidate], liquidated_side_sign: int) -> list[AdlCandidate]:
    """Opposite-side positions to close against a liquidated position, highest score first."""
    opposite = [c for c in candidates if c.quantity * liquidated_side_sign < 0]
    return sorted(opposite, key=lambda c: (-c.score, c.account))


@attrs.frozen
class LiquidatedPosition:
    """What liquidation took from one market (or borrow): the venue FAQ's "liquidated positions"."""

    market: str
    side: str  # the side liquidation traded: "Ask" sold a long (or collateral), "Bid" bought back
    quantity: Decimal
    average_price: Decimal
    fees: Decimal
    stages: tuple[str, ...]  # how it went: "book", "conversion", "backstop", "adl"
    first_ms: int
    last_ms: int


def liquidated_positions(history: Sequence[LiquidationStep]) -> list[LiquidatedPosition]:
    """A sub-account's liquidation history summed per market and side, in the order it happened."""
    groups: dict[tuple[str, str], list[LiquidationStep]] = {}
    for step in history:
        if step.market is not None and step.side is not None and step.quantity and step.price is not None:
            groups.setdefault((step.market, step.side), []).append(step)
    summary = []
    for (market, side), steps in groups.items():
        quantity = sum((s.quantity for s in steps), ZERO)
        notional = sum((s.quantity * s.price for s in steps), ZERO)  # type: ignore[operator]
        stages = tuple(dict.fromkeys(s.stage for s in steps))
        summary.append(
            LiquidatedPosition(market, side, quantity, notional / quantity, sum((s.fee for s in steps), ZERO),
                               stages, steps[0].time_ms, steps[-1].time_ms)
        )
    return summary


def mmr_at_marks(account: SubAccount, marks: Mapping[str, Decimal]) -> Decimal:
    """The account's MMR valued at other marks (its own are put back): a step's before and
    after compared at one mark when a new one arrived while the step was under way."""
    own = dict(account.marks)
    account.marks.update(marks)
    try:
        return totals(account).mmr
    finally:
        account.marks.clear()
        account.marks.update(own)


def describe_step(step: LiquidationStep, thresholds: Sequence[Decimal] = (ONE,)) -> str:
    """One line of plain words for a history row, for ``run``, ``explain`` and the demo.

    A moving row says what traded at what price against which mark, the taker fee and the
    liquidation fee apart, MMR before and after and what is left of the position; when a new
    mark arrived during the step it says so, with MMR after the step at the earlier mark, so
    before and after can also be read at one mark."""
    def pct(value: Decimal) -> str:
        return "inf (no equity left)" if value.is_infinite() else fmt_pct(value, thresholds=thresholds)

    when = f"t={step.time_ms / 1000:.3f}s {step.stage}"
    if not step.market:
        if step.stage == "start":
            return f"{when} at MMR {pct(step.mmr_before)} ({step.reason})"
        return f"{when} ({step.reason})"
    mark = f" (mark {fmt(step.mark)})" if step.mark is not None and step.mark != step.price else ""
    fees = (f", taker fee {fmt(step.taker_fee)}, liquidation fee {fmt(step.liquidation_fee)}"
            if step.taker_fee or step.liquidation_fee else "")
    left = f"; {fmt(step.position_after)} left" if step.position_after is not None else ""
    moved = ""
    if step.planned_mark is not None and step.mmr_after_at_planned_mark is not None:
        moved = (f"; the mark moved {fmt(step.planned_mark)} -> {fmt(step.mark)} during the step: at "
                 f"{fmt(step.planned_mark)} it took MMR {pct(step.mmr_before)} -> {pct(step.mmr_after_at_planned_mark)}")
    return (f"{when}: {step.side or ''} {fmt(step.quantity)} {step.market} at {fmt(step.price)}{mark}{fees}; "
            f"MMR {pct(step.mmr_before)} -> {pct(step.mmr_after)}{left}{moved} ({step.reason})")


def describe_estimate(estimate: LiquidationPriceEstimate, quantity: Decimal, places: int = 2) -> str:
    """An estimated liquidation price with its method, for people: rounded toward the mark
    (up for a long, down for a short), so the number shown is reached no later than the true one."""
    if estimate.price is None:
        return f"- ({estimate.method}: {estimate.reason})"
    grid = Decimal(1).scaleb(-places)
    shown = ceil_to(estimate.price, grid) if quantity > 0 else floor_to(estimate.price, grid)
    return f"{fmt(shown)} ({estimate.method}: {estimate.reason})"
