import pytest
import torch

from mtl_lightning.tasks import TaskSpec
from mtl_lightning.weighting import StaticWeighting


def test_static_matches_hand_computed_total_and_taskspec_default():
    tasks = [TaskSpec("emotion", 4), TaskSpec("speaker", 3, role="adversarial", weight=0.25)]
    s = StaticWeighting({"emotion": 2.0})
    s.setup(tasks)
    a = torch.tensor(3.0, requires_grad=True)
    total = s({"emotion": a, "speaker": torch.tensor(8.0)}, tasks)
    assert total.item() == pytest.approx(2.0 * 3.0 + 0.25 * 8.0)
    total.backward()
    assert a.grad.item() == pytest.approx(2.0)
    assert s.last_weights == {"emotion": 2.0, "speaker": 0.25}


def test_static_rejects_unknown_task():
    with pytest.raises(ValueError, match="unknown"):
        StaticWeighting({"nope": 1.0}).setup([TaskSpec("a", 2)])
