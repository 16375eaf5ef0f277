"""One-shot pruning of a Hugging Face causal LM straight from its safetensors shards, one block at a time.

For a model larger than memory. Only the parts outside the repeated blocks (embeddings, final norm,
head) and one block are ever loaded: the model is built with its parameters on the ``meta`` device
(buffers real) to learn its layout, runs with one block in place of all of them to turn calibration
batches into the first block's inputs, then each block is
read from the shards, pruned exactly as :func:`prunekit.recipes.oneshot` prunes it in memory, run to
produce the next block's inputs, written as its own shard and freed. The output folder loads with
``AutoModelForCausalLM.from_pretrained`` (prunekit is not needed to load it); it appears only when
everything is written, and the source folder is only read.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import warnings
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from prunekit._checks import fraction
from prunekit._io import _umask
from prunekit._progress import progress as progress_bar
from prunekit.inputs import threads as threads_in_use
from prunekit.recipes._blocks import _capture, _with_kwargs, find_blocks
from prunekit.recipes._safetensors import INDEX, read_header, read_tensors, weight_files, write_tensors
from prunekit.recipes.oneshot import _check_method, _Job, _prune_block
from prunekit.report import SparsityReport, SparsityRow, sparsity_report
from prunekit.targets import find_targets

__all__ = ["oneshot_shards"]

_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".pb")


class _NoUndo:
    """Nothing to put back: a failure leaves no output folder, and the source is only read."""

    def touch(self, target) -> None:
        pass




def _check_layout(src: str, files: dict[str, str], meta: nn.Module) -> None:
    """The shards hold exactly the model's tensors, in its shapes (tied copies may be absent)."""
    import re

    expected = meta.state_dict(keep_vars=True)
    stored: dict[str, tuple] = {}
    for file in sorted(set(files.values())):
        for k, info in read_header(os.path.join(src, file))[0].items():
            stored[k] = tuple(info["shape"])
    ignored = getattr(meta, "_keys_to_ignore_on_load_unexpected", None) or []  # e.g. old rotary inv_freq copies
    extra = sorted(k for k in set(stored) - set(expected) if not any(re.search(p, k) for p in ignored))
    present = {id(expected[k]) for k in stored if k in expected}
    missing = sorted(k for k in set(expected) - set(stored) if id(expected[k]) not in present)
    wrong = [f"{k}: {stored[k]} on disk, {tuple(expected[k].shape)} in the config"
             for k in sorted(set(stored) & set(expected)) if stored[k] != tuple(expected[k].shape)]
    if extra or missing or wrong:
        problems = ([f"not in the model: {extra[:4]}"] if extra else []) + (
            [f"missing: {missing[:4]}"] if missing else []) + wrong[:4]
        raise ValueError(f"the shards in src={src!r} do not match its config.json ({'; '.join(problems)}); the "
                         "folder must be one model saved with save_pretrained")


@contextlib.contextmanager
def _parameters_on_meta():
    """Models built inside get their parameters on the ``meta`` device (no memory) and their buffers
    for real, so that buffers a checkpoint does not store (rotary frequencies, causal masks) hold
    the values the model's code computes (accelerate's ``init_empty_weights(include_buffers=False)``)."""
    original = nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def _skeleton(config) -> nn.Module:
    from transformers import AutoModelForCausalLM

    with _parameters_on_meta():
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def _materialize_parameters(module: nn.Module) -> None:
    """Give every meta parameter of ``module`` an empty float32 CPU tensor, keeping tied ones tied."""
    made: dict[int, nn.Parameter] = {}
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is None or param.device.type != "meta":
                continue
            if id(param) not in made:
                made[id(param)] = nn.Parameter(torch.empty(param.shape, dtype=torch.float32),
                                               requires_grad=param.requires_grad)
            sub._parameters[name] = made[id(param)]


def _materialize(meta_block: nn.Module, prefix: str, src: str, files: dict[str, str]) -> tuple[nn.Module, dict]:
    """A float32 copy of one block with its weights from the shards, and each tensor's dtype on disk."""
    block = copy.deepcopy(meta_block)
    _materialize_parameters(block)
    block.float()
    state = {prefix + k: v for k, v in block.state_dict().items()}
    with torch.no_grad():
        read = read_tensors(src, files, state, into=state)
    return block.eval(), {k[len(prefix):]: v.dtype for k, v in read.items()}


