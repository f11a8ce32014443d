"""`MultiTaskDataModule`: a LightningDataModule that declares its tasks."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mtl_lightning.checks import DataError, check_split, warn_missing_classes
from mtl_lightning.data.collate import StackedSamples, collate_samples
from mtl_lightning.tasks import TaskSpec


class MultiTaskDataModule(pl.LightningDataModule):
    """Base for datamodules whose ``tasks`` the CLI links into the model (tasks are declared once).

    Subclasses set ``self._tasks`` (or override :attr:`tasks`) and yield batches of the form
    ``{"features": Tensor, "targets": {task_name: Tensor}}``.
    """

    _tasks: list[TaskSpec]
    #: check the splits against the tasks after ``setup()`` (see :meth:`check_splits`)
    check_data: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "setup" in cls.__dict__:  # every subclass's setup() ends with check_splits()
            cls.setup = _checked_setup(cls.__dict__["setup"])  # type: ignore[method-assign]

    def check_splits(self) -> None:
        """Check ``train_set`` / ``val_set`` / ``test_set`` against :attr:`tasks`, each once.

        Runs automatically after ``setup()`` for in-memory splits (datasets with ``features``
        and ``targets``, like :class:`TensorTaskDataset`): raises
        :class:`~mtl_lightning.checks.DataError` naming the split, task and rows for an empty
        split, missing or unknown task labels, labels out of range and NaN/inf features; warns
        (:class:`~mtl_lightning.checks.MissingClassWarning`) for a class that validation or test
        data has and training data lacks. Set ``check_data = False`` to skip.
        """
        if not self.check_data:
            return
        checked: set[str] = getattr(self, "_checked_splits", set())
        splits = {}
        for split in ("train", "val", "test"):
            dataset = getattr(self, f"{split}_set", None)
            features, targets = (
                getattr(dataset, "features", None),
                getattr(dataset, "targets", None),
            )
            if isinstance(features, Tensor) and isinstance(targets, Mapping):
                if split not in checked:
                    check_split(split, features, targets, self.tasks)
                splits[split] = targets
        if "train" in splits:  # warn once per split
            others = {k: v for k, v in splits.items() if k != "train" and k not in checked}
            warn_missing_classes(splits["train"], others, self.tasks)
        self._checked_splits = checked | set(splits)

    @property
    def tasks(self) -> list[TaskSpec]:
        """The tasks this data provides labels for."""
        return list(self._tasks)

    @staticmethod
    def train_loader(
        dataset: Dataset,
        batch_size: int,
        seed: int = 0,
        num_workers: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> ResumableDataLoader:
        """A training loader that resumes mid-epoch at the exact batch where a run stopped.

        The order is a seeded permutation per epoch (``seed + epoch``), independent of the global
        RNG; under DDP each rank reads a disjoint shard (``DistributedSampler`` semantics). The
        loader is stateful, so Lightning saves its position in every checkpoint and restores it
        on ``--ckpt_path``: see :class:`ResumableDataLoader`.

        Example:
            >>> import torch
            >>> ds = TensorTaskDataset(torch.arange(6.0)[:, None], {"a": torch.arange(6) % 2})
            >>> loader = MultiTaskDataModule.train_loader(ds, batch_size=4, seed=1)
            >>> [b["features"].flatten().tolist() for b in loader]
            [[1.0, 5.0, 2.0, 0.0], [3.0, 4.0]]
        """
        _require_samples(dataset, "training")
        return ResumableDataLoader(
            dataset,
            batch_size=batch_size,
            sampler=ResumableSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last),
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            collate_fn=collate_samples,
        )

    @staticmethod
    def eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
        """A validation/test loader that sees every sample exactly once, also under DDP.

        Lightning's default distributed sampler pads the dataset so every rank gets the same
        number of samples, which counts the padded samples twice in the metrics. Here each rank
        gets a disjoint shard without padding (ranks may differ by one batch), and the torchmetrics
        states and Lightning's batch-size-weighted means are summed across ranks, so multi-process
        validation equals single-process validation.
        """
        _require_samples(dataset, "evaluation")
        sampler = None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            sampler=sampler,
            generator=torch.Generator().manual_seed(0),  # iterators leave the global RNG alone
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            collate_fn=collate_samples,
        )


class TensorTaskDataset(Dataset):
    """In-memory dataset of feature tensors and per-task label tensors.

    Example:
        >>> import torch
        >>> ds = TensorTaskDataset(torch.zeros(3, 4), {"a": torch.tensor([0, 1, 0])})
        >>> len(ds), ds[1]["targets"]["a"].item()
        (3, 1)
    """

    def __init__(self, features: Tensor, targets: Mapping[str, Tensor]) -> None:
        for name, y in targets.items():
            if y.shape[0] != features.shape[0]:
                raise ValueError(
                    f"task {name!r}: {y.shape[0]} labels for {features.shape[0]} feature rows"
                )
        self.features = features
        self.targets = dict(targets)

    def __len__(self) -> int:
        return self.features.shape[0]

    def __getitem__(self, index: int) -> dict[str, object]:
        return {
            "features": self.features[index],
            "targets": {name: y[index] for name, y in self.targets.items()},
        }

    def __getitems__(self, indices: Sequence[int]) -> StackedSamples:
        """A batch's samples at once (the ``DataLoader`` asks for them so):
        :func:`~mtl_lightning.data.collate.collate_samples` collates them with one indexing
        per tensor, any other ``collate_fn`` reads them one by one."""
        return StackedSamples(self.features, self.targets, indices)


def _checked_setup(setup: Callable[..., None]) -> Callable[..., None]:
    """Wrap a datamodule's ``setup`` so the outermost call ends with ``check_splits()``."""

    @functools.wraps(setup)
    def wrapper(self: MultiTaskDataModule, *args: Any, **kwargs: Any) -> None:
        outer = not getattr(self, "_in_setup", False)
        self._in_setup = True
        try:
            setup(self, *args, **kwargs)
        finally:
            if outer:
                self._in_setup = False
        if outer:
            self.check_splits()

    return wrapper


