"""Fault windows: network levers switched on and off at virtual times.

A ``Fault`` holds, delays or reorders the links matching ``sender -> recipient`` (``*`` patterns)
from ``start_ms`` to ``end_ms``; lifting a hold releases what it kept, all at once (a burst).
Tests use them to force an interleaving; the fuzzer draws them per seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from actors.network import Hook, Network
from exchange.machine import Machine
from exchange.protocol import SCHEDULER, Schedule, Tick


@attrs.frozen
class Fault:
    kind: str  # "hold", "delay", "reorder"
    sender: str
    recipient: str
    start_ms: int
    end_ms: int
    ms: int = 0  # extra latency (delay) or its maximum (reorder)

    def describe(self) -> str:
        what = {"hold": "held", "delay": f"delayed {self.ms} ms", "reorder": f"reordered (up to {self.ms} ms)"}[self.kind]
        return f"{self.sender} -> {self.recipient} {what} from {self.start_ms / 1000:g}s to {self.end_ms / 1000:g}s"


class FaultScript(Machine):
    """Switches each fault on at its start and off at its end."""

    handlers = {Tick: "on_tick"}

    def __init__(self, network: Network, faults: Sequence[Fault]) -> None:
        super().__init__("faults")
        self.network = network  # the one machine that works the network's levers: actor runs only
        self.faults = list(faults)
        self.active: dict[int, Hook] = {}

    def start(self) -> None:
        for when in sorted({t for f in self.faults for t in (f.start_ms, f.end_ms)}):
            self.send(SCHEDULER, Schedule(f"fault@{when}", when))

    def on_tick(self, sender: str, message: Tick) -> None:
        network = self.network
        for i, fault in enumerate(self.faults):
            if fault.end_ms == message.time_ms and i in self.active:
                network.remove(self.active.pop(i))
                self.emit("fault_lifted", fault=fault.describe())
            if fault.start_ms == message.time_ms:
                lever = {"hold": network.hold, "delay": network.delay, "reorder": network.reorder}[fault.kind]
                self.active[i] = lever(fault.sender, fault.recipient, fault.ms) if fault.kind != "hold" else lever(
                    fault.sender, fault.recipient)
                self.emit("fault_applied", fault=fault.describe())
