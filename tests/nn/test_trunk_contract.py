"""The trunk contract is checked once, at the first batch, with errors that say what to fix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtl_lightning import MultiTaskModule, TaskSpec
from mtl_lightning.nn import DenseTrunk
from mtl_lightning.nn.contract import TrunkContractError

TASKS = [TaskSpec("a", 3), TaskSpec("b", 2)]


class Pooled(nn.Module):
    """A user's CNN that forgot to flatten its pooled map."""

    def __init__(self, width: int = 8, returned: int = 8, flatten: bool = False) -> None:
        super().__init__()
        self.out_features, self.flatten = width, flatten
        self.conv = nn.Conv1d(1, returned, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.adaptive_avg_pool1d(self.conv(x[:, None]), 1)[..., None]
        return y.flatten(1) if self.flatten else y


def _batch(n: int = 4, mask: torch.Tensor | None = None) -> dict:
    batch = {
        "features": torch.randn(n, 6),
        "targets": {"a": torch.arange(n) % 3, "b": torch.arange(n) % 2},
    }
    if mask is not None:
        batch["mask"] = mask
    return batch


def test_a_trunk_returning_a_pooled_map_is_told_to_flatten() -> None:
    model = MultiTaskModule(TASKS, trunk=Pooled(), head_hidden=0)
    with pytest.raises(TrunkContractError, match=r"trunk Pooled returned shape \[4, 8, 1, 1\], "
                       r"expected \[4, 8\] = \[batch, out_features\]: flatten"):  # fmt: skip
        model.forward_losses(_batch(), 0)


def test_a_trunk_whose_width_is_not_its_out_features_is_named() -> None:
    model = MultiTaskModule(TASKS, trunk=Pooled(width=8, returned=5, flatten=True), head_hidden=0)
    with pytest.raises(TrunkContractError, match="its out_features is 8 but it returns 5 features"):
        model.forward_losses(_batch(), 0)


def test_the_check_runs_once_and_a_good_trunk_passes() -> None:
    model = MultiTaskModule(TASKS, trunk=Pooled(flatten=True), head_hidden=0)
    model.forward_losses(_batch(), 0)
    assert model._trunk_checked
    assert set(model(torch.randn(2, 6))) == {"a", "b"}


def test_a_trunk_without_out_features_fails_at_construction() -> None:
    with pytest.raises(
        TrunkContractError, match="trunk ReLU must expose an integer `out_features`"
    ):
        MultiTaskModule(TASKS, trunk=nn.ReLU())


def test_a_padding_mask_needs_a_trunk_that_takes_it() -> None:
    # the audio datamodule's batches carry a mask; a DenseTrunk has no mask argument
    model = MultiTaskModule(TASKS, trunk=DenseTrunk(6, divisors=[1]), head_hidden=0)
    model.forward_losses(_batch(mask=torch.ones(4, 6, dtype=torch.bool)), 0)  # nothing padded
    padded = torch.ones(4, 6, dtype=torch.bool)
    padded[0, 4:] = False
    with pytest.raises(TrunkContractError, match="trunk DenseTrunk takes no `mask`"):
        model.forward_losses(_batch(mask=padded), 0)


def test_an_embedding_narrower_than_a_task_warns() -> None:
    with pytest.warns(UserWarning, match="fewer than the 5 classes of task 'c'"):
        MultiTaskModule([TaskSpec("c", 5)], trunk=DenseTrunk(6, widths=[2]), head_hidden=0)
