"""Sweeps: a scenario over seeds and a grid of settings, on the fuzzer's executor interface."""

from __future__ import annotations

from decimal import Decimal

import pytest

from exchange.validation import InputError
from scenarios import sweep
from scenarios.cli import main

LEVERAGE = "accounts[1].leverage_limit=5,10"


def test_seeds_and_grid_are_read_as_written():
    assert sweep.parse_seeds("0..3") == [0, 1, 2, 3] and sweep.parse_seeds("7,2") == [7, 2]
    for bad in ("3..1", "a..b", "1;2"):
        with pytest.raises(InputError):
            sweep.parse_seeds(bad)
    assert sweep.grid(["a=1,2", "b=x,y"]) == [("a=1", "b=x"), ("a=1", "b=y"), ("a=2", "b=x"), ("a=2", "b=y")]
    assert sweep.grid([]) == [()]


def test_a_sweep_compares_leverage_limits_and_a_pool_gives_the_same_cells():
    """partial-liquidation's trader buys 1 BTC at 100,000 on 10,000 USDC. At leverage limit 10
    (the file's default: IMF 0.1, initial margin 10,000, exactly its equity) it is liquidated
    once on every seed, with no bankruptcy, ADL or fund balance (the liquidation fee is 0); at
    limit 5 (IMF 0.2: 20,000 needed) the order is refused, nothing is liquidated and the file's
    expectations fail on every seed. Two worker processes give exactly the same cells."""
    combinations = sweep.grid([LEVERAGE])
    alone = sweep.sweep("partial-liquidation", [0, 1], combinations)
    pooled = sweep.sweep("partial-liquidation", [0, 1], combinations, jobs=2)
    assert alone.cells == pooled.cells
    five, ten = (alone.by_combination()[c] for c in combinations)
    assert [(c.liquidations, c.passed) for c in five] == [(0, False), (0, False)]
    assert [(c.liquidations, c.bankruptcies, c.adl, c.fund, c.passed) for c in ten] == [
        (1, 0, 0, Decimal(0), True)] * 2
    rows = sweep.rows(alone)
    assert rows[1]["settings"] == "accounts[1].leverage_limit=10" and rows[1]["liquidations mean"] == "1"
    assert rows[0]["failed"] == "2"


def test_sweep_command_prints_and_draws(tmp_path, capsys):
    assert main(["sweep", "partial-liquidation", "--seeds", "0..1", "--set", LEVERAGE, "--report",
                 str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "2 seeds x 2 combination(s)" in out
    lines = (tmp_path / "out" / "sweep.csv").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and lines[0].startswith("settings,runs,failed,liquidations mean")
    assert (tmp_path / "out" / "sweep.png").stat().st_size > 0
    assert len((tmp_path / "out" / "runs.csv").read_text(encoding="utf-8").splitlines()) == 5


def test_a_bad_value_is_refused_before_anything_runs(capsys):
    assert main(["sweep", "partial-liquidation", "--seeds", "0..1", "--set", "accounts[1].leverage_limit=5,x"]) == 2
    assert "leverage_limit" in capsys.readouterr().err
