"""Build a venue of actors, run it in virtual time, read what happened.

    system = System(load_profile("backpack"), seed=7)
    system.set_path("BTC", Linear(((0, D(100000)), (60_000, D(90000)))))
    system.add_account("alice", deposits={"USDC": D(10000)})
    system.add_agent(MarketMaker(system, "mm", "maker", ["BTC_USDC_PERP"], size=D("0.5")))
    result = system.run(until_s=120)
    print(result.fingerprint, result.summary["accounts"]["alice"])

A run is named by (setup, seed). ``run`` drives ``trio.run`` under deterministic scheduling
on a ``VirtualClock`` that the scheduler moves once every actor waits, or, with
``realtime_rate``, a clock running that many virtual seconds per real second (wake-up latency
then decides the order of events due close together: such a run is not reproducible; the
terminal demo paces a virtual run instead).
Supervision: an actor that raises ends the run with ``RunFailed`` naming the actor, the
message and the cause; a run where work is pending but nothing is logged for ``stall_ms`` of
virtual time ends with a diagnosis; the observer's first violation ends it too.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import trio

from actors import events
from actors.clock import PacedClock, RealTime, VirtualClock
from actors.determinism import deterministic_scheduling
from actors.network import ZERO_LATENCY, Latency, Network
from actors.observer import InvariantViolation, Observer
from actors.runtime import (
    Actor,
    ActorCrashed,
    Context,
    Injections,
    Inline,
    RunQueue,
    Scheduler,
    Stalled,
    Watch,
)
from exchange import margin
from exchange.feed import PricePath
from exchange.liquidation import LiquidationStep, needs_liquidation
from exchange.machine import Machine
from exchange.profile import Profile
from exchange.subaccount import SubAccountMachine
from exchange.venue import SETUP, Venue


def _flatten(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, in order."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _flatten(inner)]
    return [exc]


def _nothing(address: str) -> None:
    """No observer: nothing to look at between messages."""


class RunFailed(Exception):
    """The run stopped early: an actor crashed, an invariant broke, or it stalled."""

    def __init__(self, kind: str, message: str, seed: int, time_ms: int, cause: BaseException | None = None,
                 fingerprint: str = "") -> None:
        self.kind = kind  # "crash", "invariant", "stall"
        self.seed = seed
        self.time_ms = time_ms
        self.cause = cause
        self.fingerprint = fingerprint  # of the event log up to the stop: a replay gives the same
        super().__init__(f"run stopped ({kind}) at t={time_ms / 1000:.3f}s, seed {seed}: {message}")


@attrs.frozen
class RunResult:
    seed: int
    until_ms: int
    fingerprint: str
    events: list[dict[str, Any]]
    event_count: int
    summary: dict[str, Any]
    history: Mapping[str, list[LiquidationStep]]


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the run at ``time_ms``; its log ends with an ``interrupted``
    event, so whoever reads it back knows it is not a whole run."""

    def __init__(self, seed: int, time_ms: int, fingerprint: str) -> None:
        self.seed = seed
        self.time_ms = time_ms
        self.fingerprint = fingerprint
        super().__init__(f"interrupted at t={time_ms / 1000:.3f}s")


