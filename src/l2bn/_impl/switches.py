"""The user's backend switches (set through :mod:`l2bn.backends`, read by the dispatcher).

``enabled``: backend name -> on/off; ``preferred``: a backend tried first (tests,
benchmarks), or None; ``strict``: a preferred backend that does not apply is an error
rather than skipped.
"""

from __future__ import annotations

STATE: dict[str, object] = {
    "enabled": {},
    "preferred": None,
    "strict": False,
}


def preferred() -> str | None:
    """The backend tried first, or None."""
    return STATE["preferred"]  # type: ignore[return-value]
