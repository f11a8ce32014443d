"""eGeMAPS low-level descriptors through the optional ``opensmile`` package."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch

__all__ = ["EGEMAPS_INSTALL_HINT", "egemaps_lld"]

EGEMAPS_INSTALL_HINT = 'eGeMAPS features need openSMILE: pip install "mtl_lightning[opensmile]"'


@lru_cache(maxsize=1)
def _smile() -> Any:
    try:
        import opensmile
    except ImportError as err:
        raise ImportError(EGEMAPS_INSTALL_HINT) from err
    return opensmile.Smile(
        feature_set=opensmile.FeatureSet.eGeMAPSv02,
        feature_level=opensmile.FeatureLevel.LowLevelDescriptors,
    )


def egemaps_lld(waveform: np.ndarray, sample_rate: int) -> torch.Tensor:
    """The 25 eGeMAPS v02 low-level descriptors every 10 ms, ``[25, frames]`` float32.

    Raises:
        ImportError: ``opensmile`` is not installed (the message names the extra to install).

    Example:
        >>> "mtl_lightning[opensmile]" in EGEMAPS_INSTALL_HINT
        True
        >>> x = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
        >>> egemaps_lld(x, 16000).shape[0]  # doctest: +SKIP
        25
    """
    frame = _smile().process_signal(waveform, sample_rate)
    return torch.from_numpy(np.array(frame.to_numpy(dtype=np.float32).T, order="C"))
