"""The race fuzzer: valid scenarios that reach every rule, a clean campaign, every mutant caught,
exact replay."""

from __future__ import annotations

import json
import re
import tomllib
from concurrent.futures import ProcessPoolExecutor
from decimal import Decimal as D
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


def test_generated_scenarios_reach_every_rule(tmp_path):
    """Over the campaign's seeds the scripted requests cover every action type, order flag, time
    in force and self-trade mode, limits out of the price band (0.5x or 2x the path's price),
    withdrawals and transfers over the balance, traders that top up when liquidated, and reused
    order ids (none when switched off). Ten of the runs then show each kind of refusal, accruals,
    funding and a deposit while a liquidation runs."""
    scenarios = [fuzz.generate(seed) for seed in range(CAMPAIGN)]
    actions = [a for data in scenarios for a in data["actions"]]
    assert {a["type"] for a in actions} >= {"order", "cancel", "deposit", "withdraw", "transfer", "settings", "lend",
                                           "redeem", "borrow", "repay"}
    orders = [a for a in actions if a["type"] == "order" and a.get("id", "").startswith("x")]
    assert all(any(o.get(flag) for o in orders) for flag in fuzz._ORDER_FLAGS)
    assert {o["time_in_force"] for o in orders} == {"GTC", "IOC", "FOK"}
    assert {o["self_trade_prevention"] for o in orders} == {"RejectTaker", "RejectMaker", "RejectBoth"}
    assert {o["market"].endswith("_PERP") for o in orders if "quote_quantity" in o} == {True, False}  # perp and spot
    deposits = {(data["scenario"]["seed"], a["id"]): a["deposits"]["USDC"] for data in scenarios for a in data["accounts"]}
    assert any(a["quantity"] > deposits[(data["scenario"]["seed"], a["account"])]
               for data in scenarios for a in data["actions"] if a["type"] in ("withdraw", "transfer"))
    assert any(n["top_up"] > 0 for data in scenarios for n in data["noise_traders"])
    ids = [[a["id"] for a in data["actions"] if "id" in a] for data in scenarios]
    assert any(len(mine) > len(set(mine)) for mine in ids)  # reused ids, by one account or by two
    for seed in range(CAMPAIGN):
        unique = [a["id"] for a in fuzz.generate(seed, fuzz.FuzzSettings(duplicate_ids=False))["actions"] if "id" in a]
        assert len(unique) == len(set(unique))

    seen: dict[str, int] = {}
    for seed in range(10):
        log = tmp_path / f"{seed}.jsonl"
        outcome, _ = fuzz.run_text(fuzz.to_toml(scenarios[seed]), seed, check_every=200, log_path=log)
        assert outcome.passed, outcome.detail
        liquidating: set[str] = set()
        for line in log.read_text(encoding="utf-8").splitlines():
            event = json.loads(line)
            kind = event.get("event")
            if kind == "order_rejected":
                kind = f"order_rejected {event['code']}"
            elif kind == "liquidating":
                liquidating.add(event["actor"])
            elif kind == "liquidation_ended":
                liquidating.discard(event["actor"])
            elif kind == "deposit" and event["actor"] in liquidating:
                kind = "deposit while liquidating"
            seen[kind] = seen.get(kind, 0) + 1
    for kind in ("withdrawal_refused", "loan_refused", "cancel_refused", "settings_changed", "transfer_out",
                 "order_rejected INVALID_PRICE", "order_rejected ACCOUNT_LIQUIDATING", "interest_accrued", "funding",
                 "deposit while liquidating", "liquidation_step", "borrow"):
        assert seen.get(kind, 0) > 0, kind


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


def _top_up_scenario(tmp_path: Path, top_up: str) -> Path:
    """A 20x BTC long on 5,100 USDC (about 100,000 notional): a 4.55% drop at 3 s leaves about 450
    of equity on 636 of maintenance margin (MMR about 141%), liquidated gradually; a noise trader
    on the same sub-account places a market buy every second, with ``top_up``."""
    path = tmp_path / "top-up.toml"
    path.write_text(f"""
[scenario]
name = "top-up"
duration = 8
[prices.BTC]
kind = "steps"
points = [[0, 100000], [3, 95450]]
[[accounts]]
id = "maker"
deposits = {{ USDC = 10000000 }}
[[accounts]]
id = "gambler"
deposits = {{ USDC = 5100 }}
leverage_limit = 20
[[market_makers]]
name = "mm"
account = "maker"
markets = ["BTC_USDC_PERP"]
size = 2
[[noise_traders]]
name = "margin-call"
account = "gambler"
markets = ["BTC_USDC_PERP"]
interval = 1
market_share = 1
reduce_only_share = 0
top_up = {top_up}
[[actions]]
at = 1
account = "gambler"
type = "order"
market = "BTC_USDC_PERP"
side = "buy"
quantity = 1
time_in_force = "IOC"
""", encoding="utf-8")
    return path


def test_a_noise_trader_tops_up_when_its_account_is_liquidated(tmp_path):
    """Each order refused with ACCOUNT_LIQUIDATING is answered with a deposit of ``top_up``, so
    deposits land while the liquidation runs; a negative top-up is refused at load, by name."""
    run = fuzz.replay(_top_up_scenario(tmp_path, "250"), 1)
    events = run.result.events
    refused = [e["t"] for e in events if e["event"] == "order_rejected" and e["code"] == "ACCOUNT_LIQUIDATING"]
    deposits = [e for e in events if e["event"] == "deposit" and e["actor"] == "account:gambler" and e["t"] > 0]
    assert refused and [e["t"] for e in deposits] == refused and {e["quantity"] for e in deposits} == {D(250)}
    with pytest.raises(loader.InputError) as error:
        loader.load(str(_top_up_scenario(tmp_path, "-1")))
    assert "top_up" in str(error.value) and "-1" in str(error.value)
