"""Reading prunekit files defensively: bounded decompression, a fully validated header, no pickle.

A file is a safetensors blob (optionally wrapped in xz). Its layout is 8 bytes of header length,
the safetensors JSON header (each stored tensor's dtype, shape and byte range, plus
``__metadata__``), then the tensor bytes. Before any tensor byte is read:

* the safetensors header is parsed by ``_container`` (length capped, JSON types checked, byte ranges
  inside the file and contiguous);
* the prunekit header in ``__metadata__["prunekit"]`` is checked entry by entry against the stored
  tensors (encoding, dtype, shape, bitmask and packed-int4 lengths, scales, aliases), so a crafted
  or damaged file gives one ``ValueError`` that says what is wrong;
* an xz file is decompressed only as far as its header says the data reaches, and never beyond the
  byte budget the caller allows (``load`` first checks names and shapes against the model, so the
  budget is what that model can hold), so a small file cannot make the loader allocate gigabytes;
  ``scan_file`` (``prunekit report``) streams instead;
* the CRC-32 of the tensor bytes, where the file has one, must match.

Files written by ``prunekit.structured.save`` before files were unified (format
``prunekit-structured/1``: a plain state dict plus module sizes) read as dense prunekit files with
a ``structured`` section.
"""

from __future__ import annotations

import zlib
from typing import Any

import torch

from prunekit.deploy._container import (
    ST_DTYPES,
    XZ_MAGIC,
    Damaged,
    XzStream,
    count_nonzeros,
    element_size,
    need,
    numel,
    one_of,
    parse_json,
    read_exact,
    read_st_header,
)

__all__ = ["FORMAT", "STRUCTURED_FORMAT", "XZ_MAGIC", "read_file", "scan_file", "stored_bytes_bound"]

FORMAT = "prunekit.sparse.v1"
STRUCTURED_FORMAT = "prunekit-structured/1"
_BY_NAME = {str(d).removeprefix("torch."): d for d in ST_DTYPES.values()}
_QUANT = (None, "int8-row", "int4-row")


def _structured_as_header(tensors: dict, meta: dict) -> dict:
    """A ``prunekit-structured/1`` file's metadata as a prunekit header (every tensor dense)."""
    need("attrs" in meta and "classes" in meta, "its structured metadata (attrs, classes) is missing")
    attrs, classes = parse_json(meta["attrs"], "its structured 'attrs'"), parse_json(meta["classes"], "its structured 'classes'")
    entries = {name: {"shape": t["shape"], "dtype": str(ST_DTYPES[t["dtype"]]).removeprefix("torch."),
                      "encoding": "dense", "pattern": None} for name, t in tensors.items()}
    return {"format": FORMAT, "tensors": entries, "aliases": {}, "model_class": None,
            "structured": {"attrs": attrs, "classes": classes}}


def _check_structured(section: Any) -> None:
    from prunekit.structured.storage import SIZE_ATTRS

    need(isinstance(section, dict) and isinstance(section.get("attrs"), dict)
          and isinstance(section.get("classes"), dict), "its 'structured' section is malformed")
    for module, values in section["attrs"].items():
        need(isinstance(module, str) and isinstance(values, dict), "its 'structured' sizes are malformed")
        for a, v in values.items():
            ok = a in SIZE_ATTRS and (isinstance(v, int) or (isinstance(v, list) and all(isinstance(i, int) for i in v)))
            need(ok and not isinstance(v, bool), f"its size {module}.{a}={v!r} is not a known size attribute")
    need(all(isinstance(k, str) and v == "HeadPrunedMultiheadAttention" for k, v in section["classes"].items()),
          "its 'structured' classes name something prunekit does not switch")


