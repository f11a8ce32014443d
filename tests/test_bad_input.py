"""The bad-input tables of docs/bad-input.md: each row is one input and the error it produces.

Data rows go through ``Trainer.fit`` on a tiny in-memory datamodule (the error comes from
``setup()``, before any step); checkpoint and config rows go through the CLI.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from mtl_lightning.checks import CheckpointFileError, DataError, MissingClassWarning
from mtl_lightning.commands import main
from mtl_lightning.data.base import MultiTaskDataModule, TensorTaskDataset
from mtl_lightning.module import MultiTaskModule
from mtl_lightning.nn.dense import DenseTrunk
from mtl_lightning.tasks import TaskSpec

TASKS = [TaskSpec("emotion", 5), TaskSpec("speaker", 3, role="adversarial")]
TINY_CLI = [
    "--data.init_args.per_pair=1",
    "--data.init_args.per_pair_eval=1",
    "--data.init_args.n_mels=16",
    "--data.init_args.frames=16",
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
    "--summary.print_table=false",
]


def _split(n: int = 15, width: int = 12) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(n)
    return torch.randn(n, width, generator=g), {
        "emotion": torch.arange(n) % 5,
        "speaker": torch.arange(n) % 3,
    }


class TinyData(MultiTaskDataModule):
    """Three in-memory splits; ``edit(split, features, targets)`` breaks one of them."""

    def __init__(self, edit=None) -> None:
        super().__init__()
        self._tasks = list(TASKS)
        self.edit = edit

    def setup(self, stage: str | None = None) -> None:
        for split in ("train", "val", "test"):
            features, targets = _split()
            if self.edit is not None:
                features, targets = self.edit(split, features, targets)
            setattr(self, f"{split}_set", TensorTaskDataset(features, targets))

    def train_dataloader(self):
        return self.train_loader(self.train_set, batch_size=8)

    def val_dataloader(self):
        return self.eval_loader(self.val_set, batch_size=8)


def _fit(data: MultiTaskDataModule, width: int = 12, tmp_path=None) -> None:
    model = MultiTaskModule(TASKS, trunk=DenseTrunk(width, divisors=(2,)), head_hidden=0)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data)


def _only(split_name: str, change):
    def edit(split, features, targets):
        return change(features, targets) if split == split_name else (features, targets)

    return edit


def _set(t: torch.Tensor, index: int, value: float) -> torch.Tensor:
    t = t.clone()
    t[index] = value
    return t


# ------------------------------------------------------------------------------------- data rows
def test_label_out_of_range_names_split_task_value_and_row(tmp_path):
    data = TinyData(_only("train", lambda x, y: (x, {**y, "emotion": _set(y["emotion"], 3, 7)})))
    with pytest.raises(DataError) as error:
        _fit(data, tmp_path=tmp_path)
    assert str(error.value) == (
        "train split, task 'emotion': labels must be in [0, 5) (or -100 for missing); "
        "found 7 at row(s) [3]"
    )


def test_negative_label_other_than_missing_marker(tmp_path):
    data = TinyData(_only("val", lambda x, y: (x, {**y, "speaker": _set(y["speaker"], 0, -1)})))
    with pytest.raises(
        DataError, match=r"val split, task 'speaker': .* found -1 at row\(s\) \[0\]"
    ):
        _fit(data, tmp_path=tmp_path)


def test_labels_for_an_unknown_task(tmp_path):
    data = TinyData(_only("train", lambda x, y: (x, {**y, "gender": torch.zeros(15).long()})))
    with pytest.raises(DataError) as error:
        _fit(data, tmp_path=tmp_path)
    assert str(error.value) == (
        "train split has labels for unknown task(s) ['gender']; "
        "the declared tasks are ['emotion', 'speaker']"
    )


def test_missing_labels_for_a_declared_task(tmp_path):
    data = TinyData(_only("val", lambda x, y: (x, {"emotion": y["emotion"]})))
    with pytest.raises(DataError) as error:
        _fit(data, tmp_path=tmp_path)
    assert str(error.value) == (
        "val split has no labels for declared task(s) ['speaker']; it has labels for ['emotion']"
    )


def test_float_class_labels(tmp_path):
    data = TinyData(_only("train", lambda x, y: (x, {**y, "emotion": y["emotion"].float()})))
    with pytest.raises(DataError, match="train split, task 'emotion': class labels must be a 1-D"):
        _fit(data, tmp_path=tmp_path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_features_name_the_rows(value, tmp_path):
    def poison(x, y):
        x = x.clone()
        x[4, 2] = value
        x[9, 0] = value
        return x, y

    with pytest.raises(DataError) as error:
        _fit(TinyData(_only("test", poison)), tmp_path=tmp_path)
    assert str(error.value) == "test split: features contain NaN/inf at row(s) [4, 9]"


def test_wrong_feature_shape_for_the_trunk(tmp_path):
    with pytest.raises(ValueError) as error:
        _fit(TinyData(), width=20, tmp_path=tmp_path)  # data has 12 features per row
    assert "DenseTrunk expects [batch, 20] features, got [8, 12]" in str(error.value)


def test_empty_dataset(tmp_path):
    data = TinyData(lambda split, x, y: (x[:0], {k: v[:0] for k, v in y.items()}))
    with pytest.raises(DataError) as error:
        _fit(data, tmp_path=tmp_path)
    assert str(error.value) == (
        "train split is empty (0 samples); every split needs at least one sample"
    )


def test_empty_split(tmp_path):
    data = TinyData(_only("val", lambda x, y: (x[:0], {k: v[:0] for k, v in y.items()})))
    with pytest.raises(DataError, match=r"^val split is empty \(0 samples\)"):
        _fit(data, tmp_path=tmp_path)


def test_empty_dataset_that_is_not_in_memory():
    with pytest.raises(DataError, match=r"the training loader got an empty dataset \(list"):
        MultiTaskDataModule.train_loader([], batch_size=4)
    with pytest.raises(DataError, match="the evaluation loader got an empty dataset"):
        MultiTaskDataModule.eval_loader([], batch_size=4)


def test_class_absent_from_training_warns_with_task_class_and_split(tmp_path):
    def drop_class_4(x, y):
        keep = y["emotion"] != 4
        return x[keep], {k: v[keep] for k, v in y.items()}

    with pytest.warns(MissingClassWarning) as record:
        _fit(TinyData(_only("train", drop_class_4)), tmp_path=tmp_path)
    messages = sorted(str(w.message) for w in record if w.category is MissingClassWarning)
    assert messages == [
        "task 'emotion': class 4 occurs in the test split (3 sample(s)) but never in the training split",
        "task 'emotion': class 4 occurs in the val split (3 sample(s)) but never in the training split",
    ]


def test_checks_run_once_and_can_be_turned_off():
    data = TinyData(_only("train", lambda x, y: (x, {**y, "emotion": _set(y["emotion"], 0, 9)})))
    data.check_data = False
    data.setup("fit")  # no error: the user opted out
    good = TinyData()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        good.setup("fit")
        good.setup("test")


# ------------------------------------------------------------------------------ checkpoint rows
def _checkpoint(in_tmp) -> str:
    main(
        [
            "fit",
            *TINY_CLI,
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=1",
            "--trainer.limit_val_batches=1",
        ]
    )
    return str(in_tmp / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")


def test_truncated_checkpoint_names_the_file(in_tmp):
    path = _checkpoint(in_tmp)
    data = Path(path).read_bytes()
    truncated = in_tmp / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFileError) as error:
        main(["test", *TINY_CLI, "--ckpt_path", str(truncated)])
    assert str(error.value).startswith(
        f"checkpoint {truncated} ({len(data) // 2} bytes) is truncated or corrupt:"
    )
    flipped = bytearray(data)  # same length, one payload byte changed: the CRC catches it
    flipped[len(data) // 2] ^= 0xFF
    corrupt = in_tmp / "flipped.ckpt"
    corrupt.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointFileError, match="flipped.ckpt .* corrupt"):
        main(["fit", *TINY_CLI, "--ckpt_path", str(corrupt)])


def test_missing_checkpoint_names_the_file(in_tmp):
    with pytest.raises(CheckpointFileError, match=r"^checkpoint nothing/here.ckpt does not exist$"):
        main(["test", *TINY_CLI, "--ckpt_path", "nothing/here.ckpt"])


# ---------------------------------------------------------------------------------- config rows
def test_config_typo_in_class_path_names_the_class(in_tmp, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--model.trunk.class_path", "mtl_lightning.nn.CNNTrunkk"])
    assert "mtl_lightning.nn.CNNTrunkk" in capsys.readouterr().err


def test_config_typo_in_a_key_names_the_key(in_tmp, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--data.init_args.per_pairs", "2"])
    assert "per_pairs" in capsys.readouterr().err
