"""Command line: ``prunekit demo``, ``report FILE`` and ``bench MODEL.onnx`` (thin wrappers over the API)."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["main"]


def _demo(args) -> int:
    from prunekit.demo import DemoConfig, run

    if not 0.0 <= args.sparsity < 1.0:
        raise SystemExit(f"prunekit demo: --sparsity {args.sparsity} is outside [0, 1); try 0.9")
    cfg = DemoConfig(sparsity=args.sparsity, epochs=args.epochs, finetune_epochs=args.finetune_epochs,
                     seed=args.seed, out=args.out, limit=args.limit, progress=not args.no_progress)
    result = run(cfg)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def _report(args) -> int:
    from safetensors import safe_open

    from prunekit.deploy.storage import FORMAT

    with safe_open(args.path, framework="pt") as f:
        raw = (f.metadata() or {}).get("prunekit")
    if raw is None:
        raise SystemExit(f"prunekit report: {args.path} is not a prunekit file (written by prunekit.save)")
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
        raise SystemExit(f"prunekit bench: --input {spec!r} is not SHAPE like 1x784 or NAME=1x128:int64") from None
    dtype = getattr(torch, dtype_s or "float32", None)
    if not isinstance(dtype, torch.dtype):
        raise SystemExit(f"prunekit bench: unknown dtype {dtype_s!r} in --input {spec!r}; use float32 or int64")
    return name or None, shape, dtype


def _bench(args) -> int:
    import torch

    from prunekit.bench import benchmark

    if not args.model.endswith(".onnx"):
        raise SystemExit("prunekit bench: MODEL must be an .onnx file (export one with prunekit.deploy.export_onnx)")
    specs = [_parse_input(s) for s in args.input]
    if not specs:
        raise SystemExit("prunekit bench: give the batch-1 input shape, e.g. --input 1x784 or --input input_ids=1x128:int64")
    tensors = [torch.ones(shape, dtype=dtype) if not dtype.is_floating_point else torch.randn(shape, dtype=dtype)
               for _, shape, dtype in specs]
    inputs = {n: t for (n, _, _), t in zip(specs, tensors)} if all(n for n, _, _ in specs) else tuple(tensors)
    sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    result = benchmark(args.model, inputs, batch_sizes=sizes, threads=args.threads, min_time_s=args.min_time)
    print(result)
    if args.json:
        result.to_json(args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prunekit", description="Prune PyTorch models and prove the result.")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="train, prune, fine-tune and compare a CNN on real MNIST digits")
    d.add_argument("--sparsity", type=float, default=0.9)
    d.add_argument("--epochs", type=int, default=8)
    d.add_argument("--finetune-epochs", type=int, default=3)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default=None, help="folder for the saved files (default: a temp folder)")
    d.add_argument("--limit", type=int, default=None, help="use only this many images")
    d.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=_demo)
    r = sub.add_parser("report", help="list the tensors of a prunekit file")
    r.add_argument("path")
    r.set_defaults(func=_report)
    b = sub.add_parser("bench", help="latency percentiles and throughput of an ONNX model on this machine")
    b.add_argument("model", help="an .onnx file")
    b.add_argument("--input", action="append", default=[], help="batch-1 input: 1x784, or NAME=1x128:int64 (repeat)")
    b.add_argument("--batch-sizes", default="1", help="comma-separated, e.g. 1,8")
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--min-time", type=float, default=1.0, help="seconds of timed calls per batch size")
    b.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    b.set_defaults(func=_bench)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
