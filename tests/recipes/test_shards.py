"""oneshot_shards: pruning a saved Hugging Face causal LM one block at a time, into a new folder."""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import os
import weakref

import pytest
import torch

import prunekit as pk
from prunekit.recipes import oneshot, oneshot_shards
from tests.recipes.test_oneshot import calibration, llama, qwen2_sliding

transformers = pytest.importorskip("transformers")


def tree(folder) -> dict[str, str]:
    return {f: hashlib.sha256(open(os.path.join(folder, f), "rb").read()).hexdigest() for f in sorted(os.listdir(folder))}


@pytest.fixture
def saved(tmp_path):
    model = llama(layers=3)
    src = tmp_path / "src"
    model.save_pretrained(src, max_shard_size="60KB")  # several shards, blocks split across them
    assert len([f for f in os.listdir(src) if f.endswith(".safetensors")]) > 2
    return model, src


def batches():
    return [{"input_ids": b} for b in calibration(3)]


@pytest.mark.parametrize("method, pattern, sparsity", [
    ("sparsegpt", "unstructured", 0.5), ("wanda", "unstructured", 0.6), ("magnitude", "unstructured", 0.5),
    ("sparsegpt", "2:4", None), ("wanda", "4:8", None),
])
def test_the_folder_loads_with_from_pretrained_and_matches_pruning_in_memory(saved, tmp_path, method, pattern, sparsity):
    model, src = saved
    before = tree(src)
    report = oneshot_shards(src, tmp_path / "dst", batches(), method=method, sparsity=sparsity, pattern=pattern)
    assert tree(src) == before  # the source is only read
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "dst").eval()
    expected = copy.deepcopy(model)
    oneshot(expected, batches(), method=method, sparsity=sparsity, pattern=pattern)
    pk.finalize(expected)
    got, want = loaded.state_dict(), expected.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k] == 0, want[k] == 0), k  # same zeros
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)
    zeros = sum(int((got[k] == 0).sum()) for k in got if ".layers." in k and k.endswith("proj.weight"))
    assert zeros == report.numel - report.nonzeros and report.sparsity == pytest.approx(0.5 if sparsity is None else sparsity, abs=1e-3)
    assert loaded.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False).shape == (1, 7)


def test_dtypes_on_disk_are_kept_and_zeros_stay_zero_in_bf16(tmp_path):
    model = llama(layers=2).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "src")
    report = oneshot_shards(tmp_path / "src", tmp_path / "dst", batches(), method="wanda", sparsity=0.5)
    from safetensors import safe_open

    index = json.load(open(tmp_path / "dst" / "model.safetensors.index.json"))
    zeros = 0
    for name, file in index["weight_map"].items():
        with safe_open(str(tmp_path / "dst" / file), "pt") as f:
            t = f.get_tensor(name)
        assert t.dtype == torch.bfloat16, name
        if ".layers." in name and name.endswith("proj.weight"):
            zeros += int((t == 0).sum())
    assert zeros == report.numel - report.nonzeros > 0


def test_one_block_is_held_at_a_time(saved, tmp_path, monkeypatch):
    import prunekit.recipes.shards as shards

    real, alive = shards._materialize, []

    def tracked(*args):
        gc.collect()
        assert sum(ref() is not None for ref in alive) == 0, "an earlier block is still in memory"
        block, dtypes = real(*args)
        alive.append(weakref.ref(block))
        return block, dtypes

    monkeypatch.setattr(shards, "_materialize", tracked)
    oneshot_shards(saved[1], tmp_path / "dst", batches(), method="sparsegpt", sparsity=0.5)
    assert len(alive) == 3


def test_a_failure_part_way_leaves_no_folder_and_the_source_untouched(saved, tmp_path, monkeypatch):
    import sys

    one = sys.modules["prunekit.recipes.oneshot"]  # the package re-exports the function under this name
    real, calls = one.sparsegpt_prune, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 10:
            raise RuntimeError("out of memory in the second block")
        return real(*args, **kwargs)

    monkeypatch.setattr(one, "sparsegpt_prune", flaky)
    before = tree(saved[1])
    with pytest.raises(RuntimeError, match="second block"):
        oneshot_shards(saved[1], tmp_path / "dst", batches(), method="sparsegpt", sparsity=0.5)
    assert not (tmp_path / "dst").exists()
    assert sorted(os.listdir(tmp_path)) == ["src"]  # no temporary folder left behind
    assert tree(saved[1]) == before


def _edit_config(src, **changes):
    cfg = json.load(open(src / "config.json"))
    cfg.update(changes)
    json.dump(cfg, open(src / "config.json", "w"))


