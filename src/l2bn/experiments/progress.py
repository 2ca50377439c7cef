"""Progress bars (tqdm, on stderr) that stay silent when stderr is not a terminal."""

from __future__ import annotations

import sys
from typing import Any


def progress(iterable: Any, *, total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar on stderr when enabled and stderr is a terminal; else the iterable itself."""
    if not enabled or not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)
