"""Training-time pruning: a schedule drives ``prunekit.prune`` from inside the training loop.

Call :meth:`Pruner.step` after every ``optimizer.step()`` (TF-MOT's ``UpdatePruningStep``); the
first call is step 0. When the schedule says so the masks are recomputed at the schedule's sparsity;
otherwise they hold, and because masks are parametrizations the pruned weights read as exactly zero
whatever the optimizer does. After each update the stored originals and the optimizer's state
(momentum, Adam moments) at pruned entries are zeroed, as TF-MOT does, so nothing carries them
back and checkpoints hold true zeros (unlike ``prunekit.prune``, training-time pruning is not
reversible).

Summaries (TF-MOT's ``PruningSummaries``): every update is appended to :attr:`Pruner.log`, and with
``log_dir`` to ``pruning_log.jsonl`` / ``pruning_log.csv`` and, when ``tensorboard`` is installed, to
TensorBoard; :meth:`Pruner.plot` draws sparsity over steps. ``prunekit.finalize`` is
``strip_pruning``.

Distributed: build the Pruner on the model *before* wrapping it in ``DistributedDataParallel``.
The Pruner attaches its (all-kept) masks at construction, and attaching a parametrization gives a
weight a new gradient accumulator (``parametrize`` calls ``set_`` on it), which would silently
detach DDP's gradient hooks if done after wrapping; later updates only rewrite mask buffers in
place. Under ``torch.distributed`` the masks are broadcast from rank 0 after every update, so every
rank holds identical masks even if ranks scored differently.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any, Callable, Iterable

import torch
from torch import nn

from prunekit._io import check_output_path, written_by
from prunekit.criteria import CriterionLike, get_criterion
from prunekit.masks import apply_masks, attach, find_mask, masks
from prunekit.patterns import Pattern, get_pattern
from prunekit.pruning import prune
from prunekit.schedules import SCHEDULES, Schedule
from prunekit.targets import Selector, find_targets

__all__ = ["Pruner"]


class Pruner:
    """Prune ``model`` on a schedule while it trains.

    Changes: attaches all-kept masks to the targeted weights right away (see the module docstring).

    Args:
        model: the model, pruned in place; wrap it in DDP after building the Pruner.
        schedule: a :mod:`prunekit.schedules` schedule. For ``"N:M"`` patterns it only says *when*.
        criterion, pattern, scope, include, exclude, data, loss_fn: as for :func:`prunekit.prune`.
        optimizer: if given, its per-parameter state at pruned entries is zeroed after each update.
        log_dir: folder for ``pruning_log.jsonl``/``.csv`` (and TensorBoard events).
        tensorboard: write TensorBoard scalars to ``log_dir`` (default: when ``tensorboard`` is installed).

    Raises:
        ValueError / TypeError: bad arguments (checked here, before training starts).

    Example:
        >>> pruner = prunekit.Pruner(model, prunekit.schedules.PolynomialDecay(0.0, 0.9, 0, 1000, frequency=50),
        ...                          optimizer=opt)
        >>> for x, y in loader:
        ...     loss = loss_fn(model(x), y); opt.zero_grad(); loss.backward(); opt.step()
        ...     pruner.step()
        >>> prunekit.finalize(model)
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: Schedule,
        criterion: CriterionLike = "magnitude",
        pattern: str | Pattern = "unstructured",
        scope: str = "global",
        include: Selector = None,
        exclude: Selector = None,
        data: Iterable | None = None,
        loss_fn: Callable | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        log_dir: str | os.PathLike | None = None,
        tensorboard: bool | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(schedule, Schedule):
            raise TypeError(
                f"schedule must be a prunekit.schedules schedule ({', '.join(SCHEDULES)}), got {type(schedule).__name__}"
            )
        if isinstance(model, nn.parallel.DistributedDataParallel):
            raise TypeError(
                "build the Pruner on the model before wrapping it: pruner = Pruner(model, ...); "
                "ddp = DistributedDataParallel(model). Attaching masks after wrapping would detach DDP's "
                "gradient hooks (parametrize gives each weight a new gradient accumulator)"
            )
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.model = model
        self.schedule = schedule
        self.pattern = get_pattern(pattern)
        self.criterion = get_criterion(criterion)
        self.kwargs = dict(scope=scope, include=include, exclude=exclude, data=data, loss_fn=loss_fn)
        if scope not in ("global", "layer"):
            raise ValueError(f"scope={scope!r} is unknown; use 'global' or 'layer'")
        self.targets = find_targets(model, include, exclude)
        for t in self.targets:  # a pattern that cannot tile a weight fails now, not at the first update
            with torch.no_grad():
                self.pattern.check(getattr(t.module, t.name).shape, t.fqn, t.out_dim, t.in_dim)
        self.optimizer = optimizer
        self.log: list[dict] = []
        self.step_count = 0
        self.updated = False
        self.log_dir = os.fspath(log_dir) if log_dir is not None else None
        self._tb = self._tensorboard(tensorboard)
        for t in self.targets:  # arm now (all kept), so updates only rewrite mask buffers in place
            if find_mask(t.module, t.name) is None:
                with torch.no_grad():
                    shape = getattr(t.module, t.name).shape
                attach(t, torch.ones(shape, dtype=torch.bool, device=t.param.device), str(self.pattern))

    # -- the training-loop call ---------------------------------------------------------------

    def step(self) -> dict | None:
        """Advance one step; update the masks if the schedule says so.

        Returns:
            the log record of the update, or None when the masks held.

        Raises:
            RuntimeError: the model was finalized since the last update.
        """
        if self.updated and find_mask(self.targets[0].module, self.targets[0].name) is None:
            raise RuntimeError(
                "Pruner.step() after prunekit.finalize(model): the masks are gone. Finalize only after "
                "training, or build a new Pruner to prune further"
            )
        step = self.step_count
        record = None
        if self.schedule.should_update(step):
            record = self._update(step)
        self.step_count += 1
        return record

    def _update(self, step: int) -> dict:
        target = self.pattern.fixed_sparsity if self.pattern.fixed_sparsity is not None else self.schedule.sparsity_at(step)
        report = prune(self.model, target, criterion=self.criterion, pattern=self.pattern, **self.kwargs)
        self.updated = True
        self._sync_masks()
        self._zero_pruned()
        record = {
            "step": step,
            "target": float(target),
            "sparsity": report.sparsity,
            "layers": {r.name: r.sparsity for r in report.rows if r.pattern != "-"},
        }
        self.log.append(record)
        self._write(record)
        return record

    def _sync_masks(self) -> None:
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        for t in self.targets:
            pm = find_mask(t.module, t.name)
            if pm is not None:
                flat = pm.mask.to(torch.uint8)
                dist.broadcast(flat, src=0)
                pm.mask.copy_(flat.bool())

    def _zero_pruned(self) -> None:
        """Zero the stored originals and the optimizer state at pruned entries.

        With both at zero, nothing moves them: their gradient is zero through the mask, weight decay
        of zero is zero, and momentum / Adam moments start from zero.
        """
        for t in self.targets:
            pm = find_mask(t.module, t.name)
            if pm is None:
                continue
            with torch.no_grad():
                t.param.masked_fill_(~pm.mask, 0)
                state = self.optimizer.state.get(t.param, {}) if self.optimizer is not None else {}
                for value in state.values():
                    if isinstance(value, torch.Tensor) and value.shape == pm.mask.shape:
                        value.masked_fill_(~pm.mask, 0)

    # -- summaries -----------------------------------------------------------------------------

    def _tensorboard(self, wanted: bool | None):
        if self.log_dir is None or wanted is False:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if wanted:
                raise ImportError("tensorboard=True needs the tensorboard package: pip install tensorboard") from None
            return None
        return SummaryWriter(self.log_dir)

    def _write(self, record: dict) -> None:
        if self.log_dir is None:
            return
        os.makedirs(self.log_dir, exist_ok=True)
        with open(os.path.join(self.log_dir, "pruning_log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        path = os.path.join(self.log_dir, "pruning_log.csv")
        new = not os.path.exists(path)
        with open(path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "target", "layer", "sparsity"])
            w.writerow([record["step"], record["target"], "(all)", record["sparsity"]])
            for name, s in record["layers"].items():
                w.writerow([record["step"], record["target"], name, s])
        if self._tb is not None:
            self._tb.add_scalar("prunekit/target_sparsity", record["target"], record["step"])
            self._tb.add_scalar("prunekit/sparsity", record["sparsity"], record["step"])
            for name, s in record["layers"].items():
                self._tb.add_scalar(f"prunekit/layer/{name}", s, record["step"])
            self._tb.flush()

    def plot(self, path: str | os.PathLike) -> str:
        """Save a PNG of target and achieved sparsity (and each layer's) over the logged updates."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if not self.log:
            raise ValueError("nothing to plot: no mask update has happened yet (call step() during training)")
        check_output_path(path, "path")
        steps = [r["step"] for r in self.log]
        fig, ax = plt.subplots(figsize=(7, 4))
        for name in self.log[-1]["layers"]:
            ax.plot(steps, [r["layers"].get(name, 0.0) for r in self.log], lw=0.8, alpha=0.5)
        ax.plot(steps, [r["target"] for r in self.log], "k--", lw=2, label="schedule target")
        ax.plot(steps, [r["sparsity"] for r in self.log], "r-", lw=2, label="achieved (all targets)")
        ax.set_xlabel("step")
        ax.set_ylabel("sparsity")
        ax.set_ylim(0, 1)
        ax.legend(loc="lower right")
        ax.set_title("prunekit: sparsity over training (thin lines: layers)")
        fig.tight_layout()
        try:
            written_by(lambda tmp: fig.savefig(tmp, dpi=100, format="png"), path, "path")
        finally:
            plt.close(fig)
        return os.fspath(path)

    # -- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Step counter, masks, schedule and log: with the model's and optimizer's state dicts this
        resumes a run bit for bit. Tensors and plain data only (safe for ``torch.load(weights_only=True)``)."""
        return {
            "step": self.step_count,
            "updated": self.updated,
            "masks": masks(self.model),
            "schedule": self.schedule.config(),
            "pattern": str(self.pattern),
            "log": json.loads(json.dumps(self.log)),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`: re-attach its masks, then load the model's state dict.

        Raises:
            ValueError: the state is from another model or schedule (nothing is changed then).
        """
        required = {"step", "masks", "schedule", "log"}
        if not isinstance(state, dict) or not required <= set(state):
            raise ValueError(f"not a Pruner state dict: expected keys {sorted(required)}")
        if state["schedule"] != self.schedule.config():
            raise ValueError(
                f"the state was saved with schedule {state['schedule']}, this Pruner has {self.schedule.config()}"
            )
        try:
            apply_masks(self.model, state["masks"], pattern=state.get("pattern", str(self.pattern)))
        except (KeyError, ValueError) as e:
            raise ValueError(f"the Pruner state is from another model: {e}") from None
        self.step_count = int(state["step"])
        self.updated = bool(state.get("updated", bool(state["masks"])))
        self.log = list(state["log"])
