"""Every bad batch input raises an error naming the task and value at fault."""

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from mtl_lightning import BatchError, MultiTaskModule, TaskSpec
from mtl_lightning.data import MultiTaskDataModule, TensorTaskDataset
from mtl_lightning.nn import CNNTrunk

TASKS = [TaskSpec("emotion", 5), TaskSpec("speaker", 11, role="adversarial")]


def _batch(n=4, **overrides):
    targets = {
        "emotion": torch.tensor([0, 1, 2, 3][:n]),
        "speaker": torch.tensor([0, 10, 5, 1][:n]),
    }
    targets.update(overrides.pop("targets", {}))
    for k in overrides.pop("drop", []):
        targets.pop(k)
    return {"features": overrides.pop("features", torch.randn(n, 1, 16, 16)), "targets": targets}


@pytest.fixture
def model():
    return MultiTaskModule(TASKS, trunk=CNNTrunk(channels=(4, 4, 4), out_features=8))


def test_valid_batch_passes(model):
    loss = model.shared_step(_batch(), 0, "train")
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        (
            _batch(targets={"speaker": torch.tensor([0, 11, 5, -1])}),
            r"batch 3, task 'speaker': labels must be in \[0, 11\); found -1, 11 at sample\(s\) \[1, 3\]",
        ),
        (
            _batch(targets={"emotion": torch.tensor([0, 1, 2, 7])}),
            r"task 'emotion': labels must be in \[0, 5\); found 7",
        ),
        (_batch(drop=["speaker"]), r"no labels for declared task\(s\) \['speaker'\]"),
        (
            _batch(targets={"gender": torch.tensor([0, 1, 0, 1])}),
            r"labels for unknown task\(s\) \['gender'\]",
        ),
        (
            _batch(features=torch.tensor(float("nan")).repeat(4, 1, 16, 16)),
            r"features contain NaN at sample\(s\) \[0, 1, 2, 3\]",
        ),
        (
            _batch(
                features=torch.randn(4, 1, 16, 16).index_put_(
                    (torch.tensor([2]),), torch.tensor(float("inf"))
                )
            ),
            r"features contain inf at sample\(s\) \[2\]",
        ),
        (
            _batch(targets={"emotion": torch.tensor([0.0, 1.0, 2.0, 3.0])}),
            r"task 'emotion': class labels must be a 1-D integer tensor",
        ),
        (
            _batch(targets={"emotion": torch.tensor([0, 1])}),
            r"task 'emotion': 2 labels for 4 samples",
        ),
        ((torch.randn(4, 1, 16, 16), torch.zeros(4)), r"expected a mapping with keys 'features'"),
    ],
)
def test_bad_batches_raise_named_errors(model, batch, match):
    with pytest.raises(BatchError, match=match):
        model.shared_step(batch, 3, "train")


def test_feature_shape_the_trunk_cannot_take(model):
    with pytest.raises(
        ValueError, match=r"CNNTrunk expects features of shape \[batch, 1, n_mels, frames\]"
    ):
        model.shared_step(_batch(features=torch.randn(4, 2, 16, 16)), 0, "train")
    with pytest.raises(ValueError, match=r"needs n_mels and frames >= 4, got \[16, 2\]"):
        model.shared_step(_batch(features=torch.randn(4, 1, 16, 2)), 0, "train")


def test_bad_label_stops_a_real_fit_with_the_error(tmp_path):
    class BadData(MultiTaskDataModule):
        def __init__(self):
            super().__init__()
            self._tasks = TASKS

        def train_dataloader(self):
            y = torch.arange(8) % 5
            y[6] = 9  # sample 6 (batch 1, position 2) has an emotion label outside [0, 5)
            ds = TensorTaskDataset(
                torch.randn(8, 1, 16, 16), {"emotion": y, "speaker": torch.arange(8)}
            )
            return DataLoader(ds, batch_size=4)

    model = MultiTaskModule(TASKS, trunk=CNNTrunk(channels=(4, 4, 4), out_features=8))
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(
        BatchError,
        match=r"batch 1, task 'emotion': labels must be in \[0, 5\); found 9 at sample\(s\) \[2\]",
    ):
        trainer.fit(model, BadData())


def test_large_finite_features_whose_sum_overflows_pass_and_nan_among_them_is_found():
    from mtl_lightning.validation import check_batch

    tasks = [TaskSpec("a", 2)]
    big = torch.full((4, 3), 3e38)  # finite, but their float32 sum is inf
    check_batch(big, {"a": torch.tensor([0, 1, 0, 1])}, tasks)
    big[2, 1] = float("nan")
    with pytest.raises(BatchError, match=r"features contain NaN at sample\(s\) \[2\]"):
        check_batch(big, {"a": torch.tensor([0, 1, 0, 1])}, tasks)


def test_one_reduction_shows_a_valid_batch_and_refuses_anything_else():
    from mtl_lightning.validation import _valid_features_and_classes as valid
    from mtl_lightning.validation import check_batch

    tasks = [TaskSpec("a", 3), TaskSpec("r", 1, kind="regression"), TaskSpec("b", 2)]
    x = torch.zeros(3, 2)
    good = {"a": torch.tensor([0, 2, -100]), "r": torch.zeros(3), "b": torch.tensor([1, 0, 1])}
    assert valid(x, good, tasks)
    for name, labels in [
        ("a", torch.tensor([0, 3, 1])),  # K
        ("a", torch.tensor([0, -1, 1])),  # negative, not -100
        ("b", torch.tensor([0.0, 1.0, 1.0])),  # float
        ("b", torch.tensor([0, 1, 1], dtype=torch.int32)),  # another dtype than a's
        ("b", torch.tensor([0, 1])),  # too few
        ("b", torch.tensor([True, False, True])),
    ]:
        assert not valid(x, {**good, name: labels}, tasks), (name, labels)
    for bad in (float("nan"), float("inf")):
        assert not valid(torch.tensor([[0.0, bad]] * 3), good, tasks)
    # the checks one by one then name the fault, as before
    with pytest.raises(BatchError, match=r"task 'b': labels must be in \[0, 2\); found 5"):
        check_batch(x, {**good, "b": torch.tensor([0, 5, 1])}, tasks)
