"""The race fuzzer: valid scenarios, a clean campaign, every mutant caught, exact replay."""

from __future__ import annotations

import json
import re
import tomllib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from scenarios import fuzz, loader
from scenarios.cli import main

from .mutants import MUTANTS, fills_applied_twice

# Seeds each mutant gets, and the clean system passes. Measured over seeds 0-99, the share of
# seeds that catch each mutant runs from 10% (stale-liquidator: the race needs a price wick and
# a lagging liquidator together) to 100% (open-orders-ignored): at 10%, 60 seeds miss it with
# probability 0.9^60 = 0.2%.
CAMPAIGN = 60


def test_generated_scenarios_are_valid_deterministic_and_swarmed(tmp_path):
    """The same seed gives the same file; every file loads; each kind of fault is on for some
    seeds and off for others."""
    kinds: dict[str, int] = {}
    for seed in range(CAMPAIGN):
        text = fuzz.to_toml(fuzz.generate(seed))
        assert text == fuzz.to_toml(fuzz.generate(seed))
        path = tmp_path / f"{seed}.toml"
        path.write_text(text, encoding="utf-8")
        scenario = loader.load(str(path))
        assert scenario.liveness and len(scenario.accounts) == 13 and scenario.seed == seed
        assert tomllib.loads(text)["scenario"]["name"] == f"fuzz-{seed}"
        for fault in {(f.kind, f.sender.split(":")[0], f.recipient.split(":")[0]) for f in scenario.faults}:
            kinds[str(fault)] = kinds.get(str(fault), 0) + 1
    assert len(kinds) >= 5 and all(0 < count < CAMPAIGN for count in kinds.values()), kinds


def test_the_unmodified_system_passes_a_campaign():
    campaign = fuzz.campaign(range(CAMPAIGN))
    assert [o.label for o in campaign.failures] == [], [o.detail for o in campaign.failures]
    assert len(campaign.outcomes) == CAMPAIGN
    assert all(1000 < o.events for o in campaign.outcomes)  # a few thousand events each


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_the_fuzzer_catches_each_mutant(name):
    make, expected = MUTANTS[name]
    with make():
        for runs, seed in enumerate(range(CAMPAIGN), start=1):
            outcome = fuzz.run_seed(seed)
            if not outcome.passed:
                break
    assert not outcome.passed, f"{name} survived {CAMPAIGN} runs"
    assert outcome.label in expected, f"{name} caught after {runs} run(s) as {outcome.label}: {outcome.detail}"


def test_a_failure_replays_exactly_and_shrinks(tmp_path, capsys):
    """A saved failure: `marginsim run FILE --seed N` gives the violation and the fingerprint
    README.txt promises, and the shrunk scenario is smaller and breaks the same invariant."""
    with fills_applied_twice():
        outcome = next(o for o in map(fuzz.run_seed, range(CAMPAIGN)) if not o.passed)
        assert outcome.label == "conservation"
        seed = outcome.seed
        lines = fuzz.save_failure(outcome, tmp_path)
        folder = tmp_path / f"seed-{seed}"
        readme = (folder / "README.txt").read_text(encoding="utf-8")
        assert readme == "\n".join(lines) + "\n"
        assert f"replay: marginsim run {folder / 'scenario.toml'} --seed {seed}" in readme
        promised = re.findall(r"fingerprint ([0-9a-f]{64})", readme)
        assert len(promised) == 2  # the scenario and its shrunk version
        for path, fingerprint in zip(("scenario.toml", "shrunk.toml"), promised, strict=True):
            assert main(["run", str(folder / path), "--seed", str(seed), "--json"]) == 1
            document = json.loads(capsys.readouterr().out)
            assert document["failure"]["kind"] == "invariant"
            assert "invariant 'conservation'" in document["failure"]["message"]
            assert document["fingerprint"] == fingerprint
    original = tomllib.loads((folder / "scenario.toml").read_text(encoding="utf-8"))
    shrunk = tomllib.loads((folder / "shrunk.toml").read_text(encoding="utf-8"))
    size = sum(len(original.get(k, [])) for k in ("accounts", "actions", "faults", "noise_traders"))
    assert sum(len(shrunk.get(k, [])) for k in ("accounts", "actions", "faults", "noise_traders")) < size
    assert "removed: " in readme and "nothing could go" not in readme


def test_a_campaign_fans_out_over_any_executor():
    """A process pool stands in for any concurrent.futures Executor (a distributed client's
    executor plugs in the same way); the outcomes are those of the same seeds run here."""
    with ProcessPoolExecutor(max_workers=2) as pool:
        spread = fuzz.campaign(range(4), executor=pool)
    here = fuzz.campaign(range(4))
    assert [(o.seed, o.label, o.events) for o in spread.outcomes] == [(o.seed, o.label, o.events) for o in here.outcomes]


def test_a_dask_campaign_keeps_every_worker_busy():
    """A two-worker cluster on loopback: the campaign asks the executor how wide it is (2), and
    the cluster's task stream shows both workers running seeds at the same time, each its share."""
    from distributed import Client, LocalCluster, get_task_stream

    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as cluster, \
            Client(cluster) as client:
        executor = client.get_executor()
        assert fuzz.executor_workers(executor) == 2
        with get_task_stream(client) as stream:
            campaign = fuzz.campaign(range(10), executor=executor)
    assert [o.seed for o in campaign.outcomes] == list(range(10)) and campaign.jobs == 2
    runs = [t for t in stream.data if t["key"].startswith("run_seed")]
    assert len(runs) == 10 and len({t["worker"] for t in runs}) == 2
    spans = [(s["start"], s["stop"]) for t in runs for s in t["startstops"] if s["action"] == "compute"]
    overlap = max(sum(1 for a, b in spans if a <= start < b) for start, _ in spans)
    assert overlap >= 2  # both at once (each worker's clock stamps its own tasks, so not exactly 2)
    per_worker = [sum(1 for t in runs if t["worker"] == w) for w in {t["worker"] for t in runs}]
    assert min(per_worker) >= 2


def test_the_standard_pools_say_how_wide_they_are():
    from concurrent.futures import ThreadPoolExecutor

    with ProcessPoolExecutor(max_workers=3) as processes, ThreadPoolExecutor(max_workers=5) as threads:
        assert fuzz.executor_workers(processes) == 3 and fuzz.executor_workers(threads) == 5


def test_a_time_budget_stops_new_runs():
    campaign = fuzz.campaign(range(1000), time_budget=0.3)
    assert 1 <= len(campaign.outcomes) < 1000


def test_the_fuzz_command_prints_its_campaign(tmp_path, capsys):
    assert main(["fuzz", "--runs", "3", "--seed", "7", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "runs" in out and "(seeds 7..9)" in out and "seeds/s per job" in out
    assert not any(tmp_path.iterdir())  # nothing failed, nothing saved
    with pytest.raises(SystemExit) as exit_info:
        main(["fuzz", "--runs", "0"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("path", sorted((Path(__file__).parent / "regressions").glob("fuzz-*.toml")),
                         ids=lambda p: p.stem)
def test_saved_fuzz_failures_stay_fixed(path):
    """Shrunk scenarios of failures campaigns found; each says in its header what broke."""
    scenario = loader.load(str(path))
    run = fuzz.replay(path, scenario.seed)
    assert run.passed, run.failure
