"""DenseTrunk's normalisation option: LayerNorm and none are per sample, BatchNorm is not."""

import pytest
import torch
from torch import nn

from mtl_lightning.nn import DenseTrunk


@pytest.mark.parametrize(("norm", "kind"), [("batch", nn.BatchNorm1d), ("layer", nn.LayerNorm)])
def test_norm_option_picks_the_layer_and_keeps_the_parameter_names(norm, kind):
    trunk = DenseTrunk(40, divisors=(2, 4), norm=norm)
    assert [type(block[1]) for block in trunk.blocks] == [kind, kind]
    assert not any(
        isinstance(m, (nn.BatchNorm1d, nn.LayerNorm)) for m in DenseTrunk(40, norm="none").modules()
    )
    # Linear stays block[0]: checkpoints of the default trunk keep their keys
    assert "blocks.0.0.weight" in trunk.state_dict() and trunk.out_features == 10


@pytest.mark.parametrize(
    ("norm", "per_sample"), [("batch", False), ("layer", True), ("none", True)]
)
def test_training_output_of_a_sample_depends_on_its_batch_only_with_batchnorm(norm, per_sample):
    torch.manual_seed(0)
    trunk = DenseTrunk(40, divisors=(2, 4), dropout=0.0, norm=norm).train()
    x = torch.randn(16, 40)
    whole, halves = trunk(x), torch.cat([trunk(x[:8]), trunk(x[8:])])
    assert torch.allclose(whole, halves, atol=1e-6) == per_sample


def test_unknown_norm_is_rejected():
    with pytest.raises(ValueError, match="norm must be 'batch', 'layer' or 'none'"):
        DenseTrunk(40, norm="group")