def _give_back_memory() -> None:
    """Return freed heap memory to the OS between blocks (glibc keeps it otherwise: GBs on big layers)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def oneshot_shards(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    data: Iterable[Any] | None = None,
    method: str = "wanda",
    sparsity: float | None = 0.5,
    pattern: str = "unstructured",
    layer_sparsity: str | Sequence[float] = "uniform",
    blocksize: int = 128,
    percdamp: float = 0.01,
    progress: bool = False,
    threads: int | None = None,
) -> SparsityReport:
    """Prune a Hugging Face causal LM folder into a new folder, holding one decoder block in memory.

    Changes: nothing in ``src``; creates ``dst`` (which must not exist) only when every shard is
    written: the pruned blocks in the dtype they had on disk (one shard each), the rest copied as
    it was, config and tokenizer files copied (other weight files, such as a ``pytorch_model.bin``,
    are not). Work happens in a hidden ``.prunekit-*`` folder beside ``dst``, removed on any error; one
    that a killed run (``kill -9``, out of memory) left behind is removed by the next run for the same
    ``dst`` on the same host. The Linear layers of every repeated block are pruned
    as :func:`prunekit.recipes.oneshot` would prune them in memory (same masks, same SparseGPT
    updates); zeros are real zeros, no masks are stored.

    Peak memory: the layers outside the blocks (embeddings, head) + one block in float32 + the
    calibration activations (two copies of ``batches x tokens x hidden`` floats) + one block's
    statistics (SparseGPT: an ``in x in`` Hessian per Linear).

    Args:
        src: a folder written by ``save_pretrained`` (safetensors, sharded or not).
        dst: the folder to create.
        data, method, sparsity, pattern, blocksize, percdamp, progress, threads: as for
            :func:`prunekit.recipes.oneshot` (token batches, e.g. ``{"input_ids": ids}``).
        layer_sparsity: ``"uniform"`` or one sparsity per block (``"owl"`` needs a dense pass over
            every block first; run it in memory, or pass OWL's sparsities from a smaller run).

    Returns:
        :class:`prunekit.SparsityReport` over the blocks' Linear weights (``seconds``: time taken).

    Example:
        >>> batches = [{"input_ids": ids[i:i + 8]} for i in range(0, 128, 8)]
        >>> prunekit.recipes.oneshot_shards("llama-folder", "llama-50", batches, method="wanda", sparsity=0.5)
        >>> AutoModelForCausalLM.from_pretrained("llama-50")
    """
    from transformers import AutoConfig

    if sys.byteorder != "little":  # pragma: no cover - safetensors stores little-endian bytes
        raise RuntimeError("oneshot_shards reads and writes safetensors bytes directly and needs a little-endian CPU")
    src, dst = os.fspath(src), os.fspath(dst)
    if not os.path.isfile(os.path.join(src, "config.json")):
        raise ValueError(f"src={src!r} is not a Hugging Face model folder (no config.json); pass the folder "
                         "save_pretrained wrote")
    if os.path.lexists(dst):
        raise ValueError(f"dst={dst!r} exists; pass a new folder (nothing is overwritten)")
    if not os.path.isdir(os.path.dirname(os.path.abspath(dst))):
        raise ValueError(f"dst={dst!r}: its parent folder does not exist; create it first")
    pat, sparsity = _check_method(method, pattern, sparsity, blocksize, percdamp)
    batches = None if data is None else list(data)
    if method != "magnitude" and not batches:
        raise ValueError(f"method={method!r} needs data=<calibration batches>, e.g. 16 batches of 8 x 512 tokens; "
                         f"data is {'empty' if batches is not None else 'None'}")

    config = AutoConfig.from_pretrained(src)
    model = _skeleton(config)  # parameters on meta, buffers real
    found = find_blocks(model)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no repeated blocks (an nn.ModuleList of same-type layers with "
                         "Linear layers); load it and use prunekit.recipes.oneshot")
    name, blocks = found
    per_block = _per_block(layer_sparsity, sparsity, len(blocks), pat)
    files = weight_files(src)
    _check_layout(src, files, model)
    expected = set(model.state_dict())  # what the output keeps (tensors from_pretrained would ignore are left out)
    meta_blocks = list(blocks)
    slot = nn.ModuleList([nn.Identity()])  # the model runs with one block at a time in this place
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, slot)

    started = time.perf_counter()
    work = _work_folder(dst)
    bar = progress_bar(total=len(meta_blocks), desc=f"oneshot_shards {method}", unit="block", enabled=progress)
    job = _Job(method, sparsity, pat, blocksize, percdamp, _NoUndo(), bar, masks=False)
    report = SparsityReport()
    total = len(meta_blocks) + 1
    weight_map: dict[str, str] = {}
    try:
        with threads_in_use(threads), torch.no_grad():
            _materialize_parameters(model)  # embeddings, final norm, head: loaded once, kept throughout
            state = model.state_dict()
            read_tensors(src, files, [k for k in state if k in files], into=state)
            del state
            captured: list = []
            kwargs_for = None
            for i, meta_block in enumerate(meta_blocks):
                prefix = f"{name}.{i}."
                block, dtypes = _materialize(meta_block, prefix, src, files)
                if i == 0 and method != "magnitude":
                    captured, kwargs_for = _capture(model, slot, batches, block, len(meta_blocks))
                elif kwargs_for is not None:
                    captured = _with_kwargs(captured, kwargs_for[i])
                targets = [t for t in find_targets(block, nn.Linear) if isinstance(t.module, nn.Linear)]
                captured = _prune_block(block, captured, targets, job, per_block[i])
                part = sparsity_report(block)
                report.rows += [SparsityRow(**{**vars(r), "name": prefix + r.name}) for r in part.rows]
                report.model_params += part.model_params
                report.model_nonzeros += part.model_nonzeros
                shard = f"model-{i + 1:05d}-of-{total:05d}.safetensors"
                state = {prefix + k: v for k, v in block.state_dict().items()}
                write_tensors(os.path.join(work, shard), state, {prefix + k: v for k, v in dtypes.items()})
                weight_map.update(dict.fromkeys(state, shard))
                del block, state, targets  # the targets hold the block's weights too
                _give_back_memory()
            del model, captured, kwargs_for
            _give_back_memory()
            kept = read_tensors(src, files, [k for k in files if not k.startswith(f"{name}.") and k in expected])
            report.model_params += sum(v.numel() for v in kept.values())
            report.model_nonzeros += sum(int(v.count_nonzero()) for v in kept.values())
            shard = f"model-{total:05d}-of-{total:05d}.safetensors"
            write_tensors(os.path.join(work, shard), kept, {})
            weight_map.update(dict.fromkeys(kept, shard))
            del kept
        _finish(src, work, dst, weight_map)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        bar.close()
    report.seconds = time.perf_counter() - started
    return report


def _per_block(layer_sparsity, sparsity: float, n: int, pat) -> list[float]:
    if isinstance(layer_sparsity, str):
        if layer_sparsity == "uniform":
            return [sparsity] * n
        raise ValueError(f"layer_sparsity={layer_sparsity!r}: oneshot_shards takes 'uniform' or one sparsity per "
                         "block ('owl' needs a dense pass over every block: compute it with "
                         "prunekit.recipes.owl_sparsities on a model that fits, or prune in memory)")
    if pat.fixed_sparsity is not None:
        raise ValueError(f"layer_sparsity needs pattern='unstructured': pattern='{pat}' fixes every block's sparsity")
    values = list(layer_sparsity)
    if len(values) != n:
        raise ValueError(f"layer_sparsity has {len(values)} values for the model's {n} blocks; give one per block")
    return [fraction(v, f"layer_sparsity[{i}]") for i, v in enumerate(values)]


_OWNER = ".owner"  # "host pid" of the run writing a work folder


def _work_folder(dst: str) -> str:
    """A new hidden ``.prunekit-<dst name>-*`` folder beside ``dst`` that names its owner (host and process).

    A run that is killed (SIGKILL, out of memory, power) cannot remove its folder; the next run for the
    same ``dst`` on the same host removes those whose process no longer exists, with a warning. Folders of
    live runs, of other hosts, or without an owner file are left alone."""
    parent, base = os.path.split(os.path.abspath(dst))
    prefix, host = f".prunekit-{base}-", socket.gethostname()
    for entry in sorted(os.listdir(parent)):
        path = os.path.join(parent, entry)
        if not entry.startswith(prefix) or not os.path.isdir(path):
            continue
        try:
            with open(os.path.join(path, _OWNER), encoding="utf-8") as f:
                owner_host, pid = f.read().split()
            pid = int(pid)
        except (OSError, ValueError):
            continue
        if owner_host == host and not _running(pid):
            shutil.rmtree(path, ignore_errors=True)
            warnings.warn(f"removed {path}: the work folder of an oneshot_shards run (process {pid}) that stopped "
                          "before it finished", stacklevel=3)
    work = tempfile.mkdtemp(prefix=prefix, dir=parent)
    with open(os.path.join(work, _OWNER), "w", encoding="utf-8") as f:
        f.write(f"{host} {os.getpid()}")
    return work


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _finish(src: str, work: str, dst: str, weight_map: dict[str, str]) -> None:
    """Index, config and tokenizer files into ``work``, then ``work`` becomes ``dst`` in one rename."""
    size = sum(os.path.getsize(os.path.join(work, f)) for f in set(weight_map.values()))
    with open(os.path.join(work, INDEX), "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": size}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    for entry in os.listdir(src):  # config, generation config, tokenizer, chat template; no other weights
        path = os.path.join(src, entry)
        if os.path.isfile(path) and not entry.endswith(_WEIGHTS) and entry != INDEX:
            shutil.copy2(path, os.path.join(work, entry))
    os.remove(os.path.join(work, _OWNER))
    fd = os.open(work, os.O_RDONLY)
    try:
        os.fsync(fd)  # the folder's entries are on disk before it takes its name
    finally:
        os.close(fd)
    os.chmod(work, 0o777 & ~_umask())  # mkdtemp made it private; dst gets the usual permissions
    os.rename(work, dst)
