"""The run's event log: every state change as a structured event, one canonical JSON line each.

Machines emit events (kind, actor, virtual time and the numbers behind it) as ``Log`` effects;
the driver appends each to the run's ``EventLog``, which adds a sequence number. The log renders
events to canonical JSON lines (sorted keys, no spaces, Decimals as plain normalized strings) in
batches, off the hot path, and hashes the lines as it goes: the sha256 of the whole log is the
run's fingerprint. Same scenario and seed, same bytes.

Reports, charts, the live demo, ``explain`` and the invariant observer all read this one log.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import IO, Any

from exchange.decimals import fmt

Event = dict[str, Any]

_BATCH = 2048


def _encode(value: object) -> object:
    if isinstance(value, Decimal):
        return fmt(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    raise TypeError(f"cannot log a {type(value).__name__}: {value!r}")


def render(event: Event) -> str:
    """One event as its canonical JSON line (without the newline)."""
    return json.dumps(event, sort_keys=True, separators=(",", ":"), default=_encode)


class EventLog:
    """The events of one run, in the order they happened, with a running sha256."""

    def __init__(self, path: Path | None = None, *, keep: bool = True, fingerprint: bool = True) -> None:
        self.events: list[Event] = []  # kept in memory when ``keep`` (reports and explain read them)
        self.count = 0
        self.last: Event | None = None
        self._keep = keep
        # A run that needs neither the file nor the fingerprint (a passing fuzz seed) skips the
        # rendering, the log's largest cost; close() then returns an empty fingerprint.
        self._render = fingerprint or path is not None
        # Who reads each event as it is logged (the invariant observer, the API's view): one
        # callable, called directly on the fuzz path; ``listen`` makes it a fan-out for more.
        self.listener: Callable[[Event], None] | None = None
        self._pending: list[Event] = []
        self._hash = hashlib.sha256()
        self._file: IO[str] | None = path.open("w", encoding="utf-8") if path is not None else None

    def append(self, event: Event) -> None:
        self.count += 1
        event["seq"] = self.count
        self.last = event
        if self.listener is not None:
            self.listener(event)
        if self._keep:
            self.events.append(event)
        self._pending.append(event)
        if len(self._pending) >= _BATCH:
            self.flush()

    def listen(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener`` with every event from now on, after those already listening."""
        current = self.listener
        if current is None:
            self.listener = listener
        elif isinstance(current, Fanout):
            current.listeners.append(listener)
        else:
            self.listener = Fanout([current, listener])

    def flush(self) -> None:
        """Render what is pending, feed the fingerprint, write the file."""
        if not self._pending:
            return
        if not self._render:
            self._pending.clear()
            return
        text = "".join(render(e) + "\n" for e in self._pending)
        self._pending.clear()
        self._hash.update(text.encode())
        if self._file is not None:
            self._file.write(text)

    def close(self) -> str:
        """Flush everything and return the fingerprint (hex sha256 of the canonical log)."""
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
        return self._hash.hexdigest() if self._render else ""

    def lines(self) -> Iterable[str]:
        return (render(e) for e in self.events)


class Fanout:
    """Several listeners of one log, called in the order they started listening."""

    __slots__ = ("listeners",)

    def __init__(self, listeners: list[Callable[[Event], None]]) -> None:
        self.listeners = listeners

    def __call__(self, event: Event) -> None:
        for listener in self.listeners:
            listener(event)


def read_log(path: Path) -> list[Event]:
    """Events back from a canonical JSON-lines file (numbers stay strings, as written)."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
