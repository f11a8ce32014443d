"""`LabelledPredictionWriter`: ``predict`` results with class names, as ``predictions.csv``."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from mtl_lightning.data.vocab import LabelVocab

__all__ = ["LabelledPredictionWriter", "prediction_rows"]


def prediction_rows(
    vocab: LabelVocab, paths: list[str], predictions: dict[str, dict[str, Any]]
) -> list[dict[str, object]]:
    """One dict per sample: ``path``, and per task the class name and its probability (a
    multilabel task: the predicted labels and every label's probability, ``;``-joined).

    Example:
        >>> import torch
        >>> vocab = LabelVocab({"emotion": ["happy", "sad"]})
        >>> pred = {"emotion": {"pred": torch.tensor([1]), "prob": torch.tensor([[0.2, 0.8]])}}
        >>> prediction_rows(vocab, ["a.wav"], pred)
        [{'path': 'a.wav', 'emotion': 'sad', 'emotion_prob': 0.8}]
    """
    rows: list[dict[str, object]] = [{"path": p} for p in paths]
    for task, out in predictions.items():
        if out["pred"].ndim == 2:  # multilabel: 0/1 per label
            _multilabel_cells(rows, task, out, vocab.names.get(task))
            continue
        indices = out["pred"].tolist()
        names = vocab.decode(task, indices) if task in vocab.names else indices
        probs = out.get("prob")
        for i, row in enumerate(rows):
            row[task] = names[i]
            if probs is not None:
                row[f"{task}_prob"] = round(float(probs[i, indices[i]]), 4)
    return rows


def _multilabel_cells(
    rows: list[dict[str, object]], task: str, out: dict[str, Any], names: list[str] | None
) -> None:
    """A multilabel task's cells: the predicted labels (names, else indices) joined by ``;``,
    and every label's probability, joined by ``;`` in label order.

    Example:
        >>> import torch
        >>> rows = [{"path": "a.wav"}]
        >>> out = {"pred": torch.tensor([[1, 0, 1]]), "prob": torch.tensor([[0.9, 0.2, 0.6]])}
        >>> _multilabel_cells(rows, "tags", out, ["loud", "fast", "sad"]); rows
        [{'path': 'a.wav', 'tags': 'loud;sad', 'tags_prob': '0.9;0.2;0.6'}]
    """
    probs = out.get("prob")
    for i, row in enumerate(rows):
        on = [j for j, v in enumerate(out["pred"][i].tolist()) if v]
        row[task] = ";".join(names[j] if names else str(j) for j in on)
        if probs is not None:
            row[f"{task}_prob"] = ";".join(f"{round(float(p), 4):g}" for p in probs[i])


class LabelledPredictionWriter(pl.Callback):
    """Write ``predict`` outputs of an :class:`AudioFeatureDataModule` with class names.

    The names come from the datamodule's vocabulary, which ``predict --ckpt_path`` restores
    from the checkpoint; the file is ``{log_dir}/predictions.csv`` (one per rank under DDP:
    ``predictions-rank{r}.csv``). Harmless during ``fit``: it acts only in ``predict``.

    Args:
        filename: File name inside the run directory.
    """

    def __init__(self, filename: str = "predictions.csv") -> None:
        self.filename = filename
        self._rows: list[dict[str, object]] = []

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rows = []

    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        data = trainer.datamodule
        if not hasattr(data, "vocab") or not hasattr(data, "row_path"):
            raise TypeError("LabelledPredictionWriter needs an AudioFeatureDataModule")
        paths = [data.row_path(int(i)) for i in batch["index"]]
        self._rows += prediction_rows(data.vocab, paths, outputs)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._rows or trainer.log_dir is None:
            return
        name = self.filename
        if trainer.world_size > 1:
            name = f"{Path(name).stem}-rank{trainer.global_rank}{Path(name).suffix}"
        path = Path(trainer.log_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(self._rows[0]))
            writer.writeheader()
            writer.writerows(self._rows)
