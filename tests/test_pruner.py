"""Pruner: schedule-driven updates, zeros through optimizers, resume bit for bit, logs, errors."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.schedules import Constant, Geometric, OneShot, PolynomialDecay
from tests.helpers import Net, assert_unchanged, snapshot


def _data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, 4, 4, generator=g), torch.randint(0, 8, (4,), generator=g)) for _ in range(n)]


def _train(model, opt, pruner, batches, accumulate=1, check=None):
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for i, (x, y) in enumerate(batches):
        (loss_fn(model(x), y) / accumulate).backward()
        if (i + 1) % accumulate == 0:
            opt.step()
            opt.zero_grad()
            pruner.step()
            if check:
                check()


def test_updates_follow_the_schedule_and_reach_the_final_sparsity():
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    pruner = pk.Pruner(model, PolynomialDecay(0.0, 0.8, begin_step=0, end_step=20, frequency=5), optimizer=opt)
    _train(model, opt, pruner, _data(30))
    assert [r["step"] for r in pruner.log] == [0, 5, 10, 15, 20]
    for r in pruner.log:
        assert r["sparsity"] == pytest.approx(r["target"], abs=1e-3)
    assert pk.sparsity_report(model).sparsity == pytest.approx(0.8, abs=1e-3)
    assert pruner.step_count == 30


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
        lambda p: torch.optim.Adam(p, lr=1e-2),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    ],
    ids=["sgd-momentum", "adam", "adamw-wd"],
)
def test_zeros_stay_zero_between_updates_and_optimizer_state_is_cleared(make_opt):
    torch.manual_seed(0)
    model = Net()
    opt = make_opt(model.parameters())
    pruner = pk.Pruner(model, Constant(0.7, begin_step=0, frequency=50), optimizer=opt)
    counts = []

    def check():
        rep = pk.sparsity_report(model)
        counts.append(rep.nonzeros)
        for name, mask in pk.masks(model).items():
            w = model.get_submodule(name.rsplit(".", 1)[0]).weight
            assert bool((w[~mask] == 0).all())

    _train(model, opt, pruner, _data(40), accumulate=2, check=check)
    assert max(counts) <= round(0.3 * pk.sparsity_report(model).numel)
    for name, mask in pk.masks(model).items():
        param = model.get_submodule(name.rsplit(".", 1)[0]).parametrizations.weight.original
        assert float(param.detach()[~mask].abs().max()) == 0.0  # the stored original too
        for value in opt.state[param].values():
            if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                assert float(value[~mask].abs().max()) == 0.0  # momentum / moments never picked up again


def test_optimizer_state_at_pruned_entries_is_zeroed_on_update():
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = pk.Pruner(model, OneShot(0.6, at_step=5), optimizer=opt)
    _train(model, opt, pruner, _data(6))
    mask = pk.masks(model)["fc1.weight"]
    buf = opt.state[model.fc1.parametrizations.weight.original]["momentum_buffer"]
    assert float(buf[~mask].abs().max()) == 0.0 and float(buf[mask].abs().max()) > 0.0


def test_resume_from_checkpoint_is_bit_identical(tmp_path):
    def run(stop_at=None, resume=None):
        torch.manual_seed(0)
        model = Net()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        pruner = pk.Pruner(model, PolynomialDecay(0.0, 0.85, 0, 24, frequency=4), optimizer=opt)
        batches = _data(30)
        if resume is not None:
            ckpt = torch.load(resume, weights_only=True)
            pruner.load_state_dict(ckpt["pruner"])
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["opt"])
            batches = batches[ckpt["pruner"]["step"]:]
        elif stop_at is not None:
            batches = batches[:stop_at]
        _train(model, opt, pruner, batches)
        return model, opt, pruner

    full, _, _ = run()
    half, opt, pruner = run(stop_at=13)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": half.state_dict(), "opt": opt.state_dict(), "pruner": pruner.state_dict()}, path)
    resumed, _, rp = run(resume=path)
    assert rp.step_count == 30
    for k, v in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k


def test_logs_csv_jsonl_tensorboard_and_plot(tmp_path):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    pruner = pk.Pruner(model, Geometric(0.9, rounds=3, steps_per_round=4), log_dir=tmp_path)
    _train(model, opt, pruner, _data(12))
    lines = (tmp_path / "pruning_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 4, 8]
    rows = list(csv.DictReader(open(tmp_path / "pruning_log.csv")))
    assert {r["layer"] for r in rows} == {"(all)", "conv.weight", "fc1.weight", "fc2.weight"}
    final = [r for r in rows if r["step"] == "8" and r["layer"] == "(all)"][0]
    assert float(final["sparsity"]) == pytest.approx(0.9, abs=1e-3)
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path))
    png = pruner.plot(tmp_path / "sparsity.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_n_m_pattern_ignores_schedule_values():
    model = nn.Sequential(nn.Linear(8, 8))
    pruner = pk.Pruner(model, OneShot(0.3), pattern="2:4")
    pruner.step()
    assert pk.sparsity_report(model).sparsity == 0.5


def test_step_after_finalize_is_an_error():
    model = Net()
    pruner = pk.Pruner(model, Constant(0.5, frequency=1))
    pruner.step()
    pk.finalize(model)
    with pytest.raises(RuntimeError, match="after prunekit.finalize"):
        pruner.step()


def test_bad_arguments_and_foreign_state_change_nothing():
    model = Net()
    before = snapshot(model)
    with pytest.raises(TypeError, match="schedule must be"):
        pk.Pruner(model, 0.5)
    with pytest.raises(ValueError, match="include=.nope. matches no module"):
        pk.Pruner(model, OneShot(0.5), include="nope")
    with pytest.raises(ValueError, match="'layer'"):
        pk.Pruner(model, OneShot(0.5), scope="net")
    with pytest.raises(TypeError, match="optimizer"):
        pk.Pruner(model, OneShot(0.5), optimizer="sgd")
    assert_unchanged(model, before)

    other = nn.Sequential(nn.Linear(4, 4))
    donor = pk.Pruner(other, OneShot(0.5))
    donor.step()
    pruner = pk.Pruner(model, OneShot(0.5))  # arms all-kept masks
    armed = snapshot(model)
    assert pk.sparsity_report(model).sparsity == 0.0 and len(pk.masks(model)) == 3
    with pytest.raises(ValueError, match="another model"):
        pruner.load_state_dict(donor.state_dict())
    with pytest.raises(ValueError, match="schedule"):
        pk.Pruner(model, OneShot(0.6)).load_state_dict(pruner.state_dict())
    assert_unchanged(model, armed)


def test_masks_live_on_the_weights_device():
    """The Pruner made CPU masks whatever the weights' device (meta failed; CUDA would have)."""
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    pk.Pruner(model, OneShot(0.5))
    assert all(m.device.type == "meta" for m in pk.masks(model).values())
    assert model[0].weight.device.type == "meta"
