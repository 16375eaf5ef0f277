"""Recovery: prune a model while it learns to match the dense model it came from (knowledge distillation).

One loop, for Hugging Face models and plain ``nn.Module``s alike: the student is trained to give the
teacher's outputs (KL on logits, cosine or MSE otherwise) and the teacher's hidden state after every
repeated block (MSE, each block scaled by the teacher's variance), while a :class:`prunekit.Pruner`
raises its sparsity on a cubic ramp (Zhu & Gupta) with any criterion. ``criterion="sparsegpt"``
re-runs one-shot SparseGPT at each mask update (second-order information inside the ramp, as
oBERT-style gradual pruning does). ``quantize="int8"`` rounds weights and activations the way the
int8 kernels will for the last part of recovery, so int8 on top costs no quality. A step or time
budget, evaluation every N steps, a checkpoint that resumes bit for bit, a progress bar and
CSV/TensorBoard logs.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import time
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from prunekit._checks import fraction, integer
from prunekit._io import check_output_path
from prunekit._progress import progress as progress_bar
from prunekit.inputs import modes
from prunekit.masks import masks
from prunekit.patterns import NM, get_pattern
from prunekit.pruner import Pruner
from prunekit.recipes.distill import (
    OUTPUT_LOSSES,
    Capture,
    FakeQuant,
    check_pair,
    hidden_loss,
    output_loss,
    output_of,
    teacher_targets,
)
from prunekit.recipes.oneshot import find_blocks, oneshot
from prunekit.recipes.recovery_io import Batches, RecoveryLog, load_checkpoint, save_checkpoint
from prunekit.schedules import OneShot, PolynomialDecay
from prunekit.targets import Selector, find_targets

__all__ = ["recover", "RecoveryResult"]


@dataclass
class RecoveryResult:
    """What :func:`recover` did: ``history`` (one row per logged step: ``step``, ``loss``,
    ``output_loss``, ``hidden_loss``, ``sparsity`` of the targeted weights, ``lr``, ``seconds``, and
    ``metric`` where ``eval_fn`` ran), ``steps`` taken, ``seconds``, ``steps_per_minute``, the final
    ``sparsity`` and ``metric``."""

    history: list[dict] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    steps_per_minute: float = 0.0
    sparsity: float = 0.0
    metric: float | None = None

    def __str__(self) -> str:
        metric = "" if self.metric is None else f", metric {self.metric:.4f}"
        return (f"recovered {self.steps} steps in {self.seconds:.0f} s ({self.steps_per_minute:.1f} steps/min), "
                f"sparsity {self.sparsity:.1%}{metric}")


def _sparsity(targets) -> float:
    total = sum(t.param.numel() for t in targets)
    with torch.no_grad():
        zeros = sum(int((getattr(t.module, t.name) == 0).sum()) for t in targets)
    return zeros / total if total else 0.0


def _default_include(student: nn.Module) -> Selector:
    found = find_blocks(student)
    if found is None:
        return None  # prune's default: every Linear and Conv weight
    inside = {id(m) for m in found[1].modules()}
    return lambda module, fqn: isinstance(module, nn.Linear) and id(module) in inside


def _bf16(autocast) -> bool:
    if autocast == "auto":
        return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
    if not isinstance(autocast, bool):
        raise ValueError(f"autocast={autocast!r} must be 'auto', True (bf16) or False")
    return autocast


def recover(
    student: nn.Module,
    teacher: nn.Module,
    data: Iterable[Any],
    sparsity: float | None = None,
    pattern: str = "unstructured",
    criterion: Any = "magnitude",
    scope: str = "global",
    include: Selector = None,
    exclude: Selector = None,
    steps: int | None = None,
    budget_s: float | None = None,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    ramp: float = 0.6,
    updates: int = 20,
    output_loss_kind: str = "auto",
    output_weight: float = 1.0,
    hidden_weight: float = 1.0,
    temperature: float = 1.0,
    outputs: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    quantize: str | None = None,
    quantize_from: float = 0.8,
    eval_fn: Callable[[nn.Module], float] | None = None,
    eval_every: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    log_dir: str | os.PathLike | None = None,
    autocast: bool | str = "auto",
    cache_teacher: bool = True,
    calibration_batches: int = 8,
    seed: int | None = 0,
    progress: bool = True,
) -> RecoveryResult:
    """Prune ``student`` to ``sparsity`` while distilling ``teacher`` (the dense model) into it, in place.

    Changes: ``student`` is trained and masked (finalize, save, runtime as usual); ``teacher`` is not
    changed. Errors found before the first step (a mismatched pair, empty data, a budget shorter than
    one step, a student without masks and no ``sparsity``) leave both models as they were.

    Args:
        student: the model to prune and train; a copy of ``teacher``, maybe already pruned (one-shot).
        teacher: the dense model whose outputs and hidden states the student learns to match.
        data: inputs (see :mod:`prunekit.inputs`), iterated round and round (a list or a ``DataLoader``,
            not a generator); targets are not needed.
        sparsity: where the ramp ends (fraction of the targeted weights); None keeps the student's masks.
        pattern, criterion, scope, include, exclude: as for :func:`prunekit.prune` (``criterion="wanda"``
            scores on the first ``calibration_batches``; ``"sparsegpt"`` re-runs one-shot SparseGPT on
            them at each update, layer by layer). Default ``include``: the Linear layers of the repeated blocks, if
            the model has them (embeddings and heads stay dense), else every Linear and Conv.
        steps: optimizer steps.
        budget_s: seconds of recovery. One step is timed first and the run (the sparsity ramp, the
            learning-rate schedule) is planned for the steps that fit, at most ``steps``, after the
            time of ``updates`` SparseGPT re-runs when ``criterion="sparsegpt"`` (one is timed on a
            copy); if steps then run slower, it stops at the budget with a warning.
        lr, weight_decay: AdamW; the rate warms up over 5% of the steps, then falls linearly to 10%.
            Pruned weights need a larger rate than fine-tuning: on all-MiniLM-L6-v2 at 80%, 360 steps
            reached a cosine of 0.767 to dense at 1e-4, 0.854 at 1e-3 (bench/results/recover_sweep.md).
            Large language models usually want 1e-4 or less.
        ramp: fraction of the steps over which sparsity rises; ``updates``: mask updates on the way.
        output_loss_kind: ``"kl"`` (logits), ``"cosine"``, ``"mse"``, or ``"auto"`` (KL when the output
            has ``logits``, else cosine). ``output_weight``/``hidden_weight`` weigh it and the per-block
            hidden-state MSE; ``temperature`` is the KL's.
        outputs: ``outputs(model, batch) -> tensor`` to compare instead of the model's output (e.g. a
            pooled sentence embedding).
        quantize: ``"int8"`` fake-quantizes the targeted Linear layers (weights per row, activations per
            token, as the int8 kernels compute) from ``quantize_from`` x steps on.
        eval_fn: ``eval_fn(student) -> float`` every ``eval_every`` steps and at the end.
        checkpoint: file for the state (student, optimizer, schedule, masks, random state, log), written
            atomically every ``eval_every`` steps (or tenth of the run) and at the end; ``resume=True``
            continues from it bit for bit (with data given in the same order).
        log_dir: folder for ``recovery.csv`` (and TensorBoard scalars when tensorboard is installed).
        autocast: bf16 autocast (``"auto"``: where the CPU has native bf16, e.g. AVX-512 BF16).
        cache_teacher: keep the teacher's outputs per batch when ``data`` is a list that fits in 2 GiB.
        seed: ``torch.manual_seed`` at the start (dropout draws from it), so a run repeats exactly;
            None leaves torch's random state alone.
        progress: a progress bar over the steps.

    Returns:
        :class:`RecoveryResult`.

    Example:
        >>> student = copy.deepcopy(model)
        >>> result = prunekit.recipes.recover(student, model, batches, sparsity=0.8, steps=2000, eval_fn=score)
        >>> print(result); prunekit.finalize(student)
    """
    for name, m in (("student", student), ("teacher", teacher)):
        if not isinstance(m, nn.Module):
            raise TypeError(f"{name} must be a torch.nn.Module, got {type(m).__name__}")
    if student is teacher:
        raise ValueError("student is teacher: pass a copy, e.g. student = copy.deepcopy(teacher)")
    if sparsity is not None:
        sparsity = fraction(sparsity, "sparsity")
    pat = get_pattern(pattern)
    if sparsity is None and not masks(student):
        raise ValueError("the student has no masks to recover: pass sparsity=0.8 to prune it during recovery, or "
                         "prune it first (prunekit.prune or prunekit.recipes.oneshot)")
    if steps is None and budget_s is None:
        raise ValueError("give steps=2000 or budget_s=1200 (seconds), or both")
    if steps is not None:
        steps = integer(steps, "steps", 1)
    if budget_s is not None and (isinstance(budget_s, bool) or not isinstance(budget_s, (int, float))
                                 or not math.isfinite(budget_s) or budget_s <= 0):
        raise ValueError(f"budget_s={budget_s!r} must be a positive number of seconds, e.g. 1200")
    if output_loss_kind not in OUTPUT_LOSSES:
        raise ValueError(f"output_loss_kind={output_loss_kind!r} is unknown; use one of {list(OUTPUT_LOSSES)}")
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize={quantize!r} is unknown; use None or 'int8'")
    if not 0 < ramp <= 1 or not 0 <= quantize_from < 1:
        raise ValueError(f"ramp={ramp} must be in (0, 1] and quantize_from={quantize_from} in [0, 1)")
    if lr <= 0 or weight_decay < 0:
        raise ValueError(f"lr={lr} must be > 0 and weight_decay={weight_decay} >= 0")
    if eval_fn is not None and not callable(eval_fn):
        raise TypeError("eval_fn must be a function (student) -> float")
    if checkpoint is not None:
        checkpoint = check_output_path(checkpoint, "checkpoint")
    if resume and (checkpoint is None or not os.path.exists(checkpoint)):
        raise ValueError(f"resume=True needs an existing checkpoint file; got checkpoint={checkpoint!r}")
    bf16 = _bf16(autocast)
    run = outputs or output_of
    include = _default_include(student) if include is None else include
    targets = find_targets(student, include, exclude)
    calib = list(itertools.islice(iter(data), integer(calibration_batches, "calibration_batches", 1)))
    if not calib:
        raise ValueError("data yields no batch: pass a list of inputs (tensors or dicts) or a DataLoader")
    first = calib[0]
    kind = check_pair(student, teacher, first, run, output_loss_kind)
    if budget_s is not None and not resume:  # plan the ramp for the steps that fit, not for steps the budget cuts
        seconds = _time_one_step(student, teacher, first, run, kind, hidden_weight, bf16)
        reserved = 0.0
        if criterion == "sparsegpt" and sparsity is not None and not isinstance(pat, NM):
            # each mask update re-runs SparseGPT, often as long as dozens of steps: the budget pays for them first
            n = updates if steps is None else min(updates, max(1, int(ramp * steps)))  # a short run updates less
            reserved = n * _time_sparsegpt(student, calib, sparsity, pat, {t.module_fqn for t in targets})
        fit = int((budget_s - reserved) / seconds)
        if fit < 1:
            raise ValueError(f"budget_s={budget_s} is shorter than one step here (~{seconds:.1f} s"
                             + (f", after {reserved:.0f} s for {n} SparseGPT updates" if reserved else "")
                             + f"); give at least budget_s={math.ceil(reserved + seconds * 2)}")
        steps = fit if steps is None else min(steps, fit)
    elif steps is None:
        raise ValueError("resume=True with only budget_s: give the steps= of the run that wrote the checkpoint")

    # -- from here on the student changes --------------------------------------------------------
    if seed is not None:
        torch.manual_seed(integer(seed, "seed", 0))
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * max(0.0, 1 - s / steps)))
    pruner = None
    if sparsity is not None:
        if isinstance(pat, NM):
            schedule = OneShot(pat.fixed_sparsity)
        else:
            end = max(1, int(ramp * steps))
            schedule = PolynomialDecay(min(_sparsity(targets), sparsity), sparsity, 0, end, power=3,
                                       frequency=max(1, end // max(1, updates)))
        sparsegpt = criterion == "sparsegpt"
        pruner = Pruner(student, schedule, criterion="magnitude" if sparsegpt else criterion, pattern=pat,
                        scope="layer" if sparsegpt else scope, include=include, exclude=exclude, data=calib,
                        optimizer=opt, log_dir=log_dir)
    history, start = [], 0
    state_rng = None
    if resume:
        start, history, state_rng = load_checkpoint(checkpoint, student, opt, sched, pruner, steps)
    cycle = Batches(data, start)
    cache: dict[int, tuple] | None = {} if cache_teacher and isinstance(data, Sequence) else None
    q_start = int(quantize_from * steps) if quantize else None
    fq = FakeQuant(student, _in(targets)) if q_start is not None and start >= q_start else None
    every = eval_every or max(1, steps // 10)
    log_every = max(1, steps // 100)
    log = RecoveryLog(log_dir)
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    bar = progress_bar(total=steps, desc="recover", unit="step", enabled=progress)
    bar.update(start)
    t0 = time.perf_counter()
    taken = 0
    if state_rng is not None:
        torch.set_rng_state(state_rng)
    try:
        with modes(teacher), modes(student, train=True):
            teacher.eval()
            for step in range(start, steps):
                if budget_s is not None and time.perf_counter() - t0 >= budget_s:
                    break
                if pruner is not None and criterion == "sparsegpt" and pruner.schedule.should_update(step):
                    oneshot(student, calib, method="sparsegpt", sparsity=pruner.schedule.sparsity_at(step),
                            pattern=pat, include=include, exclude=exclude)
                    student.train()
                if q_start is not None and fq is None and step >= q_start:
                    fq = FakeQuant(student, _in(targets))
                index, batch = cycle.next()
                t_out, t_hidden = teacher_targets(teacher, batch, run, hidden_weight, amp, cache, index)
                with amp, Capture(student) as cap:
                    s_out = run(student, batch)
                out_l = output_loss(kind, s_out, t_out, temperature)
                hid_l = hidden_loss(cap.states, t_hidden) if t_hidden else torch.zeros(())
                loss = output_weight * out_l + hidden_weight * hid_l
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if pruner is not None:
                    pruner.step()
                taken += 1
                bar.update(1)
                last = step == steps - 1
                if step % log_every == 0 or (step + 1) % every == 0 or last:
                    row = {"step": step, "loss": float(loss.detach()), "output_loss": float(out_l.detach()),
                           "hidden_loss": float(hid_l.detach()), "sparsity": _sparsity(targets),
                           "lr": sched.get_last_lr()[0], "seconds": time.perf_counter() - t0}
                    if eval_fn is not None and ((step + 1) % every == 0 or last):
                        with modes(student):
                            row["metric"] = float(eval_fn(student))
                    history.append(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", sparsity=f"{row['sparsity']:.3f}")
                    log.write(history)
                if checkpoint is not None and ((step + 1) % every == 0 or last):
                    save_checkpoint(checkpoint, student, opt, sched, pruner, step + 1, history, steps)
    finally:
        bar.close()
        if fq is not None:
            fq.remove()
        log.close()
    seconds = time.perf_counter() - t0
    if start + taken < steps:
        warnings.warn(f"recover stopped at step {start + taken} of {steps}: budget_s={budget_s} ran out (steps were "
                      f"slower than the first one timed); sparsity is {_sparsity(targets):.3f}", stacklevel=2)
    metric = next((r["metric"] for r in reversed(history) if "metric" in r), None)
    if eval_fn is not None and (not history or history[-1]["step"] != start + taken - 1 or "metric" not in history[-1]):
        with modes(student):
            metric = float(eval_fn(student))
    return RecoveryResult(history, start + taken, seconds, taken / (seconds / 60) if seconds > 0 else 0.0,
                          _sparsity(targets), metric)


def _in(targets) -> Callable[[nn.Module], bool]:
    ids = {id(t.module) for t in targets}
    return lambda m: id(m) in ids


def _time_one_step(student, teacher, batch, run, kind, hidden_weight, bf16, repeats: int = 3) -> float:
    """Seconds of one forward + backward of both, the median of ``repeats`` (the first call pays for
    warm-up, and one timing taken in a busy moment planned a 30-minute budget as 12 minutes of steps).
    Eval mode, gradients restored: nothing about the student changes."""
    grads = {p: p.grad for p in student.parameters()}
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with modes(student), modes(teacher):
            with torch.no_grad(), amp, Capture(teacher) as ct:
                t = run(teacher, batch)
            with amp, Capture(student) as cs:
                s = run(student, batch)
            loss = output_loss(kind, s, t)
            if hidden_weight and ct.states:
                loss = loss + hidden_loss(cs.states, ct.states)
            loss.backward()
        times.append(time.perf_counter() - t0)
    for p, g in grads.items():
        p.grad = g
    return sorted(times)[len(times) // 2]


def _time_sparsegpt(student, calib, sparsity, pattern, modules: set[str]) -> float:
    """Seconds of one SparseGPT mask update of the named ``modules``, timed on a copy (the student is not
    changed; a predicate that tests module identity would match nothing in the copy, so names select)."""
    probe = copy.deepcopy(student)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oneshot(probe, calib, method="sparsegpt", sparsity=sparsity, pattern=pattern,
                include=lambda module, fqn: fqn in modules)
    return time.perf_counter() - t0
