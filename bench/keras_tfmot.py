"""The TF-MOT 0.8.1 side of bench/keras_vs_tfmot.py, run by it in its own venv (.venv-tfmot: tensorflow-cpu,
tf_keras, tensorflow-model-optimization; TF-MOT needs Keras 2). Same models, starting weights, data,
schedule and steps as the prunekit.keras side; writes <work>/tfmot.json and TFLite files there.

Run: ``.venv-tfmot/bin/python bench/keras_tfmot.py --work DIR [--quick]`` (bench/keras_vs_tfmot.py does it)."""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # TF-MOT works with tf_keras (Keras 2) only
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras_common as kc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras  # noqa: E402
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude  # noqa: E402

sparsity_api = tfmot.sparsity.keras


def masks_of(model):
    return [m.numpy() for layer in model.layers if isinstance(layer, PruneLowMagnitude)
            for _, m, _ in layer.pruning_vars]


def tflite(model, path: str, quantize: bool, sparse: bool) -> int:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = ([tf.lite.Optimize.DEFAULT] if quantize else []) + (
        [tf.lite.Optimize.EXPERIMENTAL_SPARSITY] if sparse else [])
    data = converter.convert()
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


def run(work: str, quick: bool, train: int) -> dict:
    xtr, ytr, xte, yte = kc.data(quick, train)
    out = {"tensorflow": tf.__version__, "tf_keras": tf_keras.__version__, "tfmot": tfmot.__version__, "runs": {}}
    for name in kc.MODELS:
        weights = np.load(os.path.join(work, f"dense_{name}.npz"))
        dense = kc.build(tf_keras, name)
        dense.set_weights([weights[f"w{i}"] for i in range(len(weights.files))])
        x, xt = kc.shaped(name, xtr), kc.shaped(name, xte)
        kc.compile_(tf_keras, dense)
        for s in kc.SPARSITIES:
            def fresh():
                model = kc.build(tf_keras, name)
                model.set_weights([weights[f"w{i}"] for i in range(len(weights.files))])
                return model

            accs, (first, first_pruned, first_stripped) = kc.pruning_runs(tf_keras, sparsity_api, fresh, masks_of, s,
                                                                          x, ytr, xt, yte)
            dense_s, pruned_s = kc.interleaved_step_times(tf_keras, dense, first_pruned, x, ytr,
                                                          [sparsity_api.UpdatePruningStep()])
            h5 = os.path.join(work, f"tfmot_{name}_{s}.h5")
            first_stripped.save(h5, include_optimizer=False)
            files = {}
            for variant, q, sp in (("float", False, False), ("float_sparse", False, True),
                                   ("int8", True, False), ("int8_sparse", True, True)):
                path = os.path.join(work, f"tfmot_{name}_{s}_{variant}.tflite")
                files[variant] = {"path": path, "bytes": tflite(first_stripped, path, q, sp)}
            out["runs"][f"{name}@{s}"] = {
                "accuracy": kc.summary(accs),
                "zeros_per_step": first.zeros,
                "step_s": pruned_s,
                "dense_step_s": dense_s,
                "stripped_gz_bytes": kc.gz_size(h5),
                "tflite": files,
            }
            print(f"tfmot {name}@{s}: acc {accs}", flush=True)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--train", type=int, default=60000)
    args = ap.parse_args()
    result = run(args.work, args.quick, args.train)
    with open(os.path.join(args.work, "tfmot.json"), "w") as f:
        json.dump(result, f)
