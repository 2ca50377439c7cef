"""The errors the harness reports to its user as one line, ``l2bn <command>: error: ...``.

``commands.run_guarded`` turns them into that line and an exit code, with no traceback
(``L2BN_DEBUG=1`` shows one):

* :class:`UsageError`, exit code 2 (as argparse): an input or the environment cannot work —
  a name, a ``--set`` key or value, a config file, the runs folder, the device. Raised
  before any run starts and before anything is written.
* :class:`RunExistsError`, exit code 1: a run directory holds another run, or an unfinished
  one that was not asked to resume.
"""

from __future__ import annotations


class UsageError(ValueError):
    """An input or environment error found before any work (exit code 2)."""


class RunExistsError(RuntimeError):
    """The run directory already holds a different or unfinished run."""
