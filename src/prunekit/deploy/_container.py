"""The safetensors container, read defensively: the 8-byte length, the JSON header, byte ranges, and an
xz wrapper decompressed only as far as asked. Knows nothing of prunekit's own header (``_format``).

Errors are :class:`Damaged` (a ValueError) with what is wrong; callers add the file's name.
"""

from __future__ import annotations

import json
import lzma
import math
import struct

import torch

__all__ = ["XZ_MAGIC", "ST_DTYPES", "Damaged", "need", "parse_json", "one_of", "element_size", "numel", "read_exact",
           "XzStream", "read_st_header", "count_nonzeros"]

XZ_MAGIC = b"\xfd7zXZ\x00"
MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit

def _safetensors_dtypes() -> dict[str, torch.dtype]:
    """Every dtype code this safetensors build reads (its own table where it has one)."""
    try:
        from safetensors.torch import _TYPES

        return dict(_TYPES)
    except ImportError:  # an older or newer safetensors without the table
        return {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                "BOOL": torch.bool}


ST_DTYPES = _safetensors_dtypes()


class Damaged(ValueError):
    pass


def need(ok: bool, what: str) -> None:
    if not ok:
        raise Damaged(what)


def parse_json(raw, what: str):
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise Damaged(f"{what} is not JSON") from None


def one_of(value, table) -> bool:
    """``value in table`` for any JSON value (lists and dicts are unhashable)."""
    return isinstance(value, (str, type(None))) and value in table


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def numel(shape: list[int]) -> int:
    return math.prod(shape) if shape else 1


def read_exact(stream, n: int) -> bytes:
    data = stream.read(n)
    need(len(data) == n, f"it ends after {len(data)} of the {n} bytes its header announces (truncated)")
    return data


class XzStream:
    """``read(n)`` over an xz file, decompressing only what is asked for."""

    def __init__(self, f):
        self.f, self.dec, self.buf = f, lzma.LZMADecompressor(format=lzma.FORMAT_XZ), b""

    def read(self, n: int) -> bytes:
        out = [self.buf[:n]]
        have = len(out[0])
        self.buf = self.buf[n:]
        while have < n and not self.dec.eof:
            if self.dec.needs_input:
                chunk = self.f.read(1 << 16)
                if not chunk:
                    break
            else:
                chunk = b""
            try:
                part = self.dec.decompress(chunk, max_length=min(n - have, 1 << 24))
            except lzma.LZMAError as e:
                raise Damaged(f"its xz stream is damaged ({e})") from None
            out.append(part)
            have += len(part)
        return b"".join(out)

    def finish(self) -> None:
        """The stream must end here, with its checksum intact."""
        need(not self.buf and not self.read(1), "its xz stream holds more than its header announces")
        need(self.dec.eof, "its xz stream is truncated")


def read_st_header(stream, file_bytes: int | None) -> tuple[dict, dict, int, bytes]:
    """``(tensors, metadata, data_bytes, raw_header_bytes)`` of a safetensors blob."""
    head = stream.read(8)
    need(len(head) == 8, "it is shorter than a safetensors header")
    (n,) = struct.unpack("<Q", head)
    need(0 < n <= MAX_HEADER and (file_bytes is None or 8 + n <= file_bytes), "it is not safetensors (bad header length)")
    raw = read_exact(stream, n)
    header = parse_json(raw, "it is not safetensors: its header")
    need(isinstance(header, dict), "it is not safetensors (its header is not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    need(isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values()), "its metadata is not text")
    spans = []
    for name, t in header.items():
        ok = (isinstance(t, dict) and one_of(t.get("dtype"), ST_DTYPES) and isinstance(t.get("shape"), list)
              and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in t["shape"])
              and isinstance(t.get("data_offsets"), list) and len(t["data_offsets"]) == 2
              and all(isinstance(o, int) and not isinstance(o, bool) for o in t["data_offsets"]))
        need(ok, f"its safetensors entry {name!r} is malformed")
        a, b = t["data_offsets"]
        need(0 <= a <= b and b - a == numel(t["shape"]) * element_size(ST_DTYPES[t["dtype"]]),
              f"its safetensors entry {name!r} has byte range {a}..{b}, which does not fit its dtype and shape")
        spans.append((a, b))
    spans.sort()
    end = 0
    for a, b in spans:
        need(a == end, "its tensors' byte ranges overlap or leave gaps")
        end = b
    need(file_bytes is None or 8 + n + end == file_bytes,
          f"its size ({file_bytes} bytes) is not what its header announces ({8 + n + end}): truncated or padded")
    return header, meta, end, head + raw


def count_nonzeros(part: bytes, dtype: torch.dtype, bits: bool, nibbles: bool) -> int:
    """Nonzero elements in raw little-endian bytes (set bits of a bitmask; int4 nibbles other than 8)."""
    import numpy as np

    raw = np.frombuffer(part, dtype=np.uint8)
    if bits:
        return int(np.unpackbits(raw).sum())
    if nibbles:
        return int(((raw >> 4) != 8).sum() + ((raw & 15) != 8).sum())
    size = element_size(dtype)
    if dtype == torch.complex64:
        words = np.frombuffer(part, dtype=np.uint32).reshape(-1, 2) & np.uint32(0x7FFFFFFF)
        return int((words != 0).any(axis=1).sum())
    words = np.frombuffer(part, dtype={1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[size])
    if dtype.is_floating_point:  # -0.0 is zero: ignore the sign bit
        words = words & words.dtype.type((1 << (8 * size - 1)) - 1)
    return int(np.count_nonzero(words))
