"""The actor shell and the scheduler: a machine of exchange/ given a Trio task and a mailbox.

An actor wraps one machine (a sub-account, a market, a pool, the feed, the liquidator, an
agent). Its loop drains its mailbox without awaiting (one scheduler pass per burst, not per
message), hands each message to the machine with the virtual time, and carries out the effects:
each ``Send`` becomes a message on the network kernel, each ``Log`` an event in the run's log.
The run's observer looks at the system between messages, never in the middle of one. An
exception in a handler becomes an ``ActorCrashed`` that names the actor, the message it was
handling and the cause; the run stops with it.

Actors see the run through a narrow ``Context`` (the network, the log, the observer's hook),
never the whole system.

The scheduler is the one task that moves time: it keeps the calendar, delivers what is due at
each instant once the actors have settled, and jumps virtual time to the next instant.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import trio

from actors.clock import PacedClock, RealTime, VirtualClock, now_ms, set_paced
from exchange.calendar import Calendar
from exchange.machine import Effect, Machine, Send
from exchange.protocol import SCHEDULER

if TYPE_CHECKING:
    from actors.events import EventLog
    from actors.network import Network

_BURST = 64  # messages handled before letting other tasks run


class ActorCrashed(Exception):
    """An actor raised while handling a message; the run stops with this."""

    def __init__(self, actor: str, sender: str | None, message: object, cause: BaseException) -> None:
        self.actor = actor
        self.sender = sender
        self.message = message
        self.cause = cause
        super().__init__(
            f"actor {actor} crashed handling {type(message).__name__} from {sender}: "
            f"{type(cause).__name__}: {cause}\n  message: {message!r}"
        )


class Context:
    """What an actor may touch of its run: the network, the event log, the observer's look
    between messages, and the time (``clock.ms``: a plain attribute on virtual time, read
    once per message)."""

    __slots__ = ("network", "log", "after_message", "clock")

    def __init__(self, network: Network, log: EventLog, after_message: Callable[[str], None]) -> None:
        self.network = network
        self.log = log
        self.after_message = after_message
        self.clock: VirtualClock | PacedClock | RealTime = RealTime()

    def step(self, machine: Machine, sender: str, message: Any) -> None:
        """One message handled by ``machine`` at the run's instant and its effects carried out
        (agents and a served run's machines; an actor's loop does the same inline, its hot
        path); a handler's exception becomes an ``ActorCrashed`` that names the machine."""
        try:
            effects = machine.handle(sender, message, self.clock.ms)
        except Exception as exc:
            raise ActorCrashed(machine.address, sender, message, exc) from exc
        self.carry_out(machine.address, effects)

    def carry_out(self, address: str, effects: Iterable[Effect]) -> None:
        """Sends go on the network from ``address``; events go to the log, in order."""
        send = self.network.send
        append = self.log.append
        for effect in effects:
            if type(effect) is Send:
                send(address, effect.recipient, effect.message)
            else:
                append(effect.event)  # type: ignore[union-attr]


class Actor:
    """One machine as a Trio task: its mailbox, its effects carried out as they come."""

    def __init__(self, context: Context, machine: Machine) -> None:
        self.context = context
        self.machine = machine
        self.address = machine.address
        self.mailbox = context.network.register(self.address)
        self.current: tuple[str, Any] | None = None

    async def run(self) -> None:
        queue = self.mailbox.queue
        handle = self.machine.handle
        carry_out = self.context.carry_out
        address = self.address
        after = self.context.after_message
        clock = self.context.clock
        try:
            while True:
                burst = 0
                while queue:
                    self.current = sender, message = queue.popleft()
                    carry_out(address, handle(sender, message, clock.ms))
                    after(address)
                    burst += 1
                    if burst == _BURST:
                        burst = 0
                        await trio.lowlevel.checkpoint()
                self.current = None
                await self.mailbox.wait()
        except ActorCrashed:
            raise  # an agent handled in this actor's step crashed: it is named already
        except Exception as exc:
            sender, message = self.current if self.current is not None else (None, None)
            raise ActorCrashed(self.address, sender, message, exc) from exc


