"""Perpetual funding (spec 10.2): the rate from the time-weighted premium, and the payments.

The rate of an interval is ``clamp(TWAP((mark - index) / index) x interval / 24h, lower,
upper)``, the bounds given in basis points per market. A positive rate means longs pay shorts.
Payments are made at the mark at the interval end: ``rate x quantity x mark``.

Rounding, and where the remainder goes: every payer pays its amount rounded *up* to the
settlement asset's step. The receivers share exactly what the payers paid: each gets its exact
amount's share rounded down, and the few steps left over (fewer than the number of receivers)
go one each to the receivers whose shares were rounded down the most (ties by account id). So
one interval's payments sum to exactly zero across all sub-accounts, and no payer pays less
than it owes.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from exchange.decimals import ZERO, ceil_to, floor_to
from exchange.profile import Market

DAY_MS = 86_400_000


class FundingClock:
    """One perp market's funding interval: it accumulates the premium over time."""

    def __init__(self, market: Market, start_ms: int = 0) -> None:
        self.symbol = market.symbol
        self.interval_ms = market.funding_interval_ms
        self.lower = market.funding_lower_bound_bps / 10_000
        self.upper = market.funding_upper_bound_bps / 10_000
        self.interval_start_ms = start_ms
        self._area = ZERO  # premium x milliseconds since the interval start
        self._premium = ZERO
        self._since_ms = start_ms

    def observe(self, now_ms: int, mark: Decimal, index: Decimal) -> None:
        """A new mark/index pair: the previous premium held until now."""
        self._accumulate(now_ms)
        self._premium = (mark - index) / index if index else ZERO

    def _accumulate(self, now_ms: int) -> None:
        if now_ms > self._since_ms:
            self._area += self._premium * (now_ms - self._since_ms)
            self._since_ms = now_ms

    def estimate(self, now_ms: int) -> Decimal:
        """The running interval's rate so far (the venue's ``markPrices.fundingRate``)."""
        self._accumulate(now_ms)
        elapsed = now_ms - self.interval_start_ms
        twap = self._area / elapsed if elapsed > 0 else self._premium
        return self.clamp(twap * self.interval_ms / DAY_MS)

    def clamp(self, rate: Decimal) -> Decimal:
        return min(max(rate, self.lower), self.upper)

    def close_interval(self, now_ms: int) -> Decimal:
        """The rate of the interval ending now; the next interval starts."""
        rate = self.estimate(now_ms)
        self.interval_start_ms = now_ms
        self._area = ZERO
        return rate

    @property
    def next_funding_ms(self) -> int:
        return self.interval_start_ms + self.interval_ms


def funding_payments(
    rate: Decimal, positions: Mapping[str, Decimal], mark: Decimal, step: Decimal
) -> dict[str, Decimal]:
    """account -> amount received (+) or paid (-) for one interval; the amounts sum to zero."""
    payers: dict[str, Decimal] = {}
    receivers: dict[str, Decimal] = {}
    for account in sorted(positions):
        owed = rate * positions[account] * mark
        if owed > 0:
            payers[account] = ceil_to(owed, step)
        elif owed < 0:
            receivers[account] = -owed
    if not payers or not receivers:
        return {}
    paid = sum(payers.values(), ZERO)
    exact_total = sum(receivers.values(), ZERO)
    shares = {a: paid * exact / exact_total for a, exact in receivers.items()}
    received = {a: floor_to(share, step) for a, share in shares.items()}
    left_steps = int((paid - sum(received.values(), ZERO)) / step)
    by_remainder = sorted(receivers, key=lambda a: (-(shares[a] - received[a]), a))
    for account in by_remainder[:left_steps]:
        received[account] += step
    result = {a: -p for a, p in payers.items()}
    result.update(received)
    return dict(sorted(result.items()))
