"""The determinism canary: if a trio upgrade breaks seeded scheduling, these fail loudly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import trio
import trio.testing

from actors.determinism import check_scheduler_hooks, deterministic_scheduling

ROOT = Path(__file__).resolve().parent.parent


def racy_trace(seed: int) -> list[int]:
    """Twenty tasks sleeping 1-3 ms five times each: many equal deadlines, so the order in
    which they wake is entirely the scheduler's choice."""

    async def main() -> list[int]:
        trace: list[int] = []

        async def worker(i: int) -> None:
            for k in range(5):
                await trio.sleep(0.001 * (1 + (i + k) % 3))
                trace.append(i)

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(worker, i)
        return trace

    with deterministic_scheduling(seed):
        return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_trio_still_has_the_scheduler_hooks():
    check_scheduler_hooks()


def test_same_seed_same_interleaving_different_seeds_different():
    assert racy_trace(1) == racy_trace(1)
    assert len({tuple(racy_trace(seed)) for seed in range(8)}) > 1


SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from tests.test_actors import random_flow
print(random_flow(7, until=20, check_every=None).fingerprint)
"""


def test_fingerprint_is_the_same_in_another_process_with_another_hash_seed():
    """Set iteration order changes with PYTHONHASHSEED; a run must not depend on it."""
    prints = set()
    for hash_seed in ("1", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        out = subprocess.run([sys.executable, "-c", SCRIPT.format(root=str(ROOT))], env=env, capture_output=True,
                             text=True, check=True, cwd=ROOT)
        prints.add(out.stdout.strip())
    assert len(prints) == 1