class Stalled(Exception):
    """Work is pending but nothing has been logged for the stall time."""


class Injections:
    """Work from outside the venue (an API's requests) that the scheduler carries out once an
    instant has settled and nothing else is due at it, one at a time, in arrival order.

    An injection is a callable given the instant; ``at_ms`` plans it for a virtual instant (a
    replay), otherwise it is due at once (a live arrival). ``resume`` is the outside's own step
    at a settled instant (answering requests whose replies are in); it says whether it did
    anything. ``closing`` is carried out at the run's last instant, after everything else (it
    logs, it sends nothing). Arrivals wake a scheduler sleeping on real time."""

    def __init__(self, resume: Callable[[int], bool] | None = None,
                 closing: Callable[[int], None] | None = None) -> None:
        self.arrivals: deque[tuple[int, Callable[[int], None]]] = deque()
        self.resume = resume
        self.closing = closing
        self.wake: trio.lowlevel.ParkingLot | None = None  # set by the scheduler that serves them
        self.stopping = False

    def add(self, injection: Callable[[int], None], at_ms: int = 0) -> None:
        if self.arrivals and at_ms < self.arrivals[-1][0]:
            raise ValueError(f"an injection planned at {at_ms} ms after one at {self.arrivals[-1][0]} ms")
        self.arrivals.append((at_ms, injection))
        if self.wake:
            self.wake.unpark()

    def stop(self) -> None:
        """Finish the current instant, then end the run (the server is stopping)."""
        self.stopping = True
        if self.wake:
            self.wake.unpark()

    def step(self, now: int) -> bool:
        """Resume what waits, else carry out the next injection due; whether anything was done."""
        if self.resume is not None and self.resume(now):
            return True
        arrivals = self.arrivals
        if arrivals and arrivals[0][0] <= now:
            arrivals.popleft()[1](now)
            return True
        return False

    def next_ms(self) -> int | None:
        return self.arrivals[0][0] if self.arrivals else None

    def close(self, now: int) -> None:
        closing, self.closing = self.closing, None
        if closing is not None:
            closing(now)


class Slot:
    """A machine's address on a ``RunQueue``: what is sent to it waits in the run queue's one
    first-in first-out order (its own ``queue`` shows the network what is in flight to it)."""

    __slots__ = ("queue", "machine", "address", "_ready")

    def __init__(self, machine: Machine, ready: deque[Slot]) -> None:
        self.queue: deque[tuple[str, Any]] = deque()
        self.machine = machine
        self.address = machine.address
        self._ready = ready

    def put(self, sender: str, message: Any) -> None:
        self.queue.append((sender, message))
        self._ready.append(self)


