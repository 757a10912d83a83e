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

The scheduler is the one actor that sleeps: it keeps the calendar and sends ``Tick`` messages
at the virtual times machines asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import trio

from exchange.calendar import Calendar
from exchange.machine import Effect, Machine, Send
from exchange.protocol import SCHEDULER, Schedule

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


def now_ms() -> int:
    return round(trio.current_time() * 1000)


class Context:
    """What an actor may touch of its run: the network, the event log, and the observer's look
    between messages."""

    __slots__ = ("network", "log", "after_message")

    def __init__(self, network: Network, log: EventLog, after_message: Callable[[], None]) -> None:
        self.network = network
        self.log = log
        self.after_message = after_message


class Actor:
    """One machine as a Trio task: its mailbox, its effects carried out as they come."""

    def __init__(self, context: Context, machine: Machine) -> None:
        self.context = context
        self.machine = machine
        self.address = machine.address
        self.mailbox = context.network.register(self.address)
        self.current: tuple[str, Any] | None = None

    def carry_out(self, effects: Iterable[Effect]) -> None:
        """Sends go on the network from this actor's address; events go to the log, in order."""
        send = self.context.network.send
        append = self.context.log.append
        address = self.address
        for effect in effects:
            if type(effect) is Send:
                send(address, effect.recipient, effect.message)
            else:
                append(effect.event)  # type: ignore[union-attr]

    async def run(self) -> None:
        queue = self.mailbox.queue
        handle = self.machine.handle
        carry_out = self.carry_out
        after = self.context.after_message
        try:
            while True:
                burst = 0
                while queue:
                    self.current = sender, message = queue.popleft()
                    carry_out(handle(sender, message, round(trio.current_time() * 1000)))
                    after()
                    burst += 1
                    if burst == _BURST:
                        burst = 0
                        await trio.lowlevel.checkpoint()
                self.current = None
                await self.mailbox.wait()
        except Exception as exc:
            sender, message = self.current if self.current is not None else (None, None)
            raise ActorCrashed(self.address, sender, message, exc) from exc


class Scheduler:
    """The calendar as the one actor that sleeps: it wakes at each entry's time and sends the
    ticks due then."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.address = SCHEDULER
        self.calendar = Calendar()
        self.mailbox = context.network.register(SCHEDULER)
        self.current: tuple[str, Any] | None = None

    async def run(self) -> None:
        calendar = self.calendar
        queue = self.mailbox.queue
        send = self.context.network.send
        try:
            while True:
                while queue:
                    self.current = sender, message = queue.popleft()
                    if not isinstance(message, Schedule):
                        raise TypeError(f"{SCHEDULER} has no handler for {type(message).__name__}")
                    calendar.on_schedule(sender, message)
                self.current = None
                next_ms = calendar.next_ms()
                if next_ms is not None and next_ms <= now_ms():
                    for address, tick in calendar.due():
                        send(SCHEDULER, address, tick)
                    self.context.after_message()
                    await trio.lowlevel.checkpoint()
                    continue
                if next_ms is not None:
                    with trio.move_on_at(next_ms / 1000):
                        await self.mailbox.wait()
                else:
                    await self.mailbox.wait()
        except Exception as exc:
            sender, message = self.current if self.current is not None else (None, None)
            raise ActorCrashed(self.address, sender, message, exc) from exc
