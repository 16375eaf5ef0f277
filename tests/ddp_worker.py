"""Run by tests/test_ddp.py under `torchrun --nproc_per_node=2` (gloo, CPU).

Fine-tunes a small net with DistributedDataParallel and a Pruner whose criterion is seeded by rank,
so ranks would disagree without the Pruner's broadcast. Writes each rank's masks and checks.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn

import prunekit as pk
from prunekit.schedules import PolynomialDecay


def main(out: str, world: int) -> None:
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    pruner = pk.Pruner(model, PolynomialDecay(0.0, 0.75, 0, 12, frequency=3), criterion=pk.criteria.Random(seed=rank),
                       optimizer=opt)
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model  # after the Pruner
    g = torch.Generator().manual_seed(100 + rank)
    zeros_held = True
    for _ in range(20):
        x, y = torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g)
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.step()
        for name, mask in pk.masks(model).items():
            w = model.get_submodule(name.rsplit(".", 1)[0]).weight
            zeros_held &= bool((w[~mask] == 0).all())
    masks = {k.replace(".", "_"): v.to(torch.uint8) for k, v in pk.masks(model).items()}
    save_file(masks, os.path.join(out, f"masks_{world}_{rank}.safetensors"))
    weights = {k.replace(".", "_"): v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, os.path.join(out, f"weights_{world}_{rank}.safetensors"))
    with open(os.path.join(out, f"result_{world}_{rank}.json"), "w") as f:
        json.dump({"sparsity": pk.sparsity_report(model).sparsity, "zeros_held": zeros_held,
                   "updates": [r["step"] for r in pruner.log]}, f)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(os.environ.get("WORLD_SIZE", "1")))
