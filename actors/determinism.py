"""Trio's scheduler made deterministic: the one place that touches trio's private names.

Trio runs the tasks that are ready in one batch per scheduler pass, in an order drawn from a
module-level ``random.Random`` (``trio._core._run._r``), and the batch's own order depends on
``id()`` (deadline ties, sets of tasks). With ``_ALLOW_DETERMINISTIC_SCHEDULING`` on, trio
first sorts each batch by task creation order and then shuffles it with ``_r``; seeding ``_r``
makes every interleaving a function of the seed. Both names are private: trio is pinned
exactly in pyproject.toml and ``tests/test_determinism.py`` is the canary that fails loudly if
an upgrade breaks this.

The other rules a run keeps (enforced by how the runtime is written, checked by the tests):
time comes only from trio's clock, randomness only from seeded ``random.Random`` streams, no
decision iterates a set or orders by ``id()``, tasks are spawned in a fixed order.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import trio._core._run as _trio_run


def check_scheduler_hooks() -> None:
    """Fail with a clear message if this trio no longer has the names we rely on."""
    if not hasattr(_trio_run, "_ALLOW_DETERMINISTIC_SCHEDULING") or not isinstance(
        getattr(_trio_run, "_r", None), random.Random
    ):
        raise RuntimeError(
            "this trio version no longer exposes trio._core._run._ALLOW_DETERMINISTIC_SCHEDULING "
            "and trio._core._run._r; marginsim pins trio==0.35.0 for deterministic runs"
        )


@contextlib.contextmanager
def deterministic_scheduling(seed: int) -> Iterator[None]:
    """Within this block, trio's ready-task order is a function of ``seed`` alone."""
    check_scheduler_hooks()
    saved = (_trio_run._ALLOW_DETERMINISTIC_SCHEDULING, _trio_run._r.getstate())
    _trio_run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    _trio_run._r.seed(seed)
    try:
        yield
    finally:
        flag, state = saved
        _trio_run._ALLOW_DETERMINISTIC_SCHEDULING = flag  # type: ignore[misc]
        _trio_run._r.setstate(state)


def stream(seed: int, name: str) -> random.Random:
    """An independent random stream for one actor or link, stable across processes.

    A string seed is hashed with SHA-512 by ``random.Random``, so the stream does not depend on
    ``PYTHONHASHSEED`` and adding a stream never shifts another one.
    """
    return random.Random(f"{seed}:{name}")
