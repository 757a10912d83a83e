"""Run a scenario on the actor runtime and check its expectations.

``run`` builds the system a scenario describes (profile, prices, sub-accounts, agents, scripted
actions, backstops, latency, faults), runs it for the scenario's duration (or ``until``) with its
seed, and judges every expectation against the end state, the health samples the accounts log
every ``sample_interval`` (for "at time T"), the scripted traders' replies and the liquidation
history. A run that stops early (an actor crashed, an invariant broke, it stalled) is a failure
with that reason.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs

from actors.agents import MarketMaker, NoiseTrader, ScriptedTrader
from actors.determinism import stream
from actors.faults import FaultScript
from actors.paths import Constant, Linear, PricePath, RandomWalk, Shifted, Steps
from actors.system import RunFailed, RunResult, System
from exchange.decimals import INFINITY, ZERO, ceil_to, fmt, fmt_pct
from exchange.ledger import Settings
from exchange.venue import Venue
from scenarios.loader import Expectation, PathSpec, Scenario


@attrs.frozen
class Outcome:
    """One expectation, judged."""

    description: str
    passed: bool
    detail: str


@attrs.frozen
class ScenarioRun:
    scenario: Scenario
    seed: int
    until_ms: int
    result: RunResult | None
    failure: RunFailed | None
    outcomes: tuple[Outcome, ...]

    @property
    def passed(self) -> bool:
        return self.failure is None and all(o.passed for o in self.outcomes)


def price_path(spec: PathSpec, seed: int, name: str) -> PricePath:
    path: PricePath
    if spec.kind == "constant":
        path = Constant(spec.price)
    elif spec.kind == "linear":
        path = Linear(spec.points)
    elif spec.kind in ("steps", "csv"):  # a CSV's rows were read and checked by the loader
        path = Steps(spec.points)
    elif spec.kind == "gbm":
        path = RandomWalk(spec.price, spec.drift, spec.volatility, spec.step_ms, stream(seed, f"path:{name}"))
    else:
        raise ValueError(f"no price path of kind {spec.kind!r}")
    for when, change in spec.shocks:
        path = Shifted(path, when, 1 + change)
    return path


def build_venue(scenario: Scenario, seed: int) -> tuple[Venue, dict[str, ScriptedTrader]]:
    """The venue a scenario describes (prices, sub-accounts, agents, scripted actions,
    backstops), for either driver; and each account's scripted trader."""
    venue = Venue(scenario.profile, seed=seed, price_interval_ms=scenario.price_interval_ms,
                  sample_ms=scenario.sample_ms)
    for asset, spec in scenario.prices.items():
        venue.set_path(asset, price_path(spec, seed, asset))
    for perp, spec in scenario.premiums.items():
        venue.set_premium(perp, price_path(spec, seed, perp))
    for account in scenario.accounts:
        settings = Settings(account.leverage_limit, account.auto_lend, account.auto_borrow_settlements,
                            account.auto_repay_borrows)
        venue.add_account(account.id, owner=account.owner, settings=settings, deposits=account.deposits,
                          markets=account.markets)
    for maker in scenario.makers:
        venue.add_agent(MarketMaker(venue, maker.name, maker.account, maker.markets, size=maker.size,
                                    spread_bps=maker.spread_bps, levels=maker.levels, spacing_bps=maker.spacing_bps,
                                    refresh_ms=maker.refresh_ms))
    for noise in scenario.noise:
        venue.add_agent(NoiseTrader(venue, noise.name, noise.account, noise.markets, interval_ms=noise.interval_ms,
                                    max_steps=noise.max_steps, market_share=noise.market_share,
                                    within_bps=noise.within_bps, reduce_only_share=noise.reduce_only_share,
                                    ioc_share=noise.ioc_share, auto_borrow_share=noise.auto_borrow_share,
                                    post_only_share=noise.post_only_share, top_up=noise.top_up))
    for account, capacity in scenario.backstops:
        venue.add_backstop(account, capacity)
    scripts: dict[str, ScriptedTrader] = {}
    for account in dict.fromkeys(a.account for a in scenario.actions):
        actions = [(a.at_ms, a.message) for a in scenario.actions if a.account == account]
        scripts[account] = ScriptedTrader(venue, f"script-{account}", account, actions)
        venue.add_agent(scripts[account])
    return venue, scripts


def build(
    scenario: Scenario,
    seed: int,
    *,
    log_path: Path | None = None,
    progress: Callable[[int], None] | None = None,
    keep_events: bool = True,
    check_every: int | None = 1,
    fingerprint: bool = True,
    lockstep: bool = False,
) -> tuple[System, dict[str, ScriptedTrader]]:
    """The actor system a scenario describes, ready to run; and each account's scripted trader."""
    venue, scripts = build_venue(scenario, seed)
    system = System(
        scenario.profile, seed=seed, latency=scenario.latency, latency_rules=scenario.latency_rules,
        check_every=check_every, log_path=log_path, keep_events=keep_events, progress=progress,
        faults_until_ms=scenario.faults_until_ms, fingerprint=fingerprint, venue=venue, lockstep=lockstep,
    )
    if scenario.faults:
        system.add_agent(FaultScript(system.network, scenario.faults))
    return system, scripts


