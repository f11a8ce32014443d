"""`AdversarySteps`: the attacker ensembles' part of a training, validation or test step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from mtl_lightning.callbacks.collective_order import log_replicated
from mtl_lightning.metrics import confusion_counts


class AdversarySteps:
    """Mixed into :class:`~mtl_lightning.MultiTaskModule`, which provides ``adversaries``
    (name -> :class:`~mtl_lightning.adversary.Adversary`), ``attacker_metrics``,
    ``train_class_counts``, ``adversary_seed`` and the Lightning module's ``trainer``.

    Per batch: :meth:`_erase_batch` (erasers, in order), :meth:`_attack_batch` (the attackers'
    logits and best response, the trunk objectives), :meth:`_update_attacker_metrics`. Per
    epoch: :meth:`_start_adversary_epoch` (re-initialisation), :meth:`_end_adversary_epoch`
    (erasers refitted, statistics summed over ranks) and :meth:`_log_attackers` (the worst case).
    """

    adversaries: Any
    attacker_metrics: Any
    train_class_counts: Any
    adversary_seed: Tensor

    def _erase_batch(
        self, raw: Tensor, targets: Mapping[str, Tensor], masks: Mapping[str, Tensor], train: bool
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The embedding the heads see, and each adversary's input (before its eraser): its
        objective pushes the trunk there, and its eraser accumulates it in training."""
        embedding, inputs = raw, {}
        for name, adversary in self.adversaries.items():
            inputs[name] = embedding
            if train:
                adversary.accumulate(embedding, targets[name], masks[name])
            embedding = adversary(embedding)
        return embedding, inputs

    def _attack_batch(
        self,
        embedding: Tensor,
        inputs: Mapping[str, Tensor],
        targets: Mapping[str, Tensor],
        masks: Mapping[str, Tensor],
        outputs: dict[str, Tensor],
        train: bool,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Every attacker's logits (before this batch's best-response steps, in training) and
        each trunk objective; the best attacker's logits go into ``outputs``."""
        logits_of, objectives = {}, {}
        for name, adversary in self.adversaries.items():
            if train:
                logits = adversary.best_response(
                    embedding, targets[name], masks[name], gather=self._gather()
                )
            else:
                logits = adversary.logits(embedding)
            logits_of[name] = logits
            outputs[name] = logits[int(adversary.best)]
            objectives[name] = adversary.objective(
                inputs[name],
                targets[name],
                masks[name],
                self._gather(sync_grads=True) if train else None,
            )
        return logits_of, objectives

    def _gather(self, sync_grads: bool = False) -> Any:
        """All-gather over DDP ranks in a training step (None in one process): the attackers'
        steps see the global batch, so every rank's attackers stay identical; with
        ``sync_grads`` the gathered tensors carry gradients back to each rank's own samples.

        Training shards are equal in size on every rank; evaluation shards need not be, so
        validation and test never gather (their objective is each rank's own batch's)."""
        trainer = getattr(self, "_trainer", None)
        if trainer is None or trainer.world_size == 1:
            return None
        gather = self.all_gather  # type: ignore[attr-defined]
        return lambda t: gather(t, sync_grads=sync_grads)

    def _update_attacker_metrics(
        self, stage: str, name: str, logits: Tensor, target: Tensor, mask: Tensor, objective: Tensor
    ) -> None:
        self.attacker_metrics.update_objective(stage, name, objective, target.shape[0])
        logits, target = logits[:, mask], target[mask]
        losses = self.adversaries[name].attacker_losses(logits, target)
        self.attacker_metrics.update(stage, name, logits, target, losses)
        if stage == "train" and target.numel():
            counts = confusion_counts(logits[0], target, logits.shape[-1]).sum(dim=1)
            self.train_class_counts[name].update(counts=counts)

    def _log_attackers(self, stage: str) -> None:
        """Log each attacker's balanced accuracy and the best one's metrics as the task's (the
        worst case); after validation the best attacker answers for the task. Then reset.

        ``compute()`` all-reduces the metric states, identically on every rank."""
        for name, adversary in self.adversaries.items():
            values, best = self.attacker_metrics.compute(stage, name)
            for i, row in enumerate(values):
                tag = f"{stage}/{name}/attacker/{i}/balanced_acc"
                log_replicated(self, tag, row["balanced_acc"])  # type: ignore[arg-type]
            for key, value in values[best].items():
                shown = stage == "val" and key == "balanced_acc"  # the worst case, on the bar
                log_replicated(self, f"{stage}/{name}/{key}", value, shown)  # type: ignore[arg-type]
            objective = self.attacker_metrics.objective(stage, name)
            log_replicated(self, f"{stage}/{name}/objective", objective)  # type: ignore[arg-type]
            if stage == "val" and not self.trainer.sanity_checking:  # type: ignore[attr-defined]
                adversary.best.fill_(best)
        self.attacker_metrics.reset(stage)

    def _start_adversary_epoch(self) -> None:
        self.attacker_metrics.reset("train")
        epoch = self.current_epoch  # type: ignore[attr-defined]
        for adversary in self.adversaries.values():
            adversary.start_epoch(epoch, int(self.adversary_seed))

    def _sum_eraser_statistics(self, state_dict: dict[str, Any], how: Any) -> None:
        """Replace each eraser's running sums in a checkpoint's ``state_dict`` by ``how(sums)``:
        summed over ranks when saving (rank zero writes the file), zeros on the other ranks when
        loading (so the sums over ranks are the saved global ones), as for the metric states."""
        for name, adversary in self.adversaries.items():
            key = f"adversaries.{name}.eraser._extra_state"
            if adversary.eraser is not None and key in state_dict:
                state_dict[key] = {n: how(v.clone()) for n, v in state_dict[key].items()}

    def _end_adversary_epoch(self) -> None:
        """Refit the erasers on the epoch's statistics, summed over DDP ranks."""
        for adversary in self.adversaries.values():
            adversary.end_epoch(self._reduce_sum)  # type: ignore[attr-defined]
