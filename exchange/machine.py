"""The sans-IO participant: every part of the venue is a machine that turns inputs into effects.

A machine (a sub-account, a market, a lending pool, the liquidator, the price feed) owns one
piece of state and changes it only while it handles an input: a message from another machine,
stamped with the virtual time it arrives at. Handling returns the effects to carry out, in
order: messages to send (``Send``) and events to log (``Log``). A machine never knows who drives
it: the direct engine delivers its sends synchronously, in the order a zero-latency network
would; the actor runtime turns them into messages on a network kernel with latency, faults and
trio's seeded scheduling. Both drivers run this same code, so a venue rule lives once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

Event = dict[str, Any]


class Send:
    """Deliver ``message`` to the machine at ``recipient``."""

    __slots__ = ("recipient", "message")

    def __init__(self, recipient: str, message: object) -> None:
        self.recipient = recipient
        self.message = message

    def __repr__(self) -> str:
        return f"Send({self.recipient!r}, {self.message!r})"


class Log:
    """Append ``event`` (kind, actor, virtual time and the numbers behind it) to the run's log."""

    __slots__ = ("event",)

    def __init__(self, event: Event) -> None:
        self.event = event

    def __repr__(self) -> str:
        return f"Log({self.event!r})"


Effect = Send | Log


class Machine:
    """Dispatch by message type to ``on_*`` methods; collect what they send and log.

    ``handlers`` maps a message class to a method name; it is resolved once per class. Work a
    driver asks for outside a message (subscriptions at the start of a run) is collected the
    same way and taken with ``take``.
    """

    handlers: ClassVar[dict[type, str]] = {}
    _functions: ClassVar[dict[type, Callable[..., None]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._functions = {message: getattr(cls, name) for message, name in cls.handlers.items()}

    def __init__(self, address: str) -> None:
        self.address = address
        self.now_ms = 0
        self._out: list[Effect] = []

    def handle(self, sender: str, message: object, now_ms: int) -> list[Effect]:
        """One input: ``message`` from ``sender`` arriving at ``now_ms``; returns its effects."""
        self.now_ms = now_ms
        self.dispatch(sender, message)
        return self.take()

    def dispatch(self, sender: str, message: object) -> None:
        function = self._functions.get(type(message))
        if function is None:
            raise TypeError(f"{self.address} has no handler for {type(message).__name__}")
        function(self, sender, message)

    def take(self) -> list[Effect]:
        """The effects collected so far, in order (and forget them)."""
        out, self._out = self._out, []
        return out

    def send(self, recipient: str, message: object) -> None:
        self._out.append(Send(recipient, message))

    def emit(self, kind: str, /, **fields: Any) -> None:
        """Log an event of this machine at the current virtual time."""
        self._out.append(Log({"actor": self.address, **fields, "event": kind, "t": self.now_ms}))
