"""Cross-margin math for one sub-account (spec sections 2-7 and 12).

``summarize`` gives the venue's ``MarginAccountSummary`` numbers: collateral per asset with
haircuts, net equity, locked/available equity, exposures, margin fraction, account IMF/MMF, IMR
and MMR. ``evaluate_change`` answers "what would these numbers be if this order rested (or this
borrow happened)", which is the pre-trade check. ``max_quantity`` and
``estimate_liquidation_price`` build on those.

Conventions:

* Position IMF uses the net exposure notional (position plus worst-case risk-increasing open
  orders); MMF uses the position notional only (spec 4, 7).
* ``IMF_eff = max(IMF, 1/leverage_limit)``; the floor never applies to MMF (spec 6).
* ``IMR = Locked / NE`` and ``MMR = MaintenanceRequirement / NE``. When ``NE <= 0`` both are
  infinite, except that MMR is 0 when nothing needs maintenance margin (a bankrupt account with
  no positions has nothing to liquidate). So ``IMR >= 100%`` exactly when available equity
  ``<= 0``, on every account.
* A negative balance (a settlement debit not yet reconciled) is a liability at weight 1.

Square roots dominate the cost (about 3 us each here), so each exposure's numbers are cached
on the account until its size, its orders, its mark or the leverage limit change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from decimal import Decimal

import attrs

from exchange.decimals import INFINITY, ONE, ZERO, ceil_to, floor_to
from exchange.ledger import SubAccount
from exchange.profile import Market, SqrtFunction

# ---------------------------------------------------------------------------------------
# Per-item numbers


@attrs.frozen
class ExposureRisk:
    """Margin numbers of one perp market or one borrowed asset."""

    symbol: str
    kind: str  # "perp" or "borrow"
    net_quantity: Decimal  # signed position; for a borrow, minus the borrowed quantity
    net_exposure_quantity: Decimal
    mark_price: Decimal
    position_notional: Decimal
    exposure_notional: Decimal
    imf: Decimal
    mmf: Decimal
    imf_source: str  # which bound set the IMF: "base", "size" (sqrt) or "leverage_limit"
    initial_requirement: Decimal
    maintenance_requirement: Decimal


def net_exposure_quantity(position: Decimal, bids: Decimal, asks: Decimal) -> Decimal:
    """Position plus the worst-case fill of the risk-increasing orders (spec 7, D5)."""
    long_case = position + bids
    short_case = position - asks
    return long_case if abs(long_case) >= abs(short_case) else short_case


def _fraction_with_floor(fn: SqrtFunction, notional: Decimal, floor: Decimal) -> tuple[Decimal, str]:
    raw = fn.fraction(notional)
    if floor > raw:
        return floor, "leverage_limit"
    return raw, ("base" if raw == fn.base else "size")


def exposure_risk(
    symbol: str,
    kind: str,
    net_quantity: Decimal,
    exposure_quantity: Decimal,
    mark: Decimal,
    imf_fn: SqrtFunction,
    mmf_fn: SqrtFunction,
    floor: Decimal,
) -> ExposureRisk:
    position_notional = abs(net_quantity) * mark
    exposure_notional = abs(exposure_quantity) * mark
    imf, source = _fraction_with_floor(imf_fn, exposure_notional, floor)
    mmf = mmf_fn.fraction(position_notional)
    return ExposureRisk(
        symbol=symbol,
        kind=kind,
        net_quantity=net_quantity,
        net_exposure_quantity=exposure_quantity,
        mark_price=mark,
        position_notional=position_notional,
        exposure_notional=exposure_notional,
        imf=imf,
        mmf=mmf,
        imf_source=source,
        initial_requirement=exposure_notional * imf,
        maintenance_requirement=position_notional * mmf,
    )


def _perp_risk(
    account: SubAccount, market: Market, quantity: Decimal, sides: list[Decimal] | None, floor: Decimal
) -> ExposureRisk:
    bids, asks = (sides[0], sides[1]) if sides else (ZERO, ZERO)
    mark = account.price(market.symbol)
    key = (quantity, bids, asks, mark, floor)
    cached = account.risk_cache.get(market.symbol)
    if cached is not None and cached[0] == key:
        return cached[1]  # type: ignore[return-value]
    assert market.imf is not None and market.mmf is not None
    risk = exposure_risk(
        market.symbol, "perp", quantity, net_exposure_quantity(quantity, bids, asks), mark, market.imf, market.mmf, floor
    )
    account.risk_cache[market.symbol] = (key, risk)
    return risk


def _borrow_risk(account: SubAccount, asset: str, borrowed: Decimal, floor: Decimal) -> ExposureRisk:
    price = account.price(asset)
    key = (borrowed, price, floor)
    cache_key = ("borrow", asset)
    cached = account.risk_cache.get(cache_key)
    if cached is not None and cached[0] == key:
        return cached[1]  # type: ignore[return-value]
    spec = account.profile.assets[asset]
    risk = exposure_risk(asset, "borrow", -borrowed, -borrowed, price, spec.borrow_imf, spec.borrow_mmf, floor)
    account.risk_cache[cache_key] = (key, risk)
    return risk


def collateral_value(account: SubAccount, asset: str, quantity: Decimal, price: Decimal) -> tuple[Decimal, Decimal]:
    """(weight, value) of ``quantity`` of ``asset`` at ``price`` (spec 2.1-2.2).

    The last answer per asset is kept on the account, keyed by its inputs: most health checks
    revalue holdings that have not moved."""
    cache_key = ("collateral", asset)
    cached = account.risk_cache.get(cache_key)
    if cached is not None and cached[0] == (quantity, price):
        return cached[1]  # type: ignore[return-value]
    notional = quantity * price
    if quantity <= 0:
        result = ONE, notional  # an unreconciled negative balance counts in full
    else:
        haircut = account.profile.assets[asset].haircut
        if account.profile.haircut_mode == "marginal":
            value = haircut.marginal_value(notional)
            result = (value / notional if notional else haircut.cap), value
        else:
            weight = haircut.weight_at(notional)
            result = weight, notional * weight
    account.risk_cache[cache_key] = ((quantity, price), result)
    return result


# ---------------------------------------------------------------------------------------
# Account summary


@attrs.frozen
class CollateralRow:
    symbol: str
    asset_mark_price: Decimal
    total_quantity: Decimal
    balance_notional: Decimal
    collateral_weight: Decimal
    collateral_value: Decimal
    open_order_quantity: Decimal
    lend_quantity: Decimal
    available_quantity: Decimal


@attrs.frozen
class MarginSummary:
    """The venue's ``MarginAccountSummary`` plus IMR/MMR, with its field names in snake case."""

    assets_value: Decimal
    liabilities_value: Decimal
    borrow_liability: Decimal
    pnl_unrealized: Decimal
    unsettled_equity: Decimal
    net_equity: Decimal
    net_equity_locked: Decimal
    net_equity_available: Decimal
    maintenance_requirement: Decimal
    total_exposure_notional: Decimal
    margin_fraction: Decimal | None
    imf: Decimal
    mmf: Decimal
    imr: Decimal
    mmr: Decimal
    collateral: tuple[CollateralRow, ...]
    exposures: tuple[ExposureRisk, ...]


