"""The project's front door: README's two commands and CI agree, and the CLI answers."""

from __future__ import annotations

import re
from pathlib import Path

from scenarios.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```\n(.+?)\n```", text)[:2]


def test_readme_opens_with_two_commands():
    run, tests = _readme_commands()
    assert run.startswith("python3 -m venv .venv && ") and "marginsim" in run
    assert tests.endswith("pytest -q")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert _readme_commands()[1] in ci.splitlines()


def test_position_command_prints_real_margin_numbers(capsys):
    """The README example: 50 BTC at 100,000 on 500,000 USDC at 50x is in the sqrt region (D4)."""
    assert main(["position", "--size", "50", "--collateral", "500000", "--leverage", "50"]) == 0
    out = capsys.readouterr().out
    assert "IMR                    55.767%" in out  # 55.7675...%, truncated
    # D4: the root is 93,000.144; shown rounded toward the mark (up, for a long), never down past it.
    assert "est. liquidation price 93000.15 (bisection" in out


def test_position_command_refuses_bad_input(capsys):
    assert main(["position", "--market", "BTC_USDC"]) == 2
    assert "not a perp market" in capsys.readouterr().err
