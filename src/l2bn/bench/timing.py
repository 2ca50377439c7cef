"""Interleaved timing: every round runs each contender once, in a rotating order.

Two clocks: ``wall`` (``time.perf_counter``, what a user waits for) and ``cpu``
(``time.process_time``, the CPU time of this process: with one thread it leaves out the
time the process waited for a core, which makes it robust on a shared machine; with
several threads it also counts threads spinning at barriers, so use it with 1 thread).
"""

from __future__ import annotations

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
    """Time each call ``rounds`` times; round ``r`` starts with contender ``r mod k``.

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
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            if before is not None:
                before()
            start = now()
            calls[name]()
            samples[name].append(now() - start)
    return {name: Timing(tuple(s)) for name, s in samples.items()}
