"""Command line: ``prunekit demo | prune | report | bench | export | advise`` (thin wrappers over the API).

Models come from a torchvision name (``resnet18``, random weights), a local Hugging Face folder, or
``path/to/file.py:factory``; user errors print one line with the fix and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from prunekit.climodels import UserError, example_inputs, load_model, make_tensors, onnx_inputs, parse_input

__all__ = ["main", "load_model", "UserError"]


def _fraction(value: str, flag: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise UserError(f"{flag} {value!r} is not a number; try 0.5") from None
    if not 0 <= v < 1:
        raise UserError(f"{flag} {value} is outside [0, 1); try 0.5")
    return v


def _out(path: str | None, flag: str) -> None:
    from prunekit._io import check_output_path

    if path is not None:
        try:
            check_output_path(path, flag)
        except (TypeError, ValueError) as e:
            raise UserError(str(e).replace(f"{flag}=", f"{flag} ")) from None


def _in(path: str | None, flag: str) -> None:
    from prunekit._io import check_input_file

    if path is not None:
        try:
            check_input_file(path, flag)
        except (TypeError, ValueError, FileNotFoundError) as e:
            raise UserError(str(e).replace(f"{flag}=", f"{flag} ")) from None


def _final_sparsity(schedule) -> float | None:
    for name in ("final_sparsity", "sparsity", "target_sparsity", "target"):
        value = getattr(schedule, name, None)
        if isinstance(value, float):
            return value
    return None


def _saved(info, quantize) -> str:
    note = " (xz-compressed: read it with prunekit, not with plain safetensors tools)" if quantize else ""
    return f"{info}{note}"


def _prune(args) -> int:
    import prunekit as pk

    _out(args.out, "--out")
    if args.out.endswith(".onnx"):
        raise UserError(f"--out {args.out!r}: prune writes a prunekit file; for ONNX run prunekit export ... --weights FILE")
    _in(args.recipe, "--recipe")
    if isinstance(args.structured, str):  # the old form, --structured 0.5
        if args.sparsity is not None:
            raise UserError(f"--structured {args.structured} --sparsity {args.sparsity}: give the fraction once, as "
                            "--structured --sparsity 0.5")
        print(f"--structured {args.structured} is deprecated and goes in prunekit 0.3; write "
              f"--structured --sparsity {args.structured}", file=sys.stderr)
        args.sparsity, args.structured = args.structured, True
    if args.structured:
        mixed = [flag for flag, value in (("--pattern", args.pattern), ("--recipe", args.recipe), ("--scope", args.scope))
                 if value]
        if mixed:
            raise UserError(f"--structured removes whole channels and does not take {', '.join(mixed)}; prune the "
                            "smaller model in Python (prunekit.prune) to add masks, or drop --structured")
        if args.sparsity is None:
            raise UserError("--structured needs the fraction of channels to remove: --structured --sparsity 0.5")
    elif args.round_to is not None:
        raise UserError("--round-to applies to --structured (channel counts); add --structured or leave it out")
    model, default = load_model(args.model)
    if args.structured:
        sparsity = _fraction(args.sparsity, "--sparsity")
        round_to = 8 if args.round_to is None else args.round_to
        report = pk.structured.prune_channels(model, example_inputs(args, default, model), sparsity=sparsity,
                                              round_to=round_to, exclude=args.exclude or None)
        print(report)
        info = pk.save(model, args.out, quantize=args.quantize, compress="lzma" if args.quantize else None)
        print(_saved(info, args.quantize))
        print(f"load with prunekit.load(path, a fresh {type(model).__name__}); its layers are resized to the file's")
        return 0
    if args.input:
        example_inputs(args, default, model)  # checked even though unstructured pruning needs no inputs
    kwargs = {}
    sparsity = None
    if args.recipe:
        from prunekit.recipes.recipe import Recipe

        recipe = Recipe.from_yaml(args.recipe)
        sparsity = _final_sparsity(recipe.schedule)
        kwargs = dict(criterion=recipe.criterion, pattern=recipe.pattern, scope=recipe.scope, include=recipe.include,
                      exclude=recipe.exclude)
    for flag, key, value in (("--sparsity", "sparsity", args.sparsity), ("--pattern", "pattern", args.pattern),
                             ("--scope", "scope", args.scope)):
        if value and args.recipe:
            print(f"{flag} {value} overrides the recipe's {key}", file=sys.stderr)
    if args.sparsity is not None:
        sparsity = _fraction(args.sparsity, "--sparsity")
    if args.pattern:
        kwargs["pattern"] = args.pattern
    if args.scope:
        kwargs["scope"] = args.scope
    if args.exclude:
        kwargs["exclude"] = args.exclude
    if sparsity is None and not str(kwargs.get("pattern", "")).count(":") == 1:
        raise UserError("give --sparsity 0.8 (or --pattern 2:4, or --recipe recipe.yaml, or --structured --sparsity 0.5)")
    pk.prune(model, sparsity, **kwargs)
    print(pk.sparsity_report(model))  # saved with its masks: pk.load gives them back, report shows the pattern
    info = pk.save(model, args.out, quantize=args.quantize, compress="lzma" if args.quantize else None)
    print(_saved(info, args.quantize))
    return 0


def _export(args) -> int:
    import prunekit as pk
    from prunekit.deploy import export_onnx

    _out(args.out, "--out")
    if not args.out.endswith(".onnx"):
        raise UserError(f"--out {args.out!r}: export writes ONNX; name the file *.onnx (prunekit files come from prune)")
    _in(args.weights, "--weights")
    model, default = load_model(args.model)
    if args.weights:
        model = pk.load(args.weights, model)
        pk.finalize(model)
    example = example_inputs(args, default, model)
    info = export_onnx(model, example, args.out, quantize=args.quantize)
    print(info)
    return 0


def _advise(args) -> int:
    import math

    import prunekit as pk

    if not math.isfinite(args.budget) or args.budget <= 0:
        raise UserError(f"--budget {args.budget} must be a positive number of seconds, e.g. 300")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads} must be at least 1, e.g. 2")
    recover = None
    if args.recover is not None:
        from prunekit.advise_recovery import parse_duration

        try:
            recover = parse_duration(args.recover, "--recover")
        except ValueError as e:
            raise UserError(str(e)) from None
    _out(args.out, "--out")
    _out(args.html, "--html")
    model, default = load_model(args.model)
    advice = pk.advise(model, example_inputs(args, default, model), budget_s=args.budget, threads=args.threads,
                       progress=not args.no_progress, recover=recover)
    print(advice)
    if args.out:
        advice.to_json(args.out)
    if args.html:
        from prunekit.htmlreport import write_report

        print("wrote", ", ".join(write_report(advice, args.html, title=f"prunekit advise: {args.model}")))
    if advice.rows and all(r.get("error") for r in advice.rows):
        print(f"prunekit advise: every candidate failed on this model (first: {advice.rows[0]['error'][:200]})",
              file=sys.stderr)
        return 1
    return 0


def _demo(args) -> int:
    from prunekit.demo import DemoConfig, run

    if not 0.0 <= args.sparsity < 1.0:
        raise UserError(f"--sparsity {args.sparsity} is outside [0, 1); try 0.9")
    if args.epochs < 1 or args.finetune_epochs < 0:
        raise UserError(f"--epochs {args.epochs} must be >= 1 and --finetune-epochs {args.finetune_epochs} >= 0")
    if args.limit is not None and args.limit < 20:
        raise UserError(f"--limit {args.limit} is too few images; give at least 20 (or leave it out for all 5,000)")
    _out(args.json, "--json")
    if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out!r} is a file; give a folder for the saved models")
    cfg = DemoConfig(sparsity=args.sparsity, epochs=args.epochs, finetune_epochs=args.finetune_epochs,
                     seed=args.seed, out=args.out, limit=args.limit, progress=not args.no_progress)
    result = run(cfg)
    if args.json:
        from prunekit._io import write_text

        write_text(args.json, json.dumps(result, indent=2), "--json")
    return 0


def _report(args) -> int:
    from prunekit.deploy.storage import describe

    _in(args.path, "PATH")
    _out(args.html, "--html")
    if args.path.endswith(".json"):
        try:
            with open(args.path) as f:
                advice = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{args.path} is not JSON ({e}); give an advise result or a prunekit file") from None
        if not isinstance(advice, dict) or "rows" not in advice or "matrix" not in advice:
            raise UserError(f"{args.path} is not an advise result (write one with prunekit advise ... --out advise.json)")
        if not args.html:
            from prunekit.advise import Advice

            try:
                print(Advice(**advice))
            except (TypeError, KeyError, ValueError):
                raise UserError(f"{args.path} is not an advise result this prunekit can read") from None
            return 0
        from prunekit.htmlreport import write_report

        print("wrote", ", ".join(write_report(advice, args.html, title=f"prunekit advise: {args.path}")))
        return 0
    if args.html:
        if not args.model:
            raise UserError("--html for a prunekit file needs --model (the architecture to load it into)")
        import prunekit as pk
        from prunekit.htmlreport import write_report

        model, _ = load_model(args.model)
        print("wrote", ", ".join(write_report(pk.load(args.path, model), args.html, title=f"prunekit: {args.path}")))
        return 0
    header, rows = describe(args.path)
    kind = "structurally pruned, " if header.get("structured") else ""
    print(f"{args.path}: {header['format']}, {kind}saved from {header.get('model_class') or 'an older prunekit'}")
    print(f"{'tensor':<44} {'shape':>16} {'encoding':>9} {'pattern':>13} {'nonzeros':>14} {'sparsity':>8}")
    total = nonzeros = 0
    for r in rows:
        shape = "x".join(map(str, r["shape"])) or "scalar"
        encoding = r["encoding"] + ("+" + r["quant"].split("-")[0] if r["quant"] else "")
        sparsity = 1 - r["nonzeros"] / r["numel"] if r["numel"] else 0.0
        total, nonzeros = total + r["numel"], nonzeros + r["nonzeros"]
        print(f"{r['name']:<44} {shape:>16} {encoding:>9} {r['pattern'] or '-':>13} "
              f"{r['nonzeros']:>14,} {sparsity:>8.2%}")
    print(f"{'total':<44} {'':>16} {'':>9} {'':>13} {nonzeros:>14,} {1 - nonzeros / max(total, 1):>8.2%}")
    return 0


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise UserError(f"--batch-sizes {text!r} must be comma-separated positive ints, e.g. 1,8") from None
    if any(b < 1 for b in sizes):
        raise UserError(f"--batch-sizes {text!r} must be comma-separated positive ints, e.g. 1,8")
    return sizes


def _bench(args) -> int:
    from prunekit.bench import benchmark

    if not args.model.endswith(".onnx"):
        raise UserError("MODEL must be an .onnx file (make one with: prunekit export resnet18 --out model.onnx)")
    _in(args.model, "MODEL")
    _out(args.json, "--json")
    specs = [parse_input(s) for s in args.input] or onnx_inputs(args.model)
    sizes = _batch_sizes(args.batch_sizes)
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads} must be at least 1, e.g. 2")
    if not args.min_time >= 0:
        raise UserError(f"--min-time {args.min_time} must be >= 0 seconds")
    result = benchmark(args.model, make_tensors(specs), batch_sizes=sizes, threads=args.threads, min_time_s=args.min_time)
    print(result)
    if args.json:
        result.to_json(args.json)
    return 0


EXAMPLES = {
    "demo": "prunekit demo --sparsity 0.9",
    "prune": "prunekit prune resnet18 --sparsity 0.8 --out model.safetensors\n  prunekit prune resnet18 --pattern 2:4 "
             "--exclude conv1 --out model.safetensors\n  prunekit prune resnet18 --structured --sparsity 0.5 --out small.safetensors",
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
    p.add_argument("--sparsity", default=None, help="fraction of weights (with --structured: channels) to prune, e.g. 0.8")
    p.add_argument("--pattern", default=None, help="unstructured | N:M (2:4) | block:1x4 | channel")
    p.add_argument("--recipe", default=None, help="a YAML recipe (criterion, pattern, scope, include, schedule)")
    p.add_argument("--exclude", action="append", default=[], help="module-name glob to leave dense (repeat)")
    p.add_argument("--scope", choices=["global", "layer"], default=None,
                   help="rank all layers together (global, the default) or give each layer the same sparsity")
    p.add_argument("--structured", nargs="?", const=True, default=False,
                   help="remove whole channels/heads (--sparsity of them) instead of masking weights")
    p.add_argument("--round-to", type=int, default=None, help="with --structured: channel counts multiple of this (8)")
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
    a.add_argument("--recover", default=None,
                   help="then recover the fastest candidates below the quality floor by distillation, e.g. 20m")
    a.set_defaults(func=_advise)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `prunekit report f | head`: the reader left, which is not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that flushing stdout at exit does not fail again
        return 0
    except (UserError, ValueError, TypeError, KeyError, OSError) as e:
        text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        message = str(text).splitlines()[0] if str(text) else type(e).__name__
        print(f"prunekit {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
