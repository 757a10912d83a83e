"""Every shipped scenario runs with its own seed and meets all of its expectations."""

from __future__ import annotations

from pathlib import Path

import pytest

from scenarios.loader import load, shipped
from scenarios.runner import ScenarioRun, run

SHIPPED = shipped()


def _report(name: str, result: ScenarioRun) -> str:
    lines = [f"scenario {name} (seed {result.seed}) did not pass"]
    if result.failure is not None:
        lines.append(f"  run failed: {result.failure}")
    for outcome in result.outcomes:
        lines.append(f"  {'PASS' if outcome.passed else 'FAIL'} {outcome.description}: {outcome.detail}")
    if not result.outcomes and result.failure is None:
        lines.append("  (no expectations were judged)")
    return "\n".join(lines)


def test_the_library_is_not_empty() -> None:
    assert len(SHIPPED) >= 12, sorted(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_scenario_passes(name: str) -> None:
    result = run(load(str(SHIPPED[name])))
    assert result.passed, _report(name, result)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_scenario_is_documented(name: str) -> None:
    path: Path = SHIPPED[name]
    scenario = load(str(path))
    assert scenario.name == name, f"{path.name}: [scenario] name is {scenario.name!r}, the file is named {name!r}"
    assert scenario.description.strip(), f"{path.name}: no description (shown by `marginsim list`)"
    assert "\n" not in scenario.description, f"{path.name}: the description must be one line"
    count = len(scenario.expectations)
    assert count >= 2, f"{path.name}: {count} expectation(s), at least 2 wanted"
