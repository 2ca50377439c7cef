"""Folder checks shared by the commands: the one write probe.

Private and standard library only, so that both the experiments (``l2bn compare``,
``l2bn report``) and the analysis (``l2bn geometry``) may import it, below both in the
layers of ``pyproject.toml`` ([tool.importlinter]).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PROBE_PREFIX = ".l2bn-write-probe-"


def make_writable_dir(path: str | Path) -> None:
    """Create the folder ``path`` (with its missing parents) and write and remove a probe
    file in it: OSError when either is refused (``FileExistsError`` when ``path`` is a
    file). Checked by doing it, as a permission check cannot tell: root passes
    ``os.access`` for ``/proc`` and ``/sys``, and a read-only mount passes it too. The
    folders created stay; the caller removes them if it only wanted to know."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    handle, probe = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=path)
    os.close(handle)
    os.unlink(probe)
