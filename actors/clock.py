"""The run's clocks: what instant the machines see, and who moves it.

``VirtualClock`` is a ``trio.abc.Clock`` of virtual time that only the scheduler moves (a
simulation run: the same seed, the same run). ``PacedClock`` keeps trio on real time and holds
the venue's instant apart, set by the scheduler as the wall clock allows (a run served to the
outside). ``RealTime`` reads trio's clock (a real-time run, not reproducible). Each has ``ms``:
the instant in whole milliseconds, which is all the machines and the log ever see.
"""

from __future__ import annotations

import trio

_PACED: trio.lowlevel.RunVar[PacedClock | None] = trio.lowlevel.RunVar("paced_clock", default=None)


def set_paced(clock: PacedClock) -> None:
    """From now on in this trio run, ``now_ms`` reads ``clock``."""
    _PACED.set(clock)


def now_ms() -> int:
    """The run's instant: trio's clock on virtual or real time, the paced clock when one runs
    (trio then keeps real seconds for the server's own timeouts)."""
    paced = _PACED.get()
    return paced.ms if paced is not None else round(trio.current_time() * 1000)


class RealTime:
    """The run's time in milliseconds, read from trio's clock (a real-time run)."""

    @property
    def ms(self) -> int:
        return now_ms()


class VirtualClock(trio.abc.Clock):
    """Virtual time that moves only when the scheduler moves it, in whole milliseconds.

    No task sleeps on it: the scheduler waits until every actor is parked, then jumps to the
    next instant anything is due. A deadline (a ``trio.sleep``) would never fire by itself."""

    def __init__(self) -> None:
        self._now = 0.0
        self.ms = 0

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return self._now

    def deadline_to_sleep_time(self, deadline: float) -> float:
        return 0.0 if deadline <= self._now else float("inf")

    def advance(self, ms: int) -> None:
        if ms / 1000 < self._now:
            raise ValueError(f"virtual time cannot go back from {self.ms} ms to {ms} ms")
        self._now = ms / 1000
        self.ms = ms


class PacedClock:
    """The venue's instant for a run served to the outside (``marginsim serve``): trio keeps its
    real clock, and ``ms`` is set by the scheduler alone, once everything due before it has
    happened. ``rate`` virtual seconds pass per real second from ``start``; with no rate the
    instant goes only as far as ``target`` (a caller steps it: tests).

    The machines and the log only ever see ``ms``; the real clock decides only which instant a
    request arrives at, and the log records that instant."""

    def __init__(self, rate: float | None) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"a paced clock runs a positive number of virtual seconds per real second, not {rate}")
        self.rate = rate
        self.ms = 0
        self.target = 0
        self._start = 0.0

    def start(self) -> None:
        self._start = trio.current_time()

    def reached(self) -> int:
        """The virtual instant the wall clock has reached (or the target a caller set)."""
        if self.rate is None:
            return self.target
        return int((trio.current_time() - self._start) * self.rate * 1000 + 1e-6)

    def deadline(self, ms: int) -> float:
        """When, on trio's real clock, the wall clock reaches virtual ``ms``."""
        return float("inf") if self.rate is None else self._start + ms / (self.rate * 1000)

    def set(self, ms: int) -> None:
        if ms < self.ms:
            raise ValueError(f"virtual time cannot go back from {self.ms} ms to {ms} ms")
        self.ms = ms