@pytest.mark.parametrize("setup, kwargs, words", [
    (None, {"dst": "exists"}, "exists; pass a new folder"),
    (None, {"data": []}, "data is empty"),
    (None, {"method": "obs"}, "method='obs' is unknown"),
    (None, {"layer_sparsity": "owl"}, "'owl' needs a dense pass"),
    (None, {"layer_sparsity": [0.5, 0.5]}, "2 values for the model's 3 blocks"),
    (None, {"pattern": "2:4", "sparsity": 0.3}, "always gives sparsity 0.5"),
    (None, {"percdamp": -0.1}, "percdamp=-0.1 in"),
    ("hidden", {}, "do not match its config.json"),
    ("layers", {}, r"missing: \['model.layers.3"),
    ("no-config", {}, "no config.json"),
])
def test_bad_input_names_the_argument_and_writes_nothing(saved, tmp_path, setup, kwargs, words):
    src = saved[1]
    if setup == "hidden":
        _edit_config(src, intermediate_size=96)
    elif setup == "layers":
        _edit_config(src, num_hidden_layers=4)
    elif setup == "no-config":
        os.remove(src / "config.json")
    dst = tmp_path / "dst"
    if kwargs.pop("dst", None):
        dst.mkdir()
        (dst / "keep.txt").write_text("mine")
    before, listing = tree(src), sorted(os.listdir(tmp_path))
    args = {"data": batches(), "method": "sparsegpt", "sparsity": 0.5, **kwargs}
    with pytest.raises(ValueError, match=words):
        oneshot_shards(src, dst, **args)
    assert tree(src) == before and sorted(os.listdir(tmp_path)) == listing
    if (dst / "keep.txt").exists():
        assert (dst / "keep.txt").read_text() == "mine"


def gpt_neo():
    """GPT-Neo's blocks hold buffers the checkpoint does not store (each layer's causal mask, local or global)."""
    torch.manual_seed(0)
    cfg = transformers.GPTNeoConfig(vocab_size=96, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                                    attention_types=[[["global", "local"], 1]], window_size=4, max_position_embeddings=64)
    return transformers.GPTNeoForCausalLM(cfg).eval()


@pytest.mark.parametrize("make", [gpt_neo, qwen2_sliding], ids=["gpt-neo", "qwen2-sliding-window"])
def test_models_with_per_layer_masks_prune_as_in_memory(tmp_path, make):
    model = make()
    model.save_pretrained(tmp_path / "src")
    oneshot_shards(tmp_path / "src", tmp_path / "dst", batches(), method="sparsegpt", sparsity=0.5)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "dst").eval()
    expected = copy.deepcopy(model)
    oneshot(expected, batches(), method="sparsegpt", sparsity=0.5)
    pk.finalize(expected)
    got, want = loaded.state_dict(), expected.state_dict()
    for k in want:
        assert torch.equal(got[k] == 0, want[k] == 0), k
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)


def test_config_and_tokenizer_files_are_copied_other_weights_are_not(saved, tmp_path):
    src = saved[1]
    (src / "tokenizer.json").write_text('{"version": "1.0"}')
    (src / "pytorch_model.bin").write_bytes(b"dense weights")
    oneshot_shards(src, tmp_path / "dst", batches(), method="magnitude", sparsity=0.5)
    names = set(os.listdir(tmp_path / "dst"))
    assert {"config.json", "tokenizer.json", "model.safetensors.index.json"} <= names
    assert "pytorch_model.bin" not in names and not any(n.startswith(".prunekit-") for n in os.listdir(tmp_path))


def test_work_folders_of_killed_runs_are_removed_by_the_next_run(saved, tmp_path):
    """A run killed outright cannot clean up; the next run for the same dst removes its folder, and only
    folders whose owner process is gone (a live run's folder, another host's, or another dst's stay)."""
    import socket
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid no longer runs
    host = socket.gethostname()
    folders = {"killed": (".prunekit-dst-killed", f"{host} {dead.pid}"),
               "live": (".prunekit-dst-live", f"{host} {os.getpid()}"),
               "other host": (".prunekit-dst-remote", f"elsewhere {dead.pid}"),
               "other dst": (".prunekit-dst2-x", f"{host} {dead.pid}")}
    for folder, owner in folders.values():
        (tmp_path / folder).mkdir()
        (tmp_path / folder / ".owner").write_text(owner)
    with pytest.warns(UserWarning, match="stopped before it finished"):
        oneshot_shards(saved[1], tmp_path / "dst", batches(), method="magnitude", sparsity=0.5, progress=False)
    left = {name for name, (folder, _) in folders.items() if (tmp_path / folder).exists()}
    assert left == {"live", "other host", "other dst"}
    assert not (tmp_path / "dst" / ".owner").exists()  # the finished folder does not name an owner
    assert not [e for e in os.listdir(tmp_path) if e.startswith(".prunekit-dst-") and "live" not in e
                and "remote" not in e]  # this run's own work folder became dst
