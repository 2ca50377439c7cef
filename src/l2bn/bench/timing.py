"""Interleaved timing: every round runs each contender once, in orders that give every
contender the same history.

A call is slowed by what ran before it: a contender that evicts the caches or frees large
buffers slows the call that comes next, and whether it ran since a contender's own previous
call decides how warm that contender's code and state are (L2BN's channels-last 128x64x8x8
training call, 2 threads, ``benchmarks/bench_history.py``: 0.36 ms when only BatchNorm ran
since its previous call, 0.44 ms when the naive composite also did, 0.61 ms right after the
composite; BatchNorm's alike). Rotations of one order make each contender always follow the
same one. Cycling through all permutations balances the pairs inside the rounds but not
across their boundaries, nor the histories. :func:`fair_period` gives, for up to three
contenders, a period of rounds in which each contender's calls have the same histories (what
ran since its previous call, in order) as every other's, up to renaming the contenders; more
contenders get rounds in a seeded random order, fair on average.

Two clocks: ``wall`` (``time.perf_counter``, what a user waits for) and ``cpu``
(``time.process_time``, the CPU time of this process: with one thread it leaves out the
time the process waited for a core, which makes it robust on a shared machine; with
several threads it also counts threads spinning at barriers, so use it with 1 thread).
"""

from __future__ import annotations

import functools
import itertools
import random
import statistics
import time
from collections import Counter
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


FAIR_SEARCH_CONTENDERS = 3
FAIR_SEARCH_ROUNDS = 6


def _histories(calls: Sequence[int]) -> Counter:
    """Each call of the cyclic sequence ``calls`` with what ran since the same contender's
    previous call, counted: ``{(contender, (earlier, ..., latest)): times}``."""
    out: Counter = Counter()
    length = len(calls)
    for i, who in enumerate(calls):
        since = []
        j = i - 1
        while calls[j % length] != who:
            since.append(calls[j % length])
            j -= 1
        out[(who, tuple(reversed(since)))] += 1
    return out


def _fair(calls: Sequence[int], count: int) -> bool:
    """Whether renaming the contenders in any way leaves the histories of ``calls`` as
    they are (so every contender has every other's histories)."""
    histories = _histories(calls)
    for names in itertools.permutations(range(count)):
        renamed = Counter(
            {(names[w], tuple(names[e] for e in h)): n for (w, h), n in histories.items()}
        )
        if renamed != histories:
            return False
    return True


@functools.cache
def fair_period(count: int) -> tuple[tuple[int, ...], ...] | None:
    """The shortest period of rounds (each a permutation of ``0 .. count - 1``) whose calls,
    read as one cyclic sequence, give every contender the same histories as every other
    one, up to renaming: for each contender the same counts of what ran since its previous
    call, in order. So each contender follows each other equally often and has the same
    calls between two of its own. None for more than ``FAIR_SEARCH_CONTENDERS``.

    Found by exhaustive search over periods of up to ``FAIR_SEARCH_ROUNDS`` rounds that
    start with the identity (any other first round is a renaming): one round for one or
    two contenders, six for three. The search grows as ``(count!) ** rounds``.
    """
    if count < 1:
        raise ValueError(f"expected at least 1 contender, got {count}")
    if count > FAIR_SEARCH_CONTENDERS:
        return None
    orders = list(itertools.permutations(range(count)))
    for rounds in range(1, FAIR_SEARCH_ROUNDS + 1):
        for rest in itertools.product(orders, repeat=rounds - 1):
            period = (orders[0], *rest)
            if _fair([i for order in period for i in order], count):
                return period
    raise RuntimeError(f"no fair period of {count} contenders")  # pragma: no cover


def round_orders(
    names: Sequence[str], rounds: int, warmup: int = 0, seed: int = 0
) -> list[tuple[str, ...]]:
    """The orders of ``warmup`` untimed rounds, then ``rounds`` timed ones.

    Up to three contenders: :func:`fair_period` cycled, the warm-up rounds being those that
    precede the first timed round in the cycle; over whole periods (1 round for two
    contenders, 6 for three: ``--rounds 30`` is 30 or 5 periods) every contender has the
    same histories. More contenders: each round a random order from ``seed``, fair on
    average and the same from run to run.
    """
    if not names:
        raise ValueError("expected at least 1 contender")
    period = fair_period(len(names))
    if period is None:
        rng = random.Random(seed)
        return [tuple(rng.sample(list(names), len(names))) for _ in range(warmup + rounds)]
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
