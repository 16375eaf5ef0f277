"""safetensors files read and written one tensor at a time (for recipes.oneshot_shards).

safetensors' own API can neither read into a given buffer, nor read without memory-mapping the file
(mapped pages count as resident memory), nor write without first serializing the whole file into
one buffer. Each of those held a second copy of a decoder block, so the format (8-byte header size,
JSON header, raw little-endian bytes) is read and written here by hand; the tests load every output
with ``from_pretrained``, which uses the library.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

import torch

INDEX = "model.safetensors.index.json"

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
           "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "U16": torch.uint16, "U32": torch.uint32,
           "U64": torch.uint64, "BOOL": torch.bool}
_NAMES = {v: k for k, v in _DTYPES.items()}


def read_header(path: str) -> tuple[dict, int]:
    """A safetensors file's header ({name: {dtype, shape, data_offsets}}) and where its data starts."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


def weight_files(src: str) -> dict[str, str]:
    """{tensor name: shard file} from the index, or from the single ``model.safetensors``."""
    index = os.path.join(src, INDEX)
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            return dict(json.load(f)["weight_map"])
    if not os.path.exists(os.path.join(src, "model.safetensors")):
        raise ValueError(f"src={src!r} has neither {INDEX} nor model.safetensors; save the model with "
                         "save_pretrained(..., safe_serialization=True)")
    return dict.fromkeys(read_header(os.path.join(src, "model.safetensors"))[0], "model.safetensors")


def _bytes(t: torch.Tensor):
    """A writable byte view of a contiguous CPU tensor (any dtype, bfloat16 included)."""
    return t.reshape(-1).view(torch.uint8).numpy()


def read_tensors(src: str, files: dict[str, str], names: Iterable[str], into: dict[str, torch.Tensor] | None = None
          ) -> dict[str, torch.Tensor]:
    """The named tensors, read with plain file reads (no memory map, whose pages would count as resident).

    With ``into`` ({name: contiguous tensor}), each is read straight into its tensor (cast when the
    stored dtype differs) and the returned dict holds only 0-d tensors of the stored dtypes, so one
    block is never in memory twice. safetensors' own API can neither read into a given buffer nor
    read without mapping the file, hence this reader of its simple format (8-byte header size, JSON
    header, raw little-endian bytes).
    """
    by_file: dict[str, list[str]] = {}
    for name in names:
        by_file.setdefault(files[name], []).append(name)
    out = {}
    for file, keys in by_file.items():
        path = os.path.join(src, file)
        header, base = read_header(path)
        with open(path, "rb", buffering=0) as f:
            for k in keys:
                info = header[k]
                if info["dtype"] not in _DTYPES:
                    raise ValueError(f"{file}: tensor {k!r} is stored as {info['dtype']}, which oneshot_shards does "
                                     f"not read; supported: {sorted(_DTYPES)}")
                dtype, (begin, end) = _DTYPES[info["dtype"]], info["data_offsets"]
                dest = None if into is None else into[k]
                direct = dest is not None and dest.dtype == dtype and dest.is_contiguous()
                buffer = dest if direct else torch.empty(info["shape"], dtype=dtype)
                view = memoryview(_bytes(buffer))
                if end - begin != len(view):
                    raise ValueError(f"{file}: tensor {k!r} has {end - begin} bytes, its shape needs {len(view)}")
                f.seek(base + begin)
                done = 0
                while done < len(view):
                    n = f.readinto(view[done:])
                    if not n:
                        raise ValueError(f"{file} ends inside tensor {k!r}: the shard is truncated")
                    done += n
                if dest is None:
                    out[k] = buffer
                else:
                    if not direct:
                        dest.copy_(buffer)
                    out[k] = torch.zeros((), dtype=dtype)
                del buffer, view
    return out



def write_tensors(path: str, tensors: dict[str, torch.Tensor], dtypes: dict[str, torch.dtype]) -> None:
    """A safetensors file written one tensor at a time (safetensors' save_file first copies them all
    into one buffer: a second block in memory), each cast to its dtype on disk as it is written."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for k, t in tensors.items():
        dtype = dtypes.get(k, t.dtype)
        size = t.numel() * torch.empty((), dtype=dtype).element_size()
        header[k] = {"dtype": _NAMES[dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for k, t in tensors.items():
            f.write(memoryview(_bytes(t.detach().to(dtypes.get(k, t.dtype)).contiguous())))
        f.flush()
        os.fsync(f.fileno())