@attrs.frozen
class Totals:
    """The handful of sums everything else is derived from (cheap to build, no rows)."""

    net_equity: Decimal
    locked: Decimal
    maintenance: Decimal
    total_exposure_notional: Decimal

    @property
    def available(self) -> Decimal:
        return self.net_equity - self.locked

    @property
    def imr(self) -> Decimal:
        return ratio(self.locked, self.net_equity, infinite_if_empty=True)

    @property
    def mmr(self) -> Decimal:
        return ratio(self.maintenance, self.net_equity, infinite_if_empty=False)


def ratio(requirement: Decimal, net_equity: Decimal, *, infinite_if_empty: bool) -> Decimal:
    """Requirement over equity; infinite when equity is gone (see the module docstring)."""
    if net_equity > 0:
        return requirement / net_equity
    if requirement > 0 or infinite_if_empty:
        return INFINITY
    return ZERO


def exposures(account: SubAccount) -> Iterable[ExposureRisk]:
    """Every perp market with a position or risk-increasing orders, then every borrow."""
    markets = account.profile.markets
    order_exposure = account.order_exposure
    positions = account.positions
    floor = account.leverage_floor
    for symbol, pos in positions.items():
        yield _perp_risk(account, markets[symbol], pos.quantity, order_exposure.get(symbol), floor)
    for symbol, sides in order_exposure.items():
        if symbol not in positions and markets[symbol].is_perp:
            yield _perp_risk(account, markets[symbol], ZERO, sides, floor)
    for asset, borrowed in account.borrows.items():
        if borrowed:
            yield _borrow_risk(account, asset, borrowed, floor)


