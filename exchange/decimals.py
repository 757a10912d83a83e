"""Decimal helpers shared by the whole core.

Money and quantities are ``decimal.Decimal`` everywhere. Rounding is always explicit and
always chosen by the caller to go against the account: what an account receives is rounded
down (``floor_to``), what it pays or must hold is rounded up (``ceil_to``).

Arithmetic runs in the default decimal context (28 significant digits, the same order as the
venue's 96-bit decimals); results that land in a ledger are quantized to a step first.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, Decimal

ZERO = Decimal(0)
ONE = Decimal(1)
INFINITY = Decimal("Infinity")
HOURS_PER_YEAR = Decimal(8760)


_QUANTUM: dict[Decimal, Decimal | None] = {}


def _quantum(step: Decimal) -> Decimal | None:
    """``step`` as a quantize exponent when it is 1, 0.1, 0.01, ... (every real tick and step);
    ``quantize`` is several times cheaper than divide-round-multiply."""
    if step in _QUANTUM:
        return _QUANTUM[step]
    norm = step.normalize()
    quantum = norm if norm.as_tuple().digits == (1,) and norm.as_tuple().exponent <= 0 else None
    _QUANTUM[step] = quantum
    return quantum


def floor_to(value: Decimal, step: Decimal) -> Decimal:
    """Largest multiple of ``step`` that is <= ``value`` (toward minus infinity)."""
    quantum = _quantum(step)
    if quantum is not None:
        return value.quantize(quantum, ROUND_FLOOR)
    return (value / step).to_integral_value(ROUND_FLOOR) * step


def ceil_to(value: Decimal, step: Decimal) -> Decimal:
    """Smallest multiple of ``step`` that is >= ``value`` (toward plus infinity)."""
    quantum = _quantum(step)
    if quantum is not None:
        return value.quantize(quantum, ROUND_CEILING)
    return (value / step).to_integral_value(ROUND_CEILING) * step


def is_multiple(value: Decimal, step: Decimal) -> bool:
    """True when ``value`` lies exactly on the ``step`` grid."""
    return (value % step) == 0


def to_decimal(value: object) -> Decimal:
    """Exact conversion for user input: ints and strings are exact; floats go through repr.

    A float is converted from its shortest repr (``0.1`` -> ``Decimal('0.1')``) so that a
    number typed in a scenario file means what the user wrote, never a binary artefact.
    """
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, str):
        return Decimal(value.strip())
    raise TypeError(f"not a number: {value!r}")


def fmt(value: Decimal | None, places: int | None = None, *, truncate: bool = False) -> str:
    """Plain (non-scientific) text for a Decimal; ``places`` rounds half-even for display only
    (or toward zero with ``truncate``)."""
    if value is None:
        return "-"
    if value.is_infinite():
        return "inf" if value > 0 else "-inf"
    if places is not None:
        value = value.quantize(Decimal(1).scaleb(-places), ROUND_DOWN if truncate else None)
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def fmt_pct(value: Decimal, places: int = 2, thresholds: Iterable[Decimal] = (ONE,)) -> str:
    """A ratio as a percentage for people: ``0.1234 -> '12.34%'``; infinite ratios read ``inf``.

    Truncated toward zero at ``places``, then given more digits until the text sits on the same
    side of every deciding ``threshold`` (100% by default) as the true value: 100.001% reads
    ``100.001%``, never ``100%`` next to a rule that says "at most 100%", and 99.9996% reads
    ``99.99%``. Callers pass their own thresholds (a liquidation's end target, auto-close level).
    """
    if value.is_infinite():
        return "inf"
    limits = tuple(thresholds)
    digits = places
    while True:
        shown = (value * 100).quantize(Decimal(1).scaleb(-digits), ROUND_DOWN)
        if all(_side(shown, 100 * t) == _side(value * 100, 100 * t) for t in limits) or shown == value * 100:
            return f"{fmt(shown)}%"
        digits += 1


def _side(value: Decimal, threshold: Decimal) -> int:
    return (value > threshold) - (value < threshold)
