"""Where the CLI gets its models and inputs: torchvision names, Hugging Face folders (safetensors only),
``file.py:factory``, ``--input`` specs, and inputs read from an ONNX graph's declarations.

Everything here raises :class:`UserError` for a user's mistake, which the CLI prints as one line.
"""

from __future__ import annotations

import os
import sys

__all__ = ["UserError", "load_model", "example_inputs", "parse_input", "make_tensors", "onnx_inputs"]


class UserError(Exception):
    """A bad argument: printed as one line, exit status 2."""


# a short paragraph to tokenize when a Hugging Face folder is given without --input: real text, so
# that quality is scored on varied tokens rather than one repeated id
_TEXT = ("Pruning removes the weights a network needs least, so that the model is smaller on disk and, "
         "with the right kernels, faster on the machine it runs on. Measure the dense and the pruned model "
         "side by side, on the same inputs and threads, before believing either number. A faster wrong "
         "answer is a bug, not a result; quality must be checked on held-out data.")


def _user_factory(spec: str):
    import importlib.util

    from torch import nn

    path, factory = spec.split(":", 1)
    if not os.path.isfile(path):
        raise UserError(f"model file {path!r} does not exist; give path/to/file.py:factory")
    module_spec = importlib.util.spec_from_file_location("prunekit_user_model", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        raise UserError(f"{path} failed to import: {type(e).__name__}: {e}") from None
    if not hasattr(module, factory):
        raise UserError(f"{path} has no function {factory!r}; define def {factory}(): return model")
    if not callable(getattr(module, factory)):
        raise UserError(f"{path}:{factory} is a {type(getattr(module, factory)).__name__}, not a function; "
                        f"define def {factory}(): return model")
    try:
        model = getattr(module, factory)()
    except Exception as e:
        raise UserError(f"{path}:{factory}() raised {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"{path}:{factory}() returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval(), None


def _hf_folder(spec: str):
    import glob

    import torch

    if not os.path.exists(os.path.join(spec, "config.json")):
        raise UserError(f"{spec!r} is a folder without config.json; give a Hugging Face model folder")
    if not glob.glob(os.path.join(spec, "*.safetensors")):
        pickles = [os.path.basename(p) for p in glob.glob(os.path.join(spec, "*.bin")) + glob.glob(os.path.join(spec, "*.pt"))]
        raise UserError(f"{spec!r} has no .safetensors weights{' (only ' + ', '.join(pickles) + ', pickles)' if pickles else ''}; "
                        "prunekit never loads pickled files. Save the model with save_pretrained(..., safe_serialization=True)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel

    model = AutoModel.from_pretrained(spec, local_files_only=True, use_safetensors=True).eval()
    inputs = None
    if any(os.path.exists(os.path.join(spec, f)) for f in ("tokenizer.json", "vocab.txt", "tokenizer.model")):
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(spec, local_files_only=True)
            batch = tokenizer([_TEXT], padding="max_length", truncation=True, max_length=128, return_tensors="pt")
            inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            print("inputs: 128 tokens of built-in text through the folder's tokenizer (give --input to change)",
                  file=sys.stderr)
        except Exception:  # a tokenizer that does not load: random ids below
            inputs = None
    if inputs is None:  # no tokenizer in the folder: seeded random ids over the whole vocabulary
        vocab = int(getattr(model.config, "vocab_size", 1000) or 1000)
        ids = torch.randint(0, vocab, (1, 128), generator=torch.Generator().manual_seed(0))
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        print("inputs: 128 random token ids (the folder has no tokenizer; give --input to change)", file=sys.stderr)
    return model, inputs


def load_model(spec: str):
    """``resnet18`` | ``path/to/hf_folder`` | ``file.py:factory`` -> (model, default example inputs or None)."""
    import torch

    if ":" in spec and spec.split(":", 1)[0].endswith(".py"):
        return _user_factory(spec)
    if os.path.isdir(spec):
        return _hf_folder(spec)
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if spec not in names:
        close = [n for n in names if n.startswith(spec[:3])][:5]
        raise UserError(f"unknown model {spec!r}: give a torchvision name (e.g. {', '.join(close or names[:5])}), "
                        "a Hugging Face folder, or path/to/file.py:factory")
    return torchvision.models.get_model(spec, weights=None).eval(), torch.randn(1, 3, 224, 224)


def make_tensors(specs):
    import torch

    tensors = [torch.ones(shape, dtype=dtype) if not dtype.is_floating_point else torch.randn(shape, dtype=dtype)
               for _, shape, dtype in specs]
    if all(n for n, _, _ in specs):
        return {n: t for (n, _, _), t in zip(specs, tensors)}
    return tensors[0] if len(tensors) == 1 else tuple(tensors)


def example_inputs(args, default, model=None):
    """The example inputs from ``--input`` (or the model's default); checked by running ``model`` once."""
    import torch

    from prunekit.inputs import call

    specs = [parse_input(s) for s in args.input]
    if not specs:
        if default is None:
            raise UserError("give the model's batch-1 input, e.g. --input 1x3x224x224 or --input input_ids=1x128:int64")
        inputs = default
    else:
        inputs = make_tensors(specs)
    if model is not None:
        try:
            with torch.no_grad():
                call(model, inputs)
        except Exception as e:
            given = " ".join(f"--input {s}" for s in args.input) or "the default input"
            raise UserError(f"the model does not run on {given}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    return inputs


def parse_input(spec: str):
    """``1x128`` or ``name=1x128`` or ``name=1x128:int64`` -> (name or None, shape, dtype)."""
    import torch

    name, _, rest = spec.rpartition("=")
    shape_s, _, dtype_s = rest.partition(":")
    try:
        shape = tuple(int(d) for d in shape_s.lower().split("x"))
    except ValueError:
        raise UserError(f"--input {spec!r} is not SHAPE like 1x784 or NAME=1x128:int64") from None
    if not shape or any(d < 1 or d > 1 << 20 for d in shape) or len(shape) > 8:
        raise UserError(f"--input {spec!r}: every size must be a positive int, e.g. 1x784")
    dtype = getattr(torch, dtype_s or "float32", None)
    if not isinstance(dtype, torch.dtype):
        raise UserError(f"unknown dtype {dtype_s!r} in --input {spec!r}; use float32 or int64")
    return name or None, shape, dtype


def onnx_inputs(path: str):
    """Batch-1 inputs from the graph's own input declarations: fixed sizes as declared, the first
    symbolic size 1 (the batch), other symbolic sizes 128 (a sequence); printed, so they can be changed."""
    import onnx
    import torch

    try:
        graph = onnx.load(path, load_external_data=False).graph
    except Exception as e:
        raise UserError(f"{path} is not an ONNX model ONNX Runtime can load: {str(e).splitlines()[0][:200]}") from None
    initializers = {i.name for i in graph.initializer}
    types = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64}
    specs = []
    for value in graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        shape = tuple(d if d else (1 if i == 0 else 128) for i, d in enumerate(dims))
        dtype = types.get(tensor.elem_type)
        if dtype is None:
            raise UserError(f"input {value.name!r} of {path} has an element type prunekit cannot make up; give --input")
        specs.append((value.name, shape, dtype))
    shown = " ".join(f"--input {n}={'x'.join(map(str, s))}:{str(d).removeprefix('torch.')}" for n, s, d in specs)
    print(f"inputs from the graph: {shown}", file=sys.stderr)
    return specs
