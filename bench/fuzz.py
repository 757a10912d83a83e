"""Fuzzing throughput: seeds per second per core, events and messages per seed; optionally
against another commit of the project, in the same run, interleaved.

    python bench/fuzz.py                          # seeds 0..199, three rounds, this tree
    python bench/fuzz.py --against HEAD~3         # the same seeds on that commit too
    python bench/fuzz.py --seeds 0..99 --rounds 5 --jobs 2

Each round runs the seeds in a fresh process per side (A: this tree, B: ``--against``), the
sides alternating so both see the same noise from a shared machine. A round's figure is the
seeds divided by the process's CPU time spent in the campaign (start-up excluded, and reported
on its own); the table gives min / median / max over rounds, and the ratio of the medians.
``--jobs N`` also times the campaign on N processes (wall clock, start-up included) against one.

The other commit is checked out with ``git worktree`` into a temporary folder and removed after.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs in the child, in the tree under test: only names every version of the project has
# (fuzz.campaign, System.run, Network.sent), so an older commit can be measured the same way.
CHILD = r"""
import json, sys, time
start = time.process_time()
wall0 = time.perf_counter()
from actors import system as _system
from scenarios import fuzz
imported = time.process_time() - start
messages = []
_run = _system.System.run
def run(self, *args, **kwargs):
    try:
        return _run(self, *args, **kwargs)
    finally:
        messages.append(self.network.sent)
_system.System.run = run
first, last, jobs = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
cpu0, wall1 = time.process_time(), time.perf_counter()
campaign = fuzz.campaign(range(first, last + 1), jobs=jobs)
cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall1
print(json.dumps({
    "seeds": len(campaign.outcomes), "failed": len(campaign.failures), "cpu": cpu, "wall": wall,
    "wall_total": time.perf_counter() - wall0, "import_cpu": imported,
    "events": sum(o.events for o in campaign.outcomes), "messages": sum(messages),
}))
"""


def seed_range(text: str) -> tuple[int, int]:
    first, sep, last = text.partition("..")
    try:
        a, b = int(first), int(last)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FIRST..LAST (e.g. 0..199), got {text!r}") from None
    if not sep or b < a or a < 0:
        raise argparse.ArgumentTypeError(f"expected FIRST..LAST with 0 <= FIRST <= LAST, got {text!r}")
    return a, b


def measure(tree: Path, seeds: tuple[int, int], jobs: int) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", CHILD, str(seeds[0]), str(seeds[1]), str(jobs)], cwd=tree,
                          env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the benchmark run in {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> str:
    return f"{min(values):6.2f} / {statistics.median(values):6.2f} / {max(values):6.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=seed_range, default=(0, 199), metavar="FIRST..LAST",
                        help="the seeds each round runs (default 0..199)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side (default 3)")
    parser.add_argument("--against", metavar="REV", help="also measure this commit (any git revision)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="also time the campaign on this many processes against one (default 1: skip)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.jobs < 1:
        parser.error("--rounds and --jobs must be at least 1")
    sides = {"A (this tree)": ROOT}
    scratch = None
    if args.against:
        scratch = Path(tempfile.mkdtemp(prefix="marginsim-bench-"))
        tree = scratch / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(tree), args.against],
                       check=True, capture_output=True)
        sides[f"B ({args.against})"] = tree
    try:
        results: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
        for round_ in range(args.rounds):
            for name, tree in sides.items():
                results[name].append(measure(tree, args.seeds, 1))
                last = results[name][-1]
                print(f"round {round_ + 1}: {name}: {last['seeds'] / last['cpu']:.2f} seeds/s", file=sys.stderr)
        n = args.seeds[1] - args.seeds[0] + 1
        print(f"seeds {args.seeds[0]}..{args.seeds[1]}, {args.rounds} rounds, one job; min / median / max")
        medians = {}
        for name, rounds in results.items():
            rates = [r["seeds"] / r["cpu"] for r in rounds]
            medians[name] = statistics.median(rates)
            first = rounds[0]
            print(f"{name}")
            print(f"  seeds/s per core (CPU) {spread(rates)}")
            print(f"  CPU ms per seed        {spread([1000 * r['cpu'] / r['seeds'] for r in rounds])}")
            print(f"  start-up CPU ms        {spread([1000 * r['import_cpu'] for r in rounds])}")
            print(f"  events per seed        {first['events'] / n:8.1f}")
            print(f"  messages per seed      {first['messages'] / n:8.1f}")
            print(f"  failed seeds           {first['failed']:6d}")
        if len(medians) == 2:
            a, b = medians.values()
            print(f"A / B seeds/s (medians): {a / b:.2f}x")
        if args.jobs > 1:
            one = [measure(ROOT, args.seeds, 1) for _ in range(args.rounds)]
            many = [measure(ROOT, args.seeds, args.jobs) for _ in range(args.rounds)]
            ratio = statistics.median(r["seeds"] / r["wall_total"] for r in many) / statistics.median(
                r["seeds"] / r["wall_total"] for r in one)
            print(f"--jobs {args.jobs} against one job (wall clock, start-up included): {ratio:.2f}x")
        return 0
    finally:
        if scratch is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(scratch / "tree")],
                           capture_output=True)
            subprocess.run(["rm", "-rf", str(scratch)])


if __name__ == "__main__":
    sys.exit(main())
