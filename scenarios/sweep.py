"""Parameter sweeps: one scenario over many seeds and a grid of settings, outcomes compared.

``sweep`` runs every combination of the ``--set key=v1,v2`` values (their cartesian product)
for every seed, on the fuzzer's executor interface (``scenarios.fuzz``: in this process, a
process pool of ``jobs``, or any ``concurrent.futures.Executor`` such as a dask cluster's), and
sums each combination's runs: liquidations started, bankruptcies, ADL steps, the liquidity
fund's balance, and their spread across seeds (mean, min, max).
"""

from __future__ import annotations

import csv
import itertools
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from decimal import Decimal
from pathlib import Path

import attrs

from exchange.decimals import ZERO, fmt
from exchange.validation import InputError
from scenarios import fuzz, loader, runner

METRICS = ("liquidations", "bankruptcies", "adl", "fund")


@attrs.frozen
class Cell:
    """One run of the sweep: a combination's overrides at one seed, and what came of it."""

    combination: tuple[str, ...]
    seed: int
    liquidations: int
    bankruptcies: int
    adl: int
    fund: Decimal
    passed: bool
    failure: str | None


@attrs.frozen
class Job:
    """What a worker needs to run one cell (picklable, for any executor)."""

    scenario: str
    combination: tuple[str, ...]


def parse_seeds(text: str) -> list[int]:
    """``0..99`` (both ends included), ``3,5,8``, or one seed."""
    where = f"--seeds {text}"
    try:
        if ".." in text:
            low, high = (int(part) for part in text.split("..", 1))
            if high < low:
                raise InputError(where, "--seeds", text, "a range low..high with low <= high, e.g. 0..99")
            return list(range(low, high + 1))
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise InputError(where, "--seeds", text, "whole numbers: a range 0..99 or a list 1,2,5") from None


def grid(assignments: Sequence[str]) -> list[tuple[str, ...]]:
    """Every combination of ``key=v1,v2`` assignments, as ``--set`` overrides, in the order given."""
    axes = []
    for assignment in assignments:
        if "=" not in assignment:
            raise InputError(f"--set {assignment}", "KEY=VALUES", assignment, "key=v1,v2,... e.g. "
                             "accounts[0].leverage_limit=5,10,20")
        key, values = assignment.split("=", 1)
        axes.append([f"{key.strip()}={value.strip()}" for value in values.split(",") if value.strip()])
    return [tuple(c) for c in itertools.product(*axes)] if axes else [()]


def run_cell(seed: int, job: Job) -> Cell:
    """One scenario run, summed; module-level so any executor can ship it."""
    scenario = loader.load(job.scenario, list(job.combination))
    outcome = runner.run(scenario, seed=seed, keep_events=False, fingerprint=False, check_every=None)
    settle = scenario.profile.settlement_asset
    result = outcome.result
    history = result.history if result is not None else {}
    stages = [step.stage for steps in history.values() for step in steps]
    fund = result.summary["fund"].get(settle, ZERO) if result is not None else ZERO
    failure = outcome.failure.kind if outcome.failure is not None else None
    return Cell(job.combination, seed, stages.count("start"), stages.count("bankruptcy"), stages.count("adl"), fund,
                outcome.passed, failure)


def _run_work(work: tuple[int, Job], _settings: None) -> Cell:
    """``run_cell`` in the shape the fuzzer's submission calls (an item and its settings)."""
    return run_cell(*work)


@attrs.frozen
class Sweep:
    scenario: str
    seeds: tuple[int, ...]
    cells: tuple[Cell, ...]
    elapsed_s: float

    def by_combination(self) -> dict[tuple[str, ...], list[Cell]]:
        out: dict[tuple[str, ...], list[Cell]] = {}
        for cell in self.cells:
            out.setdefault(cell.combination, []).append(cell)
        return out


def sweep(scenario: str, seeds: Sequence[int], combinations: Sequence[tuple[str, ...]], *, jobs: int = 1,
          executor: Executor | None = None, progress: Callable[[Cell], None] | None = None) -> Sweep:
    """Every combination at every seed; each combination is loaded once first, so a bad value is
    refused (exit 2) before anything runs."""
    for combination in combinations:
        loader.load(scenario, list(combination))
    start = time.perf_counter()
    cells: list[Cell] = []
    work = [(seed, Job(scenario, combination)) for combination in combinations for seed in seeds]

    def record(cell: Cell) -> None:
        cells.append(cell)
        if progress is not None:
            progress(cell)

    if executor is None and jobs <= 1:
        for seed, job in work:
            record(run_cell(seed, job))
    else:
        own = executor is None
        pool = executor if executor is not None else ProcessPoolExecutor(max_workers=jobs)
        try:
            # The fuzzer's bounded submission: one run in flight per worker the executor has.
            for future in fuzz._bounded(pool, _run_work, iter(work), None, fuzz._Workers(pool, jobs), None):
                record(future.result())
        finally:
            if own:
                pool.shutdown(cancel_futures=True)
    order = {c: i for i, c in enumerate(combinations)}
    cells.sort(key=lambda c: (order[c.combination], c.seed))
    return Sweep(scenario, tuple(seeds), tuple(cells), time.perf_counter() - start)


def spread(values: Sequence[Decimal | int]) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    """Mean, population standard deviation, min and max of a metric across seeds."""
    numbers = [Decimal(v) for v in values]
    mean = sum(numbers, ZERO) / len(numbers)
    deviation = Decimal(statistics.pstdev(numbers)) if len(numbers) > 1 else ZERO
    return mean, deviation, min(numbers), max(numbers)


def rows(result: Sweep) -> list[dict[str, str]]:
    """One row per combination: its settings, runs, failures, and each metric's spread."""
    out = []
    for combination, cells in result.by_combination().items():
        row = {"settings": " ".join(combination) or "(as written)", "runs": str(len(cells)),
               "failed": str(sum(1 for c in cells if not c.passed))}
        for metric in METRICS:
            mean, deviation, low, high = spread([getattr(c, metric) for c in cells])
            row[f"{metric} mean"] = fmt(mean, 2)
            row[f"{metric} sd"] = fmt(deviation, 2)
            row[f"{metric} min"] = fmt(low, 2)
            row[f"{metric} max"] = fmt(high, 2)
        out.append(row)
    return out


def write_report(result: Sweep, directory: Path) -> list[Path]:
    """``sweep.csv`` (one row per combination), ``runs.csv`` (one per run) and, with matplotlib,
    ``sweep.png``: each metric's value per seed, one box per combination."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    table = rows(result)
    with (directory / "sweep.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
    written.append(directory / "sweep.csv")
    with (directory / "runs.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["settings", "seed", *METRICS, "passed", "failure"])
        for c in result.cells:
            writer.writerow([" ".join(c.combination), c.seed, c.liquidations, c.bankruptcies, c.adl, fmt(c.fund),
                             c.passed, c.failure or ""])
    written.append(directory / "runs.csv")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return written
    groups = result.by_combination()
    labels = [" ".join(c) or "(as written)" for c in groups]
    figure, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 4.2), squeeze=False)
    for axis, metric in zip(axes[0], METRICS):
        axis.boxplot([[float(getattr(c, metric)) for c in cells] for cells in groups.values()])
        axis.set_xticks(range(1, len(labels) + 1), labels, rotation=30, ha="right", fontsize=7)
        axis.set_title(f"{metric} across {len(result.seeds)} seeds", fontsize=9)
    figure.suptitle(f"sweep of {result.scenario}")
    figure.tight_layout()
    figure.savefig(directory / "sweep.png", dpi=110)
    plt.close(figure)
    written.append(directory / "sweep.png")
    return written
