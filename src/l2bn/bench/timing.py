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
contenders get :func:`balanced_orders`, whose period of ``k - 1`` rounds gives each contender
each other one just before it equally often (the call just before, not the whole history).

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
    two contenders, six for three. The search grows as ``(count!) ** (rounds - 1)``.
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


MAX_CONTENDERS = 12


@functools.cache
def balanced_orders(count: int) -> tuple[tuple[int, ...], ...]:
    """A period of ``count - 1`` rounds (one for a single contender), each a permutation of
    ``0 .. count - 1``, whose calls, read in order and cyclically from the last round back
    to the first, hold every ordered pair ``(a, b)`` of distinct contenders exactly once as
    neighbours and never a contender after itself: each contender has each other one just
    before it equally often, across the boundaries of the rounds as within them. It does
    not balance what ran earlier since a contender's previous call (:func:`fair_period`
    does, for up to three). Found by a depth-first search, instant up to
    ``MAX_CONTENDERS``.

    Raises:
        ValueError: ``count`` below 1 or above ``MAX_CONTENDERS``.
    """
    if not 1 <= count <= MAX_CONTENDERS:
        raise ValueError(f"expected 1 to {MAX_CONTENDERS} contenders, got {count}")
    if count == 1:
        return ((0,),)
    total = count * (count - 1)
    calls = list(range(count))  # the first round, fixed: any other is a renaming
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


def period(count: int) -> tuple[tuple[int, ...], ...]:
    """The rounds that :func:`round_orders` cycles: :func:`fair_period` where it exists
    (up to three contenders), else :func:`balanced_orders`."""
    return fair_period(count) or balanced_orders(count)


def schedule(count: int, rounds: int) -> str:
    """One line on how ``rounds`` timed rounds of ``count`` contenders are balanced (for
    the report): the period, and the rounds past the last whole one, which are not."""
    length = len(period(count))
    what = (
        "every contender the same history"
        if fair_period(count) is not None
        else "each contender after each other equally often"
    )
    whole, rest = divmod(rounds, length)
    span = f"{length} round{'s' * (length != 1)}"
    if rest == 0:
        return f"{what} (period {span}; {rounds} rounds = {whole} periods)"
    return (
        f"{what} over whole periods of {span}; {rounds} rounds = {whole} periods "
        f"and {rest} more, not balanced (use a multiple of {length})"
    )


def round_orders(names: Sequence[str], rounds: int, warmup: int = 0) -> list[tuple[str, ...]]:
    """The orders of ``warmup`` untimed rounds, then ``rounds`` timed ones: :func:`period`
    cycled, the warm-up rounds being those that precede the first timed round in the cycle
    (so the first timed calls have the histories the cycle gives them). Over whole periods
    (1 round for two contenders, 6 for three: ``--rounds 30`` is 30 or 5 periods; ``k - 1``
    for ``k`` > 3) the balance of :func:`fair_period` or :func:`balanced_orders` holds.
    """
    if not names:
        raise ValueError("expected at least 1 contender")
    cycle = period(len(names))
    return [tuple(names[i] for i in cycle[r % len(cycle)]) for r in range(-warmup, rounds)]


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