class System:
    """The venue as actors: a scheduler, a network, markets, pools, a feed, a liquidator,
    sub-accounts and agents."""

    def __init__(
        self,
        profile: Profile,
        *,
        seed: int = 0,
        latency: Latency = ZERO_LATENCY,
        latency_rules: Mapping[tuple[str, str], Latency] | None = None,
        check_every: int | None = 1,
        grace_ms: int | None = None,
        log_path: Path | None = None,
        keep_events: bool = True,
        price_interval_ms: int = 1000,
        stall_ms: int = 60_000,
        sample_ms: int | None = None,
        progress: Callable[[int], None] | None = None,
        faults_until_ms: int = 0,
        fingerprint: bool = True,
        venue: Venue | None = None,
        lockstep: bool = False,
    ) -> None:
        self.profile = profile
        self.seed = seed
        if lockstep and (latency != ZERO_LATENCY or latency_rules):
            raise ValueError("a lockstep run delivers one message at a time, at zero latency")
        self.network = Network(seed, latency, dict(latency_rules or {}), lockstep=lockstep)
        self.log = events.EventLog(log_path, keep=keep_events, fingerprint=fingerprint)
        self.stall_ms = stall_ms
        self.progress = progress  # called with the virtual time, about a hundred times a run
        self.context = Context(self.network, self.log, self.after_message)
        self.scheduler = Scheduler(self.context)
        # A venue built elsewhere (a scenario's) carries its own price interval and samples.
        if venue is not None and (venue.seed != seed or venue.profile is not profile):
            raise ValueError("the venue was built for another seed or profile than this run")
        self.venue = venue if venue is not None else Venue(profile, seed=seed, price_interval_ms=price_interval_ms,
                                                           sample_ms=sample_ms)
        # The venue's machines, read by the observer, the runner and the tests.
        self.feed = self.venue.feed
        self.liquidator = self.venue.liquidator
        self.markets = self.venue.markets
        self.pools = self.venue.pools
        self.accounts = self.venue.accounts
        self.agents = self.venue.agents
        self.network.register(SETUP, attended=False)
        slowest = max([latency.ms + latency.jitter_ms] + [r.ms + r.jitter_ms for r in (latency_rules or {}).values()])
        grace = grace_ms if grace_ms is not None else 2 * profile.liquidation.loop_interval_ms + 4 * slowest + 1000
        self.grace_ms = grace
        self.observer = Observer(self, check_every, grace, faults_until_ms) if check_every is not None else None
        if self.observer is not None:
            self.log.listen(self.observer.on_event)
        if not lockstep:  # the look between messages goes straight to the observer
            self.context.after_message = self.observer.after_message if self.observer is not None else _nothing

    # -- building ---------------------------------------------------------------------------
    def add_account(self, account_id: str, **kwargs: Any) -> SubAccountMachine:
        """A sub-account (see ``Venue.add_account``)."""
        return self.venue.add_account(account_id, **kwargs)

    def add_agent(self, agent: Machine) -> Machine:
        return self.venue.add_agent(agent)

    def set_path(self, asset: str, path: PricePath) -> None:
        self.venue.set_path(asset, path)

    def set_premium(self, perp: str, path: PricePath) -> None:
        self.venue.set_premium(perp, path)

    def add_backstop(self, account_id: str, capacity: Mapping[str, Decimal]) -> None:
        self.venue.add_backstop(account_id, capacity)

    # -- running ----------------------------------------------------------------------------
    def after_message(self, address: str) -> None:
        if self.observer is not None:
            self.observer.after_message(address)
        if self.network.lockstep:
            self.network.handled()

    def serve_requests(self, injections: Injections) -> None:
        """Take requests from outside as ``injections`` and run every machine on one queue (see
        ``RunQueue``): for ``run_paced``, and for a replay of a served run on virtual time."""
        if self.network.lockstep:
            raise ValueError("a lockstep run takes no requests from outside")
        self.scheduler.injections = injections
        self.scheduler.run_queue = RunQueue(self.context)

    async def run_paced(self, clock: PacedClock, until_s: float | None = None,
                        on_idle: Callable[[], None] = lambda: None) -> RunResult:
        """Run inside the caller's trio run (a server's) on ``clock``, to ``until_s`` or until
        the injections are stopped; raises ``RunFailed`` as ``run`` does."""
        return await self.run_async(until_s, clock, on_idle)

    def run(self, until_s: float, *, realtime_rate: float | None = None) -> RunResult:
        """Run to ``until_s`` virtual seconds; raises ``RunFailed`` if the run cannot finish."""
        if realtime_rate is None:
            clock: trio.abc.Clock = VirtualClock()
        else:
            from trio.testing import MockClock  # only here: trio.testing imports pytest

            clock = MockClock(rate=realtime_rate)
        # The actors' state lives for the whole run: keep it out of the collector's scans and
        # collect the young generation less often (measured: 44 -> 30 us per account and price
        # tick with 10,000 accounts). The collector never decides anything in a run. No full
        # collection first: it cost 16 ms a run in a fuzz campaign, and whatever garbage is
        # frozen with the rest goes back to the collector when the run ends.
        gc.freeze()
        threshold = gc.get_threshold()
        gc.set_threshold(50_000, 20, 100)
        try:
            with deterministic_scheduling(self.seed):
                return trio.run(self.run_async, until_s, clock if isinstance(clock, VirtualClock) else None,
                                clock=clock)
        finally:
            gc.set_threshold(*threshold)
            gc.unfreeze()

    async def run_async(self, until_s: float | None, clock: VirtualClock | PacedClock | None,
                        on_idle: Callable[[], None] = lambda: None) -> RunResult:
        until_ms = round(until_s * 1000) if until_s is not None else 2**62
        time = self.context.clock = clock if clock is not None else RealTime()
        self.network.now_ms = lambda: time.ms
        watch = Watch(self.log, self.stall_ms, self._pending_work, self._diagnosis, self.progress,
                      max(until_ms // 100, 1))
        try:
            async with trio.open_nursery() as nursery:
                self._start(nursery)
                if self.network.lockstep:
                    if clock is None:
                        raise ValueError("a lockstep run is on virtual time")
                    await self.network.run_lockstep(self.scheduler.calendar, clock.advance, until_ms)
                elif isinstance(clock, PacedClock):
                    await self.scheduler.run_paced(until_ms, watch, clock, on_idle)
                else:
                    await self.scheduler.run(until_ms, watch, clock)
                for address, effects in self.venue.closing_samples(time.ms):  # how each account ended
                    self.context.carry_out(address, effects)
                nursery.cancel_scope.cancel()
            if self.observer is not None:
                self.observer.check(everything=True)
        except BaseException as stopped:
            raise self._stopped(stopped, until_ms) from None
        finally:
            fingerprint = self.log.close()
        return RunResult(self.seed, until_ms, fingerprint, self.log.events, self.log.count, self.summary(),
                         self.liquidator.history)

    def _stopped(self, stopped: BaseException, until_ms: int) -> BaseException:
        """Why the run stopped early, as one exception, whatever trio grouped together: an
        interruption first (Ctrl-C may cut other work short), then a broken invariant, a crash,
        a stall; anything else is a bug and goes up as it came."""
        found = _flatten(stopped)
        now_ms = self.context.clock.ms
        if any(isinstance(e, KeyboardInterrupt) for e in found):
            self.log.append({"event": "interrupted", "actor": "system", "t": now_ms, "until": until_ms})
            return Interrupted(self.seed, now_ms, self.log.close())
        for exc in found:
            cause = exc.cause if isinstance(exc, ActorCrashed) else exc
            if isinstance(cause, InvariantViolation):
                return self._failed_invariant(cause)
        for exc in found:
            if isinstance(exc, ActorCrashed):
                return RunFailed("crash", str(exc), self.seed, now_ms, exc, self.log.close())
        for exc in found:
            if isinstance(exc, Stalled):
                return RunFailed("stall", str(exc), self.seed, now_ms, fingerprint=self.log.close())
        return stopped

    def _failed_invariant(self, violation: InvariantViolation) -> RunFailed:
        return RunFailed("invariant", str(violation), self.seed, violation.time_ms, violation, self.log.close())

    def _start(self, nursery: trio.Nursery) -> None:
        """Spawn every actor in a fixed order, then carry out the venue's first instant."""
        # Agents are handled where their messages arrive (``Inline``), except in lockstep, where
        # every message takes its turn in the engine's order.
        run_queue = self.scheduler.run_queue
        if run_queue is not None:  # a served run: every machine on the one queue
            for machine in self.venue.machines():
                run_queue.add(machine)
            for sender, effects in self.venue.start(self.scheduler.calendar):
                self.context.carry_out(sender, effects)
            run_queue.drain()
            return
        inline = set() if self.network.lockstep else {a.address for a in self.agents}  # membership only
        actors = {m.address: Actor(self.context, m) for m in self.venue.machines() if m.address not in inline}
        for agent in self.agents:
            if agent.address in inline:
                Inline(self.context, agent)
        for actor in actors.values():
            nursery.start_soon(actor.run)
        for sender, effects in self.venue.start(self.scheduler.calendar):
            self.context.carry_out(sender, effects)

    def _pending_work(self) -> bool:
        return bool(
            self.network.pending_count()
            or any(a.awaiting or a.deferred or a.liquidation is not None for a in self.accounts.values())
        )

    def _diagnosis(self) -> str:
        lines = [f"nothing logged for {self.stall_ms / 1000:.0f}s of virtual time while work is pending:"]
        for hook in self.network.hooks:
            if hook.held:
                lines.append(f"  link {hook.sender} -> {hook.recipient} is held with {len(hook.held)} message(s)")
        queued = len(self.network._heap)
        if queued:
            lines.append(f"  {queued} message(s) queued on the network")
        for account_id, actor in self.accounts.items():
            for request_id, pending in actor.awaiting.items():
                lines.append(f"  {account_id} waits for the pool's answer to {request_id} ({pending.kind})")
            if actor.deferred:
                lines.append(f"  {account_id} holds {len(actor.deferred)} message(s) until it hears prices")
            if actor.liquidation is not None:
                lines.append(f"  {account_id} waits for {actor.liquidation.outstanding} liquidation answer(s)")
        return "\n".join(lines)

    def liveness_violations(self, now_ms: int) -> list[str]:
        """After a quiet end (faults lifted, prices still): is everything resolved?

        Every sub-account at MMR >= 100% has been brought back, handed over or closed, unless it
        went over less than a loop interval (and the grace) ago, or its liquidation is younger
        than the bound every liquidation must end within
        (``max_book_loops`` loops on the book, three more for the start, the backstop round and
        settling, and the grace); no request is still waiting; every order has ended or rests
        on its book exactly as its sub-account believes.
        """
        params = self.profile.liquidation
        bound_ms = (params.max_book_loops + 3) * params.loop_interval_ms + self.grace_ms
        problems = []
        for hook in self.network.hooks:
            if hook.held:
                problems.append(f"link {hook.sender} -> {hook.recipient} still holds {len(hook.held)} message(s)")
        resting: dict[str, set[str]] = {}
        for market in self.markets.values():
            for account_id in self.accounts:
                resting.setdefault(account_id, set()).update(market.book.open_orders(account_id))
        for account_id, actor in self.accounts.items():
            account = actor.account
            case = self.liquidator.cases.get(account_id)
            if case is not None and now_ms - case.started_ms <= bound_ms:
                continue  # a liquidation still within its bound
            since = actor.unhealthy_since_ms
            if case is None and since is not None and now_ms - since <= params.loop_interval_ms + self.grace_ms:
                continue  # unhealthy for less than a loop: the next loop starts it ("liquidation pending")
            t = margin.totals(account)
            if needs_liquidation(t):
                problems.append(f"{account_id} is still at MMR {t.mmr:.4f} >= 100%"
                                + (f" in a liquidation started at t={case.started_ms / 1000:g}s" if case is not None
                                   else " and not liquidating"))
            if actor.awaiting or actor.deferred or actor.liquidation is not None:
                problems.append(f"{account_id} still waits: {len(actor.awaiting)} pool answer(s), "
                                f"{len(actor.deferred)} deferred message(s), liquidation "
                                f"{'running' if actor.liquidation is not None else 'idle'}")
            believed = set(account.open_orders)
            if believed != resting[account_id]:
                lost = sorted(believed - resting[account_id])
                orphans = sorted(resting[account_id] - believed)
                problems.append(f"{account_id}'s open orders disagree with the books: "
                                f"{lost} never reached a final state, {orphans} rest unknown to it")
        return problems

    # -- reading ----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Per sub-account and per market numbers at the end of the run (JSON-ready values)."""
        return self.venue.summary(self.log.events)
