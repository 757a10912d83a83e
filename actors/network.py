"""The network kernel: every cross-actor message passes through here.

``send`` stamps a message with a delivery time, ``now + latency(link)``, and a sequence number,
and messages are delivered in ``(time, seq)`` order. A message with zero latency on a link that
has nothing queued is put straight into the recipient's mailbox: it pays no scheduler hop. A
link keeps first-in first-out order unless it is told to reorder.

Latency models: ``zero``, ``constant`` (ms) and ``jitter`` (ms plus a uniform draw in
``[0, jitter]``, from a random stream per sender seeded by the run's seed). Rules choose the
model by sender and recipient kind (``account``, ``market``, ...) or exact address.

The fuzzer's levers are hooks on links (``*`` matches any address): ``hold`` keeps a link's
messages until released (then they go out together: a burst), ``delay`` adds latency, and
``reorder`` drops FIFO and adds a random delay per message.

Mailboxes are plain deques with a parking lot, so an actor drains its inbox without a
scheduler pass per message, and the invariant observer can see what is still queued. The
network delivers nothing on its own: the scheduler (actors/runtime.py) calls ``deliver_due``
once the instant has settled (``quiet``), so everything due at one instant goes out in one pass.
"""

from __future__ import annotations

import fnmatch
import heapq
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import trio

from actors.determinism import stream
from exchange.calendar import Calendar
from exchange.protocol import SCHEDULER, Schedule


class Quiet:
    """How many actors are running (not parked on an empty mailbox), and what to do when none
    is: the instant has settled. On virtual time ``settled`` is the scheduler's step, run by the
    last actor to park, in its own step (no task wakes to move the clock); otherwise whoever
    waits on ``lot`` is woken.

    Counting here costs a few operations per wake-up and no scheduler pass, where asking trio
    whether every task waits (``wait_all_tasks_blocked``) costs a pass per instant and brings
    its testing module in."""

    __slots__ = ("busy", "lot", "settled", "settling")

    def __init__(self) -> None:
        self.busy = 0
        self.lot = trio.lowlevel.ParkingLot()
        self.settled: Callable[[], None] | None = None
        # The mailbox whose actor is running ``settled`` on its way to park: a message the step
        # delivers there (a tick it scheduled for itself) makes it busy, or the step would move
        # the clock past the instant that message is due at.
        self.settling: Mailbox | None = None


class Mailbox:
    """An unbounded inbox: ``put`` never blocks; ``wait`` parks until something arrives."""

    __slots__ = ("queue", "_lot", "_quiet")

    def __init__(self, quiet: Quiet) -> None:
        self.queue: deque[tuple[str, Any]] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._quiet = quiet

    def put(self, sender: str, message: Any) -> None:
        self.queue.append((sender, message))
        if self._lot:
            self._lot.unpark()
            self._quiet.busy += 1
        elif self._quiet.settling is self:
            self._quiet.settling = None
            self._quiet.busy += 1

    async def wait(self) -> None:
        if not self.queue:
            quiet = self._quiet
            quiet.busy -= 1
            if not quiet.busy:
                if quiet.settled is not None:
                    quiet.settling = self
                    quiet.settled()  # what it delivers may land here too (and counts as busy)
                    if quiet.settling is None:
                        return
                    quiet.settling = None
                elif quiet.lot:
                    quiet.lot.unpark()
            await self._lot.park()


class CalendarInbox:
    """The scheduler's address: a ``Schedule`` goes straight into the calendar when it arrives
    (no task wakes to file it), and wakes the scheduler if it is sleeping on real time."""

    __slots__ = ("queue", "_calendar", "_wake")

    def __init__(self, calendar: Calendar, wake: trio.lowlevel.ParkingLot) -> None:
        self.queue: deque[tuple[str, Any]] = deque()  # always empty: nothing waits here
        self._calendar = calendar
        self._wake = wake

    def put(self, sender: str, message: Any) -> None:
        if not isinstance(message, Schedule):
            raise TypeError(f"{SCHEDULER} has no handler for {type(message).__name__} from {sender}")
        self._calendar.on_schedule(sender, message)
        if self._wake:
            self._wake.unpark()


@attrs.frozen
class Latency:
    """A latency model for a link: ``zero``, ``constant`` or ``jitter`` (milliseconds)."""

    kind: str = "zero"
    ms: int = 0
    jitter_ms: int = 0

    def draw(self, rng_for: Any) -> int:
        if self.kind == "zero":
            return 0
        if self.kind == "constant":
            return self.ms
        return self.ms + rng_for().randint(0, self.jitter_ms)


