"""bench/mutation.py stays runnable: every mutant still matches the code it mutates, the set
covers the areas the score is about, and a mutant edits only a copy."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("mutation", ROOT / "bench" / "mutation.py")
assert _spec is not None and _spec.loader is not None
mutation = importlib.util.module_from_spec(_spec)
sys.modules["mutation"] = mutation
_spec.loader.exec_module(mutation)


def test_at_least_forty_named_mutants_across_the_rules():
    names = [m.name for m in mutation.MUTANTS]
    assert len(names) >= 40 and len(set(names)) == len(names)
    areas = {m.area for m in mutation.MUTANTS}
    assert areas >= {"margin", "pretrade", "book", "lending", "funding", "settlement", "liquidation"}
    assert all(m.path.startswith("exchange/") and m.old != m.new for m in mutation.MUTANTS)
    assert set(mutation.AREA_TESTS) == areas
    assert all((ROOT / t).is_file() for files in mutation.AREA_TESTS.values() for t in files)
    assert all((ROOT / t).is_file() for t in mutation.EVERY_AREA)


@pytest.mark.parametrize("mutant", mutation.MUTANTS, ids=lambda m: m.name)
def test_each_mutant_applies_to_a_copy_only(mutant, tmp_path):
    """Its snippet occurs exactly once in today's file; applied to a copy it changes that copy
    and leaves the checkout as it was."""
    original = (ROOT / mutant.path).read_text(encoding="utf-8")
    assert original.count(mutant.old) == 1
    copy = tmp_path / mutant.path
    copy.parent.mkdir(parents=True)
    copy.write_text(original, encoding="utf-8")
    mutation.apply(mutant, tmp_path)
    mutated = copy.read_text(encoding="utf-8")
    assert mutated != original and mutant.new in mutated
    assert (ROOT / mutant.path).read_text(encoding="utf-8") == original


def test_the_command_lists_and_refuses_unknown_mutants(capsys):
    assert mutation.main(["--list"]) == 0
    assert "funding-sign-flipped" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        mutation.main(["--only", "no-such-mutant"])
    assert exit_info.value.code == 2
    assert "no mutant no-such-mutant" in capsys.readouterr().err