def _check_entry(name: str, e: Any, stored: dict) -> list[str]:
    """Validate one prunekit entry against the stored tensors; returns the stored names it uses."""
    need(isinstance(e, dict), f"entry {name!r} is not an object")
    shape, dtype_name, enc, quant = e.get("shape"), e.get("dtype"), e.get("encoding"), e.get("quant")
    need(isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape),
          f"entry {name!r} has shape {shape!r}, not a list of sizes")
    need(one_of(dtype_name, _BY_NAME), f"entry {name!r} has dtype {dtype_name!r}, which this prunekit cannot read")
    need(one_of(enc, ("dense", "bitmask")), f"entry {name!r} has encoding {enc!r}; files hold 'dense' or 'bitmask'")
    need(one_of(quant, _QUANT), f"entry {name!r} has quant {quant!r}; files hold int8-row or int4-row")
    dtype, n = _BY_NAME[dtype_name], numel(shape)
    need(quant is None or (dtype.is_floating_point and len(shape) >= 2 and n > 0),
          f"entry {name!r} claims {quant} for a {dtype_name} tensor of shape {shape}")
    need(isinstance(e.get("masked", False), bool), f"entry {name!r}: 'masked' is not true/false")
    pattern = e.get("pattern")  # what made the mask, recorded for the report: any short text
    need(pattern is None or (isinstance(pattern, str) and len(pattern) <= 200),
          f"entry {name!r}: pattern {str(pattern)[:40]!r} is not a short text")

    def want(key: str, st_dtype: torch.dtype, st_shape: list[int]) -> None:
        got = stored.get(key)
        need(got is not None, f"entry {name!r} needs the stored tensor {key!r}, which is missing")
        have = (ST_DTYPES[got["dtype"]], got["shape"])
        need(have == (st_dtype, st_shape), f"stored tensor {key!r} is {str(have[0]).removeprefix('torch.')} "
              f"{have[1]}, but entry {name!r} needs {str(st_dtype).removeprefix('torch.')} {st_shape}")

    def value_layout(count: int) -> tuple[torch.dtype, list[int]]:
        if quant == "int4-row":
            return torch.uint8, [(count + 1) // 2]
        if quant == "int8-row":
            return torch.int8, [count]
        return dtype, [count]

    used = []
    if enc == "dense":
        st_dtype, st_shape = value_layout(n)
        want(name, st_dtype, st_shape if quant == "int4-row" else shape)
        used.append(name)
    else:
        need(n > 0 and dtype.is_floating_point, f"entry {name!r}: only non-empty float tensors use a bitmask")
        want(f"{name}/bitmask", torch.uint8, [(n + 7) // 8])
        values = stored.get(f"{name}/values")
        need(values is not None and len(values["shape"]) == 1, f"entry {name!r}: its kept values are missing")
        count = values["shape"][0] * (2 if quant == "int4-row" else 1)
        need(count <= n + 1, f"entry {name!r} stores more kept values than it has elements")
        st_dtype, _ = value_layout(count)
        want(f"{name}/values", st_dtype, values["shape"])
        used += [f"{name}/bitmask", f"{name}/values"]
    if quant is not None:
        want(f"{name}/scale", torch.float32, [shape[0]])
        used.append(f"{name}/scale")
    return used


def _check_header(header: Any, stored: dict) -> dict:
    need(isinstance(header, dict), "its prunekit header is not a JSON object")
    need(header.get("format") == FORMAT, f"it has format {header.get('format')!r}; this prunekit reads {FORMAT!r}")
    entries, aliases = header.get("tensors"), header.get("aliases", {})
    need(isinstance(entries, dict), "its prunekit header has no 'tensors' table")
    need(all(isinstance(k, str) for k in entries), "its 'tensors' table has names that are not text")
    need(isinstance(aliases, dict) and isinstance(entries, dict)
          and all(isinstance(k, str) and one_of(v, entries) and v is not None for k, v in aliases.items()),
          "its 'aliases' do not name stored tensors")
    need(isinstance(header.get("model_class"), (str, type(None))), "its 'model_class' is not text")
    crc = header.get("crc32")
    need(crc is None or (isinstance(crc, int) and not isinstance(crc, bool) and 0 <= crc < 2 ** 32),
          "its 'crc32' is not a checksum")
    used = set()
    for name, entry in entries.items():
        used.update(_check_entry(name, entry, stored))
    extra = sorted(set(stored) - used)
    need(not extra, f"it stores tensors no entry describes: {extra[:5]}")
    if "structured" in header:
        _check_structured(header["structured"])
    return header


def stored_bytes_bound(entries: dict) -> int:
    """The most tensor bytes a valid file with these (validated) entries can store."""
    total = 0
    for e in entries.values():
        n, size = numel(e["shape"]), element_size(_BY_NAME[e["dtype"]])
        if e.get("quant") == "int4-row":
            size = 1
        total += n * size + (n + 7) // 8 + 8 + (4 * e["shape"][0] if e.get("quant") else 0)
    return total


def _decode(entries: dict, tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    import numpy as np

    def unpack4(packed: torch.Tensor, n: int) -> torch.Tensor:
        p = packed.numpy()
        u = np.empty(p.size * 2, dtype=np.int16)
        u[0::2], u[1::2] = p >> 4, p & 15
        return torch.from_numpy((u[:n] - 8).astype(np.int8))

    decoded = {}
    for name, e in entries.items():
        shape, int4 = torch.Size(e["shape"]), e.get("quant") == "int4-row"
        mask = None
        if e["encoding"] == "dense":
            value = tensors[name]
            value = unpack4(value, shape.numel()).reshape(shape) if int4 else value.reshape(shape)
        else:
            n = shape.numel()
            bits = np.unpackbits(tensors[f"{name}/bitmask"].numpy(), count=n).astype(bool)
            mask = torch.from_numpy(bits)
            kept = int(mask.sum())
            values = tensors[f"{name}/values"]
            stored = values.numel() * (2 if int4 else 1)
            need(stored in (kept, kept + 1) if int4 else stored == kept,
                  f"entry {name!r}: its bitmask keeps {kept} values but {values.numel()} are stored")
            values = unpack4(values, kept) if int4 else values
            value = torch.zeros(n, dtype=values.dtype)
            value[mask] = values
            value = value.reshape(shape)
            mask = mask.reshape(shape) if e.get("masked") else None
        if e.get("quant"):
            scale = tensors[f"{name}/scale"]
            need(bool(torch.isfinite(scale).all()), f"entry {name!r}: its scales are not finite")
            value = (value.reshape(shape[0], -1).float() * scale[:, None]).reshape(shape).to(_BY_NAME[e["dtype"]])
        decoded[name] = (value, mask)
    return decoded


def read_file(path: str, label: str, budget=None, header_only: bool = False):
    """Read and validate a prunekit file.

    Args:
        path: the file.
        label: how messages name it.
        budget: ``budget(header) -> int``: called with the validated header before any tensor byte is
            read; returns the most tensor bytes allowed (raise there to refuse the file early).
        header_only: stop after the header.

    Returns:
        ``header`` if ``header_only``, else ``(header, {name: (value, mask or None)})``.

    Raises:
        ValueError: the file is not a prunekit file, is damaged, or exceeds the budget.
    """
    import os

    from safetensors.torch import load as load_bytes

    try:
        with open(path, "rb") as f:
            compressed = f.read(6) == XZ_MAGIC
            f.seek(0)
            stream = XzStream(f) if compressed else f
            size = None if compressed else os.fstat(f.fileno()).st_size
            stored, meta, data_bytes, head = read_st_header(stream, size)
            if meta.get("format") == STRUCTURED_FORMAT:
                header = _structured_as_header(stored, meta)
            else:
                raw = meta.get("prunekit")
                need(raw is not None, "it has no 'prunekit' header; write it with prunekit.save")
                header = parse_json(raw, "its prunekit header")
            _check_header(header, stored)
            if header_only:
                return header
            limit = budget(header) if budget is not None else stored_bytes_bound(header["tensors"])
            need(data_bytes <= limit, f"it announces {data_bytes:,} bytes of tensors, more than its entries "
                  f"can hold here ({limit:,})")
            data = read_exact(stream, data_bytes)
            if compressed:
                stream.finish()
            need(header.get("crc32") is None or zlib.crc32(data) == header["crc32"],
                  "its tensor bytes do not match their checksum (the file was changed after it was written)")
            blob = head + data
            del data
    except Damaged as e:
        raise ValueError(f"{label} is not a prunekit file, or it is damaged: {e}") from None
    except OSError as e:
        raise ValueError(f"{label} cannot be read: {e}") from None
    try:
        tensors = load_bytes(blob)
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{label} is not a prunekit file, or it is damaged: {e}") from None
    del blob
    try:
        return header, _decode(header["tensors"], tensors)
    except Damaged as e:
        raise ValueError(f"{label} is not a prunekit file, or it is damaged: {e}") from None


def scan_file(path: str, label: str) -> tuple[dict, list[dict]]:
    """Validate a file and count each tensor's nonzeros, streaming: memory stays at one 16 MB chunk
    whatever the file claims (``prunekit report`` has no model to bound a file by).

    Returns:
        ``(header, rows)``: per entry ``name, shape, encoding, pattern, quant, numel, nonzeros``.
    """
    import os

    try:
        with open(path, "rb") as f:
            compressed = f.read(6) == XZ_MAGIC
            f.seek(0)
            stream = XzStream(f) if compressed else f
            size = os.fstat(f.fileno()).st_size
            stored, meta, data_bytes, _ = read_st_header(stream, None if compressed else size)
            header = _structured_as_header(stored, meta) if meta.get("format") == STRUCTURED_FORMAT else \
                parse_json(meta.get("prunekit") or "null", "its prunekit header")
            need(header is not None, "it has no 'prunekit' header; write it with prunekit.save")
            _check_header(header, stored)
            need(data_bytes <= max(1 << 30, 2000 * size), f"it announces {data_bytes:,} bytes of tensors in a "
                  f"{size:,}-byte file, more than any prunekit file compresses to")
            int4 = {n for n, e in header["tensors"].items() if e.get("quant") == "int4-row"}
            counts, crc = {}, 0
            for key, t in sorted(stored.items(), key=lambda kv: kv[1]["data_offsets"][0]):
                dtype, (a, b) = ST_DTYPES[t["dtype"]], t["data_offsets"]
                step = max(element_size(dtype), (16 << 20) // element_size(dtype) * element_size(dtype))
                owner, _, part = key.partition("/")
                nibbles = owner in int4 and part in ("", "values")
                counts[key], left = 0, b - a
                while left:
                    chunk = read_exact(stream, min(step, left))
                    crc = zlib.crc32(chunk, crc)
                    left -= len(chunk)
                    counts[key] += count_nonzeros(chunk, dtype, part == "bitmask", nibbles)
            if compressed:
                stream.finish()
            need(header.get("crc32") is None or crc == header["crc32"],
                  "its tensor bytes do not match their checksum (the file was changed after it was written)")
    except Damaged as e:
        raise ValueError(f"{label} is not a prunekit file, or it is damaged: {e}") from None
    except OSError as e:
        raise ValueError(f"{label} cannot be read: {e}") from None
    rows = []
    for name, e in header["tensors"].items():
        nonzeros = counts[name] if e["encoding"] == "dense" else counts[f"{name}/values"]
        if name in int4 and e["encoding"] == "bitmask":  # a packed odd count ends in one padding nibble (8)
            nonzeros = min(nonzeros, counts[f"{name}/bitmask"])
        rows.append({"name": name, "shape": e["shape"], "encoding": e["encoding"], "pattern": e.get("pattern"),
                     "quant": e.get("quant"), "numel": numel(e["shape"]), "nonzeros": int(nonzeros)})
    return header, rows
