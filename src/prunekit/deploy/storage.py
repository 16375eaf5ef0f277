"""Compressed sparse files on safetensors: a bitmask plus the kept values.

Layout of a ``prunekit.sparse.v1`` file (plain safetensors; any safetensors reader can open it):

* a dense tensor is stored under its name, as usual;
* a sparse one as ``"<name>/bitmask"`` (uint8, ``numpy.packbits`` of the flattened mask, True = kept)
  and ``"<name>/values"`` (the kept values in flattened order, original dtype);
* the header metadata ``"prunekit"`` is JSON: format, per-tensor shape/dtype/encoding, whether the
  bitmask is a pruning mask (re-attached on load) or just where the nonzeros are, the mask pattern,
  tied names, the CRC-32 of the tensor bytes, and for a structurally pruned model its module sizes
  (``"structured"``), which :func:`load` resizes a fresh instance to.

Masked weights always use the bitmask (so a kept weight that happens to be 0.0 stays kept); other
floating tensors use it when that is smaller than dense (density below ~97%). At 90% unstructured
sparsity an fp32 weight takes 1/8 + 0.1 * 4 bytes per element instead of 4: 0.13x. Pruned values
under a mask are not stored: after loading, the original under each mask is zero there.

Two options shrink it further: ``quantize="int8"`` stores weight values (tensors of 2+ dims) as int8
with one symmetric scale per output row (``"<name>/scale"``; zeros stay exactly zero), and
``compress="lzma"`` wraps the whole safetensors file in xz (then it is no longer plain safetensors;
``load`` unwraps it).

Loading reads only tensors and JSON; nothing is unpickled. Every header entry is validated before
any data is read (``deploy/_format.py``), and writes are atomic (``prunekit/_io.py``).
"""

from __future__ import annotations

import json
import lzma
import os
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import save as save_bytes
from torch import nn

from prunekit._io import check_input_file, check_output_path, write_bytes
from prunekit.deploy._format import FORMAT, read_file, scan_file
from prunekit.deploy.layers import dense_equivalent
from prunekit.masks import Undo, attach, effective, find_mask, state_dict_copies
from prunekit.structured.storage import resize_, size_attrs
from prunekit.targets import param_index

__all__ = ["save", "load", "read_header", "describe", "SaveInfo", "FORMAT"]


@dataclass
class SaveInfo:
    """What :func:`save` wrote: ``path``, ``file_bytes``, ``dense_bytes`` (the tensors stored densely,
    as a plain safetensors file would hold them) and ``ratio`` = file / dense."""

    path: str
    file_bytes: int
    dense_bytes: int

    @property
    def ratio(self) -> float:
        return self.file_bytes / self.dense_bytes if self.dense_bytes else 1.0

    def __str__(self) -> str:
        return (
            f"{self.path}: {self.file_bytes / 1e6:.3f} MB sparse vs {self.dense_bytes / 1e6:.3f} MB dense "
            f"({self.ratio:.3f}x)"
        )


def _clean_state(model: nn.Module):
    """``(tensors, info, aliases)``: effective values by unpruned name, ties folded into aliases.

    Works from the parameters themselves (masks applied) and the state dict's buffers, so it does
    not depend on how the state dict spells masked tensors.
    """
    index = param_index(model)
    masked_keys = {f"{fqn}_mask" for fqn, t in index.items() if find_mask(t.module, t.name) is not None}
    tensors: dict[str, torch.Tensor] = {}
    info: dict[str, dict] = {}
    aliases: dict[str, str] = {}
    seen_ptr: dict[tuple, str] = {}
    with state_dict_copies():  # reading for a file changes nothing in the model
        state = model.state_dict()
    for key, value in state.items():
        if key in masked_keys:
            continue
        if ".parametrizations." in f".{key}":  # masks stacked with other parametrizations keep torch's names
            head, _, rest = f".{key}".rpartition(".parametrizations.")
            tname, _, leaf = rest.partition(".")
            if leaf != "original":
                continue
            key = f"{head[1:]}.{tname}" if head[1:] else tname
        if key in index:
            t = index[key]
            if t.fqn != key:
                aliases[key] = t.fqn
                continue
            pm = find_mask(t.module, t.name)
            tensors[key] = effective(t.module, t.name).contiguous()
            info[key] = {"masked": pm is not None, "pattern": pm.pattern if pm else None}
            if pm is not None:
                info[key]["mask"] = pm.mask
            continue
        ptr = (value.data_ptr(), tuple(value.shape), value.dtype) if value.numel() else None
        if ptr is not None and ptr in seen_ptr:
            aliases[key] = seen_ptr[ptr]
            continue
        if ptr is not None:
            seen_ptr[ptr] = key
        tensors[key] = value.detach().contiguous()
        info[key] = {"masked": False, "pattern": None}
    return tensors, info, aliases


