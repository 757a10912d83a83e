"""The rule-conformance checker (exchange/conformance.py): real runs conform, and a run whose
events break a rule is named with its numbers.

Each case takes the event log of a shipped scenario, whose numbers the scenario file derives by
hand (partial-liquidation: 1 BTC long sold 0.1, 0.09, 0.081, 0.0729, 0.02669 at 90,440 with a
0.05% taker fee; funding: 10 BTC long at mark 100,100 pays 6.951389 an interval; spot-margin-
interest: 1,000.013661 USDC borrowed at 12.005% a year is charged 0.013706 in the first hour),
changes one number the way a bug would, and checks the rule that catches it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from exchange.conformance import Conformance
from exchange.subaccount import SubAccountMachine
from scenarios import loader, runner

from .mutants import _handler, funding_sign_flipped

D = Decimal
Event = dict[str, Any]
_LOGS: dict[str, list[Event]] = {}


def _log(name: str) -> list[Event]:
    if name not in _LOGS:
        scenario = loader.load(name)
        run = runner.run(scenario, seed=scenario.seed)
        assert run.passed, run.failure
        _LOGS[name] = run.result.events
    return copy.deepcopy(_LOGS[name])


def _violations(name: str, events: list[Event]) -> list[Any]:
    checker = Conformance(loader.load(name).profile)
    return [v for v in map(checker.on_event, events) if v is not None]


@pytest.mark.parametrize("name", ["partial-liquidation", "funding", "spot-margin-interest", "cascade"])
def test_the_venue_conforms(name):
    assert _violations(name, _log(name)) == []


def _first(kind: str, **fields: Any) -> Callable[[list[Event]], Event]:
    def find(events: list[Event]) -> Event:
        return next(e for e in events if e["event"] == kind and all(e.get(k) == v for k, v in fields.items()))
    return find


def _set(field: str, value: Any) -> Callable[[Event, list[Event]], None]:
    def change(event: Event, events: list[Event]) -> None:
        event[field] = value
    return change


def _pay(account: str, amount: Decimal) -> Callable[[Event, list[Event]], None]:
    def change(event: Event, events: list[Event]) -> None:
        position, _ = event["payments"][account]
        event["payments"] = {**event["payments"], account: (position, amount)}
    return change


def _interest(field: str, account: str, amount: Decimal) -> Callable[[Event, list[Event]], None]:
    def change(event: Event, events: list[Event]) -> None:
        event[field] = {**event[field], account: amount}
    return change


def _sold(quantity: Decimal) -> Callable[[Event, list[Event]], None]:
    def change(event: Event, events: list[Event]) -> None:
        event["taker_position"] += event["quantity"] - quantity
        event["quantity"] = quantity
    return change


def _fok_half(event: Event, events: list[Event]) -> None:
    """The order sent fill-or-kill, and closed with half of it executed."""
    _first("order_placed", order_id=event["order_id"])(events)["time_in_force"] = "FOK"
    event["executed"] = D("0.5")


def _twice(event: Event, events: list[Event]) -> None:
    events.insert(events.index(event) + 1, dict(event))


CASES = [
    ("trigger", "partial-liquidation", _first("liquidation_step", stage="start"), _set("mmr_before", D("0.99")),
     "rule:liquidation-trigger", "trader was put into liquidation at MMR 0.99 (< 100%)"),
    ("end-target", "partial-liquidation", _first("liquidation_step", stage="book", t=9000), _set("mmr_before", D("0.99")),
     "rule:liquidation-end-target", "sold down on the book at MMR 0.99, under the end target 1"),
    ("ended-healthy-too-high", "partial-liquidation", _first("liquidation_step", stage="healthy"),
     _set("mmr_before", D(1)), "rule:liquidation-end-target", "ended as healthy at MMR 1, not under 1"),
    # the first loop's sale of the 1 BTC long read as 0.2 (position 0.8 after): 10% allows 0.1
    ("fraction", "partial-liquidation", _first("trade", taker_order="trader-l1"), _sold(D("0.2")),
     "rule:liquidation-fraction",
     "trader sold 0.2 of a 1 BTC_USDC_PERP position in one loop at 90440; max_fraction_per_loop 0.1 allows 0.1"),
    # 0.1 x 90,440 x 0.05% = 4.522 exactly; one step less is rounded in the account's favour
    ("fee", "partial-liquidation", _first("fill", order_id="trader-l1"), _set("fee", D("4.521999")),
     "rule:fee-rounding", "fee 4.521999 on an exact 4.522"),
    ("rate-sign", "funding", _first("funding_rate"), _set("rate", D("-0.000006944444444444444444444444444")),
     "rule:funding-direction", "mark stayed at or above its index all interval (premium 0.001 to 0.001)"),
    # 0.1% premium x 600 s / 24 h = 0.00000694...: ten times that is out of the interval's range
    ("rate-size", "funding", _first("funding_rate"), _set("rate", D("0.0000694")),
     "rule:funding-rate", "rate 0.0000694 is outside 0.00000694444"),
    ("long-receives", "funding", _first("funding"), _pay("long", D("6.951389")),
     "rule:funding-direction", "long (long 10 BTC_USDC_PERP) got 6.951389"),
    ("sum", "funding", _first("funding"), _pay("short", D("6.951388")),
     "rule:funding-sums-to-zero", "sum to -0.000001"),
    ("post-only-takes", "partial-liquidation", _first("order_placed", order_id="open-long"), _set("post_only", True),
     "rule:order-flags", "post-only order open-long took liquidity at 100000"),
    ("beyond-the-limit", "partial-liquidation", _first("order_placed", order_id="open-long"), _set("price", D(99999)),
     "rule:order-flags", "order open-long (Bid limit 99999) filled at 100000"),
    ("reduce-only-opens", "partial-liquidation", _first("order_placed", order_id="open-long"),
     _set("reduce_only", True), "rule:order-flags", "reduce-only order open-long of trader took its BTC_USDC_PERP "
                                                    "position from 0 to 1"),
    ("fok-partly", "partial-liquidation", _first("order_closed", order_id="open-long"), _fok_half,
     "rule:order-flags", "fill-or-kill order open-long of trader ended Filled with 0.5 of 1 executed"),
    ("borrow-undercharged", "spot-margin-interest", _first("interest_accrued", t=3600000),
     _interest("borrow_interest", "trader", D("0.013705")), "rule:interest-accrual", "was charged 0.013705"),
    ("lender-overpaid", "spot-margin-interest", _first("interest_accrued", t=3600000),
     _interest("lend_interest", "lender", D("0.024631")), "rule:lender-share", "it got 0.024631"),
    ("off-the-grid", "spot-margin-interest", _first("interest_accrued", t=3600000), _set("t", 3600001),
     "rule:interest-period", "accrued interest at t=3600001 ms"),
    ("credited-twice", "spot-margin-interest", _first("interest", t=3600000, actor="account:trader"), _twice,
     "rule:interest-accrual", "with no accrual due to it"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_broken_rule_is_named_with_its_numbers(case):
    _, name, find, change, rule, words = case
    events = _log(name)
    target = find(events)
    change(target, events)
    found = _violations(name, events)
    assert found, f"{rule} not reported"
    assert found[0].name == rule and any(e is found[0].event for e in events)
    assert words in found[0].detail, found[0].detail


def test_the_observer_fails_the_run_on_a_broken_rule():
    """Live: a funding sign flipped inside the venue stops the run as an invariant failure."""
    scenario = loader.load("funding")
    with funding_sign_flipped():
        run = runner.run(scenario, seed=scenario.seed)
    assert run.failure is not None and run.failure.kind == "invariant"
    assert "invariant 'rule:funding-direction'" in str(run.failure)
    assert "yet the rate is -0.000006944" in str(run.failure)


def test_a_refusal_that_moves_money_is_caught(tmp_path):
    """A withdrawal of 5,000 from 1,000 USDC is refused; a venue that debits 1 USDC while saying
    no stops the run at that event, naming the balance before and after."""
    path = tmp_path / "refusal.toml"
    path.write_text("""
[scenario]
name = "refusal"
duration = 3
[[accounts]]
id = "a"
deposits = { USDC = 1000 }
[[actions]]
at = 1
account = "a"
type = "withdraw"
asset = "USDC"
quantity = 5000
""", encoding="utf-8")
    scenario = loader.load(str(path))
    assert runner.run(scenario, seed=1).passed
    real = SubAccountMachine.on_withdraw

    def on_withdraw(self: Any, sender: str, message: Any) -> None:
        self.account.debit("USDC", D(1))
        real(self, sender, message)

    with _handler(SubAccountMachine, "on_withdraw", on_withdraw):
        run = runner.run(scenario, seed=1)
    assert run.failure is not None and "invariant 'rule:rejection-changed-nothing'" in str(run.failure)
    assert "a's withdrawal refused (INSUFFICIENT_FUNDS) changed the account: balances: USDC 1000 -> 999" in str(run.failure)