def _equity_parts(account: SubAccount) -> tuple[Decimal, Decimal, Decimal]:
    """(collateral value, unrealized PnL, borrow liability)."""
    collateral = ZERO
    for asset, quantity in account.holdings():
        if quantity:
            collateral += collateral_value(account, asset, quantity, account.price(asset))[1]
    upnl = ZERO
    for symbol, pos in account.positions.items():
        upnl += pos.quantity * account.price(symbol) - pos.net_cost
    liability = ZERO
    for asset, borrowed in account.borrows.items():
        if borrowed:
            liability += borrowed * account.price(asset)
    return collateral, upnl, liability


def totals(account: SubAccount) -> Totals:
    collateral, upnl, liability = _equity_parts(account)
    locked = maintenance = ten = ZERO
    for risk in exposures(account):
        locked += risk.initial_requirement
        maintenance += risk.maintenance_requirement
        ten += risk.exposure_notional
    return Totals(collateral + upnl + account.unsettled_equity - liability, locked, maintenance, ten)


def summarize(account: SubAccount) -> MarginSummary:
    """The full summary with per-asset collateral rows and per-exposure rows."""
    rows = []
    positive = negative = ZERO
    for asset, quantity in account.holdings():
        if not quantity:
            continue
        price = account.price(asset)
        weight, value = collateral_value(account, asset, quantity, price)
        bal = account.balances.get(asset)
        rows.append(
            CollateralRow(
                symbol=asset,
                asset_mark_price=price,
                total_quantity=quantity,
                balance_notional=quantity * price,
                collateral_weight=weight,
                collateral_value=value,
                open_order_quantity=bal.locked if bal else ZERO,
                lend_quantity=account.lends.get(asset, ZERO),
                available_quantity=bal.available if bal else ZERO,
            )
        )
        if value >= 0:
            positive += value
        else:
            negative -= value
    upnl = ZERO
    for symbol, pos in account.positions.items():
        pnl = pos.quantity * account.price(symbol) - pos.net_cost
        upnl += pnl
        if pnl >= 0:
            positive += pnl
        else:
            negative -= pnl
    borrow_liability = sum((b * account.price(a) for a, b in account.borrows.items() if b), ZERO)
    unsettled = account.unsettled_equity
    positive += max(unsettled, ZERO)
    negative += max(-unsettled, ZERO) + borrow_liability
    risks = tuple(exposures(account))
    locked = sum((r.initial_requirement for r in risks), ZERO)
    maintenance = sum((r.maintenance_requirement for r in risks), ZERO)
    ten = sum((r.exposure_notional for r in risks), ZERO)
    net_equity = positive - negative
    return MarginSummary(
        assets_value=positive,
        liabilities_value=negative,
        borrow_liability=borrow_liability,
        pnl_unrealized=upnl,
        unsettled_equity=unsettled,
        net_equity=net_equity,
        net_equity_locked=locked,
        net_equity_available=net_equity - locked,
        maintenance_requirement=maintenance,
        total_exposure_notional=ten,
        margin_fraction=net_equity / ten if ten else None,
        imf=locked / ten if ten else ZERO,
        mmf=sum((r.position_notional * r.mmf for r in risks), ZERO) / ten if ten else ZERO,
        imr=ratio(locked, net_equity, infinite_if_empty=True),
        mmr=ratio(maintenance, net_equity, infinite_if_empty=False),
        collateral=tuple(rows),
        exposures=risks,
    )


# ---------------------------------------------------------------------------------------
# "What if": the pre-trade check


@attrs.frozen
class Change:
    """A hypothetical change to an account, valued at the account's marks.

    ``perp``: (market, position delta, bid delta, ask delta) for a perp order or fill.
    ``balances``: asset -> quantity delta (spot fills, borrowed cash). ``borrows``: asset ->
    borrowed-quantity delta.
    """

    perp: tuple[str, Decimal, Decimal, Decimal] | None = None
    balances: tuple[tuple[str, Decimal], ...] = ()
    borrows: tuple[tuple[str, Decimal], ...] = ()