class RunQueue:
    """Every machine handled from one first-in first-out queue by the scheduler's step, with
    the network's latency, levers and calendar as in any run.

    A run served to the outside shares its trio run with the server's tasks, and trio's seeded
    scheduler shares its batches and its random stream with them: actor tasks there would
    interleave by the timing of HTTP traffic. Here the order at an instant is the network's
    alone, so a served run and its replay on virtual time log the same events, byte for byte.
    The observer looks after every message, as it does after an actor's."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.ready: deque[Slot] = deque()

    def add(self, machine: Machine) -> None:
        network = self.context.network
        if machine.address in network.mailboxes:
            raise ValueError(f"address {machine.address} is taken")
        network.mailboxes[machine.address] = Slot(machine, self.ready)  # type: ignore[assignment]
        network.unattended.add(machine.address)

    def drain(self) -> None:
        """Handle every message waiting, and every one they cause at this instant, in order."""
        ready, context = self.ready, self.context
        while ready:
            slot = ready.popleft()
            sender, message = slot.queue.popleft()
            context.step(slot.machine, sender, message)
            context.after_message(slot.address)


class Watch:
    """What the scheduler checks each time it would move the clock: a progress callback (called
    at each of about a hundred steps, so the run stops there), and the stall rule (work pending
    and nothing logged for ``stall_ms``)."""

    def __init__(self, log: EventLog, stall_ms: int, pending: Callable[[], bool], diagnosis: Callable[[], str],
                 progress: Callable[[int], None] | None = None, step_ms: int = 0) -> None:
        self.log = log
        self.stall_ms = stall_ms
        self.pending = pending
        self.diagnosis = diagnosis
        self.progress = progress
        self.step_ms = step_ms
        self.next_progress_ms = 0 if progress is not None else None
        self._seen = -1
        self._seen_at = 0

    def next_stop(self, now: int, due: int) -> int:
        """The instant to move to: ``due``, or earlier for progress or a stall; raises
        ``Stalled`` when the stall time has passed."""
        if self.next_progress_ms is not None and self.progress is not None:
            while self.next_progress_ms <= now:
                self.progress(now)
                self.next_progress_ms += self.step_ms
            due = min(due, self.next_progress_ms)
        if self.log.count != self._seen:
            self._seen, self._seen_at = self.log.count, now
        if self.pending():
            stall_at = self._seen_at + self.stall_ms
            if now >= stall_at:
                raise Stalled(self.diagnosis())
            due = min(due, stall_at)
        return due


class Inline:
    """A machine handled where its messages arrive, in the sender's step: the agents (traders'
    bots and the fault script), which are clients of the venue rather than parts of it.

    An agent at zero latency reacts at the instant it hears, as it would as a task; handling it
    in place saves the trio task step and scheduler pass its task cost for every notice, tick
    and price (about a third of a fuzz seed's messages). The venue's actors (sub-accounts,
    markets, pools, the feed, the liquidator) stay tasks, so their interleavings at an instant
    are still the seeded scheduler's. What an agent sends goes on the network like any message;
    a message that reaches it while it is handling another waits its turn. The observer looks
    after the message of the actor whose step this is, never between an agent's effects."""

    def __init__(self, context: Context, machine: Machine) -> None:
        self.context = context
        self.machine = machine
        self.address = machine.address
        self.queue: deque[tuple[str, Any]] = deque()  # what reached it while it was busy
        self._busy = False
        context.network.mailboxes[self.address] = self  # type: ignore[assignment]
        context.network.unattended.add(self.address)

    def put(self, sender: str, message: Any) -> None:
        queue = self.queue
        queue.append((sender, message))
        if self._busy:
            return
        self._busy = True
        step, machine = self.context.step, self.machine
        try:
            while queue:
                sender, message = queue.popleft()
                step(machine, sender, message)
        finally:
            self._busy = False


class Scheduler:
    """The run's clock and calendar: once every actor has parked (the instant has settled), it
    delivers everything due now, the network's queued messages and the calendar's ticks, in one
    pass; when nothing is due it moves virtual time to the next instant that has something.

    On virtual time this step is run by the last actor to park (``Quiet.settled``), so moving
    the clock costs no task step or scheduler pass of its own; the run's main task waits until
    the step finds the run over, or fails (a stall, an agent that crashed), and raises that.
    ``Schedule`` messages reach the calendar on arrival (``Network.register_calendar``). With a
    real-time clock it is a task that sleeps until the next entry instead, woken early by an
    earlier one."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.address = SCHEDULER
        self.calendar = Calendar()
        context.network.register_calendar(self.calendar)
        self._ended = trio.lowlevel.ParkingLot()
        self._failure: BaseException | None = None
        self._over = False
        self.injections: Injections | None = None  # requests from outside (the API), when served
        self.run_queue: RunQueue | None = None  # every machine on one queue (a served run, its replay)

    async def run(self, until_ms: int, watch: Watch, clock: VirtualClock | None) -> None:
        """Run to ``until_ms`` (everything due then included); ``clock`` None: real time."""
        if clock is None:
            await self._run_realtime(until_ms, watch)
            return
        quiet = self.context.network.quiet
        quiet.settled = lambda: self._settle(until_ms, watch, clock)
        if not quiet.busy:
            self._settle(until_ms, watch, clock)
        if not self._over:
            await self._ended.park()
        if self._failure is not None:
            raise self._failure

    def _deliver(self, now: int) -> bool:
        """Everything due at ``now``, in one pass; whether there was anything."""
        network, calendar = self.context.network, self.calendar
        delivered = network.deliver_due(now)
        next_tick = calendar.next_ms()
        if next_tick is not None and next_tick <= now:
            for address, tick in calendar.due():
                network.send(SCHEDULER, address, tick)
            delivered = True
        return delivered

    def _next(self, now: int, until_ms: int, watch: Watch) -> int:
        due = min(t for t in (self.context.network.next_due_ms(), self.calendar.next_ms(), until_ms) if t is not None)
        if self.injections is not None:
            planned = self.injections.next_ms()
            if planned is not None:
                due = min(due, max(planned, now))
        return watch.next_stop(now, due)

    def _settle(self, until_ms: int, watch: Watch, clock: VirtualClock) -> None:
        """Every actor waits: deliver what is due now, else carry out the injections planned for
        now, else move the clock on, until some actor has work or the run is over."""
        quiet = self.context.network.quiet
        injections, run_queue = self.injections, self.run_queue
        try:
            while not quiet.busy:
                now = clock.ms
                if self._deliver(now):
                    if run_queue is not None:
                        run_queue.drain()
                    continue  # it went to agents only, or woke actors: the loop ends
                if injections is not None and injections.step(now):
                    if run_queue is not None:
                        run_queue.drain()
                    continue
                if now >= until_ms:
                    if injections is not None:
                        injections.close(now)
                    self._end()
                    return
                clock.advance(self._next(now, until_ms, watch))
        except BaseException as exc:  # raised where the main task waits, not in this actor
            self._failure = exc
            self._end()

    def _end(self) -> None:
        self._over = True
        self.context.network.quiet.settled = None
        self._ended.unpark_all()

    async def _run_realtime(self, until_ms: int, watch: Watch) -> None:
        network = self.context.network
        while True:
            await trio.lowlevel.checkpoint()
            now = now_ms()
            if self._deliver(now):
                continue
            if now >= until_ms:
                return
            with trio.move_on_at(self._next(now, until_ms, watch) / 1000):
                await network.wake.park()

    async def run_paced(self, until_ms: int, watch: Watch, clock: PacedClock, on_idle: Callable[[], None]) -> None:
        """Serve the run to the outside on ``clock`` (every machine on the run queue): deliver what
        is due at the instant, then the injections (requests in arrival order, each once the
        instant has settled after the one before); with nothing left, sleep on real time until
        the wall clock reaches the next due instant or a request arrives, and move the instant
        to the next due one, or to the one the wall clock has reached (never past the next due,
        never back). ``on_idle`` runs each time before it sleeps: the venue is quiet then.
        Ends at ``until_ms`` or when the injections are stopped, once the instant is finished."""
        network, injections, run_queue = self.context.network, self.injections, self.run_queue
        if injections is None or run_queue is None:
            raise ValueError("a paced run takes its requests as injections and runs its machines on one queue")
        injections.wake = network.wake
        set_paced(clock)  # the run's time for the rest of this trio run (the observer's last look)
        clock.start()
        instants = 0  # moved through since the server's tasks last had a turn
        while True:
            now = clock.ms
            if self._deliver(now) or injections.step(now):
                run_queue.drain()
                continue
            if now >= until_ms or injections.stopping:
                injections.close(now)
                return
            due = self._next(now, until_ms, watch)
            reached = min(clock.reached(), due)
            if reached > now:
                clock.set(reached)
                instants += 1
                if instants == _BURST:  # catching up (a high rate): let the server answer meanwhile
                    instants = 0
                    await trio.lowlevel.checkpoint()
                continue
            instants = 0
            on_idle()
            with trio.move_on_at(clock.deadline(due)):
                await network.wake.park()
