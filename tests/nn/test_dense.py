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
        isinstance(m, (nn.BatchNorm1d, nn.LayerNorm))
        for m in DenseTrunk(40, divisors=(2, 4), norm="none").modules()
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


def test_explicit_widths_build_those_blocks() -> None:
    trunk = DenseTrunk(20, widths=[20, 5, 2], dropout=0.0)
    assert [b[0].out_features for b in trunk.blocks] == [20, 5, 2]
    assert [b[0].in_features for b in trunk.blocks] == [20, 20, 5]
    assert trunk.out_features == 2


def test_a_divisor_width_below_the_floor_names_the_block_and_the_input_size() -> None:
    # the five-target user's n/4, n/12, n/20 with n = 20: 5, 1, 1 (a 1-d embedding before)
    with pytest.raises(ValueError, match=r"block 1 \(divisor 12\): in_features 20 // 12 = 1"):
        DenseTrunk(20)
    assert DenseTrunk(20, divisors=[1, 2]).out_features == 10
    assert DenseTrunk(20, min_width=1).out_features == 1  # the floor is a setting
    with pytest.raises(ValueError, match="widths or divisors, not both"):
        DenseTrunk(20, divisors=[1], widths=[4])
    with pytest.raises(ValueError, match="positive integers"):
        DenseTrunk(20, widths=[8, 0])
