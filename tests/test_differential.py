"""The proof that there is one venue: the direct engine and the actors agree exactly.

Both drivers run the same machines; at zero latency with no faults the actors run in lockstep
(one message in flight, in the engine's order), so every event, every liquidation history row
and every final balance must be equal, not close.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from actors.runtime import Context
from scenarios import differential, fuzz, loader

LIBRARY = sorted(p.stem for p in (Path(loader.__file__).parent / "library").glob("*.toml"))


@pytest.mark.parametrize("name", LIBRARY)
def test_every_library_scenario_runs_alike_on_both_drivers(name):
    comparison = differential.compare(loader.load(name))
    assert comparison.equal, "\n".join(comparison.mismatches)
    assert comparison.events > 30  # a real run: prices, deposits, orders, fills


def test_two_hundred_generated_scenarios_run_alike_on_both_drivers():
    campaign = fuzz.campaign(range(200), differential=True, jobs=2)
    assert len(campaign.outcomes) == 200
    assert campaign.failures == (), campaign.failures[0].detail


def test_a_driver_that_changes_the_order_of_effects_is_caught_and_named(monkeypatch):
    """A shell that carries out a machine's effects last-first (a driver bug: the machine said
    otherwise) must fail the comparison and name the first event where the logs part."""
    honest = Context.carry_out
    monkeypatch.setattr(Context, "carry_out",
                        lambda self, address, effects: honest(self, address, list(effects)[::-1]))
    comparison = differential.compare(loader.load("partial-liquidation"))
    assert not comparison.equal
    assert comparison.mismatches[0].startswith("event ")
    assert "engine: {" in comparison.mismatches[0] and "actors: {" in comparison.mismatches[0]


def test_a_differential_failure_is_saved_shrunk_with_its_replay(tmp_path, monkeypatch):
    """With a driver that reorders effects, seed 3 differs; the saved failure replays with
    ``run --differential`` and shrinks to a smaller scenario that still differs."""
    honest = Context.carry_out
    monkeypatch.setattr(Context, "carry_out",
                        lambda self, address, effects: honest(self, address, list(effects)[::-1]))
    outcome = fuzz.run_differential(3)
    assert not outcome.passed and outcome.label == "differential" and outcome.detail.startswith("event ")
    lines = fuzz.save_failure(outcome, tmp_path)
    folder = tmp_path / "seed-3"
    assert lines[1] == f"  replay: marginsim run {folder / 'scenario.toml'} --seed 3 --differential"
    assert any(line.startswith(f"  shrunk: marginsim run {folder / 'shrunk.toml'} --seed 3 --differential")
               for line in lines)
    shrunk = loader.load(str(folder / "shrunk.toml"))
    assert not differential.compare(shrunk, seed=3).equal
    assert len(shrunk.accounts) < len(loader.load(str(folder / "scenario.toml")).accounts)


def test_each_liquidation_order_starts_where_the_previous_one_left_the_account():
    """complex-liquidation's first loop (t=41 s) sells ETH and BTC on the book: each row's MMR
    before is where the previous row left the account, not the loop's start (1.13729).

    The engine delivers first in, first out, so ETH (ranked first by the plan) fills
    first: 1.13729 -> 1.01363, then BTC from 1.01363. On the actors the two markets answer
    concurrently and the seeded scheduler decides which fill the account hears first; the
    chain holds either way."""
    from scenarios import runner

    scenario = loader.load("complex-liquidation")
    engine, _ = differential.run_engine(scenario, scenario.seed, scenario.duration_ms)
    book = [s for s in engine.liquidator.history["trader"] if s.stage == "book" and s.time_ms == 41_000]
    assert [s.market for s in book] == ["ETH_USDC_PERP", "BTC_USDC_PERP"]
    assert round(book[0].mmr_before, 5) == Decimal("1.13729") and round(book[0].mmr_after, 5) == Decimal("1.01363")
    assert book[1].mmr_before == book[0].mmr_after
    run = runner.run(scenario)
    book = [s for s in run.result.history["trader"] if s.stage == "book" and s.time_ms == 41_000]
    assert sorted(s.market for s in book) == ["BTC_USDC_PERP", "ETH_USDC_PERP"]
    assert round(book[0].mmr_before, 5) == Decimal("1.13729") and book[1].mmr_before == book[0].mmr_after


def test_a_deposit_of_nothing_is_refused_on_both_drivers():
    """One rule: a deposit must be positive, whoever drives the sub-account."""
    from exchange import Exchange, load_profile

    ex = Exchange(load_profile("backpack"))
    ex.add_account("a")
    with pytest.raises(ValueError, match="cannot deposit 0 USDC"):
        ex.deposit("a", "USDC", Decimal(0))
    assert ex.accounts["a"].balances == {} and ex.events[-1]["event"] == "deposit_refused"


def test_explain_reads_an_engine_run_as_it_reads_an_actor_run():
    """One event schema: the engine's log explains the liquidated trader in the same words."""
    from scenarios import explain, runner

    scenario = loader.load("partial-liquidation")
    _, engine_events = differential.run_engine(scenario, scenario.seed, scenario.duration_ms)
    actor_events = runner.run(scenario).result.events
    words = explain.explain_account(engine_events, "trader")
    assert words == explain.explain_account(actor_events, "trader")
    assert any("liquidat" in line for line in words)