@attrs.frozen
class Evaluation:
    """Margin numbers before and after a hypothetical change."""

    before: Totals
    after: Totals
    imf_after: Decimal | None  # the IMF of the changed perp exposure, when there is one
    imf_source: str | None

    @property
    def passes(self) -> bool:
        """Accept when available equity stays >= 0, or when the change does not lower it.

        The second arm is "it reduces risk": closing part of a position, buying back a borrow
        or selling a haircut asset for the settlement asset never makes an account less able
        to carry its exposure, so it is allowed even when the account is already over 100%.
        """
        after = self.after.available
        return after >= 0 or after >= self.before.available


def evaluate_change(account: SubAccount, change: Change, before: Totals | None = None) -> Evaluation:
    """Margin totals before and after ``change``, recomputing only what it touches."""
    if before is None:
        before = totals(account)
    net_equity, locked, maintenance, ten = (
        before.net_equity,
        before.locked,
        before.maintenance,
        before.total_exposure_notional,
    )
    imf_after = source = None
    floor = account.leverage_floor
    if change.perp is not None:
        symbol, d_pos, d_bids, d_asks = change.perp
        market = account.profile.markets[symbol]
        assert market.imf is not None and market.mmf is not None
        pos = account.positions.get(symbol)
        quantity = pos.quantity if pos else ZERO
        sides = account.order_exposure.get(symbol)
        bids, asks = (sides[0], sides[1]) if sides else (ZERO, ZERO)
        mark = account.price(symbol)
        old = _perp_risk(account, market, quantity, sides, floor) if pos is not None or sides is not None else None
        old_maintenance = old.maintenance_requirement if old is not None else ZERO
        exposure_notional = abs(net_exposure_quantity(quantity + d_pos, bids + d_bids, asks + d_asks)) * mark
        if old is not None and exposure_notional == old.exposure_notional:
            # The exposure is unchanged (an order on the side that does not set it): the totals
            # stay exactly as they were, not subtracted and added back at 28 digits.
            imf_after, source = old.imf, old.imf_source
        else:
            if old is not None:
                locked -= old.initial_requirement
                ten -= old.exposure_notional
            imf_after, source = _fraction_with_floor(market.imf, exposure_notional, floor)
            locked += exposure_notional * imf_after
            ten += exposure_notional
        if d_pos:
            position_notional = abs(quantity + d_pos) * mark
            maintenance += position_notional * market.mmf.fraction(position_notional) - old_maintenance
    if change.balances:
        for asset, delta in change.balances:
            held = _held(account, asset)
            price = account.price(asset)
            net_equity += (
                collateral_value(account, asset, held + delta, price)[1]
                - collateral_value(account, asset, held, price)[1]
            )
    for asset, delta in change.borrows:
        borrowed = account.borrows.get(asset, ZERO)
        price = account.price(asset)
        net_equity -= delta * price
        if borrowed:
            old_b = _borrow_risk(account, asset, borrowed, floor)
            locked -= old_b.initial_requirement
            maintenance -= old_b.maintenance_requirement
            ten -= old_b.exposure_notional
        if borrowed + delta:
            spec = account.profile.assets[asset]
            new_b = exposure_risk(
                asset,
                "borrow",
                -(borrowed + delta),
                -(borrowed + delta),
                price,
                spec.borrow_imf,
                spec.borrow_mmf,
                floor,
            )
            locked += new_b.initial_requirement
            maintenance += new_b.maintenance_requirement
            ten += new_b.exposure_notional
    return Evaluation(before, Totals(net_equity, locked, maintenance, ten), imf_after, source)


def _held(account: SubAccount, asset: str) -> Decimal:
    bal = account.balances.get(asset)
    held = bal.total if bal is not None else ZERO
    return held + account.lends.get(asset, ZERO)


