"""Benchmark of the actor runtime against the pure core, in one run.

    python bench/runtime.py           # a few minutes
    python bench/runtime.py --quick   # smaller sizes

Reports:
* the raw cost of one message hop: an awaited trio memory-channel send/receive between two
  tasks, and the runtime's own mailbox hop (put + wake) as actors use it;
* orders per second for one order stream through the direct engine (the same machines, no Trio)
  and through the actor system with the invariant observer off and on (after every event);
* wall time per price tick and memory per sub-account with 10 ... 10,000 sub-accounts that hold
  a position in the moving market, and the same with as many again holding nothing there;
* what the invariant observer costs at scale: 100 and 1,000 sub-accounts, each with a noise
  trader at one order a second against a market maker, checked every 200 events (a fuzz
  campaign's setting) against the same run with the observer off.

Wall times are medians of a few repeats in this one process; compare the ratios, the machine
is shared and noisy.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
import tracemalloc
from decimal import Decimal
from pathlib import Path

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.agents import Agent, MarketMaker, NoiseTrader  # noqa: E402
from actors.network import Mailbox, Quiet  # noqa: E402
from actors.paths import Constant, RandomWalk  # noqa: E402
from actors.system import System  # noqa: E402
from exchange.engine import Exchange  # noqa: E402
from exchange.ledger import Position, Settings  # noqa: E402
from exchange.orders import Order, OrderType, Side  # noqa: E402
from exchange.profile import load_profile  # noqa: E402
from exchange.protocol import PlaceOrder  # noqa: E402

D = Decimal
BTC = "BTC_USDC_PERP"
PROFILE = load_profile("backpack")


# -- one hop ----------------------------------------------------------------------------------


def hop_costs(n: int = 20000) -> tuple[float, float]:
    """(awaited channel hop, mailbox hop) in seconds, ping-ponging ``n`` messages."""

    async def channels() -> float:
        a_send, a_recv = trio.open_memory_channel(0)
        b_send, b_recv = trio.open_memory_channel(0)

        async def echo() -> None:
            async for item in a_recv:
                await b_send.send(item)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo)
            start = time.perf_counter()
            for i in range(n):
                await a_send.send(i)
                await b_recv.receive()
            elapsed = time.perf_counter() - start
            nursery.cancel_scope.cancel()
        return elapsed / (2 * n)

    async def mailboxes() -> float:
        quiet = Quiet()
        a, b = Mailbox(quiet), Mailbox(quiet)

        async def echo() -> None:
            while True:
                await a.wait()
                while a.queue:
                    b.put("echo", a.queue.popleft()[1])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo)
            await trio.testing.wait_all_tasks_blocked()
            start = time.perf_counter()
            for i in range(n):
                a.put("main", i)
                await b.wait()
                b.queue.popleft()
            elapsed = time.perf_counter() - start
            nursery.cancel_scope.cancel()
        return elapsed / (2 * n)

    return trio.run(channels), trio.run(mailboxes)


# -- one order stream, two ways ---------------------------------------------------------------


def order_stream(accounts: int, orders: int, seed: int = 11) -> list[Order]:
    """Limit orders around 100,000 from ``accounts`` traders: about half cross and trade."""
    rng = random.Random(seed)
    stream = []
    for i in range(orders):
        side = Side.BID if rng.random() < 0.5 else Side.ASK
        offset = D(rng.randint(-8, 12)) * D("0.5")
        price = D(100000) - offset if side is Side.BID else D(100000) + offset
        quantity = D(rng.randint(1, 20)) * D("0.001")
        stream.append(Order(f"o{i}", f"t{i % accounts}", BTC, side, OrderType.LIMIT, quantity, price))
    return stream


def engine_rate(stream: list[Order], accounts: int) -> float:
    ex = Exchange(PROFILE)
    ex.set_price("BTC", D(100000))
    for i in range(accounts):
        ex.add_account(f"t{i}", settings=Settings(leverage_limit=D(20)))
        ex.deposit(f"t{i}", "USDC", D(1_000_000))
    gc.collect()
    start = time.perf_counter()
    for order in stream:
        ex.place(order)
    return len(stream) / (time.perf_counter() - start)


class StreamDriver(Agent):
    """Sends its sub-accounts' share of the stream at t=0, all at once (many in flight)."""

    def __init__(self, system: System, name: str, account_id: str, orders: list[Order]) -> None:
        super().__init__(system, name, account_id)
        self.orders = orders

    def start(self) -> None:
        for order in self.orders:
            self.send(f"account:{order.account}", PlaceOrder(order))


def actor_rate(stream: list[Order], accounts: int, check_every: int | None) -> float:
    """The same stream through the actors: zero latency, so it is all handled at t=0; the wall
    time includes rendering the event log and its fingerprint."""
    system = System(PROFILE, seed=1, check_every=check_every, keep_events=False)
    system.set_path("BTC", Constant(D(100000)))
    for i in range(accounts):
        system.add_account(f"t{i}", deposits={"USDC": D(1_000_000)}, settings=Settings(leverage_limit=D(20)),
                           markets=[BTC])
    system.add_agent(StreamDriver(system, "driver", "t0", stream))
    gc.collect()
    start = time.perf_counter()
    system.run(0.5)
    return len(stream) / (time.perf_counter() - start)


# -- price ticks with many sub-accounts ------------------------------------------------------


