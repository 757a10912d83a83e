"""Results as data: the event log as tables (CSV, Parquet) and as DataFrames."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from scenarios import export, loader, runner
from scenarios.cli import main


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def partial() -> runner.ScenarioRun:
    return runner.run(loader.load("partial-liquidation"))


def test_export_writes_one_csv_per_kind_with_the_exact_numbers(tmp_path, capsys):
    """partial-liquidation: the trader's liquidation is 1 start, 5 book steps, 1 healthy end.
    The first book step sells 0.1 BTC at 90,440 against mark 90,450: taker fee 0.05% of 9,044 =
    4.522, liquidation fee 0, 0.9 BTC left. events.csv has one row per log line."""
    log = tmp_path / "run.jsonl"
    assert main(["run", "partial-liquidation", "--log", str(log)]) == 0
    assert main(["export", str(log), "--to", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    for name in export.TABLES:
        assert f"{name}.csv" in out and (tmp_path / "out" / f"{name}.csv").is_file()
    steps = _rows(tmp_path / "out" / "liquidation_steps.csv")
    assert [s["stage"] for s in steps] == ["start", "book", "book", "book", "book", "book", "healthy"]
    first = steps[1]
    assert (first["quantity"], first["price"], first["mark"], first["taker_fee"], first["liquidation_fee"],
            first["position_after"], first["at"]) == ("0.1", "90440", "90450", "4.522", "0", "0.9", "6000")
    lines = log.read_text(encoding="utf-8").splitlines()
    assert len(_rows(tmp_path / "out" / "events.csv")) == len(lines)
    fills = _rows(tmp_path / "out" / "fills.csv")
    assert {f["actor"] for f in fills} == {"account:maker", "account:trader"}
    samples = _rows(tmp_path / "out" / "account_samples.csv")
    assert "positions.BTC_USDC_PERP" in samples[-1] and samples[0]["event"] == "health"


def test_dataframes_from_a_run_hold_the_same_numbers(partial, tmp_path):
    """The in-memory result gives the tables as DataFrames; the first book step's numbers are
    the CSV's as floats, times as integers; Parquet reads back the same frame."""
    import pandas as pd

    frames = export.frames(partial.result.events)
    assert set(frames) == set(export.TABLES)
    steps = frames["liquidation_steps"]
    book = steps[steps["stage"] == "book"].iloc[0]
    assert (book["at"], book["quantity"], book["price"], book["taker_fee"]) == (6000, 0.1, 90440.0, 4.522)
    assert str(steps["at"].dtype) == "int64" and steps["account"].iloc[0] == "trader"
    assert len(frames["events"]) == partial.result.event_count
    export.write_parquet(partial.result.events, tmp_path)
    back = pd.read_parquet(tmp_path / "liquidation_steps.parquet")
    pd.testing.assert_frame_equal(back, steps, check_dtype=False)


def test_export_to_a_file_is_refused(tmp_path, capsys):
    log = tmp_path / "run.jsonl"
    assert main(["run", "partial-liquidation", "--log", str(log)]) == 0
    capsys.readouterr()
    assert main(["export", str(log), "--to", str(log)]) == 2
    assert "--to" in capsys.readouterr().err
    assert log.is_file() and log.stat().st_size > 0
