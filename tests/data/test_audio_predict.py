"""Predicting whole utterances: the batch's padding does not change an utterance's prediction."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from mtl_lightning import MultiTaskModule
from mtl_lightning.data import AudioFeatureDataModule
from mtl_lightning.nn import CNNTrunk


def _predict(model: MultiTaskModule, dm: AudioFeatureDataModule) -> dict[str, torch.Tensor]:
    trainer = pl.Trainer(
        logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu"
    )
    outputs = trainer.predict(model, datamodule=dm)
    return {t: torch.cat([o[t]["prob"] for o in outputs]) for t in ("emotion", "speaker")}


def test_whole_utterance_predictions_do_not_depend_on_the_batch_padding(corpus, tmp_path):
    args = {
        "adversarial": ["speaker"],
        "n_mels": 32,
        "progress": False,
        "predict_split": "all",
        "cache_dir": str(corpus.parent / ".feature_cache"),
    }
    batched = AudioFeatureDataModule(str(corpus), batch_size=24, **args)  # one batch, padded
    alone = AudioFeatureDataModule(str(corpus), batch_size=1, **args)  # no padding at all
    torch.manual_seed(0)
    model = MultiTaskModule(batched.tasks, trunk=CNNTrunk(channels=(4, 8, 8), out_features=16))
    padded, single = _predict(model, batched), _predict(model, alone)
    lengths = [x.shape[-1] for x in alone.datasets["all"].features]
    assert len(set(lengths)) > 3  # utterances of many lengths: most are padded in the batch
    for task in ("emotion", "speaker"):
        torch.testing.assert_close(padded[task], single[task], atol=1e-5, rtol=1e-4)
