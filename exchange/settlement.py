"""Covering a settlement-asset shortfall (spec 10.3, "USDC shortfall" in the decisions table).

Perp fees, funding and realized losses are paid in USDC; when they take the available USDC
balance below zero the shortfall is covered, in order: (1) redeem the account's USDC lend,
(2) borrow USDC if ``auto_borrow_settlements`` is on, (3) convert other collateral by selling it
on its USDC spot market. This module only plans; the sub-account machine carries the plan out
against the pool and the books, one step at a time, and plans again with what is left.

Choices: collateral is converted largest haircut first (lowest collateral weight at its
current size; ties by symbol) because that is the collateral the margin model already values
least; a conversion is sized at the mark less the taker fee and the impact band, so that one
sale covers the shortfall even at the band's worst price; available and lent balances are sold
(lent collateral backs the margin like held collateral, and the conversion order redeems it
with ``autoLendRedeem``), locked ones are not (they belong to open orders). A shortfall nothing
can cover is paid by the liquidity fund and becomes negative unsettled equity, which later
deposits repay (spec 11.6).
"""

from __future__ import annotations

from decimal import Decimal

import attrs

from exchange.decimals import ZERO, ceil_to
from exchange.ledger import SubAccount
from exchange.margin import collateral_value


@attrs.frozen
class Conversion:
    """Sell ``quantity`` of ``asset`` on ``market`` for the settlement asset."""

    asset: str
    market: str
    quantity: Decimal


@attrs.frozen
class ReconciliationPlan:
    shortfall: Decimal
    redeem: Decimal = ZERO
    borrow: Decimal = ZERO
    conversions: tuple[Conversion, ...] = ()
    uncovered: Decimal = ZERO


def settlement_shortfall(account: SubAccount) -> Decimal:
    available = account.available(account.profile.settlement_asset)
    return -available if available < 0 else ZERO


def plan_reconciliation(account: SubAccount, *, borrow_allowed: bool = True) -> ReconciliationPlan | None:
    """How to cover the account's settlement shortfall now, or ``None`` when there is none.

    ``borrow_allowed=False`` plans again after the pool refused the borrow.
    """
    short = settlement_shortfall(account)
    if not short:
        return None
    settle = account.profile.settlement_asset
    shortfall = short
    redeem = min(account.lends.get(settle, ZERO), short)
    short -= redeem
    borrow = ZERO
    if short and borrow_allowed and account.settings.auto_borrow_settlements:
        borrow, short = short, ZERO
    conversions = []
    if short:
        for asset, market, weight in _convertible(account):
            if not short:
                break
            spec = account.profile.markets[market]
            price = account.price(asset) / account.price(settle)
            net = price * (1 - spec.taker_fee) * spec.bands.min_impact_multiplier
            needed = ceil_to(short / net, spec.step_size)
            quantity = min(needed, _sellable(account, asset, spec.step_size))
            if quantity < spec.min_quantity:
                continue
            conversions.append(Conversion(asset, market, quantity))
            short = max(ZERO, short - quantity * net)
    return ReconciliationPlan(shortfall, redeem, borrow, tuple(conversions), short)


def _held(account: SubAccount, asset: str) -> Decimal:
    """What of ``asset`` a conversion may sell: the available balance and the lend."""
    return max(account.available(asset), ZERO) + account.lends.get(asset, ZERO)


def _sellable(account: SubAccount, asset: str, step: Decimal) -> Decimal:
    held = _held(account, asset)
    return held - held % step


def _convertible(account: SubAccount) -> list[tuple[str, str, Decimal]]:
    """(asset, its settlement-asset spot market, collateral weight), largest haircut first."""
    settle = account.profile.settlement_asset
    found = []
    for asset in dict.fromkeys([*account.balances, *account.lends]):
        held = _held(account, asset)
        if asset == settle or held <= 0:
            continue
        market = spot_market_for(account, asset)
        if market is None:
            continue
        weight, _ = collateral_value(account, asset, held, account.price(asset))
        found.append((asset, market, weight))
    return sorted(found, key=lambda row: (row[2], row[0]))


def spot_market_for(account: SubAccount, asset: str) -> str | None:
    """The spot market that sells ``asset`` for the settlement asset, if the venue lists one."""
    settle = account.profile.settlement_asset
    for market in account.profile.markets.values():
        if not market.is_perp and market.base == asset and market.quote == settle:
            return market.symbol
    return None