_LEVELS = {"int8": 127, "int4": 7}


def _quant_rows(value: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-row quantization to ``[-levels, levels]``: ``(q int8, scale)``."""
    rows = value.reshape(value.shape[0], -1).float()
    scale = rows.abs().amax(dim=1) / levels
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(rows / scale[:, None]).clamp_(-levels, levels).to(torch.int8)
    return q.reshape(value.shape), scale


def _pack4(q: torch.Tensor) -> torch.Tensor:
    """Two int4 values (in [-7, 7]) per byte."""
    u = (q.reshape(-1).numpy().astype(np.int16) + 8).astype(np.uint8)
    if u.size % 2:
        u = np.append(u, np.uint8(8))
    return torch.from_numpy((u[0::2] << 4) | u[1::2])


def save(model: nn.Module, path: str | os.PathLike, quantize: str | None = None, compress: str | None = None) -> SaveInfo:
    """Write ``model``'s weights and masks to a compressed sparse safetensors file.

    Changes nothing in the model. Load with :func:`load` into a fresh instance of the same class.
    A model pruned with ``prunekit.structured.prune_channels`` is saved with its smaller sizes, and
    :func:`load` resizes a fresh instance to them. The file is written beside ``path`` and renamed
    over it, so an interrupted save leaves any previous file intact.

    Args:
        model: the model (masked, finalized, or structurally pruned).
        path: the file to write.
        quantize: None (exact), ``"int8"`` or ``"int4"`` (weights of 2+ dims quantized symmetrically
            with one scale per output row, int4 packed two per byte; lossy, zeros stay zero).
        compress: None (plain safetensors) or ``"lzma"`` (the file wrapped in xz).

    Returns:
        :class:`SaveInfo` with the file size and the dense size it replaces.

    Example:
        >>> info = prunekit.save(model, "model.pk.safetensors"); print(info)
        model.pk.safetensors: 0.056 MB sparse vs 0.420 MB dense (0.133x)
    """
    return _save(model, path, quantize, compress, structured=bool(getattr(model, "_prunekit_structured", False)))


def _save(model: nn.Module, path, quantize, compress, structured: bool) -> SaveInfo:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if quantize not in (None, *_LEVELS):
        raise ValueError(f"quantize={quantize!r} is unknown; use None, 'int8' or 'int4'")
    if compress not in (None, "lzma"):
        raise ValueError(f"compress={compress!r} is unknown; use None or 'lzma'")
    path = check_output_path(path, "path")
    model = dense_equivalent(model, "save")  # a sparse_runtime model is saved as the layers it computes
    tensors, info, aliases = _clean_state(model)
    out: dict[str, torch.Tensor] = {}
    meta: dict[str, dict] = {}
    dense_bytes = 0
    for name, value in tensors.items():
        value = value.detach().cpu()
        entry = {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch."), "pattern": info[name]["pattern"]}
        nbytes = value.numel() * value.element_size()
        dense_bytes += nbytes
        mask = info[name].get("mask")
        if mask is None and value.is_floating_point() and value.numel() > 0:
            nz = value != 0
            if (value.numel() + 7) // 8 + int(nz.sum()) * value.element_size() < nbytes:
                mask = nz
        if quantize is not None and value.is_floating_point() and value.dim() >= 2 and value.numel() > 0:
            value, scale = _quant_rows(value, _LEVELS[quantize])
            out[f"{name}/scale"] = scale
            entry["quant"] = f"{quantize}-row"
        if mask is None:
            entry["encoding"] = "dense"
            stored = value.contiguous()
        else:
            mask = mask.detach().cpu().reshape(-1)
            entry["encoding"] = "bitmask"
            entry["masked"] = bool(info[name]["masked"])
            out[f"{name}/bitmask"] = torch.from_numpy(np.packbits(mask.numpy()))
            stored = value.reshape(-1)[mask].clone()
        key = name if mask is None else f"{name}/values"
        out[key] = _pack4(stored) if entry.get("quant") == "int4-row" else stored
        meta[name] = entry
    header = {"format": FORMAT, "tensors": meta, "aliases": aliases, "model_class": type(model).__name__}
    if structured:
        header["structured"] = size_attrs(model)
    blob = _with_checksum(save_bytes(out, metadata={"prunekit": json.dumps(header)}), header)
    if compress == "lzma":
        blob = lzma.compress(blob, preset=9 | lzma.PRESET_EXTREME)
    write_bytes(path, blob, "path")
    return SaveInfo(path, os.path.getsize(path), dense_bytes)


def _with_checksum(blob: bytes, header: dict) -> bytes:
    """``blob`` with the CRC-32 of its tensor bytes in the prunekit header (checked by ``load``: a
    plain safetensors file has no checksum, so a flipped bit in a value would load unnoticed)."""
    (n,) = struct.unpack("<Q", blob[:8])
    data = memoryview(blob)[8 + n:]
    header = {**header, "crc32": zlib.crc32(data)}
    st = json.loads(bytes(blob[8:8 + n]))
    st["__metadata__"]["prunekit"] = json.dumps(header)
    raw = json.dumps(st, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors keeps the data 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw + data


def read_header(path: str | os.PathLike) -> dict:
    """The validated prunekit header of a file (tensor names, shapes, encodings), without its data.

    Raises:
        ValueError: not a prunekit file, or damaged. FileNotFoundError: no such file.
    """
    path = check_input_file(path, "path")
    return read_file(path, path, header_only=True)


def describe(path: str | os.PathLike) -> tuple[dict, list[dict]]:
    """``(header, rows)``: per stored tensor its name, shape, encoding, pattern, numel and nonzeros.

    Streams through the file (memory stays small whatever the file claims); validates it like
    :func:`load`.
    """
    path = check_input_file(path, "path")
    return scan_file(path, path)


def load(path: str | os.PathLike, model: nn.Module, strict: bool = True) -> nn.Module:
    """Load a file written by :func:`save` into ``model`` (a fresh instance of the same class).

    Changes: copies every stored value into the model's tensors (same ``nn.Parameter`` objects) and
    re-attaches the saved masks, so the model matches the saved one exactly, zeros and masks included.
    A file of a structurally pruned model first resizes the model's layers to the file's sizes
    (channels, heads, features only shrink). All or nothing: a refused file leaves the model as it was.

    Args:
        path: the file.
        model: an instance of the architecture that was saved; pruned or not.
        strict: require every parameter and buffer of the model to be in the file.

    Raises:
        ValueError: the file is not a prunekit file, is damaged, or is from a different model (names
            or shapes differ; the message lists them). Nothing is changed then.

    Example:
        >>> model = prunekit.load("model.pk.safetensors", MyNet())
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    path = check_input_file(path, "path")
    tensors, info, tied = _clean_state(model)
    header = read_file(path, path, header_only=True)
    shapes = {n: torch.Size(e["shape"]) for n, e in header["tensors"].items() if n not in tied}
    structured = header.get("structured")
    missing = [n for n in shapes if n not in tensors]
    wrong = [f"{n}: file {tuple(shapes[n])} vs model {tuple(tensors[n].shape)}" for n in shapes
             if n in tensors and shapes[n] != tensors[n].shape and not (structured and _shrinks(shapes[n], tensors[n].shape))]
    absent = [n for n in tensors if n not in shapes] if strict else []
    if missing or wrong or absent:
        raise ValueError(
            f"{path} is from a different model (saved from {header.get('model_class')}, loading into "
            f"{type(model).__name__}): not in the model {missing[:5]}, shape differs {wrong[:5]}, "
            f"not in the file {absent[:5]}. Load into an instance built like the saved one"
        )
    # the names and shapes now match the model (or shrink it), so the header's own bound is the model's
    header, decoded = read_file(path, path)
    decoded = {n: v for n, v in decoded.items() if n not in tied}  # a tie's second name holds the same tensor
    unmask = [n for n, (_, mask) in decoded.items() if mask is None and info[n]["masked"]]
    if unmask:
        raise ValueError(
            f"the model has masks on {unmask[:5]} but the file stores them unmasked; load into an unpruned "
            "instance or call prunekit.finalize(model) first"
        )
    resized = [n for n in decoded if decoded[n][0].shape != tensors[n].shape]
    if resized and any(find_mask(t.module, t.name) is not None for t in param_index(model).values()):
        raise ValueError(f"{path} holds a structurally pruned model; load it into a fresh, unpruned instance")
    undo_sizes = resize_(model, structured, {n: decoded[n][0].shape for n in resized}) if resized else None
    undo = Undo()
    buffers = dict(model.named_buffers(remove_duplicate=False))
    saved_buffers = {n: buffers[n].detach().clone() for n in decoded if n not in param_index(model) and n in buffers}
    try:
        index = param_index(model)
        with torch.no_grad():
            for name, (value, mask) in decoded.items():
                if name in index:
                    t = index[name]
                    undo.touch(t)
                    t.param.copy_(value)
                    if mask is not None:
                        attach(t, mask.to(t.param.device), header["tensors"][name].get("pattern") or "unstructured")
                else:
                    buffers[name].copy_(value)
    except BaseException:
        undo.restore()
        with torch.no_grad():
            for n, v in saved_buffers.items():
                buffers[n].copy_(v)
        if undo_sizes is not None:
            undo_sizes()
        raise
    if structured:
        model._prunekit_structured = True
    return model


def _shrinks(file_shape: torch.Size, model_shape: torch.Size) -> bool:
    return len(file_shape) == len(model_shape) and all(a <= b for a, b in zip(file_shape, model_shape))
