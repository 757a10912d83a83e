"""Stages 2 and 3 across accounts: who takes what is left of a liquidation (spec 11.3-11.4).

``allocate`` plans on what the liquidator has heard: the liquidated account's last health
report, every other account's last report, and the marks it hears now. Staleness is an input,
not a second code path: a driver with true state passes fresh reports. Positions go to backstop
providers at mark within their capacity, in the order the providers were added; what they
cannot take is closed against ADL counterparties, ranked by score on their reports revalued at
the current mark (equity moves by the change of unrealized PnL since the report). A borrow of
another asset is repaid by providers holding it, paid at mark; a settlement-asset borrow is
repaid by providers buying collateral at mark, grossed up for the fee. Capacity is consumed
from each ``BackstopProvider`` as it is planned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal

import attrs

from exchange.decimals import ZERO, floor_to
from exchange.liquidation import ADL, BACKSTOP, AdlCandidate, BackstopProvider, adl_queue, gross_of_fee
from exchange.profile import Profile
from exchange.protocol import Delivery, Handover, HealthReport, Purchase


@attrs.frozen(kw_only=True)
class Allocation:
    handovers: tuple[Handover, ...]
    deliveries: tuple[Delivery, ...]
    purchases: tuple[Purchase, ...]


def allocate(report: HealthReport, reports: Mapping[str, HealthReport], providers: Sequence[BackstopProvider],
             prices: Mapping[str, Decimal], profile: Profile) -> Allocation:
    """What the backstop and ADL take of the account ``report`` describes."""
    account = report.account
    handovers: list[Handover] = []
    for position in report.positions:
        market, quantity = position.market, position.quantity
        mark = prices.get(market)
        if mark is None or not quantity:
            continue
        step = profile.markets[market].step_size
        remaining = abs(quantity)
        for provider in providers:
            if provider.account == account or not remaining:
                continue
            take = min(remaining, floor_to(provider.room(market) / mark, step))
            if take > 0:
                handovers.append(Handover(kind=BACKSTOP, market=market, counterparty=provider.account, quantity=take))
                provider.used[market] = provider.used.get(market, ZERO) + take * mark
                remaining -= take
        if remaining:
            candidates = [
                AdlCandidate(other, p.quantity, p.pnl_at(mark), p.entry_notional,
                             r.net_equity + p.pnl_at(mark) - p.unrealized_pnl, mark)
                for other, r in reports.items()
                if other != account
                for p in r.positions
                if p.market == market and p.quantity
            ]
            for candidate in adl_queue(candidates, 1 if quantity > 0 else -1):
                take = min(remaining, abs(candidate.quantity))
                handovers.append(Handover(kind=ADL, market=market, counterparty=candidate.account, quantity=take,
                                          adl_score=candidate.score))
                remaining -= take
                if not remaining:
                    break
    deliveries: list[Delivery] = []
    purchases: list[Purchase] = []
    settle = profile.settlement_asset
    for asset, owed in report.borrows:
        if asset == settle:
            # Providers buy collateral for it, enough to repay it after the fee; the account
            # knows what it holds and sells.
            remaining = gross_of_fee(owed, profile.liquidation.fee_rate, profile.assets[asset].step)
            for provider in providers:
                take = min(remaining, provider.room(asset))
                if provider.account != account and take > 0:
                    purchases.append(Purchase(provider=provider.account, most=take))
                    provider.used[asset] = provider.used.get(asset, ZERO) + take
                    remaining -= take
            continue
        price = prices.get(asset)
        if not price:
            continue
        step = profile.assets[asset].step
        remaining = owed
        for provider in providers:
            take = min(remaining, floor_to(provider.room(asset) / price, step))
            if provider.account != account and take > 0:
                deliveries.append(Delivery(provider=provider.account, asset=asset, quantity=take))
                provider.used[asset] = provider.used.get(asset, ZERO) + take * price
                remaining -= take
    return Allocation(handovers=tuple(handovers), deliveries=tuple(deliveries), purchases=tuple(purchases))