def largest_passing(passes: Callable[[Decimal], bool], step: Decimal, guess: Decimal | None = None) -> Decimal:
    """Largest multiple of ``step`` for which ``passes(q)`` holds, given it is monotone.

    ``passes`` is true up to some quantity and false beyond. A closed-form ``guess`` is tried
    first (checked, never trusted); otherwise the bound is found by doubling and bisection
    over whole steps.
    """
    if guess is not None and guess > 0:
        g = floor_to(guess, step)
        if g > 0 and passes(g) and not passes(g + step):
            return g
    if not passes(step):
        return ZERO
    lo = 1  # in steps; passes
    hi = 2
    while passes(step * hi):
        lo = hi
        hi *= 2
        if hi > 2**80:
            return step * lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(step * mid):
            lo = mid
        else:
            hi = mid
    return step * lo


# ---------------------------------------------------------------------------------------
# Estimated liquidation price (spec 12)


@attrs.frozen
class LiquidationPriceEstimate:
    """A reference price, or ``None`` with the reason it cannot be estimated honestly."""

    price: Decimal | None
    method: str  # "closed form", "bisection", or "not available"
    reason: str


def estimate_liquidation_price(account: SubAccount, symbol: str) -> LiquidationPriceEstimate:
    """Mark at which MMR reaches 100% for a single perp on settlement-asset collateral.

    Solves ``C + qP - cost = |q| P MMF(|q| P)`` with everything else frozen: closed form where
    MMF is flat, bisection where it grows with size. Refuses (price ``None``) whenever the
    answer would pretend: other positions or borrows move with prices too, and a haircut
    collateral makes equity non-linear in any one price. A long that no positive price can
    liquidate gets 0, as the venue shows it.
    """
    market = account.profile.markets[symbol]
    pos = account.positions.get(symbol)
    if pos is None or not pos.quantity:
        return LiquidationPriceEstimate(None, "not available", f"no open position in {symbol}")
    others = [s for s in account.positions if s != symbol]
    if others:
        return LiquidationPriceEstimate(
            None, "not available", "other positions move equity too: " + ", ".join(others)
        )
    borrowed = [a for a, b in account.borrows.items() if b]
    if borrowed:
        return LiquidationPriceEstimate(None, "not available", "borrows move equity too: " + ", ".join(borrowed))
    settle = account.profile.settlement_asset
    non_settle = [a for a, q in account.holdings() if q and a != settle]
    if non_settle:
        return LiquidationPriceEstimate(
            None,
            "not available",
            "collateral other than " + settle + " is valued with a haircut at its own price: " + ", ".join(non_settle),
        )
    assert market.mmf is not None
    q = pos.quantity
    cash = _held(account, settle) + account.unsettled_equity
    cost = pos.net_cost
    mmf = market.mmf
    base = mmf.base
    denominator = q - abs(q) * base
    flat_price = (cost - cash) / denominator
    if flat_price <= 0:
        return LiquidationPriceEstimate(ZERO, "closed form", "no positive mark liquidates this position")
    if abs(q) * flat_price <= mmf.flat_until:
        return LiquidationPriceEstimate(_round_against(flat_price, q, market), "closed form", "MMF flat at its base")

    def unhealthy(price: Decimal) -> bool:
        notional = abs(q) * price
        return cash + q * price - cost <= notional * mmf.fraction(notional)

    # MMF above its base raises the requirement, so the root lies beyond the flat answer:
    # above it for a long, below it for a short. Bracket it, then bisect to 1/1000 tick.
    if q > 0:
        bad, good = flat_price, flat_price * 2
        while unhealthy(good):
            if good > market.bands.max_price:  # MMF outgrows equity: no mark the market allows saves it
                return LiquidationPriceEstimate(None, "not available", "no mark up to the market's maximum "
                                                f"price {market.bands.max_price} keeps this position healthy")
            good *= 2
    else:
        good, bad = ZERO, flat_price
    resolution = market.tick_size / 1000
    while abs(good - bad) > resolution:
        mid = (good + bad) / 2
        if unhealthy(mid):
            bad = mid
        else:
            good = mid
    return LiquidationPriceEstimate(_round_against(bad, q, market), "bisection", "MMF grows with size (sqrt region)")


def _round_against(price: Decimal, quantity: Decimal, market: Market) -> Decimal:
    """Round toward the mark (up for a long, down for a short) so the estimate warns early."""
    tick = market.tick_size / 100
    return ceil_to(price, tick) if quantity > 0 else floor_to(price, tick)
