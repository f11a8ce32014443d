"""CNNTrunk's mask: padding does not change an utterance's embedding; the mask is checked."""

from __future__ import annotations

import pytest
import torch

from mtl_lightning.nn import CNNTrunk


@pytest.mark.parametrize("length", [8, 23, 37, 64])
def test_padding_does_not_change_the_embedding(length):
    torch.manual_seed(0)
    trunk = CNNTrunk(freq_bins=4).eval()
    x = torch.randn(1, 1, 40, length)
    padded = torch.cat([x, 5 * torch.randn(1, 1, 40, 80 - length)], dim=-1)  # not even zeros
    mask = torch.arange(80)[None, :] < length
    with torch.no_grad():
        torch.testing.assert_close(trunk(padded, mask=mask), trunk(x), atol=1e-5, rtol=1e-5)
        unmasked = trunk(padded)
    assert not torch.allclose(unmasked, trunk(x), atol=1e-3)  # without the mask it would differ


def test_full_mask_equals_no_mask_and_rows_are_independent():
    torch.manual_seed(0)
    trunk = CNNTrunk().eval()
    x = torch.randn(3, 1, 40, 48)
    full = torch.ones(3, 48, dtype=torch.bool)
    mask = full.clone()
    mask[1, 30:] = False
    with torch.no_grad():
        torch.testing.assert_close(trunk(x, mask=full), trunk(x), atol=1e-5, rtol=1e-5)
        mixed = trunk(x, mask=mask)
        torch.testing.assert_close(mixed[[0, 2]], trunk(x[[0, 2]]), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mixed[1:2], trunk(x[1:2, ..., :30]), atol=1e-5, rtol=1e-5)


def test_gradients_do_not_reach_padded_frames():
    trunk = CNNTrunk().eval()
    x = torch.randn(1, 1, 40, 40, requires_grad=True)
    trunk(x, mask=torch.arange(40)[None] < 25).sum().backward()
    assert x.grad[..., 25:].abs().sum() == 0 and x.grad[..., :25].abs().sum() > 0


def test_bad_mask_is_a_clear_error():
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        CNNTrunk()(torch.zeros(2, 1, 40, 16), mask=torch.ones(2, 15, dtype=torch.bool))
