"""Fuzzing the public API and the CLI: a clear error naming the argument, or a correct result, and on
error the model and the files on disk exactly as they were.

The CI profile runs a bounded number of examples; ``make bench`` runs the ``thorough`` profile
(``HYPOTHESIS_PROFILE=thorough``).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import prunekit as pk
from prunekit.cli import main
from tests.helpers import Net, assert_unchanged, snapshot

ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError)
slow = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)

numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3),
                    st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0, np.float32(0.7), True]))
sparsities = st.one_of(st.none(), numbers, st.just("0.5"),
                       st.dictionaries(st.sampled_from(["fc1", "fc*", "conv", "nope", "*.bias"]), numbers, max_size=2))
patterns = st.sampled_from(["unstructured", "2:4", "4:8", "1:2", "block:1x4", "block:2x2", "block:3x3", "channel",
                            "3:2", "1:1", "block:0x4", "diagonal", "", 7])
criteria = st.sampled_from(["magnitude", "l2", "random", "taylor", "wanda", "bogus", 3])
scopes = st.sampled_from(["global", "layer", "model", None])
selectors = st.sampled_from([None, "fc1", "fc*", "*.bias", "conv", "nope*", nn.Linear, nn.Conv2d, nn.Embedding,
                             ["fc1", "conv"], ["fc1", "missing"], lambda m, n: n.startswith("fc"), 42])


def _arg_named(message: str, kwargs: dict) -> bool:
    """The error names one of the arguments given, or says which batch/parameter is wrong."""
    return any(name in message for name in kwargs) or "calibration" in message or "data" in message


@slow
@given(sparsity=sparsities, pattern=patterns, criterion=criteria, scope=scopes, include=selectors, exclude=selectors)
def test_prune_gives_a_correct_result_or_a_named_error(sparsity, pattern, criterion, scope, include, exclude):
    torch.manual_seed(0)
    model = Net()
    before = snapshot(model)
    kwargs = dict(sparsity=sparsity, pattern=pattern, criterion=criterion, scope=scope, include=include,
                  exclude=exclude)
    x = torch.randn(2, 3, 4, 4)
    data = [(x, torch.randint(0, 8, (2,)))] if criterion in ("taylor", "wanda") else None
    try:
        report = pk.prune(model, data=data, loss_fn=nn.CrossEntropyLoss() if data else None, **kwargs)
    except ERRORS as e:
        assert _arg_named(str(e), kwargs), f"{type(e).__name__}: {e}"
        assert_unchanged(model, before)
        return
    masked = pk.masks(model)
    assert masked, "a successful prune attached masks"
    assert report.nonzeros == pk.sparsity_report(model).nonzeros
    for name, mask in masked.items():
        weight = model.get_submodule(name.rsplit(".", 1)[0]).weight if name.endswith("weight") else None
        if weight is not None:
            assert bool((weight.detach()[~mask] == 0).all())
    if pattern == "unstructured" and scope == "layer" and isinstance(sparsity, float):
        for row in report.rows:
            if row.name in masked:
                assert row.numel - row.nonzeros >= round(sparsity * row.numel)


file_paths = st.sampled_from(["ok", "folder", "missing/ok", 42, ""])


@slow
@given(where=file_paths, quantize=st.sampled_from([None, "int8", "int4", "fp8", 1]),
       compress=st.sampled_from([None, "lzma", "zip"]))
def test_save_and_load_round_trip_or_refuse_without_touching_disk(tmp_path_factory, where, quantize, compress):
    folder = tmp_path_factory.mktemp("files")
    model = Net()
    pk.prune(model, 0.6)
    path = {"ok": folder / "m.pk", "folder": folder, "missing/ok": folder / "missing" / "m.pk"}.get(where, where)
    kwargs = dict(path=path, quantize=quantize, compress=compress)
    try:
        info = pk.save(model, path, quantize=quantize, compress=compress)
    except ERRORS as e:
        assert _arg_named(str(e), kwargs), f"{type(e).__name__}: {e}"
        assert os.listdir(folder) == []
        return
    fresh = pk.load(info.path, Net())
    for name, mask in pk.masks(model).items():
        assert torch.equal(pk.masks(fresh)[name], mask)
    if quantize is None:
        assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


@slow
@given(sparsity=st.one_of(st.none(), numbers), round_to=st.sampled_from([None, 1, 4, 8, 0, -1, 2.5, True]),
       scope=st.sampled_from(["layer", "global", "all"]), criterion=st.sampled_from(["l1", "l2", "fpgm", "bn_scale", "?"]),
       target_macs=st.sampled_from([None, 0.5, 1.0, 2.0, 10 ** 9, 100_000, -1]))
def test_prune_channels_gives_a_working_smaller_model_or_a_named_error(sparsity, round_to, scope, criterion, target_macs):
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(1, 3, 4, 4)
    before = snapshot(model)
    kwargs = dict(sparsity=sparsity, round_to=round_to, scope=scope, criterion=criterion, target_macs=target_macs)
    try:
        report = pk.structured.prune_channels(model, x, **kwargs)
    except ERRORS as e:
        assert _arg_named(str(e), kwargs) or "exactly one of" in str(e), f"{type(e).__name__}: {e}"
        assert_unchanged(model, before)
        return
    assert model(x).shape == (1, 8)
    assert report.macs[1] <= report.macs[0]


@slow
@given(repeats=st.sampled_from([1, 2, 0, -1, 2.5, None]), threads=st.sampled_from([None, 1, 2, 0, -1, "2"]),
       warmup=st.sampled_from([0, 1, -1]), batch_sizes=st.sampled_from([(1,), (1, 2), (), (0,), ("a",), 3]))
def test_measurements_run_or_name_their_argument(repeats, threads, warmup, batch_sizes):
    model = nn.Linear(8, 4).eval()
    x = torch.randn(1, 8)
    before = torch.get_num_threads()
    kwargs = dict(repeats=repeats, threads=threads, warmup=warmup)
    try:
        result = pk.compare({"a": model, "b": model}, x, min_block_s=0.0, **kwargs)
        assert result["b"].rel_err == 0.0 and len(result["a"].samples) == repeats
    except ERRORS as e:
        assert _arg_named(str(e), kwargs), f"{type(e).__name__}: {e}"
    try:
        bench = pk.benchmark(model, x, batch_sizes=batch_sizes, threads=threads, min_time_s=0.0, min_iters=2,
                             warmup_s=0.0)
        assert [r["batch"] for r in bench.rows] == list(batch_sizes)
    except ERRORS as e:
        assert _arg_named(str(e), dict(batch_sizes=batch_sizes, threads=threads)), f"{type(e).__name__}: {e}"
    assert torch.get_num_threads() == before


@slow
@given(schedule=st.sampled_from(["const", "poly", "bad-poly", "oneshot", "geometric", "str"]),
       steps=st.integers(0, 12), pattern=patterns)
def test_pruner_follows_its_schedule_or_refuses_before_training(schedule, steps, pattern):
    from prunekit import schedules as S

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8))
    before = snapshot(model)
    try:
        sched = {"const": lambda: S.Constant(0.5, 0, -1, 2), "poly": lambda: S.PolynomialDecay(0.1, 0.8, 0, 6, frequency=2),
                 "bad-poly": lambda: S.PolynomialDecay(0.9, 0.1, 5, 2, frequency=0), "oneshot": lambda: S.OneShot(0.75, 3),
                 "geometric": lambda: S.Geometric(0.5, 3, 2), "str": lambda: "PolynomialDecay"}[schedule]()
        pruner = pk.Pruner(model, sched, pattern=pattern)
    except ERRORS as e:
        assert any(w in str(e) for w in ("sparsity", "step", "frequency", "schedule", "pattern", "rate", "rounds")), e
        assert_unchanged(model, before)
        return
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        model(torch.randn(4, 16)).sum().backward()
        opt.step()
        opt.zero_grad()
        pruner.step()
    if pruner.log:
        expected = pruner.log[-1]["target"]
        assert pk.sparsity_report(model).sparsity == pytest.approx(expected, abs=0.02)


recipe_values = st.one_of(st.sampled_from(["OneShot", "PolynomialDecay", "Constant", "Geometric", "Cosine", "0.5", "-1",
                                            "[a, b]", "{}", "!!python/name:os.system", "null", "1e400"]),
                          st.text(alphabet="ab:{}[], -0.9", max_size=12))


@slow
@given(kind=recipe_values, sparsity=recipe_values, extra=st.sampled_from(["", "criterion: l2", "pattern: 2:4",
                                                                           "scope: layer", "include: fc*", "bogus: 1"]))
def test_recipe_text_gives_a_recipe_or_a_value_error(kind, sparsity, extra):
    from prunekit.recipes import Recipe

    text = f"schedule: {{type: {kind}, sparsity: {sparsity}}}\n{extra}\n"
    try:
        recipe = Recipe.from_yaml(text)
    except ValueError as e:
        assert any(w in str(e) for w in ("recipe", "schedule", "sparsity", "YAML", "criterion", "pattern")), e
        return
    assert recipe.schedule.sparsity_at(10 ** 6) < 1.0


@slow
@given(method=st.sampled_from(["sparsegpt", "wanda", "magnitude", "obs"]), sparsity=st.one_of(st.none(), numbers),
       pattern=st.sampled_from(["unstructured", "2:4", "4:8", "block:1x4", "3:2"]),
       blocksize=st.sampled_from([1, 16, 128, 0]), percdamp=st.sampled_from([0.0, 0.01, 1.0, -0.1]),
       batches=st.sampled_from(["tensors", "empty", "wrong-width", "pairs"]),
       layer_sparsity=st.sampled_from(["uniform", "owl", "balanced", (0.5, 0.5)]))
def test_oneshot_prunes_exactly_or_refuses_unchanged(method, sparsity, pattern, blocksize, percdamp, batches,
                                                     layer_sparsity):
    from prunekit.recipes import oneshot

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    before = snapshot(model)
    data = {"tensors": [torch.randn(4, 16)] * 2, "empty": [], "wrong-width": [torch.randn(4, 15)],
            "pairs": [(torch.randn(4, 16), torch.zeros(4))]}[batches]
    kwargs = dict(method=method, sparsity=sparsity, pattern=pattern, blocksize=blocksize, percdamp=percdamp,
                  layer_sparsity=layer_sparsity)
    try:
        with __import__("warnings").catch_warnings():
            __import__("warnings").simplefilter("ignore")
            report = oneshot(model, data, **kwargs)
    except ERRORS as e:
        assert _arg_named(str(e), kwargs), f"{type(e).__name__}: {e}"
        assert_unchanged(model, before)
        return
    s = 0.5 if sparsity is None else float(sparsity)
    for row in report.rows:
        assert row.numel - row.nonzeros >= round(s * row.numel) - 1, row



@slow
@given(method=st.sampled_from(["sparsegpt", "wanda", "magnitude", "obs"]), sparsity=st.one_of(st.none(), numbers),
       pattern=st.sampled_from(["unstructured", "2:4", "block:1x4"]),
       layer_sparsity=st.sampled_from(["uniform", "owl", (0.3, 0.6), (0.5,)]),
       dst=st.sampled_from(["new", "exists", "nested-missing"]), batches=st.sampled_from(["tokens", "empty", "none"]))
def test_oneshot_shards_writes_a_loadable_folder_or_nothing(tmp_path_factory, method, sparsity, pattern, layer_sparsity,
                                                            dst, batches):
    transformers = pytest.importorskip("transformers")
    from prunekit.recipes import oneshot_shards
    from tests.recipes.test_oneshot import llama

    root = tmp_path_factory.mktemp("shards")
    llama().save_pretrained(root / "src", max_shard_size="60KB")
    before = {f: (root / "src" / f).read_bytes() for f in os.listdir(root / "src")}
    out = {"new": root / "dst", "exists": root / "src", "nested-missing": root / "no" / "dst"}[dst]
    data = {"tokens": [{"input_ids": torch.randint(0, 96, (2, 8))}] * 2, "empty": [], "none": None}[batches]
    kwargs = dict(method=method, sparsity=sparsity, pattern=pattern, layer_sparsity=layer_sparsity, dst=out)
    try:
        report = oneshot_shards(root / "src", out, data, method=method, sparsity=sparsity, pattern=pattern,
                                layer_sparsity=layer_sparsity)
    except ERRORS as e:
        assert _arg_named(str(e), kwargs), f"{type(e).__name__}: {e}"
        assert {f: (root / "src" / f).read_bytes() for f in os.listdir(root / "src")} == before
        assert sorted(p.name for p in root.iterdir()) == ["src"]  # nothing written, no temporary folder
        return
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    zeros = sum(int((m.weight == 0).sum()) for m in model.model.layers.modules() if isinstance(m, nn.Linear))
    assert zeros == report.numel - report.nonzeros
    wanted = 0.5 if pattern != "unstructured" else (
        float(sparsity) if layer_sparsity == "uniform" else sum(layer_sparsity) / len(layer_sparsity))
    assert report.sparsity == pytest.approx(wanted, abs=2e-3)  # both blocks have the same size

FACTORY = '''
import torch
from torch import nn

def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
'''

flags = {
    "--sparsity": ["0.5", "0.9", "1.5", "-1", "x", "nan"],
    "--pattern": ["2:4", "block:1x4", "channel", "3:2", "zz"],
    "--structured": ["0.5", "2", "q"],
    "--quantize": ["int8", "int4", "fp4"],
    "--input": ["1x8", "2x8", "1x7", "0x8", "ids=1x8:int64", "1xq", "1x8:cfloat"],
    "--exclude": ["0", "nope"],
    "--batch-sizes": ["1", "1,2", "a", "0", "-3"],
    "--threads": ["1", "0", "-2"],
    "--round-to": ["8", "0"],
}
commands = {"prune": ["--sparsity", "--pattern", "--structured", "--quantize", "--input", "--exclude", "--round-to"],
            "export": ["--input", "--quantize"], "report": [], "bench": ["--input", "--batch-sizes", "--threads"]}


@slow
@given(data=st.data())
def test_cli_succeeds_or_prints_one_line_and_leaves_files_alone(tmp_path_factory, capsys, data):
    pytest.importorskip("onnxruntime")
    folder = tmp_path_factory.mktemp("cli")
    (folder / "models.py").write_text(FACTORY)
    model = f"{folder / 'models.py'}:tiny"
    assert main(["prune", model, "--sparsity", "0.5", "--out", str(folder / "m.pk")]) == 0
    assert main(["export", model, "--input", "1x8", "--out", str(folder / "m.onnx")]) == 0
    capsys.readouterr()
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    command = data.draw(st.sampled_from(sorted(commands)))
    target = {"prune": model, "export": model, "report": str(folder / "m.pk"), "bench": str(folder / "m.onnx")}
    argv = [command, data.draw(st.sampled_from([target[command], str(folder), "missing.pk"]))]
    for flag in data.draw(st.lists(st.sampled_from(commands[command]), unique=True, max_size=3)) if commands[command] else []:
        argv += [flag, data.draw(st.sampled_from(flags[flag]))]
    out = data.draw(st.sampled_from(["new.out", "m.pk", "", "missing/x.out"]))
    if command in ("prune", "export") or (command == "bench" and data.draw(st.booleans())):
        argv += ["--out" if command != "bench" else "--json", str(folder / out) if out else str(folder)]
    if command == "export" and data.draw(st.booleans()):
        argv += ["--weights", str(folder / data.draw(st.sampled_from(["m.pk", "m.onnx", "nope.pk"])))]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors (a flag's choices): exit 2, usage on stderr
        assert e.code == 2, argv
        code = None
    err = capsys.readouterr().err.strip().splitlines()
    if code == 0:
        return
    if code is not None:
        assert code == 2, (argv, err)
        errors = [line for line in err if line.startswith("prunekit ")]
        assert len(errors) == 1 and "Traceback" not in "\n".join(err), (argv, err)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files, argv


def test_fuzz_helpers_accept_real_names():
    """_arg_named must not accept anything: an error without the argument's name fails the fuzzers."""
    assert _arg_named("sparsity=1.5 is outside [0, 1)", {"sparsity": 1.5})
    assert not _arg_named("something broke", {"sparsity": 1.5})
    assert math.isnan(float("nan"))
