"""The price feed machine: publishes index prices (assets) and marks (perps) from the paths.

On every ``prices`` tick it evaluates each path, quantizes (an asset's index to the finest tick
of its markets, a mark to its perp's tick) and sends each subscriber one message with what
changed among its symbols, so a tick costs in proportion to who holds exposure there. A perp's
mark is its index times one plus its premium path (none: mark = index). A new subscriber gets a
snapshot at once. The direct engine publishes prices it is given the same way (``publish``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Protocol

from exchange.decimals import ONE
from exchange.machine import Machine
from exchange.profile import Profile
from exchange.protocol import FEED, PriceSnapshot, PriceUpdate, Subscribe, Tick


class PricePath(Protocol):
    """A deterministic price (or premium fraction) as a function of virtual time."""

    def at(self, time_ms: int) -> Decimal: ...


def premium_mark(index: Decimal, premium: Decimal | None) -> Decimal:
    """A perp's mark from its index and a premium fraction (0.001 = 0.1% over index)."""
    return index if premium is None else index * (ONE + premium)


class FeedMachine(Machine):
    handlers = {Subscribe: "on_subscribe", Tick: "on_tick"}

    def __init__(self, profile: Profile) -> None:
        super().__init__(FEED)
        self.profile = profile
        self.index_paths: dict[str, PricePath] = {}
        self.premium_paths: dict[str, PricePath] = {}
        self.prices: dict[str, Decimal] = {}
        self.subscribers: dict[str, dict[str, None]] = {}
        self._quantum: dict[str, Decimal] = {}
        for market in profile.markets.values():
            tick = market.tick_size
            if market.base not in self._quantum or tick < self._quantum[market.base]:
                self._quantum[market.base] = tick
            if market.is_perp:
                self._quantum[market.symbol] = tick

    def set_path(self, asset: str, path: PricePath) -> None:
        self.index_paths[asset] = path

    def set_premium(self, perp: str, path: PricePath) -> None:
        self.premium_paths[perp] = path

    def evaluate(self, time_ms: int) -> dict[str, Decimal]:
        """Every published price at ``time_ms``: indexes, then the perps' marks."""
        prices: dict[str, Decimal] = {}
        for asset, path in self.index_paths.items():
            prices[asset] = path.at(time_ms).quantize(self._quantum.get(asset, Decimal("0.00000001")))
        for market in self.profile.perp_markets():
            index = prices.get(market.base)
            if index is None:
                continue
            premium_path = self.premium_paths.get(market.symbol)
            premium = premium_path.at(time_ms) if premium_path is not None else None
            prices[market.symbol] = premium_mark(index, premium).quantize(market.tick_size)
        return prices

    def on_subscribe(self, sender: str, message: Subscribe) -> None:
        for symbol in message.symbols:
            self.subscribers.setdefault(symbol, {})[sender] = None
        self.send(sender, PriceSnapshot({s: self.prices[s] for s in message.symbols if s in self.prices}))

    def on_tick(self, sender: str, message: Tick) -> None:
        self.publish(self.evaluate(message.time_ms))

    def publish(self, prices: dict[str, Decimal]) -> None:
        """Log each price that changed and tell its subscribers, one message each (the same
        message, immutable, to every subscriber that hears the same prices)."""
        outgoing: dict[str, list[tuple[str, Decimal]]] = {}
        for symbol, price in prices.items():
            if self.prices.get(symbol) == price:
                continue
            self.prices[symbol] = price
            self.emit("price", symbol=symbol, price=price)
            for subscriber in self.subscribers.get(symbol, ()):
                outgoing.setdefault(subscriber, []).append((symbol, price))
        updates: dict[tuple[tuple[str, Decimal], ...], PriceUpdate] = {}  # one message per distinct content
        for subscriber, changed in outgoing.items():
            key = tuple(changed)
            update = updates.get(key)
            if update is None:
                update = updates[key] = PriceUpdate(key)
            self.send(subscriber, update)
