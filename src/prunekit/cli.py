"""Command line: ``prunekit demo | prune | report | bench | export | advise`` (thin wrappers over the API).

Models come from a torchvision name (``resnet18``, random weights), a local Hugging Face folder, or
``path/to/file.py:factory``; user errors print one line with the fix and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

__all__ = ["main"]


class UserError(Exception):
    """A bad argument: printed as one line, exit status 2."""


def load_model(spec: str):
    """``resnet18`` | ``path/to/hf_folder`` | ``file.py:factory`` -> (model, default example inputs or None)."""
    import torch

    if ":" in spec and spec.split(":", 1)[0].endswith(".py"):
        import importlib.util

        path, factory = spec.split(":", 1)
        if not os.path.exists(path):
            raise UserError(f"model file {path!r} does not exist; give path/to/file.py:factory")
        module_spec = importlib.util.spec_from_file_location("prunekit_user_model", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        if not callable(getattr(module, factory, None)):
            raise UserError(f"{path} has no function {factory!r}; define def {factory}(): return model")
        return getattr(module, factory)().eval(), None
    if os.path.isdir(spec):
        if not os.path.exists(os.path.join(spec, "config.json")):
            raise UserError(f"{spec!r} is a folder without config.json; give a Hugging Face model folder")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel

        model = AutoModel.from_pretrained(spec, local_files_only=True).eval()
        ids = torch.ones(1, 128, dtype=torch.long)
        return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if spec not in names:
        close = [n for n in names if n.startswith(spec[:3])][:5]
        raise UserError(f"unknown model {spec!r}: give a torchvision name (e.g. {', '.join(close or names[:5])}), "
                        "a Hugging Face folder, or path/to/file.py:factory")
    return torchvision.models.get_model(spec, weights=None).eval(), torch.randn(1, 3, 224, 224)


def _inputs(args, default):
    import torch

    specs = [_parse_input(s) for s in args.input]
    if not specs:
        if default is None:
            raise UserError("give the model's batch-1 input, e.g. --input 1x3x224x224 or --input input_ids=1x128:int64")
        return default
    tensors = [torch.ones(shape, dtype=dtype) if not dtype.is_floating_point else torch.randn(shape, dtype=dtype)
               for _, shape, dtype in specs]
    if all(n for n, _, _ in specs):
        return {n: t for (n, _, _), t in zip(specs, tensors)}
    return tensors[0] if len(tensors) == 1 else tuple(tensors)


def _fraction(value: str, flag: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise UserError(f"{flag} {value!r} is not a number; try 0.5") from None
    if not 0 <= v < 1:
        raise UserError(f"{flag} {value} is outside [0, 1); try 0.5")
    return v


def _prune(args) -> int:
    import prunekit as pk

    model, default = load_model(args.model)
    if args.structured is not None:
        ratio = _fraction(args.structured, "--structured")
        report = pk.structured.prune_channels(model, _inputs(args, default), ratio=ratio, round_to=args.round_to)
        print(report)
        pk.structured.save(model, args.out)
        print(f"wrote {args.out} (load with prunekit.structured.load into a fresh {type(model).__name__})")
        return 0
    kwargs = {}
    sparsity = None
    if args.recipe:
        from prunekit.recipes.recipe import Recipe

        recipe = Recipe.from_yaml(args.recipe)
        sparsity = getattr(recipe.schedule, "final_sparsity", getattr(recipe.schedule, "target_sparsity", None))
        kwargs = dict(criterion=recipe.criterion, pattern=recipe.pattern, scope=recipe.scope, include=recipe.include,
                      exclude=recipe.exclude)
    if args.sparsity is not None:
        sparsity = _fraction(args.sparsity, "--sparsity")
    if args.pattern:
        kwargs["pattern"] = args.pattern
    if args.exclude:
        kwargs["exclude"] = args.exclude
    if sparsity is None and not str(kwargs.get("pattern", "")).count(":") == 1:
        raise UserError("give --sparsity 0.8 (or --pattern 2:4, or --recipe recipe.yaml, or --structured 0.5)")
    pk.prune(model, sparsity, **kwargs)
    pk.finalize(model)
    print(pk.sparsity_report(model))
    print(pk.save(model, args.out, quantize=args.quantize, compress="lzma" if args.quantize else None))
    return 0


def _export(args) -> int:
    import prunekit as pk
    from prunekit.deploy import export_onnx

    model, default = load_model(args.model)
    if args.weights:
        model = pk.load(args.weights, model)
        pk.finalize(model)
    example = _inputs(args, default)
    names = list(example) if isinstance(example, dict) else None
    example = tuple(example.values()) if isinstance(example, dict) else example
    info = export_onnx(model, example, args.out, quantize=args.quantize, input_names=names)
    print(info)
    return 0


def _advise(args) -> int:
    import prunekit as pk

    model, default = load_model(args.model)
    if args.budget <= 0:
        raise UserError(f"--budget {args.budget} must be a positive number of seconds, e.g. 300")
    advice = pk.advise(model, _inputs(args, default), budget_s=args.budget, threads=args.threads,
                       progress=not args.no_progress)
    print(advice)
    if args.out:
        advice.to_json(args.out)
    if args.html:
        from prunekit.htmlreport import write_report

        print("wrote", ", ".join(write_report(advice, args.html, title=f"prunekit advise: {args.model}")))
    return 0


def _demo(args) -> int:
    from prunekit.demo import DemoConfig, run

    if not 0.0 <= args.sparsity < 1.0:
        raise UserError(f"--sparsity {args.sparsity} is outside [0, 1); try 0.9")
    cfg = DemoConfig(sparsity=args.sparsity, epochs=args.epochs, finetune_epochs=args.finetune_epochs,
                     seed=args.seed, out=args.out, limit=args.limit, progress=not args.no_progress)
    result = run(cfg)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def _report(args) -> int:
    if not os.path.exists(args.path):
        raise UserError(f"{args.path!r} does not exist; give a prunekit file or an advise JSON")
    if args.path.endswith(".json"):
        with open(args.path) as f:
            advice = json.load(f)
        if "rows" not in advice or "matrix" not in advice:
            raise UserError(f"{args.path} is not an advise result (write one with prunekit advise ... --out advise.json)")
        if not args.html:
            raise UserError("for an advise JSON give --html report.html")
        from prunekit.htmlreport import write_report

        print("wrote", ", ".join(write_report(advice, args.html, title=f"prunekit advise: {args.path}")))
        return 0
    from safetensors import safe_open

    from prunekit.deploy.storage import FORMAT

    try:
        with safe_open(args.path, framework="pt") as f:
            raw = (f.metadata() or {}).get("prunekit")
    except Exception:
        raw = None
    if raw is None:
        raise UserError(f"{args.path} is not a prunekit file (written by prunekit.save); lzma files: load them in Python")
    if args.html:
        if not args.model:
            raise UserError("--html for a prunekit file needs --model (the architecture to load it into)")
        import prunekit as pk
        from prunekit.htmlreport import write_report

        model, _ = load_model(args.model)
        print("wrote", ", ".join(write_report(pk.load(args.path, model), args.html, title=f"prunekit: {args.path}")))
        return 0
    header = json.loads(raw)
    print(f"{args.path}: {header.get('format', FORMAT)}, saved from {header.get('model_class')}")
    print(f"{'tensor':<40} {'shape':>16} {'encoding':>9} {'pattern':>13}")
    for name, e in header["tensors"].items():
        shape = "x".join(map(str, e["shape"])) or "scalar"
        print(f"{name:<40} {shape:>16} {e['encoding']:>9} {e.get('pattern') or '-':>13}")
    return 0


def _parse_input(spec: str):
    """``1x128`` or ``name=1x128`` or ``name=1x128:int64`` -> (name or None, shape, dtype)."""
    import torch

    name, _, rest = spec.rpartition("=")
    shape_s, _, dtype_s = rest.partition(":")
    try:
        shape = tuple(int(d) for d in shape_s.lower().split("x"))
    except ValueError:
        raise UserError(f"--input {spec!r} is not SHAPE like 1x784 or NAME=1x128:int64") from None
    dtype = getattr(torch, dtype_s or "float32", None)
    if not isinstance(dtype, torch.dtype):
        raise UserError(f"unknown dtype {dtype_s!r} in --input {spec!r}; use float32 or int64")
    return name or None, shape, dtype


def _bench(args) -> int:
    import torch

    from prunekit.bench import benchmark

    if not args.model.endswith(".onnx"):
        raise UserError("MODEL must be an .onnx file (make one with: prunekit export resnet18 --out model.onnx)")
    specs = [_parse_input(s) for s in args.input]
    if not specs:
        raise UserError("give the batch-1 input shape, e.g. --input 1x784 or --input input_ids=1x128:int64")
    tensors = [torch.ones(shape, dtype=dtype) if not dtype.is_floating_point else torch.randn(shape, dtype=dtype)
               for _, shape, dtype in specs]
    inputs = {n: t for (n, _, _), t in zip(specs, tensors)} if all(n for n, _, _ in specs) else tuple(tensors)
    sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    result = benchmark(args.model, inputs, batch_sizes=sizes, threads=args.threads, min_time_s=args.min_time)
    print(result)
    if args.json:
        result.to_json(args.json)
    return 0


EXAMPLES = {
    "demo": "prunekit demo --sparsity 0.9",
    "prune": "prunekit prune resnet18 --sparsity 0.8 --out model.safetensors\n  prunekit prune resnet18 --pattern 2:4 "
             "--exclude conv1 --out model.safetensors\n  prunekit prune resnet18 --structured 0.5 --out small.safetensors",
    "report": "prunekit report model.safetensors\n  prunekit report model.safetensors --model resnet18 --html report.html"
              "\n  prunekit report advise.json --html advise.html",
    "bench": "prunekit bench model.onnx --input 1x3x224x224 --batch-sizes 1,8 --threads 2",
    "export": "prunekit export resnet18 --weights model.safetensors --out model.onnx --quantize int8",
    "advise": "prunekit advise resnet18 --budget 300 --out advise.json --html advise.html\n"
              "  prunekit advise path/to/hf_model_folder --input input_ids=1x128:int64 --budget 300",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunekit", description="Prune PyTorch models and prove the result.",
                                     epilog="examples:\n  " + "\n  ".join(e.split("\n")[0] for e in EXAMPLES.values()),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, help_text):
        return sub.add_parser(name, help=help_text, description=help_text, epilog="example:\n  " + EXAMPLES[name],
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    d = command("demo", "train, prune, fine-tune and compare a CNN on real MNIST digits")
    d.add_argument("--sparsity", type=float, default=0.9)
    d.add_argument("--epochs", type=int, default=8)
    d.add_argument("--finetune-epochs", type=int, default=3)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default=None, help="folder for the saved files (default: a temp folder)")
    d.add_argument("--limit", type=int, default=None, help="use only this many images")
    d.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=_demo)
    model_help = "a torchvision name (resnet18), a Hugging Face folder, or path/to/file.py:factory"
    p = command("prune", "prune a model (masks made permanent, or --structured channels) and save it")
    p.add_argument("model", help=model_help)
    p.add_argument("--sparsity", default=None, help="fraction of weights to zero, e.g. 0.8")
    p.add_argument("--pattern", default=None, help="unstructured | N:M (2:4) | block:1x4 | channel")
    p.add_argument("--recipe", default=None, help="a YAML recipe (criterion, pattern, scope, include, schedule)")
    p.add_argument("--exclude", action="append", default=[], help="module-name glob to leave dense (repeat)")
    p.add_argument("--structured", default=None, help="remove this fraction of channels/heads instead, e.g. 0.5")
    p.add_argument("--round-to", type=int, default=8, help="with --structured: channel counts multiple of this")
    p.add_argument("--quantize", choices=["int8", "int4"], default=None, help="lossy smaller file (lzma)")
    p.add_argument("--input", action="append", default=[], help="batch-1 input: 1x3x224x224 or NAME=1x128:int64")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    p.set_defaults(func=_prune)
    r = command("report", "list a prunekit file's tensors, or write an HTML report (file or advise JSON)")
    r.add_argument("path")
    r.add_argument("--html", default=None, help="write a self-contained HTML page (and PNG charts) here")
    r.add_argument("--model", default=None, help="with --html for a prunekit file: " + model_help)
    r.set_defaults(func=_report)
    b = command("bench", "latency percentiles and throughput of an ONNX model on this machine")
    b.add_argument("model", help="an .onnx file")
    b.add_argument("--input", action="append", default=[], help="batch-1 input: 1x784, or NAME=1x128:int64 (repeat)")
    b.add_argument("--batch-sizes", default="1", help="comma-separated, e.g. 1,8")
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--min-time", type=float, default=1.0, help="seconds of timed calls per batch size")
    b.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    b.set_defaults(func=_bench)
    e = command("export", "export a (pruned) model to ONNX, zeros kept, optionally int8")
    e.add_argument("model", help=model_help)
    e.add_argument("--weights", default=None, help="a prunekit file to load into the model first")
    e.add_argument("--input", action="append", default=[], help="batch-1 input: 1x3x224x224 or NAME=1x128:int64")
    e.add_argument("--quantize", choices=["int8"], default=None)
    e.add_argument("--out", required=True, help="the .onnx file to write")
    e.set_defaults(func=_export)
    a = command("advise", "measure the decision matrix on this machine: speed, size and quality of each option")
    a.add_argument("model", help=model_help)
    a.add_argument("--input", action="append", default=[], help="batch-1 input: 1x3x224x224 or NAME=1x128:int64")
    a.add_argument("--budget", type=float, default=300, help="seconds; no new candidate starts after it")
    a.add_argument("--threads", type=int, default=None)
    a.add_argument("--out", default=None, help="write the result as JSON")
    a.add_argument("--html", default=None, help="write an HTML report (and PNG charts)")
    a.add_argument("--no-progress", action="store_true")
    a.set_defaults(func=_advise)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UserError, ValueError, TypeError, FileNotFoundError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"prunekit {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