def _require_samples(dataset: Any, kind: str) -> None:
    if hasattr(dataset, "__len__") and len(dataset) == 0:
        raise DataError(
            f"the {kind} loader got an empty dataset ({type(dataset).__name__}, 0 samples)"
        )


def _world() -> tuple[int, int]:
    """``(world_size, rank)`` of the initialised process group, ``(1, 0)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class ResumableSampler(DistributedSampler):
    """A seeded, epoch-aware shuffling sampler that can skip the start of an epoch.

    Exactly ``torch.utils.data.DistributedSampler`` (permutation seeded with ``seed + epoch``,
    padded so every rank gets ``ceil(N / world_size)`` indices, rank ``r`` takes every
    ``world_size``-th index from ``r``), with the rank and world size read from the process group
    when there is one and ``1, 0`` otherwise. Being a ``DistributedSampler``, Lightning keeps it
    under DDP instead of swapping in its own. :meth:`skip_next` drops the first indices of the
    *next* iteration only: that is how a resumed run starts at the batch where it stopped, while
    ``len()`` stays the full epoch so Lightning's batch counting is unchanged.

    Example:
        >>> s = ResumableSampler(range(10), seed=3, num_replicas=2, rank=1)
        >>> full = list(s); len(full), len(s)
        (5, 5)
        >>> s.skip_next(2); list(s) == full[2:], list(s) == full
        (True, True)
        >>> s.set_epoch(1); list(s) != full
        True
    """

    def __init__(
        self,
        dataset: Any,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        world, me = _world()
        super().__init__(
            dataset,
            num_replicas=world if num_replicas is None else num_replicas,
            rank=me if rank is None else rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self._skip = 0

    def skip_next(self, n: int) -> None:
        """Leave out the first ``n`` indices of this rank's shard in the next iteration."""
        if n < 0:
            raise ValueError(f"cannot skip a negative number of samples ({n})")
        self._skip = n

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self._skip, 0
        indices = list(super().__iter__())
        return iter(indices[skip:])


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over a :class:`ResumableSampler` that checkpoints its position.

    It counts the batches it has handed out in the current epoch. Lightning stores
    :meth:`state_dict` (``{"epoch", "batches"}``) in every checkpoint (under
    ``loops.fit_loop.state_dict.combined_loader``) and calls :meth:`load_state_dict` before the
    first ``iter()`` of a resumed fit, so the next iteration skips the batches already trained on
    and continues the same permutation. A position at the end of an epoch resumes at the start of
    the next one. Lightning's fetcher does not read ahead of a loader with a length, so the count
    is exactly the batches trained on; worker processes prefetch inside the iterator, which is
    not counted. Under DDP every rank skips the same number of batches of its own shard.

    Example:
        >>> import torch
        >>> data = list(range(10))
        >>> loader = ResumableDataLoader(data, batch_size=3, sampler=ResumableSampler(data, seed=0))
        >>> it = iter(loader); first = next(it); second = next(it)
        >>> state = loader.state_dict(); state
        {'epoch': 0, 'batches': 2}
        >>> fresh = ResumableDataLoader(data, batch_size=3, sampler=ResumableSampler(data, seed=0))
        >>> fresh.load_state_dict(state)
        >>> [b.tolist() for b in fresh] == [b.tolist() for b in list(loader)[2:]]
        True
    """

    sampler: ResumableSampler

    def __init__(
        self, dataset: Any, batch_size: int, sampler: ResumableSampler, **kwargs: Any
    ) -> None:
        if not isinstance(sampler, ResumableSampler):
            raise TypeError(f"sampler must be a ResumableSampler, got {type(sampler).__name__}")
        # its own generator: creating an iterator draws the workers' base seed from it, never
        # from the global RNG, so a resumed run's random stream (dropout) matches the original
        kwargs.setdefault("generator", torch.Generator().manual_seed(sampler.seed))
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self._position = 0  # batches handed out in epoch `_position_epoch`
        self._position_epoch = sampler.epoch
        self._resume_at = 0  # batches to skip at the next iteration (set by load_state_dict)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return self._counted()

    def _counted(self) -> Iterator[Any]:
        # a generator: the skip and the epoch are read at the first next(), after set_epoch()
        start, self._resume_at = self._resume_at, 0
        assert self.batch_size is not None
        self.sampler.skip_next(start * self.batch_size)
        self._position, self._position_epoch = start, self.sampler.epoch
        if self.generator is not None:  # worker seeds: a function of (seed, epoch) as well
            self.generator.manual_seed(self.sampler.seed + self.sampler.epoch)
        for batch in super().__iter__():
            self._position += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": e, "batches": b}``: ``b`` batches of epoch ``e`` have been handed out."""
        if self._position_epoch != self.sampler.epoch:  # set_epoch() ran, nothing read yet
            return {"epoch": int(self.sampler.epoch), "batches": 0}
        return {"epoch": int(self._position_epoch), "batches": int(self._position)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Continue after ``state_dict["batches"]`` batches of epoch ``state_dict["epoch"]``."""
        epoch, batches = int(state_dict["epoch"]), int(state_dict["batches"])
        if batches >= len(self):  # the epoch was finished: start the next one
            epoch, batches = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self._resume_at = batches
        self._position, self._position_epoch = batches, epoch
