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
scheduler pass per message, and the invariant observer can see what is still queued.
"""

from __future__ import annotations

import fnmatch
import heapq
from collections import deque
from collections.abc import Iterator
from typing import Any

import attrs
import trio

from actors.determinism import stream
from exchange.calendar import Calendar
from exchange.protocol import SCHEDULER


class Mailbox:
    """An unbounded inbox: ``put`` never blocks; ``wait`` parks until something arrives."""

    __slots__ = ("queue", "_lot")

    def __init__(self) -> None:
        self.queue: deque[tuple[str, Any]] = deque()
        self._lot = trio.lowlevel.ParkingLot()

    def put(self, sender: str, message: Any) -> None:
        self.queue.append((sender, message))
        if len(self._lot):
            self._lot.unpark()

    async def wait(self) -> None:
        if not self.queue:
            await self._lot.park()


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
        self.mailboxes: dict[str, Mailbox] = {}
        self.hooks: list[Hook] = []
        self._heap: list[tuple[int, int, str, str, Any]] = []
        self._queued_on: dict[tuple[str, str], int] = {}  # link -> messages in the heap
        self._last_on: dict[tuple[str, str], int] = {}  # link -> last delivery time (FIFO)
        self._models: dict[tuple[str, str], Latency] = {}
        self._rngs: dict[str, Any] = {}
        self._seq = 0
        self._wake = trio.lowlevel.ParkingLot()
        self.sent = 0
        self.unattended: set[str] = set()  # membership only: addresses no actor reads (the setup)

    def register(self, address: str) -> Mailbox:
        if address in self.mailboxes:
            raise ValueError(f"address {address} is taken")
        box = self.mailboxes[address] = Mailbox()
        return box

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
        model = self.model(sender, recipient) if (self.rules or self.default.kind != "zero") else ZERO_LATENCY
        latency = model.draw(lambda: self._rng(sender)) if model.kind != "zero" else 0
        fifo = True
        if self.hooks:
            for hook in self.hooks:
                if hook.matches(sender, recipient):
                    if hook.kind == "hold":
                        hook.held.append((sender, recipient, message))
                        return
                    if hook.kind == "delay":
                        latency += hook.ms
                    elif hook.kind == "reorder":
                        fifo = False
                        latency += self._rng(sender).randint(0, hook.ms)
        link = (sender, recipient)
        if latency == 0 and not self._queued_on.get(link):
            box = self.mailboxes.get(recipient)
            if box is None:
                raise KeyError(f"{sender} sent {type(message).__name__} to unknown address {recipient}")
            box.put(sender, message)
            return
        now = round(trio.current_time() * 1000)
        when = now + latency
        if fifo:
            when = max(when, self._last_on.get(link, when))
            self._last_on[link] = when
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, sender, recipient, message))
        self._queued_on[link] = self._queued_on.get(link, 0) + 1
        if len(self._wake):
            self._wake.unpark()

    async def run(self) -> None:
        """Deliver queued messages when their time comes, in (time, seq) order."""
        heap = self._heap
        while True:
            if not heap:
                await self._wake.park()
                continue
            when = heap[0][0]
            if when > round(trio.current_time() * 1000):
                with trio.move_on_at(when / 1000):
                    await self._wake.park()
                continue
            while heap and heap[0][0] <= when:
                _, _, sender, recipient, message = heapq.heappop(heap)
                link = (sender, recipient)
                left = self._queued_on[link] - 1
                if left:
                    self._queued_on[link] = left
                else:
                    del self._queued_on[link]
                self.mailboxes[recipient].put(sender, message)
            await trio.lowlevel.checkpoint()

    async def run_lockstep(self, calendar: Calendar) -> None:
        """Deliver as the direct engine does: the oldest message first, and the next only once
        its recipient has handled it; when nothing is in flight, the calendar's next ticks.

        The actors then run exactly the engine's order of events, which is what the
        differential test compares. It gives up what the network is for (latency, levers,
        interleaving at one instant), so it is for that comparison only.
        """
        fifo, mailboxes = self._fifo, self.mailboxes
        while True:
            if fifo:
                sender, recipient, message = fifo.popleft()
                if recipient == SCHEDULER:
                    calendar.on_schedule(sender, message)
                    continue
                mailboxes[recipient].put(sender, message)
                if recipient in self.unattended:
                    continue
                await self._handled.park()
                continue
            due = calendar.next_ms()
            if due is None:
                await trio.sleep_forever()
            if due > round(trio.current_time() * 1000):
                await trio.sleep_until(due / 1000)
            for address, tick in calendar.due():
                fifo.append((SCHEDULER, address, tick))

    def handled(self) -> None:
        """An actor finished a message (lockstep: the next may go)."""
        self._handled.unpark()

    # -- the fuzzer's levers --------------------------------------------------------------
    def hold(self, sender: str, recipient: str) -> Hook:
        hook = Hook(sender, recipient, "hold")
        self.hooks.append(hook)
        return hook

    def delay(self, sender: str, recipient: str, ms: int) -> Hook:
        hook = Hook(sender, recipient, "delay", ms)
        self.hooks.append(hook)
        return hook

    def reorder(self, sender: str, recipient: str, max_ms: int) -> Hook:
        hook = Hook(sender, recipient, "reorder", max_ms)
        self.hooks.append(hook)
        return hook

    def remove(self, hook: Hook) -> None:
        """Lift a lever; a hold releases what it kept, in the order it was sent."""
        self.hooks.remove(hook)
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