ZERO_LATENCY = Latency()


@attrs.define
class Hook:
    """A fuzzer lever on the links matching ``sender`` -> ``recipient`` (fnmatch patterns)."""

    sender: str
    recipient: str
    kind: str  # "hold", "delay", "reorder"
    ms: int = 0
    held: list[tuple[str, str, Any]] = attrs.field(factory=list)

    def matches(self, sender: str, recipient: str) -> bool:
        return fnmatch.fnmatchcase(sender, self.sender) and fnmatch.fnmatchcase(recipient, self.recipient)


def kind_of(address: str) -> str:
    return address.split(":", 1)[0]


class Network:
    """Addresses, mailboxes, latency, and the heap of messages on the wire."""

    def __init__(self, seed: int, default: Latency = ZERO_LATENCY, rules: dict[tuple[str, str], Latency] | None = None,
                 *, lockstep: bool = False) -> None:
        self.seed = seed
        # Lockstep: one global first-in first-out queue, one message handled at a time, the
        # calendar moving only when nothing is in flight; see ``run_lockstep``.
        self.lockstep = lockstep
        self._fifo: deque[tuple[str, str, Any]] = deque()
        self._handled = trio.lowlevel.ParkingLot()
        self.default = default
        # (sender kind or address, recipient kind or address) -> model; exact addresses win.
        self.rules = dict(rules or {})
        self._zero = not self.rules and default.kind == "zero"  # every link at zero latency: no lookup
        self.now_ms: Callable[[], int] = lambda: round(trio.current_time() * 1000)  # the run sets its clock's
        self.mailboxes: dict[str, Mailbox] = {}
        self.hooks: list[Hook] = []
        self._hooks_on: dict[tuple[str, str], tuple[Hook, ...]] = {}  # link -> the levers on it (a cache)
        self._heap: list[tuple[int, int, str, str, Any]] = []
        self._queued_on: dict[tuple[str, str], int] = {}  # link -> messages in the heap
        self._last_on: dict[tuple[str, str], int] = {}  # link -> last delivery time (FIFO)
        self._models: dict[tuple[str, str], Latency] = {}
        self._rngs: dict[str, Any] = {}
        self._seq = 0
        self.wake = trio.lowlevel.ParkingLot()  # the scheduler, when it sleeps on real time
        self.quiet = Quiet()
        self.sent = 0
        self.unattended: set[str] = set()  # membership only: addresses no actor reads (the setup)

    def register(self, address: str, *, attended: bool = True) -> Mailbox:
        """A mailbox for ``address``; an attended one has an actor task reading it, which
        counts as running until it first parks."""
        if address in self.mailboxes:
            raise ValueError(f"address {address} is taken")
        box = self.mailboxes[address] = Mailbox(self.quiet)
        if attended:
            self.quiet.busy += 1
        else:
            self.unattended.add(address)
        return box

    def register_calendar(self, calendar: Calendar) -> None:
        """The scheduler's address files ``Schedule`` messages into ``calendar`` on arrival."""
        self.mailboxes[SCHEDULER] = CalendarInbox(calendar, self.wake)  # type: ignore[assignment]
        self.unattended.add(SCHEDULER)

    # -- latency --------------------------------------------------------------------------
    def model(self, sender: str, recipient: str) -> Latency:
        link = (sender, recipient)
        found = self._models.get(link)
        if found is None:
            rules = self.rules
            found = (
                rules.get(link)
                or rules.get((sender, kind_of(recipient)))
                or rules.get((kind_of(sender), recipient))
                or rules.get((kind_of(sender), kind_of(recipient)))
                or self.default
            )
            if found.kind != "zero" or rules:
                self._models[link] = found
        return found

    def _rng(self, sender: str) -> Any:
        rng = self._rngs.get(sender)
        if rng is None:
            rng = self._rngs[sender] = stream(self.seed, f"net:{sender}")
        return rng

    # -- sending --------------------------------------------------------------------------
    def send(self, sender: str, recipient: str, message: Any) -> None:
        self.sent += 1
        if self.lockstep:
            self._fifo.append((sender, recipient, message))
            return
        if self._zero:
            latency = 0
        else:
            model = self.model(sender, recipient)
            latency = model.draw(lambda: self._rng(sender)) if model.kind != "zero" else 0
        fifo = True
        link = (sender, recipient)
        if self.hooks:
            on_link = self._hooks_on.get(link)
            if on_link is None:
                on_link = self._hooks_on[link] = tuple(h for h in self.hooks if h.matches(sender, recipient))
            for hook in on_link:
                if hook.kind == "hold":
                    hook.held.append((sender, recipient, message))
                    return
                if hook.kind == "delay":
                    latency += hook.ms
                elif hook.kind == "reorder":
                    fifo = False
                    latency += self._rng(sender).randint(0, hook.ms)
        if latency == 0 and not self._queued_on.get(link):
            box = self.mailboxes.get(recipient)
            if box is None:
                raise KeyError(f"{sender} sent {type(message).__name__} to unknown address {recipient}")
            box.put(sender, message)
            return
        when = self.now_ms() + latency
        if fifo:
            when = max(when, self._last_on.get(link, when))
            self._last_on[link] = when
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, sender, recipient, message))
        self._queued_on[link] = self._queued_on.get(link, 0) + 1
        if self.wake:
            self.wake.unpark()

    def next_due_ms(self) -> int | None:
        """When the next queued message is due, or None."""
        return self._heap[0][0] if self._heap else None

    def deliver_due(self, now_ms: int) -> bool:
        """Put every queued message due by ``now_ms`` into its mailbox, in (time, seq) order, in
        one pass; whether there was any."""
        heap = self._heap
        if not heap or heap[0][0] > now_ms:
            return False
        queued_on, mailboxes = self._queued_on, self.mailboxes
        while heap and heap[0][0] <= now_ms:
            _, _, sender, recipient, message = heapq.heappop(heap)
            link = (sender, recipient)
            left = queued_on[link] - 1
            if left:
                queued_on[link] = left
            else:
                del queued_on[link]
            mailboxes[recipient].put(sender, message)
        return True

    async def run_lockstep(self, calendar: Calendar, advance: Callable[[int], None], until_ms: int) -> None:
        """Deliver as the direct engine does: the oldest message first, and the next only once
        its recipient has handled it; when nothing is in flight, the calendar's next ticks.
        Returns at ``until_ms`` once everything due then has happened.

        The actors then run exactly the engine's order of events, which is what the
        differential test compares. It gives up what the network is for (latency, levers,
        interleaving at one instant), so it is for that comparison only.
        """
        fifo, mailboxes = self._fifo, self.mailboxes
        while True:
            if fifo:
                sender, recipient, message = fifo.popleft()
                mailboxes[recipient].put(sender, message)
                if recipient in self.unattended:
                    continue
                await self._handled.park()
                continue
            due = calendar.next_ms()
            if due is None or due > until_ms:
                advance(until_ms)
                return
            advance(due)
            for address, tick in calendar.due():
                fifo.append((SCHEDULER, address, tick))

    def handled(self) -> None:
        """An actor finished a message (lockstep: the next may go)."""
        self._handled.unpark()

    # -- the fuzzer's levers --------------------------------------------------------------
    def hold(self, sender: str, recipient: str) -> Hook:
        return self._add(Hook(sender, recipient, "hold"))

    def delay(self, sender: str, recipient: str, ms: int) -> Hook:
        return self._add(Hook(sender, recipient, "delay", ms))

    def reorder(self, sender: str, recipient: str, max_ms: int) -> Hook:
        return self._add(Hook(sender, recipient, "reorder", max_ms))

    def _add(self, hook: Hook) -> Hook:
        self.hooks.append(hook)
        self._hooks_on.clear()
        return hook

    def remove(self, hook: Hook) -> None:
        """Lift a lever; a hold releases what it kept, in the order it was sent."""
        self.hooks.remove(hook)
        self._hooks_on.clear()
        held, hook.held = hook.held, []
        for sender, recipient, message in held:
            self.send(sender, recipient, message)

    # -- what is on the wire --------------------------------------------------------------
    def in_flight(self) -> Iterator[tuple[str, str, Any]]:
        """Every message sent and not yet handled: queued, held, or waiting in a mailbox."""
        for _, _, sender, recipient, message in self._heap:
            yield sender, recipient, message
        for hook in self.hooks:
            yield from hook.held
        for recipient, box in self.mailboxes.items():
            for sender, message in box.queue:
                yield sender, recipient, message

    def pending_count(self) -> int:
        return len(self._heap) + sum(len(h.held) for h in self.hooks)