def tick_cost(holders: int, idle: int, ticks: int) -> tuple[float, float]:
    """(seconds for a run of ``ticks`` price ticks, bytes per sub-account) with ``holders``
    sub-accounts holding a BTC perp position (half long, half short, set straight into the core
    state) and ``idle`` others holding only USDC."""
    gc.collect()
    tracemalloc.start()
    system = System(PROFILE, seed=2, check_every=None, keep_events=False, stall_ms=10**9)
    system.set_path("BTC", RandomWalk(D(100000), D(0), D("0.5"), 1000, random.Random(3)))
    book = system.markets[BTC].book
    for i in range(holders + idle):
        actor = system.add_account(f"a{i}", deposits={"USDC": D(10_000)}, settings=Settings(leverage_limit=D(20)),
                                   markets=[BTC] if i < holders else [])
        if i < holders:
            quantity = D("0.01") if i % 2 == 0 else D("-0.01")
            actor.account.positions[BTC] = Position(BTC, quantity, quantity * D(100000), D(100000))
            book.positions[actor.account.id] = quantity
    built = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    per_account = built / (holders + idle)
    gc.collect()
    start = time.perf_counter()
    system.run(ticks + 0.5)
    return time.perf_counter() - start, per_account


def per_tick(holders: int, idle: int, ticks: int = 20) -> tuple[float, float]:
    """Seconds per tick from two runs of different length (their difference drops the setup:
    spawning the tasks and the deposits at t=0), and bytes per sub-account."""
    short, per_account = tick_cost(holders, idle, ticks)
    long, _ = tick_cost(holders, idle, 2 * ticks)
    return (long - short) / ticks, per_account


# -- the observer at scale -------------------------------------------------------------------


def crowd_run(accounts: int, seconds: int, check_every: int | None) -> tuple[float, int]:
    """(wall seconds, events) of ``accounts`` noise traders at one order a second on a BTC perp
    quoted by one market maker, prices moving every second."""
    system = System(PROFILE, seed=4, check_every=check_every, keep_events=False, fingerprint=False)
    system.set_path("BTC", RandomWalk(D(100000), D(0), D("0.3"), 1000, random.Random(5)))
    system.add_account("mm", deposits={"USDC": D(10_000_000)}, settings=Settings(leverage_limit=D(20)), markets=[BTC])
    system.add_agent(MarketMaker(system, "maker", "mm", [BTC], size=D("0.5")))
    for i in range(accounts):
        system.add_account(f"n{i}", deposits={"USDC": D(100_000)}, settings=Settings(leverage_limit=D(10)),
                           markets=[BTC])
        system.add_agent(NoiseTrader(system, f"noise{i}", f"n{i}", [BTC], interval_ms=1000, max_steps=5))
    gc.collect()
    start = time.perf_counter()
    result = system.run(seconds)
    return time.perf_counter() - start, result.event_count


def observer_cost(accounts: int, seconds: int) -> tuple[float, int]:
    """(wall time with the observer every 200 events / without, events), medians of three."""
    ratios, events = [], 0
    for _ in range(3):
        off, events = crowd_run(accounts, seconds, None)
        on, _ = crowd_run(accounts, seconds, 200)
        ratios.append(on / off)
    return statistics.median(ratios), events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, a quick look")
    args = parser.parse_args()
    sizes = (10, 100, 1000) if args.quick else (10, 100, 1000, 10000)
    orders = 4000 if args.quick else 20000
    print(f"marginsim actor benchmark (Python {sys.version.split()[0]}, trio {trio.__version__})")
    channel, mailbox = hop_costs()
    print(f"  one awaited trio channel hop (send+receive, 2 tasks)   {channel * 1e6:8.2f} us")
    print(f"  one mailbox hop as actors use it (put + wake)          {mailbox * 1e6:8.2f} us")
    stream = order_stream(50, orders)
    core = statistics.median(engine_rate(stream, 50) for _ in range(3))
    off = statistics.median(actor_rate(stream, 50, None) for _ in range(3))
    sparse = statistics.median(actor_rate(stream, 50, 1000) for _ in range(3))
    every = actor_rate(stream[: len(stream) // 10], 50, 1)
    print(f"  {orders:,} limit orders from 50 accounts, about half trading, all sent at t=0:")
    print(f"    direct engine (same machines, no Trio)         {core:10,.0f} orders/s")
    print(f"    actor system, observer off                     {off:10,.0f} orders/s   ({off / core:.0%} of the engine)")
    print(f"    actor system, observer every 1,000 events      {sparse:10,.0f} orders/s   ({sparse / core:.0%})")
    print(f"    actor system, observer after every event       {every:10,.0f} orders/s   ({every / core:.1%};"
          f" first {len(stream) // 10:,} orders)")
    print("  the observer every 200 events against none (noise traders at one order a second):")
    for n, seconds in ((100, 20), (1000, 10) if args.quick else (1000, 20)):
        ratio, events = observer_cost(n, seconds)
        print(f"    {n:>6,} sub-accounts, {seconds} s ({events:,} events): {ratio:.2f}x")
    print("  price ticks (BTC moves every second):")
    print(f"    {'holders':>8} {'idle':>8} {'ms/tick':>9} {'us/holder':>10} {'KB/account':>11}")
    for n in sizes:
        for idle in (0, n):
            seconds, per_account = per_tick(n, idle)
            print(f"    {n:>8,} {idle:>8,} {seconds * 1e3:9.2f} {seconds / n * 1e6:10.2f} {per_account / 1024:11.1f}")


if __name__ == "__main__":
    main()
