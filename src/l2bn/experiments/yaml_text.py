"""YAML as the harness reads it: PyYAML's safe loader, with numbers in exponent notation.

PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent: ``1e-6``,
``5E-4`` and ``1.0e5`` load as strings. Typed config fields convert them back, but
``norm_kwargs`` and ``dataset_kwargs`` go to the layers and datasets as loaded, where
``eps: 1e-3`` then arrived as the string ``'1e-3'`` (a ``TypeError`` deep inside the layer,
or a value that silently compares as text). :func:`load` reads every such number as a
float, as YAML 1.2 and Python do; :func:`dump` quotes the strings that :func:`load` would
read as such numbers (``'1e5'``), which PyYAML's YAML 1.1 dumper writes plain.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

# Numbers with an exponent that YAML 1.1 misses: an unsigned exponent, or no dot in the
# mantissa (1e-6, 1E6, 2.5e3, .5e-2, -3e+2). Underscores are not allowed, as in Python.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """SafeLoader plus :data:`_EXPONENT_FLOAT` (added to this class only)."""


class _Dumper(yaml.SafeDumper):
    """SafeDumper that knows :data:`_EXPONENT_FLOAT`, so that it quotes a string matching it
    (added to this class only)."""


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+.0123456789"))


def load(text: str) -> Any:
    """``text`` parsed as YAML (safe types only), numbers in exponent notation as floats.
    Raises ``yaml.YAMLError`` on invalid YAML."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: safe types only


def dump(data: Any, **options: Any) -> str:
    """``yaml.safe_dump(data, **options)``, with strings that :func:`load` would read as
    numbers in exponent notation quoted: ``load(dump(data)) == data``."""
    return yaml.dump(data, Dumper=_Dumper, **options)
