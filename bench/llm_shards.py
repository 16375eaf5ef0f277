"""Memory-bounded one-shot pruning: a Llama-shaped model larger than the memory it is pruned in.

Writes a random-weight Llama-shaped model (hidden 4096, FFN 11008, 32 query / 8 key-value heads,
vocabulary 32000, tied embeddings; 16 blocks = 2.96B parameters, 11.8 GB of float32 safetensors,
one shard per block) to a temporary folder, then prunes it to 50% with Wanda through
``prunekit.recipes.oneshot_shards`` in a child process whose address space is capped
(``RLIMIT_AS``) below the model's size, sampling its resident memory every 5 ms (psutil). The output
is checked shard by shard: exact zero counts per block and every tensor present.

Random weights are enough here: the point is memory, not quality (bench/llm.py measures quality).

Run: ``.venv/bin/python bench/llm_shards.py`` (part of ``make bench``; needs ~24 GB of free disk).
Writes bench/results/llm_shards.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def write_model(folder: str, layers: int, hidden: int, ffn: int) -> int:
    """A random Llama-shaped model, one safetensors shard per block; returns its size in bytes."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                      num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True)
    with torch.device("meta"):
        meta = LlamaForCausalLM(cfg)
    names = [k for k in meta.state_dict() if k != "lm_head.weight"]
    groups: dict[str, list[str]] = {}
    for k in names:
        part = k.split(".")[2] if k.startswith("model.layers.") else "rest"
        groups.setdefault(part, []).append(k)
    os.makedirs(folder)
    weight_map, g = {}, torch.Generator().manual_seed(0)
    shape = dict(meta.state_dict().items())
    for i, (part, keys) in enumerate(groups.items()):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {k: torch.ones(shape[k].shape) if k.endswith("norm.weight")
                   else torch.randn(shape[k].shape, generator=g) * 0.02 for k in keys}
        save_file(tensors, os.path.join(folder, file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, file))
        del tensors
    cfg.save_pretrained(folder)
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in set(weight_map.values()))
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": size}, "weight_map": weight_map}, f)
    return size


def child(src: str, dst: str, cap: int, method: str) -> None:
    """Runs in a capped process: prune, and print peak RSS and time as JSON."""
    import threading

    import psutil

    import prunekit as pk

    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    proc = psutil.Process()
    info = proc.memory_info()
    base, peak, peak_vms, running = info.rss, [info.rss], [info.vms], [True]

    def watch():
        while running[0]:
            info = proc.memory_info()
            peak[0], peak_vms[0] = max(peak[0], info.rss), max(peak_vms[0], info.vms)
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    g = torch.Generator().manual_seed(1)
    batches = [{"input_ids": torch.randint(0, 32000, (4, 128), generator=g)} for _ in range(4)]
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    report = pk.recipes.oneshot_shards(src, dst, batches, method=method, sparsity=0.5)
    seconds = time.perf_counter() - t0
    running[0] = False
    thread.join()
    print(json.dumps({"peak_rss": peak[0], "peak_vms": peak_vms[0], "rss_at_start": base, "seconds": seconds, "sparsity": report.sparsity,
                      "zeros": report.numel - report.nonzeros}))


def check(dst: str) -> dict:
    """Zeros per block in the output, read one shard at a time."""
    from safetensors import safe_open

    index = json.load(open(os.path.join(dst, "model.safetensors.index.json")))
    zeros, numel = 0, 0
    for file in sorted(set(index["weight_map"].values())):
        with safe_open(os.path.join(dst, file), "pt") as f:
            for k in f.keys():
                if k.startswith("model.layers.") and k.endswith("proj.weight"):
                    t = f.get_tensor(k)
                    zeros += int((t == 0).sum())
                    numel += t.numel()
    return {"tensors": len(index["weight_map"]), "zeros": zeros, "numel": numel}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--ffn", type=int, default=11008)
    p.add_argument("--cap-fraction", type=float, default=0.5, help="address-space cap as a fraction of the model")
    p.add_argument("--method", default="wanda")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    p.add_argument("--out", default="llm_shards")
    args = p.parse_args()
    if args.child:
        src, dst, cap, method = args.child
        return child(src, dst, int(cap), method)
    work = tempfile.mkdtemp(prefix="prunekit-shards-", dir=os.environ.get("PRUNEKIT_BENCH_DIR"))
    try:
        t0 = time.perf_counter()
        size = write_model(os.path.join(work, "src"), args.layers, args.hidden, args.ffn)
        write_s = time.perf_counter() - t0
        cap = int(size * args.cap_fraction)
        print(f"model {size / 1e9:.2f} GB written in {write_s:.0f} s; address space capped at {cap / 1e9:.2f} GB",
              flush=True)
        run = subprocess.run([sys.executable, __file__, "--child", os.path.join(work, "src"), os.path.join(work, "dst"),
                              str(cap), args.method], capture_output=True, text=True)
        if run.returncode:
            raise SystemExit(f"the capped run failed:\n{run.stderr[-3000:]}")
        result = json.loads(run.stdout.strip().splitlines()[-1])
        out = check(os.path.join(work, "dst"))
        assert out["zeros"] == result["zeros"] and abs(out["zeros"] / out["numel"] - 0.5) < 1e-3, (out, result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    params = size // 4
    data = {"torch": torch.__version__, "threads": 2, "method": args.method, "sparsity": 0.5, "layers": args.layers,
            "hidden": args.hidden, "ffn": args.ffn, "params": params, "model_bytes": size, "cap_bytes": cap,
            "calibration": "4 x 4 x 128 random tokens", **result, "checked_tensors": out["tensors"]}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{args.out}.json"), "w") as f:
        json.dump(data, f, indent=2)
    md = [
        "# Memory-bounded one-shot pruning (bench/llm_shards.py)", "",
        f"A random-weight Llama-shaped model: {args.layers} blocks, hidden {args.hidden}, FFN {args.ffn}, GQA 32/8 "
        f"heads, vocabulary 32000, tied embeddings; {params / 1e9:.2f}B parameters, {size / 1e9:.2f} GB of float32 "
        "safetensors. `prunekit.recipes.oneshot_shards`, "
        f"{args.method} 50%, in a process whose address space was capped at {cap / 1e9:.2f} GB "
        f"({args.cap_fraction:.0%} of the model's size) with RLIMIT_AS; 2 threads.", "",
        "| model on disk | address-space cap | peak RSS | peak RSS / model | time | sparsity of the blocks |",
        "|---|---|---|---|---|---|",
        f"| {size / 1e9:.2f} GB | {cap / 1e9:.2f} GB | {result['peak_rss'] / 1e9:.2f} GB | "
        f"{result['peak_rss'] / size:.1%} | {result['seconds']:.0f} s | {out['zeros'] / out['numel']:.2%} |", "",
        f"Peak RSS is the whole process (Python, torch and transformers: {result['rss_at_start'] / 1e9:.2f} GB "
        "before pruning started). The output was read back shard by shard: every tensor present, zeros as reported.",
    ]
    with open(os.path.join(RESULTS, f"{args.out}.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
