"""Interleaved timing: every round runs each contender once, in orders that make every
contender follow every other equally often.

A call is slowed by what ran just before it: a contender that evicts the caches or frees
large buffers slows whichever call comes next. Rotations of one order make each contender
always follow the same one; cycling through all permutations balances the pairs inside
the rounds but not across their boundaries (with three contenders, the last call of one
round and the first of the next made one contender follow another three times in six
rounds and the third contender follow it twice). :func:`balanced_orders` gives rounds
whose calls, read as one sequence from round to round, hold every ordered pair of
distinct contenders exactly once per ``k - 1`` rounds (``k`` contenders), and never a
contender after itself; the warm-up ends as the last round does, so the first timed call
has its due predecessor too.

Two clocks: ``wall`` (``time.perf_counter``, what a user waits for) and ``cpu``
(``time.process_time``, the CPU time of this process: with one thread it leaves out the
time the process waited for a core, which makes it robust on a shared machine; with
several threads it also counts threads spinning at barriers, so use it with 1 thread).
"""

from __future__ import annotations

import functools
import itertools
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
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


MAX_CONTENDERS = 12


@functools.cache
def balanced_orders(count: int) -> tuple[tuple[int, ...], ...]:
    """One period of round orders for ``count`` contenders (indices ``0 .. count - 1``).

    ``count - 1`` rounds (one for a single contender), each a permutation, such that the
    calls of the rounds read in order, and cyclically from the last round back to the
    first, hold every ordered pair ``(a, b)`` of distinct contenders exactly once as
    neighbours and never a contender after itself. Each contender therefore follows each
    other one equally often over every whole period, across the boundaries of the rounds
    as within them. Found by a depth-first search (instant up to ``MAX_CONTENDERS``).

    Raises:
        ValueError: ``count`` below 1 or above ``MAX_CONTENDERS``.
    """
    if not 1 <= count <= MAX_CONTENDERS:
        raise ValueError(f"expected 1 to {MAX_CONTENDERS} contenders, got {count}")
    if count == 1:
        return ((0,),)
    total = count * (count - 1)
    calls = list(range(count))  # the first round, fixed: any other is a relabelling
    pairs = set(itertools.pairwise(calls))

    def extend() -> bool:
        i = len(calls)
        if i == total:
            return (calls[-1], calls[0]) not in pairs
        taken = set(calls[i - i % count : i])
        prev = calls[-1]
        for nxt in range(count):
            if nxt in taken or (prev, nxt) in pairs:
                continue
            if i == total - 1 and (nxt, calls[0]) in pairs:
                continue
            calls.append(nxt)
            pairs.add((prev, nxt))
            if extend():
                return True
            calls.pop()
            pairs.discard((prev, nxt))
        return False

    if not extend():  # pragma: no cover - exists for every count up to MAX_CONTENDERS
        raise RuntimeError(f"no balanced order of {count} contenders")
    return tuple(tuple(calls[r : r + count]) for r in range(0, total, count))


def round_orders(names: Sequence[str], rounds: int, warmup: int = 0) -> list[tuple[str, ...]]:
    """The orders of ``warmup`` untimed rounds, then ``rounds`` timed ones, cycling through
    :func:`balanced_orders`. The warm-up rounds are the ones that precede the first timed
    round in the cycle, so the first timed call follows the contender the cycle puts
    before it. Over a whole number of periods (``len(names) - 1`` rounds) each contender
    follows each other equally often.
    """
    period = balanced_orders(len(names))
    return [tuple(names[i] for i in period[r % len(period)]) for r in range(-warmup, rounds)]


def time_interleaved(
    calls: Mapping[str, Callable[[], object]],
    rounds: int,
    warmup: int = 1,
    before: Callable[[], None] | None = None,
    clock: str = "wall",
) -> dict[str, Timing]:
    """Time each call ``rounds`` times in the orders of :func:`round_orders` (after
    ``warmup`` untimed rounds).

    ``before`` runs untimed before every call (e.g. to drop accumulated gradients).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; valid clocks: {', '.join(CLOCKS)}")
    now = CLOCKS[clock]
    orders = round_orders(list(calls), rounds, warmup)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for r, order in enumerate(orders):
        for name in order:
            if before is not None:
                before()
            start = now()
            calls[name]()
            if r >= warmup:
                samples[name].append(now() - start)
    return {name: Timing(tuple(s)) for name, s in samples.items()}
