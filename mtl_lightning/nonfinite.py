"""The non-finite guard of :class:`~mtl_lightning.module.MultiTaskModule`: a NaN or infinite task
loss or gradient stops the run naming the task, step and batch, or skips the step and counts it,
the same way on every DDP rank."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

if TYPE_CHECKING:
    from mtl_lightning.training.progress import StepState

__all__ = ["NonFiniteError", "NonFiniteGuard", "NonFinitePolicy", "all_finite", "finite_gradients"]

NonFinitePolicy = Literal["raise", "skip", "off"]


def all_finite(tensors: Sequence[Tensor]) -> bool:
    """Whether every element of ``tensors`` is finite.

    Fast path: each tensor's 2-norm in one ``torch._foreach_norm`` (NaN and inf propagate, so
    finite norms mean every element is finite) and one host sync. Only a non-finite norm, which
    huge finite values can also give by overflowing, is checked element by element.

    Example:
        >>> all_finite([torch.ones(2), torch.full((3,), 3e38)])
        True
        >>> all_finite([torch.ones(2), torch.tensor([0.0, float("nan")])])
        False
    """
    if not tensors:
        return True
    norms = torch._foreach_norm(list(tensors))
    if len({n.dtype for n in norms}) > 1 or len({n.device for n in norms}) > 1:
        norms = [n.float().to(norms[0].device) for n in norms]
    if bool(torch.isfinite(torch.stack(norms)).all()):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def finite_gradients(grads: Sequence[Tensor]) -> bool:
    """Whether every element of the gradients ``grads`` is finite, with one host sync.

    The gradients of each device take one fused kernel: the check of AMP's ``GradScaler``
    (``torch._amp_foreach_non_finite_check_and_unscale_``) with a scale of exactly 1, which
    leaves every value as it was (subnormals too). It reads each element once and cannot
    overflow, and it costs about a tenth of :func:`all_finite` on the dense five-task model.
    On a backend without the kernel, :func:`all_finite` is used.

    Example:
        >>> g = [torch.ones(2), torch.tensor([2.0**127, -0.0])]
        >>> finite_gradients(g), g[1].tolist()
        (True, [1.7014118346046923e+38, -0.0])
        >>> finite_gradients([torch.ones(2), torch.tensor([0.0, float("inf")])])
        False
    """
    if not grads:
        return True
    with contextlib.suppress(NotImplementedError, RuntimeError):  # mixed devices, or no kernel
        return not _nonfinite_found(grads, grads[0].device)
    groups: dict[torch.device, list[Tensor]] = {}
    for g in grads:
        groups.setdefault(g.device, []).append(g)
    try:
        return not any(_nonfinite_found(group, device) for device, group in groups.items())
    except (NotImplementedError, RuntimeError):  # no kernel on this backend
        return all_finite(grads)


def _nonfinite_found(tensors: Sequence[Tensor], device: torch.device) -> bool:
    """AMP's fused check of ``tensors`` (all on ``device``), unscaling by exactly 1."""
    found = torch.zeros(1, device=device)
    torch._amp_foreach_non_finite_check_and_unscale_(
        list(tensors), found, torch.ones(1, device=device)
    )
    return bool(found)


class NonFiniteError(FloatingPointError):
    """A task loss or a gradient became NaN or infinite during training."""


