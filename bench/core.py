"""Benchmark of the pure core: the order book, a margin recomputation, the pre-trade check.

    python bench/core.py            # about half a minute

Reports medians of several timed repeats after a warm-up, garbage collector on (the
realistic setting). The margin cases use a profile extended with synthetic perp markets so
an account can hold 50 positions; every position is large enough to sit in the sqrt region
(the expensive case). "cold" changes every mark first, so every cached square root is
recomputed; "warm" recomputes with nothing changed.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exchange import margin  # noqa: E402
from exchange.book import OrderBook  # noqa: E402
from exchange.ledger import Settings, SubAccount  # noqa: E402
from exchange.orders import Fill, Order, OrderType, Side, TimeInForce  # noqa: E402
from exchange.pretrade import check_order  # noqa: E402
from exchange.profile import Profile, load_profile  # noqa: E402

D = Decimal
REPEATS = 7


def median_time(run: Callable[[], int]) -> float:
    """Seconds per operation: ``run`` does some operations and returns how many. A run that
    sets ``run.elapsed`` reports its own timed span (its setup stays off the clock)."""
    run()
    samples = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        count = run()
        elapsed = getattr(run, "elapsed", None)
        samples.append((elapsed if elapsed is not None else time.perf_counter() - start) / count)
    return statistics.median(samples)


# -- the book -----------------------------------------------------------------------------


def _seeded_book(profile: Profile) -> OrderBook:
    """BTC_USDC_PERP with 1,000 resting orders per side around 100,000 (20 levels of 50)."""
    book = OrderBook(profile, "BTC_USDC_PERP")
    book.set_prices(mark=D(100000), index=D(100000))
    for i in range(1000):
        for side, sign in ((Side.BID, -1), (Side.ASK, 1)):
            price = D(100000) + sign * D(1 + i % 20) * D("0.5")
            book.submit(Order(f"seed-{side}-{i}", f"mm{i % 7}", "BTC_USDC_PERP", side, OrderType.LIMIT, D("0.01"), price))
    return book


def bench_book(profile: Profile) -> dict[str, float]:
    """Book operations per second. Each stream is built before the clock starts (the orders are
    the caller's cost, not the book's); every repeat replays it on a freshly seeded book."""
    rng = random.Random(7)
    n = 20000
    inserts = []
    for i in range(n):
        side = Side.BID if i % 2 else Side.ASK
        price = D(100000) + (D(-1) if side is Side.BID else D(1)) * D(11 + i % 40) * D("0.5")
        inserts.append(("submit", Order(f"i{i}", "t", "BTC_USDC_PERP", side, OrderType.LIMIT, D("0.01"), price)))
    markets = []
    for i in range(2000):
        side = Side.BID if i % 2 else Side.ASK
        markets.append(("submit", Order(f"m{i}", "t", "BTC_USDC_PERP", side, OrderType.MARKET, D("0.03"))))
        # Refill what was taken so the book keeps its depth.
        price = D(100000) + (D(1) if side is Side.BID else D(-1)) * D(1 + i % 20) * D("0.5")
        markets.append(("submit", Order(f"r{i}", "mm", "BTC_USDC_PERP", side.opposite, OrderType.LIMIT, D("0.03"), price)))
    mixed = []
    live = [f"seed-{side}-{i}" for i in range(1000) for side in (Side.BID, Side.ASK)]
    owners = {oid: f"mm{int(oid.rsplit('-', 1)[1]) % 7}" for oid in live}
    for i in range(n):
        roll = rng.random()
        if roll < 0.7:
            side = Side.BID if rng.random() < 0.5 else Side.ASK
            sign = -1 if side is Side.BID else 1
            price = D(100000) + sign * D(rng.randint(-2, 20)) * D("0.5")
            oid, owner = f"x{i}", f"t{i % 5}"
            mixed.append(("submit", Order(oid, owner, "BTC_USDC_PERP", side, OrderType.LIMIT, D("0.01"), price)))
            live.append(oid)
            owners[oid] = owner
        elif roll < 0.9 and live:
            j = rng.randrange(len(live))
            live[j], live[-1] = live[-1], live[j]
            oid = live.pop()
            mixed.append(("cancel", oid, owners[oid]))
        else:
            side = Side.BID if rng.random() < 0.5 else Side.ASK
            mixed.append(("submit", Order(f"x{i}", "taker", "BTC_USDC_PERP", side, OrderType.MARKET, D("0.02"),
                                          time_in_force=TimeInForce.IOC)))

    def replay(stream: list[tuple]) -> Callable[[], int]:
        def run() -> int:
            book = _seeded_book(profile)
            submit, cancel = book.submit, book.cancel
            start = time.perf_counter()
            for op in stream:
                if op[0] == "submit":
                    submit(op[1])
                else:
                    cancel(op[1], op[2])
            run.elapsed = time.perf_counter() - start  # type: ignore[attr-defined]
            return len(stream)

        return run

    return {
        "book: limit insert (no cross)": median_time(replay(inserts)),
        "book: market order / refill, alternating": median_time(replay(markets)),
        "book: mixed 70% limit / 20% cancel / 10% market": median_time(replay(mixed)),
    }


# -- margin -------------------------------------------------------------------------------


def wide_profile(markets: int) -> Profile:
    """The backpack profile plus ``markets`` synthetic perps shaped like BTC_USDC_PERP."""
    btc = {
        "kind": "PERP", "base": "BTC", "quote": "USDC", "tick_size": D("0.1"), "step_size": D("0.00001"),
        "min_quantity": D("0.00001"), "maker_fee": D("0.0002"), "taker_fee": D("0.0005"),
        "imf": {"base": D("0.01333333"), "factor": D("0.00002494")},
        "mmf": {"base": D("0.00666667"), "factor": D("0.00001496")},
        "funding_interval": 3600, "funding_lower_bound_bps": -100, "funding_upper_bound_bps": 100,
    }
    return load_profile("backpack", overrides={"markets": {f"X{i}_PERP": btc for i in range(markets)}})


def account_with_positions(profile: Profile, count: int) -> SubAccount:
    account = SubAccount("bench", profile, settings=Settings(leverage_limit=D(20)))
    account.deposit("USDC", D(10_000_000))
    account.set_mark("BTC", D(100000))
    for i in range(count):
        symbol = f"X{i}_PERP"
        market = profile.markets[symbol]
        account.set_mark(symbol, D(100000))
        side = Side.BID if i % 2 else Side.ASK
        quantity = D(5 + i % 3)  # 500k-700k USD notional: in the sqrt region
        account.apply_fill(
            Fill(trade_id=i, market=symbol, order_id=f"o{i}", account=account.id, side=side, price=D(100000),
                 quantity=quantity, quote_quantity=quantity * D(100000), fee=D(0), fee_asset="USDC", is_maker=False),
            market,
        )
    return account


def bench_margin(profile: Profile) -> dict[str, float]:
    results = {}
    for count in (1, 10, 50):
        account = account_with_positions(profile, count)
        marks = [f"X{i}_PERP" for i in range(count)]
        tick = [0]

        def cold() -> int:
            reps = 200
            for _ in range(reps):
                tick[0] += 1
                price = D(100000) + D(tick[0] % 1000) / 10
                for symbol in marks:
                    account.marks[symbol] = price
                margin.totals(account)
            return reps

        def warm() -> int:
            reps = 500
            for _ in range(reps):
                margin.totals(account)
            return reps

        results[f"margin recompute, {count} positions, cold (every mark moved)"] = median_time(cold)
        results[f"margin recompute, {count} positions, warm (cached)"] = median_time(warm)

    account = account_with_positions(profile, 10)
    order = Order("chk", account.id, "X3_PERP", Side.BID, OrderType.LIMIT, D("0.5"), D(100000))

    def pretrade() -> int:
        reps = 2000
        for _ in range(reps):
            check_order(account, order)
        return reps

    results["pre-trade check, 10-position account"] = median_time(pretrade)
    return results


def main() -> None:
    profile = wide_profile(50)
    rows = bench_book(profile) | bench_margin(profile)
    print(f"marginsim core benchmark (Python {sys.version.split()[0]}; medians of {REPEATS}, GC on)")
    for name, seconds in rows.items():
        print(f"  {name:<58} {seconds * 1e6:9.2f} us   {1 / seconds:12,.0f} /s")


if __name__ == "__main__":
    main()
