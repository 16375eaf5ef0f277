"""Pruner under DistributedDataParallel: two CPU processes (gloo) launched with torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

WORKER = os.path.join(os.path.dirname(__file__), "ddp_worker.py")


def _run(cmd, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(WORKER)), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    if done.returncode != 0:  # one retry: a launcher can lose a race for its rendezvous port on a busy machine
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_masks_identical_on_every_rank_and_zeros_hold(tmp_path):
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", WORKER, str(tmp_path)], tmp_path)
    _run([sys.executable, WORKER, str(tmp_path)], tmp_path)
    results = [json.loads((tmp_path / f"result_2_{r}.json").read_text()) for r in (0, 1)]
    single = json.loads((tmp_path / "result_1_0.json").read_text())
    masks = [load_file(str(tmp_path / f"masks_2_{r}.safetensors")) for r in (0, 1)]
    weights = [load_file(str(tmp_path / f"weights_2_{r}.safetensors")) for r in (0, 1)]
    assert masks[0].keys() == masks[1].keys() and len(masks[0]) == 2
    for k in masks[0]:
        assert torch.equal(masks[0][k], masks[1][k]), k  # rank-seeded random scores, yet one mask
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k  # DDP kept the replicas identical
    for r in results:
        assert r["zeros_held"] and r["updates"] == [0, 3, 6, 9, 12]
        assert r["sparsity"] == pytest.approx(single["sparsity"]) == pytest.approx(0.75, abs=1e-3)


def test_pruning_an_already_wrapped_model_is_refused_with_the_fix(tmp_path):
    import torch.distributed as dist
    from torch import nn

    import prunekit as pk
    from tests.helpers import assert_unchanged, snapshot

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        model = nn.Sequential(nn.Linear(4, 4))
        ddp = nn.parallel.DistributedDataParallel(model)
        before = snapshot(model)
        with pytest.raises(TypeError, match="before wrapping"):
            pk.Pruner(ddp, pk.schedules.OneShot(0.5))
        with pytest.raises(ValueError, match="before wrapping it in DistributedDataParallel"):
            pk.prune(ddp, 0.5)
        assert_unchanged(model, before)
    finally:
        dist.destroy_process_group()
