"""The differential test: one scenario through the direct engine and through the actors.

Both drivers run the same machines, so at zero latency with no faults they must agree exactly:
the same events in the same order, the same liquidation history row for row, the same final
balances, positions, borrows, lends and open orders of every sub-account, and the same
liquidity fund. The actors run in lockstep (one message in flight at a time, in the engine's
order); any difference is a driver doing something the machines did not say, and the report
names the first event where the two logs part.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from actors.network import ZERO_LATENCY
from actors.system import RunFailed
from exchange.engine import Exchange
from exchange.machine import Event
from exchange.venue import Venue
from scenarios import runner
from scenarios.loader import Scenario


@attrs.frozen
class Comparison:
    seed: int
    events: int  # in each log, when they agree
    mismatches: tuple[str, ...]

    @property
    def equal(self) -> bool:
        return not self.mismatches


def run_engine(scenario: Scenario, seed: int, until_ms: int) -> tuple[Venue, list[Event]]:
    venue, _ = runner.build_venue(scenario, seed)
    engine = Exchange(scenario.profile, venue=venue)
    engine.advance_to(until_ms)
    engine.close()
    return venue, engine.events


def compare(scenario: Scenario, *, seed: int | None = None, until_ms: int | None = None) -> Comparison:
    """Run ``scenario`` both ways at zero latency, without faults, and say where they differ."""
    seed = scenario.seed if seed is None else seed
    until_ms = scenario.duration_ms if until_ms is None else until_ms
    if scenario.faults or scenario.latency != ZERO_LATENCY or scenario.latency_rules:
        scenario = attrs.evolve(scenario, faults=(), latency=ZERO_LATENCY, latency_rules={})
    engine_venue, engine_events = run_engine(scenario, seed, until_ms)
    system, _ = runner.build(scenario, seed, check_every=None, fingerprint=False, lockstep=True)
    try:
        result = system.run(until_ms / 1000)
    except RunFailed as failure:
        return Comparison(seed, 0, (f"the actor run stopped: {failure}",))
    actor_events = [{k: v for k, v in e.items() if k != "seq"} for e in result.events]
    mismatches = list(_first_difference(engine_events, actor_events))
    mismatches += _state_differences(engine_venue, system.venue)
    return Comparison(seed, len(engine_events), tuple(mismatches))


def _first_difference(engine: list[Event], actors: list[Event]) -> Iterable[str]:
    for i, (a, b) in enumerate(zip(engine, actors)):
        if a != b:
            yield f"event {i + 1} differs:\n  engine: {a}\n  actors: {b}"
            return
    if len(engine) != len(actors):
        longer, name = (engine, "engine") if len(engine) > len(actors) else (actors, "actors")
        yield (f"the engine logged {len(engine)} events, the actors {len(actors)}; the first extra one "
               f"({name}): {longer[min(len(engine), len(actors))]}")


def _state(venue: Venue) -> dict[str, Any]:
    accounts = {}
    for account_id, machine in venue.accounts.items():
        a = machine.account
        accounts[account_id] = {
            "balances": {asset: (b.available, b.locked) for asset, b in a.balances.items()},
            "positions": {s: (p.quantity, p.net_cost) for s, p in a.positions.items()},
            "borrows": dict(a.borrows),
            "lends": dict(a.lends),
            "open_orders": sorted(a.open_orders),
            "unsettled_equity": a.unsettled_equity,
        }
    return {
        "accounts": accounts,
        "history": {a: [attrs.astuple(s) for s in steps] for a, steps in venue.liquidator.history.items()},
        "fund": venue.fund,
    }


def _state_differences(engine: Venue, actors: Venue) -> list[str]:
    left, right = _state(engine), _state(actors)
    problems = []
    for account_id in left["accounts"]:
        for field, value in left["accounts"][account_id].items():
            other = right["accounts"][account_id][field]
            if value != other:
                problems.append(f"{account_id} {field}: engine {value}, actors {other}")
    for account_id in sorted(set(left["history"]) | set(right["history"])):
        mine, theirs = left["history"].get(account_id, []), right["history"].get(account_id, [])
        for i, (a, b) in enumerate(zip(mine, theirs)):
            if a != b:
                problems.append(f"{account_id} liquidation history row {i + 1}: engine {a}, actors {b}")
                break
        else:
            if len(mine) != len(theirs):
                problems.append(f"{account_id} liquidation history: engine {len(mine)} rows, actors {len(theirs)}")
    if left["fund"] != right["fund"]:
        problems.append(f"liquidity fund: engine {left['fund']}, actors {right['fund']}")
    return problems
