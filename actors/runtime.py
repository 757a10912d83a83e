"""The actor base class and the scheduler.

An actor owns one piece of ``exchange/`` state and changes it only while handling a message.
Its loop drains its mailbox without awaiting (one scheduler pass per burst, not per message),
handles each message synchronously, and lets the run's observer look at the system between
messages, never in the middle of one. An exception in a handler becomes an ``ActorCrashed``
that names the actor, the message it was handling and the cause; the run stops with it.

The scheduler is the one actor that sleeps: it owns the calendar and sends ``Tick`` messages
at the virtual times actors asked for.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from actors import events
from actors.protocol import SCHEDULER, Schedule, Tick

if TYPE_CHECKING:
    from actors.system import System

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


class Actor:
    """Base class: a mailbox, a bound logger, message dispatch by type."""

    handlers: dict[type, str] = {}  # message class -> method name, set by each subclass
    _functions: dict[type, Callable[..., None]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Resolved once per class (not per instance: ten thousand accounts share one table).
        cls._functions = {message: getattr(cls, name) for message, name in cls.handlers.items()}

    def __init__(self, system: System, address: str) -> None:
        self.system = system
        self.address = address
        self.mailbox = system.network.register(address)
        self.log = events.logger(address)
        self.current: tuple[str, Any] | None = None

    def send(self, recipient: str, message: object) -> None:
        self.system.network.send(self.address, recipient, message)

    def handle(self, sender: str, message: object) -> None:
        function = self._functions.get(type(message))
        if function is None:
            raise TypeError(f"{self.address} has no handler for {type(message).__name__}")
        function(self, sender, message)

    async def run(self) -> None:
        queue = self.mailbox.queue
        handle = self.handle
        after = self.system.after_message
        try:
            while True:
                burst = 0
                while queue:
                    self.current = queue.popleft()
                    handle(*self.current)
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


class Scheduler(Actor):
    """The calendar: periodic and one-off ticks to whoever asked, at exact virtual times."""

    handlers = {Schedule: "on_schedule"}

    def __init__(self, system: System) -> None:
        super().__init__(system, SCHEDULER)
        # (time, seq, address, kind, interval, generation)
        self._heap: list[tuple[int, int, str, str, int, int]] = []
        self._seq = 0
        # (address, kind) -> generation: scheduling or cancelling again retires older entries.
        self._generation: dict[tuple[str, str], int] = {}

    def add(self, address: str, kind: str, first_ms: int, interval_ms: int = 0) -> None:
        """Set up ticks (replacing any earlier ticks of this kind for this address)."""
        generation = self._generation.get((address, kind), 0) + 1
        self._generation[(address, kind)] = generation
        self._seq += 1
        heapq.heappush(self._heap, (first_ms, self._seq, address, kind, interval_ms, generation))

    def on_schedule(self, sender: str, message: Schedule) -> None:
        if message.cancel:
            self._generation[(sender, message.kind)] = self._generation.get((sender, message.kind), 0) + 1
        else:
            self.add(sender, message.kind, message.first_ms, message.interval_ms)

    async def run(self) -> None:
        heap = self._heap
        try:
            while True:
                while self.mailbox.queue:
                    self.current = self.mailbox.queue.popleft()
                    self.handle(*self.current)
                self.current = None
                if heap and heap[0][0] <= now_ms():
                    due = heap[0][0]
                    while heap and heap[0][0] == due:
                        when, _, address, kind, interval, generation = heapq.heappop(heap)
                        if self._generation[(address, kind)] != generation:
                            continue
                        self.send(address, Tick(kind, when))
                        if interval:
                            self._seq += 1
                            heapq.heappush(heap, (when + interval, self._seq, address, kind, interval, generation))
                    self.system.after_message()
                    await trio.lowlevel.checkpoint()
                    continue
                if heap:
                    with trio.move_on_at(heap[0][0] / 1000):
                        await self.mailbox.wait()
                else:
                    await self.mailbox.wait()
        except Exception as exc:
            sender, message = self.current if self.current is not None else (None, None)
            raise ActorCrashed(self.address, sender, message, exc) from exc
