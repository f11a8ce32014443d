import torch

from mtl_lightning.module import MultiTaskModule
from mtl_lightning.nn.dense import DenseTrunk
from mtl_lightning.tasks import TaskSpec
from mtl_lightning.weighting import StaticWeighting


def _tasks():
    return [TaskSpec("a", 3, weight=2.0), TaskSpec("b", 4, role="adversarial", weight=0.5)]


def test_default_weighting_is_the_plain_taskspec_weighted_sum():
    m = MultiTaskModule(_tasks(), trunk=DenseTrunk(8, widths=[2, 1, 1]))
    losses = {"a": torch.tensor(1.5), "b": torch.tensor(3.0)}
    assert torch.equal(m.combine_losses(losses), torch.tensor(2.0 * 1.5 + 0.5 * 3.0))
    assert m.weighting.last_weights == {"a": 2.0, "b": 0.5}


def test_weighting_argument_overrides_and_state_dict_round_trips():
    m = MultiTaskModule(
        _tasks(), trunk=DenseTrunk(8, widths=[2, 1, 1]), weighting=StaticWeighting({"b": 1.0})
    )
    assert m.combine_losses({"a": torch.tensor(1.0), "b": torch.tensor(1.0)}).item() == 3.0
    m2 = MultiTaskModule(_tasks(), trunk=DenseTrunk(8, widths=[2, 1, 1]))
    m2.load_state_dict(m.state_dict())
