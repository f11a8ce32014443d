"""Conditional tasks from a manifest: grade `quality` only where `seed` is `yes`."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from _manifest_io import read_rows, write_rows

from mtl_lightning import MultiTaskModule
from mtl_lightning.data import AudioFeatureDataModule, ManifestError
from mtl_lightning.nn import CNNTrunk

GRADES = ("low", "mid", "high")
CONDITIONS = {"quality": {"seed": ["yes"]}}


def _seed_manifest(corpus: Path, tmp_path: Path) -> Path:
    """The corpus with ``seed`` / ``quality`` columns and a manifest split (even rows train).

    Row i has a seed where ``(i // 2) % 2 == 0``, graded ``GRADES[(i // 4) % 3]``; without a
    seed the grade cell holds a placeholder ``n/a`` (i % 4 == 2) or nothing (i % 4 == 3). Row 21
    has a seed but no grade; row 19 has no seed cell and a stray grade ``mid``.
    """
    rows = read_rows(corpus)
    for i, row in enumerate(rows):
        seed = (i // 2) % 2 == 0
        row["seed"] = "yes" if seed else "no"
        row["quality"] = GRADES[(i // 4) % 3] if seed else ("n/a" if i % 4 == 2 else "")
        row["split"] = "train" if i % 2 == 0 else "val"
    rows[21]["quality"] = ""
    rows[19]["seed"], rows[19]["quality"] = "", "mid"
    return write_rows(tmp_path / "seeds.csv", rows)


def _dm(manifest: Path, corpus: Path, **kwargs) -> AudioFeatureDataModule:
    args = {
        "label_columns": ["emotion", "speaker", "seed", "quality"],
        "adversarial": ["speaker"],
        "partial_tasks": ["seed", "quality"],
        "conditions": CONDITIONS,
        "audio_root": str(corpus.parent),
        "cache_dir": str(corpus.parent / ".feature_cache"),
        "split": "manifest",
        "n_mels": 32,
        "crop_frames": 32,
        "progress": False,
        "batch_size": 12,
    }
    return AudioFeatureDataModule(str(manifest), **{**args, **kwargs})


# rows whose grade counts: a seed and a grade (not 21, which has none)
GRADED = [i for i in range(24) if (i // 2) % 2 == 0 and i != 21]


def test_conditional_task_is_declared_with_label_indices(corpus, tmp_path):
    dm = _dm(_seed_manifest(corpus, tmp_path), corpus)
    assert dm.vocab.names["seed"] == ["no", "yes"]
    assert dm.vocab.names["quality"] == ["high", "low", "mid"]  # no 'n/a' class
    tasks = {t.name: t for t in dm.tasks}
    assert tasks["quality"].only_when == {"seed": [1]}
    assert tasks["quality"].size == 3
    assert all(tasks[n].only_when is None for n in ("emotion", "speaker", "seed"))


def test_cells_outside_the_condition_are_missing_labels(corpus, tmp_path):
    dm = _dm(_seed_manifest(corpus, tmp_path), corpus)
    dm.setup("fit")
    everything = dm.datasets["all"]
    quality = dict(zip(everything.rows, everything.targets["quality"].tolist(), strict=True))
    assert sorted(r for r, y in quality.items() if y != -100) == GRADED
    for r in GRADED:
        assert dm.vocab.decode("quality", [quality[r]]) == [GRADES[(r // 4) % 3]]


def test_a_missing_grade_where_the_condition_holds_is_a_bad_row(corpus, tmp_path):
    dm = _dm(_seed_manifest(corpus, tmp_path), corpus, partial_tasks=["seed"])
    with pytest.raises(ManifestError, match="1 bad row") as err:
        dm.setup("fit")
    assert "line 23: " in str(err.value) and "no quality label (seed is 'yes')" in str(err.value)


def test_fit_scores_the_conditional_task_only_where_the_condition_holds(corpus, tmp_path):
    dm = _dm(_seed_manifest(corpus, tmp_path), corpus)
    torch.manual_seed(0)
    model = MultiTaskModule(dm.tasks, trunk=CNNTrunk(channels=(4, 8, 8), out_features=16))
    trainer = pl.Trainer(
        max_epochs=1,
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    # training saw the 6 graded training rows (2 per grade), never a placeholder
    train_graded = [i for i in GRADED if i % 2 == 0]
    assert (
        model.train_class_counts["quality"].counts.tolist()
        == [2, 2, 2]
        == [sum(GRADES[(i // 4) % 3] == g for i in train_graded) for g in ("high", "low", "mid")]
    )
    metrics = trainer.validate(model, datamodule=dm, verbose=False)[0]
    batch = next(iter(dm.val_dataloader()))  # the 12 validation rows in one batch
    assert len(batch["index"]) == 12
    masks = model.labelled_masks(batch["targets"])
    expected = torch.tensor([int(r) in GRADED for r in batch["index"]])
    assert masks["quality"].tolist() == expected.tolist() and int(expected.sum()) == 5
    model.eval()
    with torch.no_grad():
        pred = model(batch["features"])["quality"].argmax(1)
    target = batch["targets"]["quality"]
    accuracy = (pred[expected] == target[expected]).float().mean()
    assert metrics["val/quality/acc"] == pytest.approx(float(accuracy))


@pytest.mark.parametrize(
    ("conditions", "message"),
    [
        ({"grade": {"seed": ["yes"]}}, "conditions: unknown task 'grade'"),
        ({"quality": {"sprout": ["yes"]}}, r"conditions\['quality'\]: unknown task 'sprout'"),
        ({"quality": {"quality": ["low"]}}, "cannot be conditioned on itself"),
        ({"quality": {"seed": "yes"}}, "must be a non-empty list of seed label names"),
        ({"quality": {"seed": []}}, "must be a non-empty list of seed label names"),
        ({"quality": {"seed": ["yes"], "emotion": ["sad"]}}, "exactly one other task"),
    ],
)
def test_bad_conditions_name_the_task(corpus, tmp_path, conditions, message):
    with pytest.raises(ValueError, match=message):
        _dm(_seed_manifest(corpus, tmp_path), corpus, conditions=conditions)


def test_a_condition_label_not_in_the_vocabulary_names_it(corpus, tmp_path):
    dm = _dm(_seed_manifest(corpus, tmp_path), corpus, conditions={"quality": {"seed": ["Yes"]}})
    with pytest.raises(ValueError, match=r"label\(s\) \['Yes'\] are not in the vocabulary of task"):
        dm.tasks  # noqa: B018


def test_conditions_from_a_yaml_config(corpus, tmp_path):
    from mtl_lightning.commands import main

    manifest = _seed_manifest(corpus, tmp_path)
    extra = tmp_path / "seeds.yaml"
    extra.write_text(
        "data:\n"
        "  init_args:\n"
        f"    manifest: {manifest}\n"
        f"    audio_root: {corpus.parent}\n"
        f"    cache_dir: {corpus.parent / '.feature_cache'}\n"
        "    label_columns: [emotion, speaker, seed, quality]\n"
        "    partial_tasks: [seed, quality]\n"
        "    conditions:\n"
        '      quality: {seed: ["yes"]}   # quoted: YAML reads a bare yes as true\n'
        "    split: manifest\n"
        "    num_extract_workers: 1\n"
        "    progress: false\n"
    )
    config = str(Path(__file__).parents[2] / "configs" / "audio_speaker_adversarial.yaml")
    args = ["--config", config, "--config", str(extra)]
    cli = main([*args, "--trainer.logger", "false"], run=False)
    tasks = {t.name: t for t in cli.model.tasks}
    assert tasks["quality"].only_when == {"seed": [1]} and tasks["seed"].only_when is None
