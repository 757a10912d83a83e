"""Rounding helpers: the quantize fast path agrees with divide-round-multiply everywhere."""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from hypothesis import given
from hypothesis import strategies as st

from exchange.decimals import ceil_to, floor_to, fmt_pct

D = Decimal
STEPS = [D("1"), D("0.1"), D("0.01"), D("0.000001"), D("0.10"), D("100"), D("0.5"), D("0.25"), D("1E-8")]


@given(
    st.decimals(min_value=-(10**9), max_value=10**9, places=12, allow_nan=False, allow_infinity=False),
    st.sampled_from(STEPS),
)
def test_rounding_to_a_step_matches_the_definition(value, step):
    assert floor_to(value, step) == (value / step).to_integral_value(ROUND_FLOOR) * step
    assert ceil_to(value, step) == (value / step).to_integral_value(ROUND_CEILING) * step


def test_rounding_goes_the_way_it_says():
    assert (floor_to(D("-1.2345"), D("0.01")), ceil_to(D("-1.2345"), D("0.01"))) == (D("-1.24"), D("-1.23"))
    assert (floor_to(D("123456"), D("100")), ceil_to(D("1.2345"), D("0.5"))) == (D("123400"), D("1.5"))


def test_percentages_never_round_across_a_threshold():
    """Truncated to two places unless that would put the text on the other side of (or on) a
    deciding threshold than the value: order-refused's one-step-over order takes IMR to
    100.001% (available equity -0.1 on 9985), which must not read "100%" beside "at most 100%"."""
    assert fmt_pct(D("0.999995783")) == "99.99%"
    assert fmt_pct(D("1.0000004")) == "100.00004%"
    assert fmt_pct(D("1.00001")) == "100.001%"
    assert fmt_pct(D("1")) == "100%"
    assert fmt_pct(D("1.30194")) == "130.19%"
    assert fmt_pct(D("2.00001")) == "200%"  # 200% decides nothing unless the caller says so
    assert fmt_pct(D("2.00001"), thresholds=(D(1), D(2))) == "200.001%"
    assert fmt_pct(D("-0.5")) == "-50%"
    assert fmt_pct(D("Infinity")) == "inf"
