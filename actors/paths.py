"""Price paths: what the feed publishes as index prices (and perp premiums) over virtual time.

Every path is a deterministic function of time (and, for the random ones, of a seeded stream).
Paths compute in Decimal only: a random walk draws uniforms from its stream (exact binary
fractions, converted exactly) and uses ``Decimal.exp``, so the same seed gives the same prices
on every machine, whatever its floating-point library.
"""

from __future__ import annotations

import bisect
import random
from decimal import Decimal

import attrs

from exchange.decimals import ZERO
from exchange.feed import PricePath

YEAR_MS = Decimal(365 * 24 * 3600 * 1000)


@attrs.frozen
class Constant:
    price: Decimal

    def at(self, time_ms: int) -> Decimal:
        return self.price


@attrs.frozen
class Linear:
    """Piecewise linear through (time_ms, price) points; flat before the first and after the last."""

    points: tuple[tuple[int, Decimal], ...]

    def at(self, time_ms: int) -> Decimal:
        points = self.points
        times = [t for t, _ in points]
        i = bisect.bisect_right(times, time_ms)
        if i == 0:
            return points[0][1]
        if i == len(points):
            return points[-1][1]
        (t0, p0), (t1, p1) = points[i - 1], points[i]
        return p0 + (p1 - p0) * (time_ms - t0) / (t1 - t0)


@attrs.frozen
class Steps:
    """A step function: each (time_ms, price) holds until the next (a shock is a step)."""

    points: tuple[tuple[int, Decimal], ...]

    def at(self, time_ms: int) -> Decimal:
        times = [t for t, _ in self.points]
        i = bisect.bisect_right(times, time_ms)
        return self.points[max(i - 1, 0)][1]


class RandomWalk:
    """Geometric Brownian motion with annual ``drift`` and ``volatility``, one step per
    ``step_ms``: ``p <- p exp((mu - sigma^2/2) dt + sigma sqrt(dt) Z)``. Z is the sum of twelve
    uniforms minus six (Irwin-Hall: mean 0, variance 1, tails cut at six sigma), computed
    exactly, so the path is the same everywhere for a seed."""

    def __init__(self, start: Decimal, drift: Decimal, volatility: Decimal, step_ms: int, rng: random.Random) -> None:
        self.start = start
        self.step_ms = step_ms
        dt = Decimal(step_ms) / YEAR_MS
        self._mu_dt = (drift - volatility * volatility / 2) * dt
        self._sigma_sqrt_dt = volatility * dt.sqrt()
        self._rng = rng
        self._prices = [start]

    def at(self, time_ms: int) -> Decimal:
        k = max(time_ms, 0) // self.step_ms
        prices = self._prices
        while len(prices) <= k:
            z = sum((Decimal(self._rng.random()) for _ in range(12)), ZERO) - 6
            prices.append(prices[-1] * (self._mu_dt + self._sigma_sqrt_dt * z).exp())
        return prices[k]


@attrs.frozen
class Shifted:
    """A path plus a shock: ``base`` multiplied by ``factor`` from ``time_ms`` on."""

    base: PricePath
    time_ms: int
    factor: Decimal

    def at(self, time_ms: int) -> Decimal:
        price = self.base.at(time_ms)
        return price * self.factor if time_ms >= self.time_ms else price
