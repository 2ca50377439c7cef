"""``python -m l2bn.cli``: the ``l2bn`` command inside the package (see :mod:`l2bn_cli`).

The console entry point is the top-level module ``l2bn_cli``, whose import runs nothing of
``l2bn``: importing this module runs ``l2bn/__init__.py`` first, which imports torch.
"""

from __future__ import annotations

import sys

from l2bn_cli import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
