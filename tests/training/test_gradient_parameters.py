"""The gradient path's parameter lists: built once per epoch, rebuilt when one was frozen."""

from mtl_lightning import MultiTaskModule
from mtl_lightning.nn import DenseTrunk
from mtl_lightning.tasks import TaskSpec
from mtl_lightning.training.aggregated import gradient_parameters


def _ids(params):
    return [id(p) for p in params]


def test_cached_until_a_parameter_is_frozen_or_an_epoch_starts():
    model = MultiTaskModule([TaskSpec("a", 2), TaskSpec("b", 3)], trunk=DenseTrunk(8, widths=[4]))
    shared, others = gradient_parameters(model)
    assert _ids(shared) == _ids(model.trunk.parameters())
    assert set(_ids(others)) == {id(p) for p in model.parameters()} - set(_ids(shared))
    assert gradient_parameters(model)[0] is shared  # no second walk
    first = next(model.trunk.parameters())
    first.requires_grad_(False)  # frozen mid-epoch: seen at once
    assert id(first) not in _ids(gradient_parameters(model)[0])
    first.requires_grad_(True)  # unfrozen: seen when the next epoch starts
    assert id(first) not in _ids(gradient_parameters(model)[0])
    model._progress.parameters = None  # what on_train_epoch_start does
    assert _ids(gradient_parameters(model)[0]) == _ids(model.trunk.parameters())