class NonFiniteGuard:
    """Mixin for a LightningModule with ``tasks``, ``nonfinite`` (a :data:`NonFinitePolicy`), a
    ``skipped_steps`` buffer, ``_progress`` (a :class:`~mtl_lightning.training.StepState`: the
    batch, its index, the skip flag), ``forward_losses(batch, batch_idx)`` and ``_loss_scale()``.

    The host calls :meth:`_nonfinite_losses` on its task losses before the backward pass and
    returns :meth:`_skipped_step_loss` for a skipped step; gradients are checked in
    :meth:`on_before_optimizer_step` (automatic optimisation).
    """

    _progress: StepState

    def _any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any DDP rank (every rank then takes the same branch)."""
        if self._trainer is None or self.trainer.world_size == 1:
            return flag
        value = torch.tensor(float(flag), device=self.device)
        return bool(self.trainer.strategy.reduce(value, reduce_op="sum") > 0)

    def _nonfinite_losses(self, losses: Mapping[str, Tensor], batch_idx: int) -> bool:
        """Apply the non-finite policy to the task losses; True means skip this step."""
        if self.nonfinite == "off":
            return False
        stacked = torch.stack([v.detach().float() for v in losses.values()])
        bad_here = not bool(torch.isfinite(stacked).all())
        if not self._any_rank(bad_here):
            return False
        bad = {n: float(v) for n, v in losses.items() if not math.isfinite(float(v))}
        where = f"step {self.global_step}, batch {batch_idx}"
        if self.nonfinite == "raise":
            raise NonFiniteError(
                f"{where}: non-finite loss for task(s) "
                + ", ".join(f"{n!r} ({v})" for n, v in bad.items())
                + (" on another DDP rank" if not bad else "")
                + "; set model.nonfinite='skip' to skip such steps"
            )
        self.skipped_steps += 1
        warnings.warn(
            f"{where}: skipped, non-finite task loss(es) {bad or '(another rank)'}", stacklevel=2
        )
        return True

    def _nonfinite_gradients_skip(self, tasks: Sequence[str] | None = None) -> bool:
        """Called with non-finite gradients: raise, or drop them (True: skip the step).

        ``tasks``: the tasks whose own gradient is not finite, when the caller knows them;
        otherwise they are found by :meth:`_tasks_with_nonfinite_gradients`.
        """
        names = [
            n
            for n, p in self.named_parameters()
            if p.grad is not None and not p.grad.isfinite().all()
        ]
        if tasks is None:
            tasks = self._tasks_with_nonfinite_gradients()
        culprits = (
            "task(s) " + ", ".join(map(repr, tasks)) if tasks else "task(s) on another DDP rank"
        )
        params = f"{names[:5]}{' ...' if len(names) > 5 else ''}"
        self._nonfinite_policy(f"gradient from {culprits} in {params}")
        return True

    def _nonfinite_policy(self, what: str) -> None:
        """A non-finite ``what`` although every loss was finite: raise :class:`NonFiniteError`
        (``nonfinite="raise"``), or drop every gradient (optimizers skip parameters without
        one), count the skipped step and warn."""
        where = f"step {self.global_step}, batch {self._progress.batch_idx}"
        if self.nonfinite == "raise":
            raise NonFiniteError(
                f"{where}: non-finite {what} although every task loss was finite; "
                "set model.nonfinite='skip' to skip such steps"
            )
        for p in self.parameters():
            p.grad = None
        self.skipped_steps += 1
        warnings.warn(f"{where}: skipped, non-finite {what}", stacklevel=3)

    def _tasks_with_nonfinite_gradients(self) -> list[str]:
        """The tasks whose own gradient on the last training batch is not finite.

        Only called once a summed gradient is found non-finite: the batch is run again, under
        the run's precision (autocast), with the random state forked (the CUDA one too) and the
        buffers (BatchNorm statistics) restored afterwards, so the run continues as it would
        have; each task's loss is differentiated on its own. Under DDP, this rank's shard only.
        """
        if self._progress.last_batch is None:
            return []
        params = [p for p in self.parameters() if p.requires_grad]
        buffers = {name: b.clone() for name, b in self.named_buffers()}
        devices = [self.device] if self.device.type == "cuda" else []
        precision = (
            self.trainer.precision_plugin.forward_context()
            if self._trainer is not None
            else contextlib.nullcontext()
        )
        bad = []
        try:
            with torch.random.fork_rng(devices=devices), torch.enable_grad():
                with precision:
                    step = self.forward_losses(self._progress.last_batch, self._progress.batch_idx)
                for task in self.tasks:
                    # an attacker ensemble's loss is detached: its trunk objective is what
                    # reaches the parameters
                    loss = step.objectives.get(task.name, step.losses[task.name])
                    if not loss.requires_grad:
                        continue
                    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
                    if any(g is not None and not bool(g.isfinite().all()) for g in grads):
                        bad.append(task.name)
        finally:
            with torch.no_grad():
                for name, b in self.named_buffers():
                    b.copy_(buffers[name])
        return bad

    def _skipped_step_loss(self) -> Tensor:
        """A zero loss reaching every trainable parameter, for a step the guard skips.

        Lightning cannot skip a step under DDP (``training_step`` may not return ``None`` there,
        and every rank's backward must reach every parameter); so the step runs on this zero
        loss and :meth:`on_before_optimizer_step` drops the gradients, which the optimizer then
        leaves alone (no moment update, no weight decay), as it does for ``None``.
        """
        self._progress.skip_step = True
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.stack([p.sum().float() for p in params]).sum() * 0.0

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._progress.skip_step:  # after backward (and AMP unscaling), before the step
            self._progress.skip_step = False
            for p in self.parameters():
                p.grad = None
            return
        # 16-mixed: the GradScaler already skips steps with inf/NaN gradients
        if self.nonfinite == "off" or not self.automatic_optimization or self._loss_scale() != 1.0:
            return
        # the gradients this optimizer applies (reading them from its groups spares a walk over
        # every submodule, metrics included, on each step)
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads and not finite_gradients(grads):
            self._nonfinite_gradients_skip()
