"""The forward path's pure routing: each head's view of the embedding (plain, reversed, detached;
the ensembles skipped), and the trunk's mask and contract, checked on hand-built cases."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from mtl_lightning import MultiTaskModule, TaskSpec
from mtl_lightning.nn import DenseTrunk, GradientReversal
from mtl_lightning.nn.contract import TrunkContractError
from mtl_lightning.training.forward import head_outputs, inspect_trunk, trunk_output

TASKS = [
    TaskSpec("main", 2),
    TaskSpec("rev", 2, role="adversarial"),
    TaskSpec("conf", 2, role="adversarial", adversary="confusion"),
]


class Scale(nn.Module):
    """A head multiplying its input by a learnable scalar: the gradients are easy to predict."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = nn.Parameter(torch.tensor(factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor * x


def _embedding_grad(tasks, name: str, skip=()) -> torch.Tensor | None:
    heads = {"main": Scale(2.0), "rev": Scale(3.0), "conf": Scale(5.0)}
    embedding = torch.ones(1, 2, requires_grad=True)
    outputs = head_outputs(tasks, heads, embedding, GradientReversal(0.5), skip)
    outputs[name].sum().backward()
    assert heads[name].factor.grad is not None  # every head is trained by its own loss
    return embedding.grad


def test_each_head_sees_its_view_of_the_embedding() -> None:
    # plain: d(2 e)/de = 2; reversed: -0.5 * 3; confusion: detached, no gradient to the trunk
    assert _embedding_grad(TASKS, "main").tolist() == [[2.0, 2.0]]
    assert _embedding_grad(TASKS, "rev").tolist() == [[-1.5, -1.5]]
    assert _embedding_grad(TASKS, "conf") is None


def test_the_values_are_unchanged_and_the_ensembles_are_skipped() -> None:
    heads = {"main": Scale(2.0), "rev": Scale(3.0), "conf": Scale(5.0)}
    embedding = torch.ones(1, 2)
    outputs = head_outputs(TASKS, heads, embedding, GradientReversal(0.5), skip={"rev"})
    assert list(outputs) == ["main", "conf"]
    assert outputs["main"].tolist() == [[2.0, 2.0]] and outputs["conf"].tolist() == [[5.0, 5.0]]


def test_without_adversaries_reversal_is_never_applied() -> None:
    calls = []

    def reversal(e: torch.Tensor) -> torch.Tensor:
        calls.append(e)
        return e

    head_outputs([TaskSpec("main", 2)], {"main": Scale(1.0)}, torch.ones(1, 2), reversal)
    assert calls == []
    head_outputs(
        TASKS, {"main": Scale(1.0), "rev": Scale(1.0)}, torch.ones(1, 2), reversal, {"conf"}
    )
    assert len(calls) == 1  # computed once, for every reversal head


def test_the_module_routes_its_heads_through_head_outputs() -> None:
    torch.manual_seed(0)
    model = MultiTaskModule(TASKS, trunk=DenseTrunk(6, widths=[4]), head_hidden=0)
    embedding = torch.randn(3, 4)
    got = model.forward_heads(embedding)
    want = head_outputs(TASKS, model.heads, embedding, model.reversal)
    assert list(got) == ["main", "rev", "conf"]
    for name in got:
        torch.testing.assert_close(got[name], want[name])


class Recorder(nn.Module):
    """A trunk recording the masks it was given (its forward takes none)."""

    out_features = 3

    def __init__(self) -> None:
        super().__init__()
        self.masks: list[torch.Tensor | None] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.masks.append(None)
        return x[:, :3]


class MaskedRecorder(Recorder):
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        self.masks.append(mask)
        return x[:, :3]


def test_the_mask_reaches_only_a_trunk_that_takes_one() -> None:
    x, padded = torch.zeros(2, 5), torch.tensor([[True] * 5, [True, True, False, False, False]])
    masked = MaskedRecorder()
    trunk_output(masked, x, padded, takes_mask=True, check=True)
    trunk_output(masked, x, None, takes_mask=True, check=True)
    assert masked.masks[0] is padded and masked.masks[1] is None
    plain = Recorder()
    full = torch.ones(2, 5, dtype=torch.bool)
    assert trunk_output(plain, x, full, takes_mask=False, check=True).shape == (2, 3)
    assert plain.masks == [None]  # a mask that pads nothing is dropped
    with pytest.raises(TrunkContractError, match="trunk Recorder takes no `mask`, but this batch"):
        trunk_output(plain, x, padded, takes_mask=False, check=False)
    assert plain.masks == [None]  # refused before the trunk runs


def test_the_contract_is_checked_only_when_asked() -> None:
    class Wide(Recorder):
        out_features = 4  # but returns 3 features

    x = torch.zeros(2, 5)
    assert trunk_output(Wide(), x, takes_mask=False, check=False).shape == (2, 3)
    with pytest.raises(TrunkContractError, match="its out_features is 4 but it returns 3"):
        trunk_output(Wide(), x, takes_mask=False, check=True)


def test_inspect_trunk_reports_width_and_mask_and_warns_at_the_modules_caller() -> None:
    assert inspect_trunk(MaskedRecorder(), [TaskSpec("a", 2)]) == (3, True)
    assert inspect_trunk(Recorder(), [TaskSpec("a", 2)]) == (3, False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        MultiTaskModule([TaskSpec("c", 5)], trunk=DenseTrunk(6, widths=[2]), head_hidden=0)
    narrow = [w for w in caught if "fewer than the 5 classes" in str(w.message)]
    assert len(narrow) == 1 and narrow[0].filename == __file__


def test_fully_labelled_tasks_take_their_loss_unmasked_with_the_same_value() -> None:
    """``fully_labelled`` answers per task as ``mask.all()`` does (masks of other shapes one by
    one), and each task loss of ``forward_losses`` equals ``task_loss`` with its mask, for
    fully and partly labelled tasks of every kind."""
    from mtl_lightning.losses import labelled_masks, task_loss
    from mtl_lightning.training.forward import fully_labelled

    masks = {"a": torch.tensor([True, True]), "b": torch.tensor([True, False])}
    assert fully_labelled(masks) == {"a": True, "b": False}
    odd = {"a": torch.ones(3, dtype=torch.bool), "b": torch.tensor([False, True])}
    assert fully_labelled(odd) == {"a": True, "b": False}
    assert fully_labelled({}) == {}

    torch.manual_seed(0)
    tasks = [
        TaskSpec("full", 3), TaskSpec("part", 3), TaskSpec("reg", 2, kind="regression"),
        TaskSpec("tags", 2, kind="multilabel"), TaskSpec("none", 2),
    ]  # fmt: skip
    n = 6
    nan = float("nan")
    tags = torch.tensor([[1.0, 0.0], [nan, nan], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    targets = {
        "full": torch.randint(0, 3, (n,)),
        "part": torch.tensor([0, -100, 2, 1, -100, 0]),
        "reg": torch.randn(n, 2),
        "tags": tags,
        "none": torch.full((n,), -100),
    }
    model = MultiTaskModule(tasks, trunk=DenseTrunk(8, divisors=[1]), head_hidden=4)
    batch = {"features": torch.randn(n, 8), "targets": targets}
    step = model.forward_losses(batch, 0)
    masks = labelled_masks(tasks, targets)
    assert fully_labelled(masks) == {"full": True, "part": False, "reg": True, "tags": False,
                                     "none": False}  # fmt: skip
    for t in tasks:
        expected = task_loss(t, step.outputs[t.name], targets[t.name], masks[t.name])
        assert torch.equal(step.losses[t.name], expected), t.name
