"""Reader of the IDX format used by MNIST and Fashion-MNIST (LeCun et al. 1998).

Layout: two zero bytes, a type code, the number of dimensions ``d``, ``d`` big-endian
uint32 sizes, then the values in row-major, big-endian order. Files may be gzipped
(``.gz``, detected by content) or raw.
"""

from __future__ import annotations

import gzip
import struct
import sys
import zlib
from pathlib import Path

import torch
from torch import Tensor

# type code -> (torch dtype, bytes per value)
IDX_TYPES: dict[int, tuple[torch.dtype, int]] = {
    0x08: (torch.uint8, 1),
    0x09: (torch.int8, 1),
    0x0B: (torch.int16, 2),
    0x0C: (torch.int32, 4),
    0x0D: (torch.float32, 4),
    0x0E: (torch.float64, 8),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: corrupted or truncated gzip data ({err})") from err


def parse_idx(data: bytes, source: str = "<bytes>") -> Tensor:
    """Decode IDX bytes into a tensor of the stored dtype and shape."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(
            f"{source}: not an IDX file (wrong magic number {data[:4].hex() or 'empty'}; "
            "expected 0000 followed by a type code and the number of dimensions)"
        )
    type_code, ndim = data[2], data[3]
    if type_code not in IDX_TYPES:
        valid = ", ".join(f"0x{c:02x}" for c in IDX_TYPES)
        raise ValueError(f"{source}: unknown IDX type code 0x{type_code:02x} (valid: {valid})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{source}: truncated IDX header ({len(data)} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype, width = IDX_TYPES[type_code]
    count = 1
    for size in shape:
        count *= size
    expected = header + count * width
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "has trailing bytes"
        raise ValueError(
            f"{source}: IDX file {state}: shape {tuple(shape)} needs {expected} bytes, "
            f"found {len(data)}"
        )
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    payload = bytearray(memoryview(data)[header:])  # one copy, writable for frombuffer
    if width == 1 or sys.byteorder == "big":
        values = torch.frombuffer(payload, dtype=dtype)
    else:  # big-endian file, little-endian machine: reverse the bytes of each value
        as_bytes = torch.frombuffer(payload, dtype=torch.uint8).view(-1, width).flip(-1)
        values = as_bytes.contiguous().view(dtype).reshape(-1)
    return values.reshape(shape)


def read_idx(path: str | Path) -> Tensor:
    """Read an IDX file (gzipped or raw) into a tensor."""
    path = Path(path)
    return parse_idx(_read_bytes(path), str(path))
