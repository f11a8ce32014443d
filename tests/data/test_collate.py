"""The batched fetch of in-memory datasets: the same batches as ``default_collate`` of the
samples one by one, for every loader and collate function that reads them."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Subset, default_collate

from mtl_lightning.data import SyntheticTabularDataModule, TensorTaskDataset
from mtl_lightning.data.base import MultiTaskDataModule
from mtl_lightning.data.collate import StackedSamples, collate_samples


def _dataset(n: int = 10) -> TensorTaskDataset:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (n,), generator=g)
    labels[1] = -100
    tags = torch.randint(0, 2, (n, 2), generator=g).float()
    tags[2] = float("nan")
    return TensorTaskDataset(
        torch.randn(n, 4, 5, generator=g),  # 3-D features (mel frames)
        {
            "cls": labels,
            "reg": torch.randn(n, 1, generator=g).double(),
            "tags": tags,
            "flag": torch.arange(n) % 2 == 0,
        },
    )


def _assert_same_batch(got: dict, expected: dict) -> None:
    assert set(got) == set(expected) and set(got["targets"]) == set(expected["targets"])
    pairs = [(got["features"], expected["features"])]
    pairs += [(got["targets"][k], expected["targets"][k]) for k in expected["targets"]]
    for a, b in pairs:
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a.isnan(), b.isnan()) if a.is_floating_point() else True
        assert torch.equal(torch.nan_to_num(a.double()), torch.nan_to_num(b.double()))


def _one_by_one(dataset, indices) -> dict:
    return default_collate([dataset[i] for i in indices])


def test_train_loader_batches_equal_default_collate_of_the_samples():
    ds = _dataset()
    loader = MultiTaskDataModule.train_loader(ds, batch_size=4, seed=3)
    order = list(loader.sampler)
    batches = list(loader)
    assert len(batches) == 3
    for k, batch in enumerate(batches):
        _assert_same_batch(batch, _one_by_one(ds, order[4 * k : 4 * k + 4]))


def test_eval_loader_and_subset_take_the_batched_fetch():
    ds = _dataset()
    subset = Subset(ds, [7, 2, 5, 0, 9])
    loader = MultiTaskDataModule.eval_loader(subset, batch_size=3)
    assert loader.collate_fn is collate_samples
    assert isinstance(subset.__getitems__([0, 1]), StackedSamples)  # Subset forwards it
    batches = list(loader)
    _assert_same_batch(batches[0], _one_by_one(ds, [7, 2, 5]))
    _assert_same_batch(batches[1], _one_by_one(ds, [0, 9]))


def test_any_other_collate_fn_reads_the_samples_one_by_one():
    ds = _dataset()

    def labels(items):
        return [int(item["targets"]["cls"]) for item in items]

    got = list(DataLoader(ds, batch_size=4, collate_fn=labels))
    assert got == [ds.targets["cls"][i : i + 4].tolist() for i in (0, 4, 8)]
    # a plain DataLoader keeps torch's default_collate: the same batches, the slow way
    for k, batch in enumerate(DataLoader(ds, batch_size=4)):
        _assert_same_batch(batch, _one_by_one(ds, range(4 * k, min(4 * k + 4, 10))))


def test_stacked_samples_is_a_sequence_of_the_samples():
    ds = _dataset()
    samples = ds.__getitems__([3, 8, 1])
    assert len(samples) == 3 and [s["targets"]["cls"] for s in samples[1:]] == [
        ds.targets["cls"][8],
        ds.targets["cls"][1],
    ]
    with pytest.raises(IndexError):
        samples[3]
    assert torch.equal(samples[-1]["features"], ds.features[1])


def test_worker_processes_give_the_same_batches():
    ds = _dataset()
    serial = list(MultiTaskDataModule.train_loader(ds, batch_size=4, seed=1))
    workers = list(MultiTaskDataModule.train_loader(ds, batch_size=4, seed=1, num_workers=1))
    assert len(serial) == len(workers)
    for a, b in zip(serial, workers, strict=True):
        _assert_same_batch(b, a)


def test_a_datamodule_serves_the_batched_fetch():
    data = SyntheticTabularDataModule(n_train=64, n_eval=16, batch_size=16)
    data.setup("fit")
    for loader in (data.train_dataloader(), data.val_dataloader()):
        assert loader.collate_fn is collate_samples
        assert isinstance(loader.dataset.__getitems__([0]), StackedSamples)
