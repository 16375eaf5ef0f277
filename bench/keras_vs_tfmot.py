"""prunekit.keras against TF-MOT 0.8.1, side by side, on Fashion-MNIST (LeNet-300-100 and a small CNN).

Both tools start from the same dense weights (pretrained here, Keras 3), prune with the same
PolynomialDecay(0 -> s, frequency 50, end at 1.5 epochs) over the same 2 epochs of Adam at batch 128,
and are measured the same way: the zeros of every mask after every step (the per-step sparsity table;
identical counts expected), test accuracy at 80% and 90%, the training step's time pruned vs dense
(each tool against its own dense step), file sizes, and TFLite interpreter latency (XNNPACK, batch 1,
2 threads) of every file, interleaved in this one process, medians. TF-MOT runs in its own venv
(bench/keras_tfmot.py; it needs Keras 2, which cannot share a process with Keras 3).

Run: ``make bench`` or ``KERAS_BACKEND=tensorflow .venv/bin/python bench/keras_vs_tfmot.py [--quick]``. Writes
bench/results/keras{_quick}.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import keras_common as kc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import prunekit.keras as pk  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
PEER = os.path.join(os.path.dirname(HERE), ".venv-tfmot", "bin", "python")
VARIANTS = (("float", None, False), ("float_sparse", None, True), ("int8", "dynamic", False),
            ("int8_sparse", "dynamic", True))


def masks_of(model):
    return [keras.ops.convert_to_numpy(m) for w in pk.wrappers(model) for m in w.masks]


def pretrain(name, xtr, ytr, xte, yte, work, epochs) -> dict:
    keras.utils.set_random_seed(0)
    model = kc.build(keras, name)
    kc.compile_(keras, model)
    model.fit(kc.shaped(name, xtr), ytr, batch_size=kc.BATCH, epochs=epochs, verbose=0)
    np.savez(os.path.join(work, f"dense_{name}.npz"), **{f"w{i}": w for i, w in enumerate(model.get_weights())})
    path = os.path.join(work, f"dense_{name}.keras")
    model.save(path)
    files = {v: {"path": os.path.join(work, f"dense_{name}_{v}.tflite")} for v, _, _ in VARIANTS[::2]}
    for v, q, sp in VARIANTS[::2]:
        files[v]["bytes"] = pk.to_tflite(model, files[v]["path"], quantize=q, sparse=sp)
    acc = float(model.evaluate(kc.shaped(name, xte), yte, batch_size=512, verbose=0)[1])
    return {"accuracy": acc, "keras_bytes": os.path.getsize(path), "keras_gz_bytes": kc.gz_size(path), "tflite": files}


def prunekit_run(name, s, xtr, ytr, xte, yte, work) -> dict:
    weights = np.load(os.path.join(work, f"dense_{name}.npz"))
    dense = kc.build(keras, name)
    dense.set_weights([weights[f"w{i}"] for i in range(len(weights.files))])
    x, xt = kc.shaped(name, xtr), kc.shaped(name, xte)
    kc.compile_(keras, dense)
    accs, (first, first_pruned, first_stripped) = kc.pruning_runs(keras, pk, lambda: dense, masks_of, s, x, ytr,
                                                                  xt, yte)  # prune_low_magnitude copies dense
    dense_s, pruned_s = kc.interleaved_step_times(keras, dense, first_pruned, x, ytr, [pk.UpdatePruningStep()])
    path = os.path.join(work, f"prunekit_{name}_{s}.keras")
    first_stripped.save(path)
    files = {}
    for v, q, sp in VARIANTS:
        files[v] = {"path": os.path.join(work, f"prunekit_{name}_{s}_{v}.tflite")}
        files[v]["bytes"] = pk.to_tflite(first_stripped, files[v]["path"], quantize=q, sparse=sp)
    return {"accuracy": kc.summary(accs), "zeros_per_step": first.zeros, "step_s": pruned_s, "dense_step_s": dense_s,
            "stripped_gz_bytes": kc.gz_size(path), "tflite": files, "sparsity": pk.sparsity_report(first_stripped).sparsity}


def _interpreter(path: str, xnnpack: bool):
    kind = tf.lite.experimental.OpResolverType
    resolver = kind.AUTO if xnnpack else kind.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    it = tf.lite.Interpreter(model_path=path, num_threads=2, experimental_op_resolver_type=resolver)
    it.allocate_tensors()
    return it


def latency(paths: dict[str, str], shape, rounds: int) -> dict[str, float | str]:
    """Median ms per batch-1 call of each TFLite file with XNNPACK (TFLite's default CPU delegate) and
    with TFLite's builtin kernels (which have a sparse fully-connected path), interleaved round by round.
    A file XNNPACK refuses gets the refusal as its value."""
    its, out = {}, {}
    for key, path in paths.items():
        for xnnpack in (True, False):
            name = f"{key} {'xnnpack' if xnnpack else 'builtin'}"
            try:
                its[name] = _interpreter(path, xnnpack)
            except RuntimeError as e:
                out[name] = "refused: " + str(e).split("Node number")[0].strip()
    x = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
    times = {k: [] for k in its}
    for r in range(rounds + 10):
        for key, it in its.items():
            it.set_tensor(it.get_input_details()[0]["index"], x)
            t = time.perf_counter()
            for _ in range(20):
                it.invoke()
            if r >= 10:
                times[key].append((time.perf_counter() - t) / 20 * 1e3)
    return out | {k: float(np.median(v)) for k, v in times.items()}


def both(ms: dict, key: str) -> str:
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else v

    return f"{cell(ms[key + ' xnnpack'])} / {cell(ms[key + ' builtin'])}"


def write(result: dict, quick: bool) -> None:
    name = "keras_quick" if quick else "keras"
    with open(os.path.join(RESULTS, name + ".json"), "w") as f:
        json.dump(result, f, indent=1)
    peer = result.get("tfmot")
    def acc(a):
        return f"{a['mean']:.4f} ± {a['std']:.4f}"

    lines = [f"# prunekit.keras vs TF-MOT {peer['tfmot'] if peer else '(not run)'} on Fashion-MNIST", "",
             f"Keras {keras.__version__} (TensorFlow {tf.__version__} backend) vs tf_keras "
             f"{peer['tf_keras'] if peer else '-'}; {result['n_train']} training / {result['n_test']} test images; "
             f"dense pretraining {result['pretrain_epochs']} epochs, then PolynomialDecay(0 -> s, frequency "
             f"{kc.FREQUENCY}, end step {result['end_steps']}) over {kc.EPOCHS} epochs of Adam 1e-3, batch {kc.BATCH}, "
             f"both tools from the same weights. Accuracy: mean ± sd over {len(kc.SEEDS)} shuffling seeds; step time: "
             "median of alternating 40-step fits of the dense and the pruned model (with its callback). "
             "Produced by `bench/keras_vs_tfmot.py`.", "",
             "| model @ sparsity | per-step zeros identical | accuracy prunekit | accuracy TF-MOT | diff (points) "
             "| step time pruned/dense prunekit | same, TF-MOT |", "|---|---|---|---|---|---|---|"]
    for key, run in result["prunekit"].items():
        other = peer["runs"].get(key) if peer else None
        same = "-" if other is None else (
            f"{sum(a == b for a, b in zip(run['zeros_per_step'], other['zeros_per_step']))}/"
            f"{len(run['zeros_per_step'])} steps")
        ratio = run["step_s"] / run["dense_step_s"]
        lines.append(
            f"| {key} (dense {result['dense'][key.split('@')[0]]['accuracy']:.4f}) | {same} | {acc(run['accuracy'])} | "
            f"{acc(other['accuracy'])} | {100 * (run['accuracy']['mean'] - other['accuracy']['mean']):+.2f} | {ratio:.2f}x "
            f"({run['step_s'] * 1e3:.1f} ms) | {other['step_s'] / other['dense_step_s']:.2f}x "
            f"({other['step_s'] * 1e3:.1f} ms) |" if other else
            f"| {key} | - | {acc(run['accuracy'])} | - | - | {ratio:.2f}x | - |")
    key = f"mlp@{kc.SPARSITIES[-1]}"
    if peer and key in peer["runs"]:
        ours, theirs = result["prunekit"][key]["zeros_per_step"], peer["runs"][key]["zeros_per_step"]
        sizes = result["mask_sizes"]
        lines += ["", f"Sparsity over the schedule ({key}; the first batch is step 1; zeros per kernel, "
                  "prunekit / TF-MOT; every mask update and the last step):", "",
                  "| step | " + " | ".join(f"kernel {i} ({n:,})" for i, n in enumerate(sizes)) + " | identical |",
                  "|---|" + "---|" * (len(sizes) + 1)]
        for i, (a, b) in enumerate(zip(ours, theirs)):
            step = i + 1
            if step % kc.FREQUENCY == 0 or step == len(ours):
                cells = [f"{x:,} ({x / n:.2%}) / {y:,}" for x, y, n in zip(a, b, sizes)]
                lines.append(f"| {step} | " + " | ".join(cells) + f" | {'yes' if a == b else 'no'} |")
    lines += ["", "Sizes (bytes) and TFLite latency (ms per batch-1 call, XNNPACK, 2 threads, interleaved medians):", "",
              "| model | file | bytes prunekit | bytes TF-MOT | ms prunekit XNNPACK / builtin | ms TF-MOT XNNPACK / builtin |",
              "|---|---|---|---|---|---|"]
    for m, t in result["table"].items():
        for row in t:
            lines.append("| " + " | ".join([m, *[str(c) for c in row]]) + " |")

    with open(os.path.join(RESULTS, name + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="6k/2k images, 1 pretraining epoch")
    ap.add_argument("--train", type=int, default=60000, help="training images used (of 60k)")
    ap.add_argument("--rounds", type=int, default=60)
    args = ap.parse_args()
    xtr, ytr, xte, yte = kc.data(args.quick, args.train)
    epochs = 1 if args.quick else 2
    work = tempfile.mkdtemp(prefix="prunekit-keras-bench-")
    result = {"n_train": len(xtr), "n_test": len(xte), "pretrain_epochs": epochs, "end_steps": kc.end_step(len(xtr)),
              "dense": {}, "prunekit": {}, "table": {}}
    for name in kc.MODELS:
        result["dense"][name] = pretrain(name, xtr, ytr, xte, yte, work, epochs)
        print(f"dense {name}: {result['dense'][name]['accuracy']:.4f}", flush=True)
    if os.path.exists(PEER):
        cmd = [PEER, os.path.join(HERE, "keras_tfmot.py"), "--work", work, "--train", str(args.train)]
        cmd += ["--quick"] if args.quick else []
        subprocess.run(cmd, check=True)
        with open(os.path.join(work, "tfmot.json")) as f:
            result["tfmot"] = json.load(f)
    else:
        print(f"{PEER} missing: TF-MOT columns skipped (make bench creates it)", flush=True)
    for name in kc.MODELS:
        for s in kc.SPARSITIES:
            result["prunekit"][f"{name}@{s}"] = prunekit_run(name, s, xtr, ytr, xte, yte, work)
            print(f"prunekit {name}@{s}: {result['prunekit'][f'{name}@{s}']['accuracy']}", flush=True)
    result["mask_sizes"] = [int(np.prod(w.shape)) for w in kc.build(keras, "mlp").weights if len(w.shape) == 2]
    for name in kc.MODELS:
        key = f"{name}@{kc.SPARSITIES[-1]}"
        ours, theirs = result["prunekit"][key], result.get("tfmot", {}).get("runs", {}).get(key)
        paths = {f"dense {v}": result["dense"][name]["tflite"][v]["path"] for v in ("float", "int8")}
        paths |= {f"prunekit {v}": ours["tflite"][v]["path"] for v, _, _ in VARIANTS}
        if theirs:
            paths |= {f"tfmot {v}": theirs["tflite"][v]["path"] for v, _, _ in VARIANTS}
        ms = latency(paths, (28, 28, 1) if name == "cnn" else (784,), args.rounds)
        d = result["dense"][name]
        rows = [[".keras dense", d["keras_bytes"], "-", "-", "-"], [".keras dense + gzip", d["keras_gz_bytes"], "-", "-", "-"],
                [f"stripped {kc.SPARSITIES[-1]:.0%} + gzip", ours["stripped_gz_bytes"],
                 theirs["stripped_gz_bytes"] if theirs else "-", "-", "-"],
                ["TFLite dense float", d["tflite"]["float"]["bytes"], "-", both(ms, "dense float"), "-"],
                ["TFLite dense int8", d["tflite"]["int8"]["bytes"], "-", both(ms, "dense int8"), "-"]]
        for v, _, _ in VARIANTS:
            rows.append([f"TFLite {kc.SPARSITIES[-1]:.0%} {v}", ours["tflite"][v]["bytes"],
                         theirs["tflite"][v]["bytes"] if theirs else "-", both(ms, f"prunekit {v}"),
                         both(ms, f"tfmot {v}") if theirs else "-"])
        result["table"][name] = rows
        result.setdefault("latency_ms", {})[name] = ms
    write(result, args.quick)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
