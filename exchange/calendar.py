"""The calendar: periodic and one-off ticks, at exact virtual times, to whoever asked.

Machines ask for ticks with ``Schedule`` (PnL realization, agents' timers, scripted actions);
the run sets up the venue's own (prices, funding, interest, the liquidation loop). Ticks due at
the same time go out in the order they were scheduled. Scheduling a kind again for the same
address, or cancelling it, retires the older entries. Both drivers keep one: the engine pops
what is due as it advances, the scheduler actor sleeps until the next entry.
"""

from __future__ import annotations

import heapq

from exchange.protocol import Schedule, Tick


class Calendar:
    def __init__(self) -> None:
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

    def next_ms(self) -> int | None:
        """When the next entry is due (it may turn out retired), or None."""
        return self._heap[0][0] if self._heap else None

    def due(self) -> list[tuple[str, Tick]]:
        """Every live tick due at the earliest time, in order, with its recipient; periodic
        entries are put back for their next time."""
        heap = self._heap
        if not heap:
            return []
        when = heap[0][0]
        out = []
        while heap and heap[0][0] == when:
            _, _, address, kind, interval, generation = heapq.heappop(heap)
            if self._generation[(address, kind)] != generation:
                continue
            out.append((address, Tick(kind, when)))
            if interval:
                self._seq += 1
                heapq.heappush(heap, (when + interval, self._seq, address, kind, interval, generation))
        return out
