"""Which calls go through ``torch.ops`` (an OpOverload's Python ``__call__`` and the boxed
call, about 2 us over torch's own binding): what the benchmarks' contenders must share."""

from __future__ import annotations

import torch._ops


def record_torch_ops_calls(monkeypatch) -> list[str]:
    """Patch ``OpOverload`` and ``OpOverloadPacket`` calls (for this test) to append the
    operator's name to the returned list, then call through."""
    seen: list[str] = []
    for cls in (torch._ops.OpOverload, torch._ops.OpOverloadPacket):

        def counted(self, *args, _call=cls.__call__, **kwargs):
            seen.append(str(self))
            return _call(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__call__", counted)
    return seen
