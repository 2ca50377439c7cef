"""Interleaved timing: every round runs each contender once, in an order that cycles
through all permutations of the contenders.

All permutations, not rotations of one order: a call is slowed by what ran just before it
(a contender that frees large buffers makes the allocator return memory to the system,
and the next large allocation page-faults it back), and with rotations of one order each
contender always follows the same one. Cycling through the permutations makes every
contender follow every other equally often.

Two clocks: ``wall`` (``time.perf_counter``, what a user waits for) and ``cpu``
(``time.process_time``, the CPU time of this process: with one thread it leaves out the
time the process waited for a core, which makes it robust on a shared machine; with
several threads it also counts threads spinning at barriers, so use it with 1 thread).
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


@dataclass(frozen=True)
class Timing:
    """Seconds of one contender over the rounds."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)


def time_interleaved(
    calls: Mapping[str, Callable[[], object]],
    rounds: int,
    warmup: int = 1,
    before: Callable[[], None] | None = None,
    clock: str = "wall",
) -> dict[str, Timing]:
    """Time each call ``rounds`` times; round ``r`` runs them in permutation ``r mod k!``.

    ``before`` runs untimed before every call (e.g. to drop accumulated gradients).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; valid clocks: {', '.join(CLOCKS)}")
    now = CLOCKS[clock]
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            if before is not None:
                before()
            calls[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    orders = list(itertools.permutations(names))
    for r in range(rounds):
        for name in orders[r % len(orders)]:
            if before is not None:
                before()
            start = now()
            calls[name]()
            samples[name].append(now() - start)
    return {name: Timing(tuple(s)) for name, s in samples.items()}
