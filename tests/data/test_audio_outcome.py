"""A small but real run of the audio pipeline: generated recordings, cached log-mel features,
a speaker-disjoint split, whole utterances with masks, a few epochs with no gradient reversal.

Without reversal (lambda = 0) the emotion-trained trunk keeps speaker information, so the speaker
head, scored on held-out utterances of the training speakers, is far above chance, and emotion
transfers to speakers never seen in training. (docs/audio.md's table measures the same on a larger
corpus; this checks that the pipeline's splits, labels and masks make such a result possible.)
"""

from __future__ import annotations

import functools
import math

import lightning.pytorch as pl
import torch

from mtl_lightning import MultiTaskModule
from mtl_lightning.audio.synthetic_corpus import CorpusSpec, write_corpus
from mtl_lightning.data import AudioFeatureDataModule
from mtl_lightning.nn import CNNTrunk


def binomial_tail(correct: int, n: int, chance: float) -> float:
    """P(at least ``correct`` of ``n`` right) when guessing with probability ``chance``."""
    return sum(math.comb(n, k) * chance**k * (1 - chance) ** (n - k) for k in range(correct, n + 1))


def test_without_reversal_the_speaker_leaks_and_emotion_transfers(tmp_path, one_thread):
    spec = CorpusSpec(speakers=8, emotions=3, per_pair=12, min_seconds=0.3, max_seconds=0.5)
    manifest = write_corpus(tmp_path / "corpus", spec)
    dm = AudioFeatureDataModule(
        str(manifest),
        adversarial=["speaker"],
        split="speaker_disjoint",
        val_fraction=0.2,
        test_fraction=0.2,
        heldout_fraction=0.3,
        n_mels=32,
        crop_frames=None,  # whole utterances, padded per batch with a mask
        batch_size=16,
        progress=False,
    )
    pl.seed_everything(0)
    model = MultiTaskModule(
        dm.tasks,
        trunk=CNNTrunk(channels=(8, 16, 16), out_features=32),
        grl_lambda=0.0,  # the control run: the adversary learns, nothing is reversed
        optimizer=functools.partial(torch.optim.AdamW, lr=3e-3),
    )
    trainer = pl.Trainer(
        max_epochs=30,
        default_root_dir=tmp_path,  # label_vocab.json and feature_stats.json are written there
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=1000,  # scored once, after training
    )
    trainer.fit(model, datamodule=dm)
    assert float(model.grl_lambda) == 0.0
    speakers, emotions = dm.tasks[1].size, dm.tasks[0].size
    assert (speakers, emotions) == (4, 3)  # 2 val + 2 test speakers are unseen in training
    scored = {"emotion": [0, 0], "speaker": [0, 0]}  # correct, labelled (val + test)
    for stage, run in (("val", trainer.validate), ("test", trainer.test)):
        metrics = run(model, datamodule=dm, verbose=False)[0]
        for task in scored:
            n = int((dm.datasets[stage].targets[task] >= 0).sum())
            scored[task][0] += round(metrics[f"{stage}/{task}/acc"] * n)
            scored[task][1] += n
    (emotion_right, emotion_n), (speaker_right, speaker_n) = scored["emotion"], scored["speaker"]
    # emotion: only unseen speakers' utterances; speaker: only held-out utterances of seen ones
    assert emotion_n == 4 * 36 and speaker_n >= 40
    assert speaker_right / speaker_n > 0.5, scored  # chance 1/4
    assert binomial_tail(speaker_right, speaker_n, 1 / speakers) < 1e-4, scored
    assert emotion_right / emotion_n > 0.5, scored  # chance 1/3
    assert binomial_tail(emotion_right, emotion_n, 1 / emotions) < 1e-4, scored