def run(
    scenario: Scenario,
    *,
    seed: int | None = None,
    until_s: float | None = None,
    log_path: Path | None = None,
    progress: Callable[[int], None] | None = None,
    keep_events: bool = True,
    check_every: int | None = 1,
    fingerprint: bool = True,
) -> ScenarioRun:
    seed = scenario.seed if seed is None else seed
    until_ms = scenario.duration_ms if until_s is None else round(until_s * 1000)
    system, scripts = build(scenario, seed, log_path=log_path, progress=progress, keep_events=keep_events,
                            check_every=check_every, fingerprint=fingerprint)
    try:
        result = system.run(until_ms / 1000)
    except RunFailed as failure:
        return ScenarioRun(scenario, seed, until_ms, None, failure, ())
    if scenario.liveness:
        problems = system.liveness_violations(until_ms)
        if problems:
            failure = RunFailed("liveness", "; ".join(problems), seed, until_ms, fingerprint=result.fingerprint)
            return ScenarioRun(scenario, seed, until_ms, result, failure, ())
    outcomes = tuple(judge(e, result, scripts) for e in scenario.expectations)
    return ScenarioRun(scenario, seed, until_ms, result, None, outcomes)


CENT = Decimal("0.01")  # the summary's money column: equity floored, debts ceiled, against the account
MID_LIQUIDATION = "the run ended mid-liquidation"


def account_status(row: dict[str, Any], settle: str) -> str:
    """What a sub-account's end state means for liquidation, in words: a bankrupt account's debt
    to the fund, a liquidation the run ended in the middle of, or one the next loop would start.
    ``run``'s summary and ``explain`` both judge with it."""
    if row["unsettled_equity"] < 0 and not row["positions"]:
        return f"bankrupt: owes the liquidity fund {fmt(ceil_to(-row['unsettled_equity'], CENT))} {settle}"
    if row["liquidations"] and row["net_equity"] <= 0 and not (row["positions"] or row["borrows"]):
        return "liquidated to zero equity"
    if row["liquidating"]:
        return MID_LIQUIDATION
    if row["mmr"] >= 1:
        return f"liquidation pending: MMR {fmt_pct(row['mmr'])} >= 100%, the next loop starts it"
    return ""


# ---------------------------------------------------------------------------------------
# Expectations


def judge(expectation: Expectation, result: RunResult, scripts: dict[str, ScriptedTrader]) -> Outcome:
    p = expectation.params
    kind = expectation.kind
    describe = expectation.describe()
    if kind in ("refused", "accepted"):
        return _order_outcome(describe, kind, p, scripts)
    if kind in ("liquidated", "not_liquidated", "liquidation_stage"):
        stage = p.get("stage", "start")
        steps = [s for s in result.history.get(p["account"], []) if s.stage == stage]
        if kind == "not_liquidated":
            return Outcome(describe, not steps, f"{len(steps)} liquidation(s)")
        ok = p["min"] <= len(steps) and (p["max"] is None or len(steps) <= p["max"])
        return Outcome(describe, ok, f"{len(steps)} {stage} step(s)")
    value = _value(kind, p, result)
    if value is None:
        return Outcome(describe, False, "no sample at or after that time" if p.get("at_ms") is not None else "no value")
    ok = (p.get("min") is None or value >= p["min"]) and (p.get("max") is None or value <= p["max"])
    return Outcome(describe, ok, f"{kind} = {fmt(value, 6)}")


def _order_outcome(describe: str, kind: str, p: dict[str, Any], scripts: dict[str, ScriptedTrader]) -> Outcome:
    order = p["order"]
    for script in scripts.values():
        if order in script.refused:
            rejection = script.refused[order]
            if kind == "accepted":
                return Outcome(describe, False, f"refused: {rejection.code} {rejection.message}")
            ok = p.get("code") is None or rejection.code.value == p["code"]
            detail = f"refused with {rejection.code}: {rejection.message}"
            largest = rejection.details.get("max_quantity")
            if p.get("max_quantity") is not None and largest != p["max_quantity"]:
                ok = False
                detail += f" (its largest size that passes is {'not given' if largest is None else fmt(largest)})"
            return Outcome(describe, ok, detail)
        if order in script.placed:
            return Outcome(describe, kind == "accepted", "accepted")
    return Outcome(describe, False, "the order never got an answer")


def _value(kind: str, p: dict[str, Any], result: RunResult) -> Decimal | None:
    at_ms = p.get("at_ms")
    if kind == "fund":
        return result.summary["fund"].get(p["asset"], ZERO)
    if kind == "funding_paid":
        return result.summary["markets"][p["market"]]["funding_paid"]
    if kind == "trades":
        return Decimal(result.summary["markets"][p["market"]]["trades"])
    account = p["account"]
    if at_ms is None:
        state = result.summary["accounts"][account]
    else:
        state = next((e for e in result.events if e["event"] == "health" and e["actor"] == f"account:{account}"
                      and e["t"] >= at_ms), None)
        if state is None:
            return None
    if kind in ("net_equity", "imr", "mmr", "unsettled_equity"):
        value = state.get(kind)
        if value is None and kind == "unsettled_equity":
            return None
        return INFINITY if value is None else value
    if kind == "position":
        return state["positions"].get(p["market"], ZERO)
    key = {"balance": "balances", "borrow": "borrows", "lend": "lends"}[kind]
    return state[key].get(p["asset"], ZERO)
